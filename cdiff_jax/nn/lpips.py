"""LPIPS, the perceptual distance of the autoencoder stage (VGG16 trunk with learned linear heads).

Its weights are never downloaded: `LPIPS.from_checkpoint` reads them from a file the user
provides -- an LDM autoencoder checkpoint (which holds them under `loss.perceptual_loss.`) or
a state dict of the LPIPS module alone. The trunk is frozen; only the autoencoder learns.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax import nnx

from cdiff_jax.nn.loading import load_state_dict
from cdiff_jax.weights.state_dict_io import CheckpointReadError, read_state_dict

# VGG16 convolution widths, with "M" for the 2x2 max-pools between the five tapped stages.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAPPED_WIDTHS = (64, 128, 256, 512, 512)
# The fixed input normalisation of LPIPS (from [-1, 1] images to the trunk's statistics).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10

# LPIPS as LDM's autoencoder loss holds it, under `loss.perceptual_loss.` in a full autoencoder
# checkpoint: the trunk's convolutions are torchvision `features` indices regrouped into five
# slices ending at relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3.
LPIPS_VGG_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_LPIPS_SLICE_ENDS = (4, 9, 16, 23, 30)


class LPIPS(nnx.Module):
    """distance(x, y) per example for images in [-1, 1], NHWC."""

    def __init__(self, *, rngs: nnx.Rngs):
        convs, width = [], 3
        for spec in VGG16_LAYOUT:
            if spec != "M":
                convs.append(nnx.Conv(width, spec, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs))
                width = spec
        self.convs = nnx.List(convs)
        self.lins = nnx.List([nnx.Conv(w, 1, (1, 1), use_bias=False, rngs=rngs) for w in TAPPED_WIDTHS])

    def features(self, x: jax.Array) -> list[jax.Array]:
        """The trunk's activations after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3."""
        h = (x - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
        taps, convs = [], iter(self.convs)
        for spec in VGG16_LAYOUT:
            if spec == "M":
                taps.append(h)
                h = nnx.max_pool(h, (2, 2), strides=(2, 2))
            else:
                h = jax.nn.relu(next(convs)(h))
        return taps + [h]

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        distance = jnp.zeros(x.shape[:1], x.dtype)
        for fx, fy, lin in zip(self.features(x), self.features(y), self.lins):
            diff = (_unit_channels(fx) - _unit_channels(fy)) ** 2
            distance += lin(diff).mean(axis=(1, 2, 3))
        return distance

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> LPIPS:
        """LPIPS weights from a `.ckpt`/`.pth`/`.safetensors` file, with or without a key prefix."""
        tensors = read_state_dict(path).tensors
        anchor = "lin0.model.1.weight"
        found = [k for k in tensors if k.endswith(anchor)]
        if len(found) != 1:
            raise CheckpointReadError(
                f"{path}: no LPIPS weights found (expected one key ending in {anchor!r}, e.g. an LDM autoencoder "
                "checkpoint's loss.perceptual_loss.*); pass a file that holds them"
            )
        prefix = found[0][: -len(anchor)]
        own = {key: value for key, value in tensors.items() if key.startswith(prefix)}
        model = nnx.eval_shape(lambda: cls(rngs=nnx.Rngs(0)))
        return load_state_dict(
            model,
            own,
            lpips_key_map(prefix),
            source=str(path),
            network="LPIPS",
            ignored=lambda key: key.startswith(f"{prefix}scaling_layer."),
        )


def lpips_key_map(prefix: str = "") -> dict[str, str]:
    """Our LPIPS parameter paths (`convs.i.kernel`, `lins.k.kernel`) -> official keys."""
    mapping = {}
    for i, index in enumerate(LPIPS_VGG_CONV_INDICES):
        slice_no = next(s for s, end in enumerate(_LPIPS_SLICE_ENDS, 1) if index < end)
        for ours, theirs in (("kernel", "weight"), ("bias", "bias")):
            mapping[f"convs.{i}.{ours}"] = f"{prefix}net.slice{slice_no}.{index}.{theirs}"
    for k in range(len(_LPIPS_SLICE_ENDS)):
        mapping[f"lins.{k}.kernel"] = f"{prefix}lin{k}.model.1.weight"
    return mapping


def _unit_channels(x: jax.Array) -> jax.Array:
    return x / (jnp.sqrt(jnp.sum(x**2, axis=-1, keepdims=True)) + NORM_EPS)
