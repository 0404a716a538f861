"""The whole latent diffusion system as one NNX module tree, built from a `SystemConfig`.

`LatentDiffusionSystem` holds the autoencoder and, per modality, its condition encoder, its
expert UNet and (when collaborating) its dynamic diffuser. It owns parameters only: the
schedule, samplers and losses are pure functions elsewhere that take the split state.
"""

from __future__ import annotations

import functools

from flax import nnx

from cdiff_jax.config import SystemConfig
from cdiff_jax.modalities import kind_entry
from cdiff_jax.nn.autoencoder import AutoencoderKL
from cdiff_jax.nn.kernels import KernelForms, kernel_forms
from cdiff_jax.nn.unet import UNet


class Modality(nnx.Module):
    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.kind = cfg.kind
        self.encoder = kind_entry(cfg.kind).encoder(cfg.encoder, rngs=rngs)
        self.expert = UNet(cfg.expert, rngs=rngs)
        self.diffuser = UNet(cfg.diffuser, rngs=rngs) if cfg.diffuser is not None else None


class LatentDiffusionSystem(nnx.Module):
    def __init__(self, cfg: SystemConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.autoencoder = AutoencoderKL(cfg.autoencoder, rngs=rngs)
        self.modalities = nnx.Dict({name: Modality(m, rngs=rngs) for name, m in cfg.modalities.items()})


def abstract_system(cfg: SystemConfig) -> LatentDiffusionSystem:
    """The module tree with shapes only (no memory, no compute): for conversion and restore. New modules on
    every call; the tracing behind them (seconds for the demo system, every checkpoint load) is done once."""
    return nnx.merge(*_abstract_parts(cfg, kernel_forms()), copy=True)


@functools.lru_cache(maxsize=16)
def _abstract_parts(cfg: SystemConfig, forms: KernelForms):
    """The abstract system's graphdef and shapes, per config and the kernel forms its modules take when built."""
    return nnx.split(nnx.eval_shape(lambda: LatentDiffusionSystem(cfg, rngs=nnx.Rngs(0))))


def init_system(cfg: SystemConfig, seed: int = 0) -> LatentDiffusionSystem:
    """Fresh weights, initialised eagerly (measured: one jitted init compiles for much longer)."""
    return LatentDiffusionSystem(cfg, rngs=nnx.Rngs(seed))
