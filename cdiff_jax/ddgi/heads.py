"""DDGI's trained part as one module: w_t = w^m_t * gamma_t + beta_t from one UNet reading.

Stage 1 trains `mapping` alone (T is then the identity: gamma 1, beta 0 from its zero-initialised
heads); stage 2 freezes it and trains `modulation`. Both are pure in (graphdef, state) like every
network here; the GAN's w_avg is an argument, not a copy, so M always starts from the G it drives.
"""

from __future__ import annotations

import os
import pathlib

import jax
from flax import nnx, struct

from cdiff_jax.checkpoint import (
    CONFIG_FILE,
    PARAMS_DIR,
    NotACheckpointError,
    read_config,
    read_params,
    save_config_and_state,
)
from cdiff_jax.config import DDGIHeadsConfig
from cdiff_jax.ddgi.absmnet import AbSMNet
from cdiff_jax.ddgi.mapping import MappingNetwork


@struct.dataclass
class WPlusCodes:
    mapped: jax.Array  # w^m_t [B, num_ws, w_dim]
    gamma: jax.Array
    beta: jax.Array

    @property
    def w(self) -> jax.Array:
        return self.mapped * self.gamma + self.beta


class DDGIHeads(nnx.Module):
    def __init__(self, cfg: DDGIHeadsConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.mapping = MappingNetwork(cfg, rngs=rngs)
        self.modulation = AbSMNet(cfg, rngs=rngs)

    def __call__(self, middle, features, attention, content, w_avg) -> WPlusCodes:
        """W+ codes from h_t [B, s, s, C], the tapped layers' f_t and a_t, the content-token mask [B, tokens]."""
        gamma, beta = self.modulation(features, attention, content)
        return WPlusCodes(mapped=self.mapping(middle, w_avg), gamma=gamma, beta=beta)


def save_heads(directory: str | os.PathLike, heads: DDGIHeads, *, overwrite: bool = False) -> pathlib.Path:
    """Write the heads' config and parameters atomically (as every checkpoint directory here)."""
    return save_config_and_state(directory, heads.cfg.to_json(), nnx.state(heads), overwrite)


def load_heads(directory: str | os.PathLike) -> DDGIHeads:
    """Rebuild `DDGIHeads` from a directory written by `save_heads` (a DDGI stage's WORKDIR/heads)."""
    directory = pathlib.Path(directory).absolute()
    config_file = directory / CONFIG_FILE
    if (
        not config_file.is_file()
        or not (directory / PARAMS_DIR).is_dir()
        or '"num_ws"' not in config_file.read_text(errors="replace")
    ):
        raise NotACheckpointError(
            f"{directory} holds no DDGI heads (expected {CONFIG_FILE} of a DDGIHeadsConfig and "
            f"{PARAMS_DIR}/): train them with the ddgi_mapping stage"
        )
    cfg = read_config(directory, DDGIHeadsConfig.from_json)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: DDGIHeads(cfg, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, read_params(directory, nnx.to_pure_dict(state)))
    return nnx.merge(graphdef, state)
