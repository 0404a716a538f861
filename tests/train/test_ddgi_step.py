"""DDGI's training stages: the identity start, which head each stage trains, that training fits, a tri-plane
GAN's loss at a lower rendering resolution, and the perceptual and identity terms (the toy world's stand-in to the
bit by default; LPIPS and pSp's ID loss as those networks compute them)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cdiff_jax.config import StyleGAN2Config, load_config
from cdiff_jax.ddgi.features import heads_config
from cdiff_jax.ddgi.gan import gan_images
from cdiff_jax.ddgi.heads import DDGIHeads
from cdiff_jax.nn.arcface import ArcFace, idloss_faces
from cdiff_jax.nn.eg3d import TriPlaneGenerator
from cdiff_jax.nn.lpips import LPIPS
from cdiff_jax.nn.stylegan2 import Generator
from cdiff_jax.optimization import adam
from cdiff_jax.system import init_system
from cdiff_jax.train.config import TrainConfig
from cdiff_jax.train.ddgi_step import DDGIObjective, ddgi_images, ddgi_loss, ddgi_train_steps, perceptual_distance
from cdiff_jax.train.stages import DDGIInputsAt, ddgi_stage
from cdiff_jax.train.step import init_train_state

GAN = StyleGAN2Config(z_dim=8, w_dim=8, img_resolution=32, mapping_layers=1, channel_base=64, channel_max=8)
# The toy world's 64x64 images (what the stage's area averaging reads), rendered at 8x8 below.
EG3D = load_config("tiny_eg3d.py:64")
EXPERTS = ("text", "mask")
KEPT = 3


@pytest.fixture(scope="module")
def world():
    system = init_system(load_config("tiny_system.py"), seed=0)
    generator = Generator(GAN, rngs=nnx.Rngs(0))
    heads = DDGIHeads(
        heads_config(system.cfg, GAN, EXPERTS, mapping_channels=8, modulation_channels=8), rngs=nnx.Rngs(1)
    )
    cfg = system.cfg
    rng = np.random.default_rng(0)
    batch = {
        "x_t": jnp.asarray(
            rng.normal(size=(4, KEPT, cfg.latent_size, cfg.latent_size, cfg.autoencoder.embed_dim)), jnp.float32
        ),
        "image": jnp.asarray(rng.uniform(-1, 1, (4, 32, 32, 3)), jnp.float32),
        "diffusion_image": jnp.asarray(rng.uniform(-1, 1, (4, 32, 32, 3)), jnp.float32),
        "tokens": jnp.asarray(rng.integers(1000, 2000, (4, 77)), jnp.int32),
        "mask": jnp.asarray(np.eye(19, dtype=np.float32)[rng.integers(0, 19, (4, 1024))].transpose(0, 2, 1)),
    }
    timesteps = jnp.asarray([900, 500, 100], jnp.int32)
    return system, generator, heads, batch, timesteps


@pytest.mark.slow
def test_both_stages_start_from_the_gan_s_average_face(world):
    system, generator, heads, batch, timesteps = world
    render = nnx.jit(ddgi_images, static_argnames=("objective",))
    # G of its average code, compiled: op by op, the synthesis network's operations would each compile alone.
    average = nnx.jit(gan_images)(
        generator, jnp.broadcast_to(generator.mapping.w_avg[...], (1, GAN.num_ws, GAN.w_dim)), None
    )
    for stage in ("ddgi_mapping", "ddgi_modulation"):
        images = render(
            heads, system, generator, batch, jnp.array([0, 1, 2, 1]), timesteps, objective=DDGIObjective(stage, EXPERTS)
        )
        np.testing.assert_allclose(images, jnp.broadcast_to(average, images.shape), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage, trained, kept", [("ddgi_mapping", "mapping", "modulation"), ("ddgi_modulation", "modulation", "mapping")]
)
def test_each_stage_trains_its_head_only_and_fits_a_fixed_batch(world, stage, trained, kept):
    system, generator, heads, batch, timesteps = world
    graphdef, params, frozen_heads = nnx.split(
        heads, lambda path, v: isinstance(v, nnx.Param) and path[0] == trained, ...
    )
    tx = adam(3e-3)
    state = init_train_state(jax.tree.map(jnp.copy, params), tx)
    batches = jax.tree.map(lambda x: jnp.broadcast_to(x, (4, *x.shape)), batch)
    frozen = (nnx.split(system), nnx.split(generator))
    state, metrics = ddgi_train_steps(
        graphdef, frozen_heads, state, batches, frozen, timesteps, jax.random.key(0), tx, DDGIObjective(stage, EXPERTS)
    )
    loss = np.asarray(metrics.loss)
    assert np.asarray(metrics.finite).all() and int(state.step) == 4
    assert loss[-1] < loss[0]  # the same examples, read at random cached steps
    changed = [
        np.abs(np.asarray(a) - np.asarray(b)).max()
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params))
    ]
    assert max(changed) > 0
    assert all(path[0] == trained for path, _ in nnx.to_flat_state(state.params))
    assert all(path[0] == kept for path, _ in nnx.to_flat_state(frozen_heads))


@pytest.mark.slow
def test_a_tri_plane_gan_trains_at_its_rendering_resolution_against_area_averaged_targets(world):
    """The stage's inputs area-average both 64x64 targets to the rendering resolution; the loss is G's rendering
    at that resolution (fresh heads: the average code) against them, L2 and perceptual."""
    system, _, _, batch, timesteps = world
    generator = TriPlaneGenerator(EG3D, rngs=nnx.Rngs(0))
    heads = DDGIHeads(
        heads_config(system.cfg, EG3D, EXPERTS, mapping_channels=8, modulation_channels=8), rngs=nnx.Rngs(1)
    )
    rng = np.random.default_rng(1)
    full = {name: rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8) for name in ("image", "diffusion_image")}
    records = [
        {
            "x_t": np.asarray(batch["x_t"][i]),
            "caption": "a man",
            "mask": np.zeros((32, 32), np.uint8),
            **{name: full[name][i] for name in full},
        }
        for i in range(4)
    ]
    inputs = [DDGIInputsAt(8).map(r) for r in records]
    small = {name: np.stack([x[name] for x in inputs]) for name in inputs[0]}
    for name, images in full.items():  # 8x8 blocks of the [-1, 1] images, averaged
        expected = (images / 127.5 - 1).reshape(4, 8, 8, 8, 8, 3).mean(axis=(2, 4))
        np.testing.assert_allclose(small[name], expected, rtol=1e-5, atol=1e-6)
    key = jax.random.key(2)
    objective = DDGIObjective("ddgi_modulation", EXPERTS, ground_truth_weight=0.5, resolution=8)
    loss = nnx.jit(ddgi_loss, static_argnames=("objective",))(
        heads, system, generator, small, key, timesteps, objective=objective
    )

    @nnx.jit
    def direct(generator, autoencoder):
        average = jnp.broadcast_to(generator.mapping.w_avg[...], (4, EG3D.num_ws, EG3D.w_dim))
        images = gan_images(generator, average, jax.random.fold_in(key, 1), resolution=8)  # ddgi_loss's draws
        terms = [
            jnp.mean(jnp.square(images - small[name])) + 0.8 * perceptual_distance(autoencoder, images, small[name])
            for name in ("diffusion_image", "image")
        ]
        return images, terms[0] + 0.5 * terms[1]

    images, expected = direct(generator, system.autoencoder)
    assert images.shape == (4, 8, 8, 3)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def random_module(make, seed: int):
    """The module `make()` builds, its variables drawn by numpy (fast for LPIPS's 15M): kernels of unit gain,
    batch norm statistics near (0, 1), PReLU slopes 0.25, the rest small."""
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(nnx.eval_shape(make))
    for path, variable in nnx.to_flat_state(state):
        shape = variable.get_value().shape
        value = {
            "kernel": lambda: rng.standard_normal(shape, np.float32) / np.sqrt(np.prod(shape[:-1])),
            "scale": lambda: 1 + 0.1 * rng.standard_normal(shape, np.float32),
            "var": lambda: rng.uniform(0.5, 1.5, shape),
            "slope": lambda: np.full(shape, 0.25),
        }.get(path[-1], lambda: 0.1 * rng.standard_normal(shape))()
        variable.set_value(jnp.asarray(value, jnp.float32))
    return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def judges():
    """LPIPS and a one-unit-per-stage ArcFace with random weights (the step takes any; the stage loads files)."""
    return random_module(lambda: LPIPS(rngs=nnx.Rngs(0)), 2), random_module(
        lambda: ArcFace((1, 1, 1, 1), rngs=nnx.Rngs(0)), 3
    )


def average_images(generator, count):
    """What fresh heads make (both stages start at the GAN's average code)."""
    average = jnp.broadcast_to(generator.mapping.w_avg[...], (count, GAN.num_ws, GAN.w_dim))
    return nnx.jit(gan_images)(generator, average, None)


def direct_lpips(lpips, images, target):
    return jnp.mean(nnx.jit(lpips)(images, target))


def direct_identity(arcface, images, target):
    """1 - the mean cosine of ArcFace's embeddings, the 32x32 images taken to pSp's 256x256 (pooling to a multiple
    repeats pixels), its face crop and 112x112."""
    embed = nnx.jit(lambda arcface, x: arcface(idloss_faces(jnp.repeat(jnp.repeat(x, 8, axis=1), 8, axis=2))))
    return 1 - jnp.mean(jnp.sum(embed(arcface, images) * embed(arcface, target), axis=-1))


def loss_of(*args, objective, **networks):
    return nnx.jit(ddgi_loss, static_argnames=("objective",))(*args, objective=objective, **networks)


@pytest.mark.slow
def test_the_default_objective_is_the_autoencoder_stand_in_to_the_bit(world):
    """TrainConfig's defaults (what runs recorded before the LPIPS and identity fields compute) give the loss of
    the objective as it was: L2 + 0.8 x the autoencoder's latent distance, on both targets, nothing else."""
    system, generator, heads, batch, timesteps = world
    cfg = TrainConfig()
    objective = DDGIObjective(
        "ddgi_modulation",
        EXPERTS,
        cfg.ddgi_l2_weight,
        cfg.ddgi_perceptual_weight,
        cfg.ddgi_ground_truth_weight,
        perceptual=cfg.ddgi_perceptual,
        identity_weight=cfg.ddgi_identity_weight,
    )
    assert objective == DDGIObjective("ddgi_modulation", EXPERTS)

    def before(heads, system, generator, batch, key, timesteps, objective):  # ddgi_loss before the choices
        k = jax.random.randint(key, (batch["x_t"].shape[0],), 0, batch["x_t"].shape[1])
        images = ddgi_images(heads, system, generator, batch, k, timesteps, objective, jax.random.fold_in(key, 1))

        def term(target):
            return objective.l2_weight * jnp.mean(
                jnp.square(images - target)
            ) + objective.perceptual_weight * perceptual_distance(system.autoencoder, images, target)

        if objective.stage == "ddgi_mapping":
            return term(batch["image"])
        return term(batch["diffusion_image"]) + objective.ground_truth_weight * term(batch["image"])

    key = jax.random.key(5)
    expected = nnx.jit(before, static_argnames=("objective",))(
        heads, system, generator, batch, key, timesteps, objective=objective
    )
    np.testing.assert_array_equal(
        loss_of(heads, system, generator, batch, key, timesteps, objective=objective), expected
    )


@pytest.mark.slow
def test_the_lpips_choice_is_lpips_on_each_target(world, judges):
    """perceptual="lpips": each term's perceptual distance is the batch mean of LPIPS itself."""
    system, generator, heads, batch, timesteps = world
    lpips, _ = judges
    objective = DDGIObjective("ddgi_modulation", EXPERTS, l2_weight=0.5, ground_truth_weight=0.25, perceptual="lpips")
    loss = loss_of(heads, system, generator, batch, jax.random.key(3), timesteps, objective=objective, lpips=lpips)
    images = average_images(generator, 4)
    distances = {name: direct_lpips(lpips, images, batch[name]) for name in ("diffusion_image", "image")}
    assert min(map(abs, distances.values())) > 1e-3
    terms = [
        0.5 * jnp.mean(jnp.square(images - batch[name])) + 0.8 * distances[name]
        for name in ("diffusion_image", "image")
    ]
    np.testing.assert_allclose(loss, terms[0] + 0.25 * terms[1], rtol=1e-5)
    with pytest.raises(ValueError, match="pass the network it needs"):
        loss_of(heads, system, generator, batch, jax.random.key(3), timesteps, objective=objective)


@pytest.mark.slow
def test_the_identity_term_is_one_minus_the_arcface_cosine_on_each_target(world, judges):
    """identity_weight: each target term gains weight x (1 - mean cos) of ArcFace's embeddings of the image and
    the target, as the network computes them directly."""
    system, generator, heads, batch, timesteps = world
    _, arcface = judges
    objective = DDGIObjective(
        "ddgi_modulation", EXPERTS, perceptual_weight=0.0, ground_truth_weight=0.5, identity_weight=0.1
    )
    small = {name: value[:2] for name, value in batch.items()}
    loss = loss_of(heads, system, generator, small, jax.random.key(4), timesteps, objective=objective, arcface=arcface)
    images = average_images(generator, 2)
    identity = {name: direct_identity(arcface, images, small[name]) for name in ("diffusion_image", "image")}
    assert all(0.01 < float(v) < 1.99 for v in identity.values())
    terms = [jnp.mean(jnp.square(images - small[name])) + 0.1 * identity[name] for name in ("diffusion_image", "image")]
    np.testing.assert_allclose(loss, terms[0] + 0.5 * terms[1], rtol=1e-5)


@pytest.mark.slow
def test_the_step_takes_lpips_and_arcface_as_graphdef_and_state(world, judges):
    """The compiled step with both networks passed as (graphdef, state): its first loss is L2 + 0.8 LPIPS + 0.1
    identity against the ground truth (fresh heads: the average face), and M learns from it."""
    system, generator, heads, batch, timesteps = world
    lpips, arcface = judges
    graphdef, params, frozen_heads = nnx.split(
        heads, lambda path, v: isinstance(v, nnx.Param) and path[0] == "mapping", ...
    )
    tx = adam(3e-3)
    state = init_train_state(jax.tree.map(jnp.copy, params), tx)
    small = {name: value[:2] for name, value in batch.items()}
    objective = DDGIObjective("ddgi_mapping", EXPERTS, perceptual="lpips", identity_weight=0.1)
    state, metrics = ddgi_train_steps(
        graphdef,
        frozen_heads,
        state,
        jax.tree.map(lambda x: x[None], small),
        (nnx.split(system), nnx.split(generator)),
        timesteps,
        jax.random.key(0),
        tx,
        objective,
        (nnx.split(lpips), nnx.split(arcface)),
    )
    images, target = average_images(generator, 2), small["image"]
    expected = (
        jnp.mean(jnp.square(images - target))
        + 0.8 * direct_lpips(lpips, images, target)
        + 0.1 * direct_identity(arcface, images, target)
    )
    assert np.asarray(metrics.finite).all() and int(state.step) == 1
    np.testing.assert_allclose(np.asarray(metrics.loss)[0], expected, rtol=1e-5)
    assert (
        max(
            np.abs(np.asarray(a) - np.asarray(b)).max()
            for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params))
        )
        > 0
    )


def test_bad_perceptual_choices_and_missing_networks_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="perceptual distance 'vgg': expected one of autoencoder, lpips"):
        DDGIObjective("ddgi_mapping", EXPERTS, perceptual="vgg")
    # The stage checks the weight files first: the missing ArcFace is named, not the (also missing) cache.
    cfg = TrainConfig(
        stage="ddgi_mapping",
        gan=str(tmp_path / "gan"),
        data_dir=str(tmp_path / "cache"),
        ddgi_identity_weight=0.1,
        ddgi_arcface_weights=str(tmp_path / "model_ir_se50.pth"),
    )
    with pytest.raises(ValueError, match=r"^ddgi_arcface_weights='.*model_ir_se50.pth': no such file; set it"):
        ddgi_stage(cfg, mesh=None)
