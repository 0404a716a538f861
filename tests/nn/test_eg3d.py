"""EG3D tri-plane generator parity with the official code (the `eg3d/` folder of the reference fixtures).

Sizes, cases and the stored plane slices come from the fixture's config.json and io.npz; the
generator is converted from the fixture's network pickle once per module. The renderer's random
draws are the recorded ones, so every rendering is compared exactly.
"""

import json
import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cdiff_jax.cameras import rays, split_labels
from cdiff_jax.convert.eg3d import load_eg3d_pickle
from cdiff_jax.nn import eg3d
from cdiff_jax.nn import volume_rendering as vr
from cdiff_jax.nn.resize import resize
from cdiff_jax.nn.stylegan2 import lrelu
from tests.conftest import assert_close_rel

# The raw density is a sum of terms far larger than itself: the official float32 value and ours are
# both about 1.2e-5 of its range from the float64 value (measured with jax_enable_x64).
DENSITY_TOL = 3e-5


def nchw(x):
    return np.moveaxis(np.asarray(x), -1, 1)


class Reference:
    def __init__(self, folder):
        self.io = dict(np.load(folder / "io.npz"))
        self.config = json.loads((folder / "config.json").read_text())
        self.generator = load_eg3d_pickle(next(folder.glob("*.pkl")))
        self.graphdef, self.state = nnx.split(self.generator)
        self.batch = self.io["z"].shape[0]

    def draws(self, prefix=""):
        stratified = self.io[f"{prefix}render_u_stratified"]
        rays = stratified.shape[1]
        return vr.RenderDraws(
            jnp.asarray(stratified[..., 0]),
            jnp.asarray(self.io[f"{prefix}render_u_importance"].reshape(self.batch, rays, -1)),
        )

    def views(self, ws, prefix=""):
        planes = eg3d.triplanes(self.graphdef, self.state, jnp.asarray(ws))
        return planes, eg3d.render_views(
            self.graphdef, self.state, planes, jnp.asarray(ws), jnp.asarray(self.io["c_cam"]), draws=self.draws(prefix)
        )


@pytest.fixture(scope="module")
def ref(fixtures_root):
    return Reference(fixtures_root / "eg3d")


@pytest.fixture(scope="module")
def rendered(ref):
    return ref.views(ref.io["ws"])


def truncated_cases(io):
    """(key, psi, cutoff) of every truncated ws the fixture holds (`ws_psi0.7_cutoff14`)."""
    cases = []
    for key in io:
        match = re.fullmatch(r"ws_psi([\d.]+)(?:_cutoff(\d+))?", key)
        if match:
            cases.append((key, float(match[1]), int(match[2]) if match[2] else None))
    return cases


def test_config_comes_from_the_pickle(ref):
    rendering = ref.config["rendering_kwargs"]
    cfg = ref.generator.cfg
    assert cfg.neural_rendering_resolution == ref.config["non_init_state"]["neural_rendering_resolution"]
    assert (cfg.depth_resolution, cfg.depth_resolution_importance) == (
        rendering["depth_resolution"],
        rendering["depth_resolution_importance"],
    )
    assert "training.superresolution." + cfg.superresolution == rendering["superresolution_module"]
    assert cfg.num_ws == ref.io["ws"].shape[1]


def test_mapping_and_truncation(ref):
    io = ref.io
    assert_close_rel(eg3d.map_latents(ref.graphdef, ref.state, io["z"], io["c_cond"]), io["ws"], name="ws")
    assert_close_rel(ref.generator.backbone.mapping.w_avg[...], io["w_avg"], name="w_avg")
    cases = truncated_cases(io)
    assert cases
    for key, psi, cutoff in cases:
        ws = eg3d.map_latents(
            ref.graphdef, ref.state, io["z"], io["c_cond"], truncation_psi=psi, truncation_cutoff=cutoff
        )
        assert_close_rel(ws, io[key], name=key)


def test_mapping_layers(ref):
    io, mapping = ref.io, ref.generator.backbone.mapping
    c = jnp.asarray(io["c_cond"]) * ref.generator.cfg.c_scale
    assert_close_rel(mapping.embed(c), io["mapping.embed"], name="embed")
    x = mapping.inputs(jnp.asarray(io["z"]), c)
    assert_close_rel(x, io["mapping.input"], name="input")
    for i, layer in enumerate(mapping.layers):
        x = lrelu(layer(x))
        assert_close_rel(x, io[f"mapping.fc{i}"], name=f"fc{i}")


@pytest.mark.slow
def test_triplanes(ref, rendered):
    planes = np.moveaxis(np.asarray(rendered[0]), -1, 2)  # [B, 3, C, H, W] as the official code holds them
    storage = ref.config["planes_storage"]
    stride = int(re.search(r"::(\d+)", storage["sub"])[1])
    start, stop = map(int, re.search(r"(\d+):(\d+)", storage["crop"]).groups())
    subsampled = next(k for k in ref.io if k.startswith("planes.sub"))
    cropped = next(k for k in ref.io if k.startswith("planes.crop"))
    assert_close_rel(planes[..., ::stride, ::stride], ref.io[subsampled], name="subsampled planes")
    assert_close_rel(planes[..., start:stop, start:stop], ref.io[cropped], name="cropped planes")
    assert_close_rel(planes.sum(-1), ref.io["planes.rowsum"], name="row sums")
    assert_close_rel(planes.mean((-2, -1)), ref.io["planes.mean"], name="means")
    assert_close_rel(planes.std((-2, -1), ddof=1), ref.io["planes.std"], name="stds")


def test_backbone_blocks(ref):
    """The first blocks' features and 96-channel skip images (every stored block)."""
    synthesis = ref.generator.backbone.synthesis
    stored = [int(m[1]) for k in ref.io if (m := re.fullmatch(r"backbone\.synthesis\.b(\d+)\.x", k))]
    assert stored
    x = img = None
    noises = iter(synthesis.noises(ref.batch, "const", None, None))
    for block, rows in zip(synthesis.blocks, synthesis.block_ws(jnp.asarray(ref.io["ws"]))):
        if block.resolution > max(stored):
            break
        x, img = block(x, img, rows, [next(noises) for _ in block.convs])
        key = f"backbone.synthesis.b{block.resolution}"
        if block.resolution in stored:
            assert_close_rel(nchw(x), ref.io[f"{key}.x"], name=f"{key}.x")
            assert_close_rel(nchw(img), ref.io[f"{key}.img"], name=f"{key}.img")


def test_rays(ref):
    c = ref.io["c_cam"]
    origins, directions = rays(*split_labels(jnp.asarray(c)), ref.generator.cfg.neural_rendering_resolution)
    assert_close_rel(origins, ref.io["rays.origins"], name="origins")
    assert_close_rel(directions, ref.io["rays.directions"], name="directions")


def test_rendering_stages(ref, rendered):
    r = rendered[1].rendering
    assert_close_rel(r.depths_coarse, ref.io["render.depths_coarse"], name="coarse depths")
    assert_close_rel(
        r.sigma_coarse.reshape(ref.batch, -1, 1), ref.io["decoder.sigma.coarse"], tol=DENSITY_TOL, name="coarse density"
    )
    assert_close_rel(r.depths_fine, ref.io["render.depths_fine"], name="importance depths")
    assert_close_rel(
        r.sigma_fine.reshape(ref.batch, -1, 1), ref.io["decoder.sigma.fine"], tol=DENSITY_TOL, name="fine density"
    )
    assert_close_rel(r.weights_sum, ref.io["render.weights_sum"], name="opacity")


def test_rendered_images_and_super_resolution(ref, rendered):
    views = rendered[1]
    size = ref.generator.cfg.neural_rendering_resolution
    features = views.rendering.features.reshape(ref.batch, size, size, -1)
    assert_close_rel(nchw(features), ref.io["feature_image"], name="feature image")
    assert_close_rel(nchw(views.image_raw), ref.io["image_raw"], name="image_raw")
    assert_close_rel(nchw(views.depth), ref.io["image_depth"], name="depth")
    assert_close_rel(nchw(views.image), ref.io["image"], name="image")


def test_super_resolution_first_block(ref, rendered):
    views, sr = rendered[1], ref.generator.superresolution
    size = ref.generator.cfg.neural_rendering_resolution
    features = views.rendering.features.reshape(ref.batch, size, size, -1)
    x, rgb = (
        resize(a, sr.input_resolution, sr.input_resolution, antialias=sr.antialias) for a in (features, views.image_raw)
    )
    ws = jnp.repeat(jnp.asarray(ref.io["ws"])[:, -1:], 3, axis=1)
    _, img = sr.blocks[0](x, rgb, ws, [None] * len(sr.blocks[0].convs))
    assert_close_rel(nchw(img), ref.io["sr.block0.img"], name="sr.block0.img")


def test_truncated_renderings(ref):
    """Every truncated case with its own recorded draws (`psi0.7.image_raw`, ...)."""
    prefixes = sorted({k.split("image_raw")[0] for k in ref.io if k.endswith(".image_raw")})
    assert prefixes
    for prefix in prefixes:
        psi = re.fullmatch(r"psi([\d.]+)\.", prefix)[1]
        key = next(k for k, p, _ in truncated_cases(ref.io) if p == float(psi))
        _, views = ref.views(ref.io[key], prefix)
        assert_close_rel(nchw(views.image_raw), ref.io[f"{prefix}image_raw"], name=f"{prefix}image_raw")
        assert_close_rel(nchw(views.depth), ref.io[f"{prefix}image_depth"], name=f"{prefix}image_depth")


def test_reused_planes_render_like_one_call(ref, rendered):
    """`synthesize` (backbone and renderer in one call) equals planes computed once and rendered."""
    views = eg3d.synthesize(
        ref.graphdef, ref.state, jnp.asarray(ref.io["ws"]), jnp.asarray(ref.io["c_cam"]), draws=ref.draws()
    )
    np.testing.assert_array_equal(np.asarray(views.image), np.asarray(rendered[1].image))


def test_bad_camera_shapes_are_named(ref):
    with pytest.raises(ValueError, match=r"\[3, 25\]"):
        eg3d.map_latents(ref.graphdef, ref.state, ref.io["z"], ref.io["c_cond"][:, :16])
    with pytest.raises(ValueError, match="14"):
        eg3d.triplanes(ref.graphdef, ref.state, jnp.zeros((1, 16, 512)))
