"""EG3D's tri-plane generator, NHWC, numerically `training.triplane.TriPlaneGenerator` of the release.

  z, c -> StyleGAN2 mapping (the camera label c embedded) -> ws [B, 14, 512]
  ws -> StyleGAN2 synthesis at 256 with 96 channels -> tri-planes [B, 3, 256, 256, 32]
  tri-planes, camera -> rays -> plane features -> decoder (sigma, 32 features) -> volume rendering
     at the neural rendering resolution -> raw image (the first 3 features) and depth
  raw image, features, ws[:, -1] -> two StyleGAN2 blocks (super-resolution) -> image

The tri-planes depend on ws only, so many views of one identity render from one backbone pass
(`triplanes` then `render_views`). Sample through the pure functions below.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cdiff_jax.cameras import CAMERA_NUMBERS, rays, split_labels
from cdiff_jax.config import EG3DConfig
from cdiff_jax.nn import volume_rendering as vr
from cdiff_jax.nn.resize import resize
from cdiff_jax.nn.stylegan2 import NOISE_MODES, EqualizedLinear, Generator, SynthesisBlock, truncate

RGB_PAD = 0.001  # the decoder's sigmoid is stretched to (-0.001, 1.001), as in MipNeRF


class PlaneDecoder(nnx.Module):
    """EG3D's OSGDecoder: plane features averaged over the 3 planes -> FC, softplus, FC -> (rgb, sigma)."""

    def __init__(self, cfg: EG3DConfig, *, rngs: nnx.Rngs):
        lr = cfg.decoder_lr_multiplier
        self.hidden = EqualizedLinear(cfg.plane_channels, cfg.decoder_hidden, lr_multiplier=lr, rngs=rngs)
        self.output = EqualizedLinear(cfg.decoder_hidden, 1 + cfg.plane_channels, lr_multiplier=lr, rngs=rngs)

    def __call__(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        """features [B, 3, P, C] -> rgb features [B, P, C] and raw density [B, P, 1]."""
        x = self.output(jax.nn.softplus(self.hidden(jnp.mean(features, axis=1))))
        return jax.nn.sigmoid(x[..., 1:]) * (1 + 2 * RGB_PAD) - RGB_PAD, x[..., :1]


class Superresolution(nnx.Module):
    """Two StyleGAN2 blocks from the rendered features (resized to the module's input size) to the image;
    every layer reads the last row of W+."""

    def __init__(self, cfg: EG3DConfig, *, rngs: nnx.Rngs):
        spec, block_cfg = cfg.sr, cfg.superresolution_blocks
        self.input_resolution = spec.input_resolution
        self.resize_only_up = spec.resize_only_up
        self.antialias = cfg.sr_antialias and spec.antialias_option
        blocks, channels, resolution = [], cfg.plane_channels, spec.input_resolution
        for up, out_channels in spec.blocks:
            resolution *= 2 if up else 1
            blocks.append(SynthesisBlock(channels, out_channels, resolution, block_cfg, rngs=rngs, up=up))
            channels = out_channels
        self.blocks = nnx.List(blocks)

    def __call__(self, rgb: jax.Array, features: jax.Array, w: jax.Array, noise_mode: str) -> jax.Array:
        """rgb [B, R, R, 3], features [B, R, R, 32], w [B, w_dim] -> image [B, out, out, 3]."""
        size = self.input_resolution
        if features.shape[1] < size or (features.shape[1] != size and not self.resize_only_up):
            features, rgb = (resize(a, size, size, antialias=self.antialias) for a in (features, rgb))
        ws = jnp.repeat(w[:, None], 3, axis=1)
        x, img = features, rgb
        for block in self.blocks:
            noises = [layer.noise_const[...] if noise_mode == "const" else None for layer in block.convs]
            x, img = block(x, img, ws, noises)
        return img


class Views(NamedTuple):
    image: jax.Array  # [B, img_resolution, img_resolution, 3] super-resolved, raw (about [-1, 1])
    image_raw: jax.Array  # [B, R, R, 3] volume-rendered RGB at the neural rendering resolution R
    depth: jax.Array  # [B, R, R, 1] expected depth (world units)
    rendering: vr.Rendering


class TriPlaneGenerator(nnx.Module):
    def __init__(self, cfg: EG3DConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.backbone = Generator(cfg.backbone, rngs=rngs)
        self.decoder = PlaneDecoder(cfg, rngs=rngs)
        self.superresolution = Superresolution(cfg, rngs=rngs) if cfg.sr else None

    @property
    def mapping(self):
        """The backbone's mapping network (z, c -> w, and w_avg), as a StyleGAN2 generator has it."""
        return self.backbone.mapping

    def views(
        self, ws: jax.Array, cameras: jax.Array, draws: vr.RenderDraws, noises, resolution: int | None = None
    ) -> Views:
        """ws [B, num_ws, w_dim] seen by cameras [B, 25]: tri-planes, then `look`."""
        return self.look(
            self.planes(ws, noises), ws, cameras, resolution or self.cfg.neural_rendering_resolution, draws
        )

    def look(
        self, planes: jax.Array, ws: jax.Array, cameras: jax.Array, resolution: int, draws: vr.RenderDraws
    ) -> Views:
        """Tri-planes seen by cameras [B, 25]: rendering at `resolution`, then super-resolution."""
        batch = planes.shape[0]
        rendering = self.render(planes, cameras, resolution, draws)
        features = rendering.features.reshape(batch, resolution, resolution, -1)
        rgb = features[..., :3]
        image = (
            rgb
            if self.superresolution is None
            else self.superresolution(rgb, features, ws[:, -1], self.cfg.superresolution_noise_mode)
        )
        return Views(image, rgb, rendering.depth.reshape(batch, resolution, resolution, 1), rendering)

    def planes(self, ws: jax.Array, noises) -> jax.Array:
        """ws -> tri-planes [B, 3, P, P, 32] (P = 256 released; the backbone's 96 channels are plane-major)."""
        image = self.backbone.synthesis(ws, noises)
        batch, height, width, _ = image.shape
        planes = image.reshape(batch, height, width, self.cfg.plane_count, self.cfg.plane_channels)
        return planes.transpose(0, 3, 1, 2, 4)

    def render(self, planes: jax.Array, cameras: jax.Array, resolution: int, draws: vr.RenderDraws) -> vr.Rendering:
        """Volume rendering of the tri-planes through the decoder, seen by cameras [B, 25]."""
        cfg = self.cfg
        origins, directions = rays(*split_labels(cameras), resolution)
        return vr.render(
            lambda points: self.decoder(vr.sample_planes(planes, points, cfg.box_warp)),
            origins,
            directions,
            draws,
            ray_start=cfg.ray_start,
            ray_end=cfg.ray_end,
            disparity=cfg.disparity_space_sampling,
            white_back=cfg.white_back,
        )


def _camera_shape(cameras: jax.Array, batch: int, name: str) -> None:
    if cameras.shape != (batch, CAMERA_NUMBERS):
        raise ValueError(
            f"{name}: shape {cameras.shape}; EG3D takes camera labels [{batch}, {CAMERA_NUMBERS}] "
            "(cam2world 4x4 then normalised intrinsics 3x3, see cdiff_jax.cameras)"
        )


@jax.jit(static_argnames=("graphdef", "truncation_cutoff"))
def map_latents(
    graphdef, state, z: jax.Array, c: jax.Array, *, truncation_psi=1.0, truncation_cutoff: int | None = None
) -> jax.Array:
    """z [B, z_dim] and the conditioning camera c [B, 25] -> ws [B, num_ws, w_dim], truncated towards w_avg."""
    g = nnx.merge(graphdef, state)
    _camera_shape(c, z.shape[0], "c")
    c = jnp.zeros_like(c) if g.cfg.c_gen_conditioning_zero else c * g.cfg.c_scale
    w = g.backbone.mapping(z, c)
    ws = jnp.broadcast_to(w[:, None], (w.shape[0], g.cfg.num_ws, w.shape[-1]))
    return truncate(ws, g.backbone.mapping.w_avg[...], jnp.asarray(truncation_psi, ws.dtype), truncation_cutoff)


@jax.jit(static_argnames=("graphdef", "noise_mode"))
def triplanes(graphdef, state, ws: jax.Array, *, noise_mode: str = "const", key: jax.Array | None = None) -> jax.Array:
    """ws [B, num_ws, w_dim] -> tri-planes [B, 3, P, P, 32], reusable for any number of views."""
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode {noise_mode!r}: expected one of {NOISE_MODES}")
    g = nnx.merge(graphdef, state)
    if ws.shape[1:] != (g.cfg.num_ws, g.cfg.w_dim):
        raise ValueError(f"ws: shape {ws.shape}; this EG3D generator takes [B, {g.cfg.num_ws}, {g.cfg.w_dim}]")
    return g.planes(ws, g.backbone.synthesis.noises(ws.shape[0], noise_mode, key, None))


def draw_uniforms(key: jax.Array, cfg: EG3DConfig, batch: int, resolution: int) -> vr.RenderDraws:
    """The random draws of one rendering of `batch` views at `resolution`."""
    stratified_key, importance_key = jax.random.split(key)
    rays = resolution * resolution
    return vr.RenderDraws(
        jax.random.uniform(stratified_key, (batch, rays, cfg.depth_resolution)),
        jax.random.uniform(importance_key, (batch, rays, cfg.depth_resolution_importance)),
    )


@jax.jit(static_argnames=("graphdef", "resolution"))
def render_views(
    graphdef,
    state,
    planes: jax.Array,
    ws: jax.Array,
    cameras: jax.Array,
    *,
    key: jax.Array | None = None,
    draws: vr.RenderDraws | None = None,
    resolution: int | None = None,
) -> Views:
    """Tri-planes and ws of B identities, seen by cameras [B, 25] -> `Views`.

    The renderer's uniforms come from `draws` if given, else from `key`. `resolution` is the neural
    rendering resolution (default: the generator's).
    """
    g = nnx.merge(graphdef, state)
    cfg = g.cfg
    resolution = resolution or cfg.neural_rendering_resolution
    _camera_shape(cameras, planes.shape[0], "cameras")
    if draws is None:
        if key is None:
            raise ValueError("render_views: pass a PRNG key or the renderer's draws")
        draws = draw_uniforms(key, cfg, planes.shape[0], resolution)
    return g.look(planes, ws, cameras, resolution, draws)


def synthesize(
    graphdef,
    state,
    ws: jax.Array,
    cameras: jax.Array,
    *,
    noise_mode: str = "const",
    key: jax.Array | None = None,
    draws: vr.RenderDraws | None = None,
    resolution: int | None = None,
) -> Views:
    """ws and cameras -> `Views`: `triplanes` then `render_views` (the backbone's random noise and the
    renderer's uniforms both come from `key` when not given)."""
    noise_key, render_key = jax.random.split(key) if key is not None else (None, None)
    planes = triplanes(graphdef, state, ws, noise_mode=noise_mode, key=noise_key)
    return render_views(graphdef, state, planes, ws, cameras, key=render_key, draws=draws, resolution=resolution)


def orbit_views(
    graphdef,
    state,
    ws: jax.Array,
    cameras,
    key: jax.Array,
    *,
    noise_mode: str = "const",
    noise_key: jax.Array | None = None,
    on_view=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images [B, V, R, R, 3] and depths [B, V, r, r, 1] of ws [B, ...] seen by every camera [V, 25]: the
    tri-planes once, then one rendering per view (view v's uniforms from fold_in(key, v); `on_view()` after
    each, e.g. for a progress bar)."""
    planes = triplanes(graphdef, state, ws, noise_mode=noise_mode, key=noise_key)
    images, depths = [], []
    for v, camera in enumerate(np.asarray(cameras)):
        seen = render_views(
            graphdef,
            state,
            planes,
            ws,
            jnp.broadcast_to(camera, (ws.shape[0], CAMERA_NUMBERS)),
            key=jax.random.fold_in(key, v),
        )
        images.append(np.asarray(seen.image))
        depths.append(np.asarray(seen.depth))
        if on_view is not None:
            on_view()
    return np.stack(images, 1), np.stack(depths, 1)
