"""OpenAI CLIP (ViT image tower, causal text transformer), for the CLIP score of the papers' evaluations.

The CLIP score of a generated image and its caption is 100 * max(cosine of their CLIP features, 0)
(torchmetrics' CLIPScore per pair). The network is ported so that a state dict of OpenAI's `clip.model.CLIP`
(`torch.save(model.state_dict())`, e.g. of ViT-B/32) loads as it is (`CLIP.from_checkpoint`) and gives the
official features; every product runs at float32 ("highest") precision, since a metric must not depend on the
backend's default. Images are preprocessed as `clip.clip._transform` does (`preprocess`), captions tokenized by
`cdiff_jax.text.clip_tokenizer`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from cdiff_jax.nn.loading import load_state_dict, variable_paths
from cdiff_jax.weights.state_dict_io import CheckpointReadError, read_state_dict

PRECISION = "highest"
LN_EPS = 1e-5
HEAD_WIDTH = 64  # build_model gives every transformer width // 64 heads
# `clip.clip._transform`'s Normalize, per RGB channel.
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
# Entries of the released state dicts that are not weights (build_model deletes them before loading).
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """`clip.model.CLIP`'s constructor arguments (ViT image tower), plus the image tower's head count, which the
    original derives from its width."""

    embed_dim: int
    image_resolution: int
    vision_layers: int
    vision_width: int
    vision_patch_size: int
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_heads: int
    transformer_layers: int
    vision_heads: int

    @classmethod
    def from_state_dict(
        cls,
        tensors: Mapping[str, np.ndarray],
        source: str,
        transformer_heads: int | None = None,
        vision_heads: int | None = None,
    ) -> CLIPConfig:
        """The configuration `build_model` reads off the tensor shapes. Head counts are not in the file: they
        default to width // 64 as build_model assumes, which holds for OpenAI's models but not every file."""

        def shape(key: str) -> tuple[int, ...]:
            if key not in tensors:
                raise CheckpointReadError(
                    f"{source}: not CLIP (ViT) weights: missing {key}; pass an OpenAI CLIP "
                    "state dict (ModifiedResNet image towers are not supported)"
                )
            return tuple(tensors[key].shape)

        def layers(prefix: str) -> int:
            return len({key.split(".")[prefix.count(".")] for key in tensors if key.startswith(prefix)})

        vision_width = shape("visual.proj")[0]  # only a ViT image tower has it: build_model tells them apart so
        patch = shape("visual.conv1.weight")[-1]
        grid = round((shape("visual.positional_embedding")[0] - 1) ** 0.5)
        width = shape("ln_final.weight")[0]
        return cls(
            embed_dim=shape("text_projection")[1],
            image_resolution=patch * grid,
            vision_layers=layers("visual.transformer.resblocks."),
            vision_width=vision_width,
            vision_patch_size=patch,
            context_length=shape("positional_embedding")[0],
            vocab_size=shape("token_embedding.weight")[0],
            transformer_width=width,
            transformer_heads=transformer_heads or width // HEAD_WIDTH,
            transformer_layers=layers("transformer.resblocks."),
            vision_heads=vision_heads or vision_width // HEAD_WIDTH,
        )


def _linear(d_in: int, d_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, precision=PRECISION, rngs=rngs)


def _layer_norm(width: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance, as torch computes it: the residual stream's mean can be large against its spread.
    return nnx.LayerNorm(width, epsilon=LN_EPS, use_fast_variance=False, rngs=rngs)


class Attention(nnx.Module):
    """torch's MultiheadAttention as CLIP uses it: q, k, v from one packed projection (`in_proj`, whose kernel
    is the file's `in_proj_weight` transposed), an optional additive mask, then `out_proj`."""

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj = _linear(width, 3 * width, rngs)
        self.out_proj = _linear(width, width, rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        n, length, width = x.shape
        qkv = self.in_proj(x).reshape(n, length, 3, self.heads, width // self.heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k, precision=PRECISION) * (width // self.heads) ** -0.5
        if mask is not None:
            logits = logits + mask
        out = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(logits, axis=-1), v, precision=PRECISION)
        return self.out_proj(out.reshape(n, length, width))


class MLP(nnx.Module):
    """c_fc, QuickGELU (x * sigmoid(1.702 x), the activation CLIP was trained with), c_proj."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.c_fc = _linear(width, 4 * width, rngs)
        self.c_proj = _linear(4 * width, width, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.c_fc(x)
        return self.c_proj(h * jax.nn.sigmoid(1.702 * h))


class ResidualAttentionBlock(nnx.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
        self.ln_1 = _layer_norm(width, rngs)
        self.attn = Attention(width, heads, rngs=rngs)
        self.ln_2 = _layer_norm(width, rngs)
        self.mlp = MLP(width, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nnx.Module):
    """The residual blocks in sequence; the text tower passes its causal mask, the image tower none."""

    def __init__(self, width: int, layers: int, heads: int, *, rngs: nnx.Rngs):
        self.resblocks = nnx.List([ResidualAttentionBlock(width, heads, rngs=rngs) for _ in range(layers)])

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class VisionTransformer(nnx.Module):
    """Patch embedding (conv without bias), class token prepended, positional embedding, ln_pre, transformer,
    ln_post of the class token, `proj` ([width, embed_dim], applied as x @ proj like the file stores it)."""

    def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        width, patch = cfg.vision_width, cfg.vision_patch_size
        self.resolution = cfg.image_resolution
        tokens = (cfg.image_resolution // patch) ** 2 + 1
        self.conv1 = nnx.Conv(
            3, width, (patch, patch), strides=patch, padding="VALID", use_bias=False, precision=PRECISION, rngs=rngs
        )
        self.class_embedding = nnx.Param(jnp.zeros((width,), jnp.float32))
        self.positional_embedding = nnx.Param(jnp.zeros((tokens, width), jnp.float32))
        self.ln_pre = _layer_norm(width, rngs)
        self.transformer = Transformer(width, cfg.vision_layers, cfg.vision_heads, rngs=rngs)
        self.ln_post = _layer_norm(width, rngs)
        self.proj = nnx.Param(jnp.zeros((width, cfg.embed_dim), jnp.float32))

    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        """`transformer` ([N, tokens, width], before ln_post; row-major patches after the class token) and
        `features` ([N, embed_dim])."""
        size = self.resolution
        if np.ndim(images) != 4 or np.shape(images)[1:] != (size, size, 3):
            raise ValueError(
                f"images must be [N, {size}, {size}, 3] NHWC, as preprocess(images, {size}) gives, "
                f"got shape {np.shape(images)}"
            )
        x = self.conv1(jnp.asarray(images, jnp.float32))
        n, _, _, width = x.shape
        x = x.reshape(n, -1, width)  # row-major over the patch grid, as torch flattens [width, grid, grid]
        cls = jnp.broadcast_to(self.class_embedding[...], (n, 1, width))
        x = self.ln_pre(jnp.concatenate([cls, x], axis=1) + self.positional_embedding[...])
        x = self.transformer(x)
        return {"transformer": x, "features": jnp.matmul(self.ln_post(x[:, 0]), self.proj[...], precision=PRECISION)}


class CLIP(nnx.Module):
    """`encode_image` (NHWC images preprocessed by `preprocess`), `encode_text` ([N, context_length] ids from
    `clip_tokenizer.tokenize`), their normalised cosines as logits (`__call__`) and the CLIP score."""

    def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        width = cfg.transformer_width
        self.visual = VisionTransformer(cfg, rngs=rngs)
        self.token_embedding = nnx.Embed(cfg.vocab_size, width, rngs=rngs)
        self.positional_embedding = nnx.Param(jnp.zeros((cfg.context_length, width), jnp.float32))
        self.transformer = Transformer(width, cfg.transformer_layers, cfg.transformer_heads, rngs=rngs)
        self.ln_final = _layer_norm(width, rngs)
        self.text_projection = nnx.Param(jnp.zeros((width, cfg.embed_dim), jnp.float32))
        self.logit_scale = nnx.Param(jnp.asarray(np.log(1 / 0.07), jnp.float32))

    def image_outputs(self, images: jax.Array) -> dict[str, jax.Array]:
        return self.visual(images)

    def text_outputs(self, tokens: jax.Array) -> dict[str, jax.Array]:
        """`transformer` ([N, context_length, width], causal, before ln_final) and `features` ([N, embed_dim]),
        taken at the end token: the highest id of each row."""
        tokens = jnp.asarray(tokens)
        length = self.cfg.context_length
        if tokens.ndim != 2 or tokens.shape[1] != length:
            raise ValueError(f"tokens must be [N, {length}] (clip_tokenizer.tokenize), got shape {tokens.shape}")
        x = self.token_embedding(tokens) + self.positional_embedding[...]
        causal = jnp.where(jnp.triu(jnp.ones((length, length), bool), k=1), -jnp.inf, 0.0).astype(jnp.float32)
        x = self.transformer(x, causal)
        end = self.ln_final(x[jnp.arange(x.shape[0]), jnp.argmax(tokens, axis=-1)])
        return {"transformer": x, "features": jnp.matmul(end, self.text_projection[...], precision=PRECISION)}

    def encode_image(self, images: jax.Array) -> jax.Array:
        return self.image_outputs(images)["features"]

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        return self.text_outputs(tokens)["features"]

    def outputs(self, images: jax.Array, tokens: jax.Array) -> dict[str, jax.Array]:
        """Everything the original computes for image-caption pairs: the towers' outputs (`image_*`, `text_*`),
        unit features (`*_features_normed`, no epsilon, as the original), `logits_per_image` [N_img, N_txt]
        (exp(logit_scale) times the cosines) and, when there are as many captions as images, `cosine_per_pair`
        and `clip_score` of image i with caption i."""
        image, text = self.image_outputs(images), self.text_outputs(tokens)
        out = {f"image_{k}": v for k, v in image.items()} | {f"text_{k}": v for k, v in text.items()}
        for side in ("image", "text"):
            features = out[f"{side}_features"]
            out[f"{side}_features_normed"] = features / jnp.linalg.norm(features, axis=-1, keepdims=True)
        image_n, text_n = out["image_features_normed"], out["text_features_normed"]
        out["logits_per_image"] = jnp.exp(self.logit_scale[...]) * jnp.matmul(image_n, text_n.T, precision=PRECISION)
        if len(image_n) == len(text_n):
            out["cosine_per_pair"] = jnp.sum(image_n * text_n, axis=-1)
            out["clip_score"] = jnp.maximum(100 * out["cosine_per_pair"], 0.0)
        return out

    def __call__(self, images: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(logits_per_image, logits_per_text), as the original's forward."""
        logits = self.outputs(images, tokens)["logits_per_image"]
        return logits, logits.T

    def clip_score(self, images: jax.Array, tokens: jax.Array) -> jax.Array:
        """[N] 100 * max(cosine, 0) of image i and caption i (torchmetrics' CLIPScore, per pair)."""
        if len(images) != len(tokens):
            raise ValueError(
                f"the CLIP score pairs image i with caption i: got {len(images)} images and {len(tokens)} captions"
            )
        return self.outputs(images, tokens)["clip_score"]

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, transformer_heads: int | None = None, vision_heads: int | None = None
    ) -> CLIP:
        """An OpenAI CLIP state dict (ViT image tower; float16 or float32, upcast exactly). The sizes are read
        off the shapes as `build_model` does; the head counts are not in the file (default width // 64).

        The file is either OpenAI's released `ViT-B-32.pt` (etc.) as `clip.load` downloads it, a TorchScript
        archive whose weights the restricted reader takes from its module tree (its code is never read or run;
        the state dict is `torch.jit.load(path).state_dict()`), or a `torch.save`d state dict such as
        `clip.load(name, jit=False)[0].state_dict()`.
        """
        tensors = read_state_dict(path).tensors
        cfg = CLIPConfig.from_state_dict(tensors, str(path), transformer_heads, vision_heads)
        model = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
        return load_state_dict(
            model,
            tensors,
            clip_key_map(model),
            source=str(path),
            network="OpenAI CLIP (ViT)",
            ignored=lambda key: key in NON_WEIGHT_KEYS,
        )


# Our variable names -> torch's, by leaf. Our module tree is the original's, except that the packed q, k, v
# projection is a Linear (`attn.in_proj.kernel`) where torch has two bare parameters (`attn.in_proj_weight`).
_LEAVES = {"kernel": "weight", "scale": "weight", "embedding": "weight"}


def clip_key_map(model: CLIP) -> dict[str, str]:
    """Our variable paths (`transformer.resblocks.0.attn.in_proj.kernel`) -> OpenAI's keys
    (`transformer.resblocks.0.attn.in_proj_weight`); `proj`, `text_projection` and the embeddings keep names."""
    mapping = {}
    for path in variable_paths(model):
        *modules, leaf = path.split(".")
        key = ".".join([*modules, _LEAVES.get(leaf, leaf)])
        mapping[path] = key.replace("attn.in_proj.", "attn.in_proj_")
    return mapping


@partial(jax.jit, static_argnums=0)
def clip_outputs(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array, tokens: jax.Array) -> dict:
    """The jitted `CLIP.outputs`: a pure function of the network's (graphdef, state)."""
    return nnx.merge(graphdef, state).outputs(images, tokens)


def preprocess(images: Sequence[Image.Image | np.ndarray], size: int) -> np.ndarray:
    """`clip.clip._transform(size)` on each image, stacked: [N, size, size, 3] float32 NHWC.

    PIL images or uint8 [H, W, 3] / [H, W] arrays: bicubic resize (PIL, antialiased) of the shorter side to
    `size` (the longer to int(size * long / short)), centre crop (offsets rounded half to even, as torchvision
    does), RGB, /255, CLIP's per-channel normalisation -- all as the original, so the result is identical.
    """
    out = []
    for image in images:
        if not isinstance(image, Image.Image):
            array = np.asarray(image)
            if array.dtype != np.uint8:
                raise ValueError(f"arrays must be uint8 [H, W, 3] or [H, W], got {array.dtype} {array.shape}")
            image = Image.fromarray(array)
        width, height = image.size
        short, long = min(width, height), max(width, height)
        resized = (size, int(size * long / short))
        image = image.resize(resized if width <= height else resized[::-1], Image.Resampling.BICUBIC)
        top, left = round((image.size[1] - size) / 2), round((image.size[0] - size) / 2)
        image = image.crop((left, top, left + size, top + size)).convert("RGB")
        out.append((np.asarray(image, np.float32) / np.float32(255) - MEAN) / STD)
    return np.stack(out)
