"""Writes the TorchScript test archives of tests/weights/test_torchscript.py and torch's own state dicts of them.

Run with a torch environment (the tests themselves never import torch), from any directory:

    /work/.venv-reference/bin/python tests/weights/data/make_torchscript.py

The module is a tiny transformer tower of this file's own design with the parts a released TorchScript CLIP
has: a 0-d parameter at the top, an embedding, a positional parameter, an nn.Sequential of residual blocks with
nn.MultiheadAttention (packed in_proj_weight), nn.LayerNorm and nn.Linear, registered buffers (one int64 0-d,
one non-persistent, a causal mask per block), an nn.ModuleList with a bias-free Linear, and float16 weights.
It is written twice:

- ``tower_traced_fp16.pt``: torch.jit.trace, then .half() as OpenAI's released files are; jit.save names the
  archive's top folder after the file (``tower_traced_fp16/``), and the trace leaves tensor constants in
  ``constants.pkl``.
- ``tower_scripted.pt``: torch.jit.script in float32 with one float16 submodule and two buffers that are views of
  a parameter's storage (an offset row and a transposed, strided view), saved through a buffer, which names the
  top folder ``archive/``; its typed non-state attributes (List[int], List[float], List[bool], List[Tensor],
  Dict[str, int], a string, a torch.device) make data.pkl use the typed-container globals of torch.jit._pickle.

For each, ``<stem>.npz`` holds ``torch.jit.load(path).state_dict()`` in its order, dtypes kept.
"""

import io
import math
import pathlib

import numpy as np
import torch
from torch import nn

HERE = pathlib.Path(__file__).resolve().parent
WIDTH, HEADS, TOKENS, VOCAB = 8, 2, 4, 11


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm_a = nn.LayerNorm(WIDTH)
        self.mix = nn.MultiheadAttention(WIDTH, HEADS)
        self.norm_b = nn.LayerNorm(WIDTH)
        self.ff = nn.Sequential(nn.Linear(WIDTH, 2 * WIDTH), nn.GELU(), nn.Linear(2 * WIDTH, WIDTH))
        self.register_buffer("gate", torch.linspace(0.5, 1.0, WIDTH))
        self.register_buffer("mask", torch.full((TOKENS, TOKENS), float("-inf")).triu(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm_a(x)
        x = x + self.mix(h, h, h, need_weights=False, attn_mask=self.mask.to(h.dtype))[0]
        return x + self.gate * self.ff(self.norm_b(x))


class Tower(nn.Module):
    extra: list[torch.Tensor]
    named: dict[str, int]

    def __init__(self, shared_views: bool):
        super().__init__()
        self.temperature = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.tokens = nn.Embedding(VOCAB, WIDTH)
        self.position = nn.Parameter(torch.randn(TOKENS, WIDTH) * 0.1)
        self.blocks = nn.Sequential(Block(), Block())
        self.heads = nn.ModuleList([nn.Linear(WIDTH, 3), nn.Linear(WIDTH, 3, bias=False)])
        self.register_buffer("context", torch.tensor(TOKENS, dtype=torch.int64))
        self.register_buffer("scratch", torch.arange(3.0), persistent=False)
        if shared_views:
            self.register_buffer("position_row", self.position.data[1])
            self.register_buffer("position_t", self.position.data.t())
        # Attributes that are not state (a script keeps them, typed; a trace drops them).
        self.layout = [TOKENS, WIDTH]
        self.scales = [0.5, 2.0]
        self.flags = [True, False]
        self.name = "tower"
        self.where = torch.device("cpu")
        self.extra = [torch.ones(2)]
        self.named = {"width": WIDTH}

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        x = self.tokens(text) + self.position
        x = self.blocks(x.permute(1, 0, 2)).permute(1, 0, 2)[:, -1]
        out = self.heads[0](x) + self.heads[1](x.to(self.heads[1].weight.dtype)).to(x.dtype)
        return out * self.temperature.exp() + self.scratch


def save_expected(path: pathlib.Path) -> None:
    state = torch.jit.load(str(path)).state_dict()
    np.savez_compressed(path.with_suffix(".npz"), **{k: v.detach().numpy() for k, v in state.items()})
    print(path.name, path.stat().st_size, "bytes,", len(state), "entries")


def main() -> None:
    torch.manual_seed(0)
    text = torch.randint(0, VOCAB, (2, TOKENS))

    traced = torch.jit.trace(Tower(shared_views=False).eval(), text).half()
    traced_path = HERE / "tower_traced_fp16.pt"
    torch.jit.save(traced, str(traced_path))
    save_expected(traced_path)

    tower = Tower(shared_views=True).eval()
    tower.heads[1].half()
    scripted = torch.jit.script(tower)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)  # a buffer has no file name: torch names the top folder "archive/"
    scripted_path = HERE / "tower_scripted.pt"
    scripted_path.write_bytes(buffer.getvalue())
    save_expected(scripted_path)


if __name__ == "__main__":
    main()
