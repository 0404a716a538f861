"""What DDGI reads from the frozen diffusion system at one sampling step: h_t, f_t and a_t.

The chosen experts are read at (x_t, t), each under its own condition. With several, their maps
are concatenated on channels (h_t, f_t) and their tokens side by side (a_t and the content mask),
so M and T see them as one wider UNet. By default f_t and a_t come from the last block of each
up level with cross-attention: the paper taps its decoder's attention-bearing stages, one map each.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from cdiff_jax.config import DDGIHeadsConfig, EG3DConfig, StyleGAN2Config, SystemConfig, UNetConfig
from cdiff_jax.diffusion.denoiser import encode_conditions, expert_features
from cdiff_jax.modalities import kind_entry
from cdiff_jax.system import LatentDiffusionSystem, abstract_system


@struct.dataclass
class DiffusionFeatures:
    middle: jax.Array  # h_t [B, s, s, C]
    decoder: tuple[jax.Array, ...]  # f_t per tapped block [B, s_l, s_l, C_l]
    attention: tuple[jax.Array, ...]  # a_t per tapped block [B, n_l, tokens], head-averaged probabilities
    content: jax.Array  # [B, tokens] the tokens that carry content (words, shown classes, strokes)


def level_blocks(cfg: UNetConfig) -> tuple[int, ...]:
    """The last up block of each level with cross-attention, as indices into the UNet's up path."""
    per_level = cfg.num_res_blocks + 1
    levels = range(len(cfg.channel_mult) - 1, -1, -1)  # the up path runs from the deepest level
    return tuple(
        group * per_level + cfg.num_res_blocks
        for group, level in enumerate(levels)
        if 2**level in cfg.attention_resolutions
    )


def check_experts(cfg: SystemConfig, experts: tuple[str, ...]) -> None:
    """DDGI reads named experts whose UNets share one layout (their maps are concatenated)."""
    unknown = [name for name in experts if name not in cfg.modalities]
    if not experts or unknown:
        raise ValueError(
            f"DDGI experts {list(experts)}: choose one or more of the system's modalities {list(cfg.modalities)}"
        )
    layouts = {
        (m.expert.channel_mult, m.expert.num_res_blocks, m.expert.attention_resolutions)
        for name, m in cfg.modalities.items()
        if name in experts
    }
    if len(layouts) > 1:
        raise ValueError(f"DDGI experts {list(experts)} have different UNet layouts; read experts of one layout")


def read_features(
    system: LatentDiffusionSystem,
    x: jax.Array,
    t: jax.Array,
    conditions: dict[str, jax.Array],
    experts: tuple[str, ...],
    up_blocks: tuple[int, ...] | None = None,
) -> DiffusionFeatures:
    """h_t, f_t, a_t of `experts` at (x_t, t) under `conditions` (token ids, one-hot masks, strokes)."""
    first = system.cfg.modalities[experts[0]].expert
    blocks = level_blocks(first) if up_blocks is None else tuple(up_blocks)
    contexts = encode_conditions(system, {name: conditions[name] for name in experts})
    taps = [features for _, features in expert_features(system, x, t, contexts, experts, blocks).values()]
    tapped = list(taps[0].cross_attention)
    content = [kind_entry(system.cfg.modalities[name].kind).content(conditions[name]) for name in experts]
    return DiffusionFeatures(
        middle=jnp.concatenate([f.middle for f in taps], axis=-1),
        decoder=tuple(jnp.concatenate([f.up[name] for f in taps], axis=-1) for name in tapped),
        attention=tuple(jnp.concatenate([f.cross_attention[name] for f in taps], axis=-1) for name in tapped),
        content=jnp.concatenate(content, axis=-1),
    )


def heads_config(
    system_cfg: SystemConfig,
    gan_cfg: StyleGAN2Config | EG3DConfig,
    experts: tuple[str, ...],
    up_blocks: tuple[int, ...] | None = None,
    **choices,
) -> DDGIHeadsConfig:
    """The heads' config for reading `experts` of a system into a GAN's W+, feature shapes traced
    without compute; `choices` are the other `DDGIHeadsConfig` fields."""
    check_experts(system_cfg, experts)
    graphdef, state = nnx.split(abstract_system(system_cfg))
    size = system_cfg.latent_size
    x = jax.ShapeDtypeStruct((1, size, size, system_cfg.autoencoder.embed_dim), jnp.float32)
    conditions = {
        name: jnp.asarray(kind_entry(system_cfg.modalities[name].kind).null(system_cfg.modalities[name].encoder))
        for name in experts
    }

    def read(state, x):
        return read_features(nnx.merge(graphdef, state), x, jnp.zeros((1,), jnp.int32), conditions, experts, up_blocks)

    shapes = jax.eval_shape(read, state, x)
    return DDGIHeadsConfig(
        num_ws=gan_cfg.num_ws,
        w_dim=gan_cfg.w_dim,
        middle=(shapes.middle.shape[1], shapes.middle.shape[-1]),
        levels=tuple((f.shape[1], f.shape[-1]) for f in shapes.decoder),
        experts=tuple(experts),
        **choices,
    )


def check_ddgi_parts(
    system_cfg: SystemConfig, gan_cfg: StyleGAN2Config | EG3DConfig, heads_cfg: DDGIHeadsConfig
) -> None:
    """ValueError naming the mismatch unless the heads read this system's features into this GAN's W+ codes."""
    if gan_cfg.img_resolution != system_cfg.autoencoder.resolution:
        raise ValueError(
            f"the GAN makes {gan_cfg.img_resolution}x{gan_cfg.img_resolution} images but the diffusion "
            f"system {system_cfg.autoencoder.resolution}x{system_cfg.autoencoder.resolution}"
        )
    if (heads_cfg.num_ws, heads_cfg.w_dim) != (gan_cfg.num_ws, gan_cfg.w_dim):
        kind = "3D-aware (EG3D)" if isinstance(gan_cfg, EG3DConfig) else "2D (StyleGAN2)"
        raise ValueError(
            f"the heads make W+ codes of {heads_cfg.num_ws} x {heads_cfg.w_dim} but the {kind} GAN "
            f"takes {gan_cfg.num_ws} x {gan_cfg.w_dim}: give the GAN the heads were trained for"
        )
    expected = heads_config(system_cfg, gan_cfg, heads_cfg.experts)
    if (expected.middle, expected.levels) != (heads_cfg.middle, heads_cfg.levels):
        raise ValueError(
            f"the heads were trained on another diffusion system (features {heads_cfg.levels}, this "
            f"one gives {expected.levels}); give its checkpoint"
        )
