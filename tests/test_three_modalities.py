"""A system of three modalities (text, mask, scribble) trains in both stages and samples in one program."""

import itertools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cdiff_jax.config import load_config
from cdiff_jax.data.masks import resize_label_map
from cdiff_jax.data.pipeline import make_loader
from cdiff_jax.data.toy_faces import example_seed, make_example
from cdiff_jax.diffusion.collaboration import rule_for_mode
from cdiff_jax.diffusion.schedule import make_schedule
from cdiff_jax.modalities import kind_entry
from cdiff_jax.noise import normal
from cdiff_jax.optimization import adam
from cdiff_jax.sampling import SamplerSettings, sample
from cdiff_jax.system import init_system
from cdiff_jax.train.step import init_train_state, train_steps, trainable_filter, trainable_prefixes

pytestmark = pytest.mark.slow

TINY = pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny_system.py"
BATCH = 2
STEPS = 3  # zero-initialised output layers: step n's gradient reaches n layers deep into a residual branch


@pytest.fixture(scope="module")
def batches():
    """STEPS pipeline batches of toy faces at the tiny system's 32x32, every modality's field included."""
    examples = []
    for i in range(STEPS * BATCH):
        face = make_example(example_seed(0, i))
        image = face["image"].reshape(32, 2, 32, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        examples.append(
            {
                "image": image,
                "mask": resize_label_map(face["labels"], 32),
                "caption": face["caption"],
                "scribble": face["scribble"],
            }
        )
    loader = make_loader(examples, global_batch=BATCH, seed=0, process_index=0, process_count=1, shuffle=False)
    return [jax.tree.map(lambda x: x[None], b) for b in itertools.islice(loader, STEPS)]  # [k=1, B, ...] each


def _train(system, stage, modality, batches):
    """STEPS optimizer steps of a stage; returns the system, the parameters before and after, and the losses."""
    cfg = system.cfg
    graphdef, params, frozen = nnx.split(system, trainable_filter(trainable_prefixes(stage, cfg, modality)), ...)
    before = jax.tree.map(lambda x: np.array(x, copy=True), params)  # train_steps donates the state
    # Adam without weight decay moves a parameter only where its gradient is non-zero.
    tx, schedule = adam(1e-3, weight_decay=0.0), make_schedule(cfg.schedule)
    state = init_train_state(params, tx)
    losses = []
    for batch in batches:
        state, metrics = train_steps(graphdef, frozen, state, batch, schedule, jax.random.key(0), tx)
        assert bool(metrics.finite.all())
        losses.append(float(metrics.loss[0]))
    assert int(state.step) == STEPS
    return nnx.merge(graphdef, state.params, frozen), before, state.params, losses


def _moved(before, after, path):
    """Every parameter under `path` changed."""
    flat_before, flat_after = dict(nnx.to_flat_state(before)), dict(nnx.to_flat_state(after))
    keys = [k for k in flat_after if k[: len(path)] == path]
    assert keys, path
    return all(
        not np.array_equal(np.asarray(flat_before[k].get_value()), np.asarray(flat_after[k].get_value())) for k in keys
    )


def test_scribble_expert_stage_trains(batches):
    cfg = load_config(f"{TINY}:scribble")
    assert "scribble" in batches[0] and batches[0]["scribble"].shape == (1, BATCH, 3, 32 * 32)
    _, before, after, losses = _train(init_system(cfg, seed=0), "expert", "scribble", batches)
    assert all(np.isfinite(losses))
    assert _moved(before, after, ("modalities", "scribble"))  # all of the expert and the scribble's encoder


def test_collab_stage_trains_and_three_modalities_sample(batches):
    cfg = load_config(f"{TINY}:three")
    system = init_system(cfg, seed=0)
    # Fresh experts all predict zero (their output convs start at zero), which leaves the diffusers nothing
    # to weigh; random output convs stand in for trained experts that disagree.
    for i, name in enumerate(cfg.modalities):
        kernel = system.modalities[name].expert.final_conv.kernel
        kernel.set_value(0.05 * normal(jax.random.key(10 + i), kernel.get_value().shape))
    system, before, after, losses = _train(system, "collab", None, batches)
    assert all(np.isfinite(losses))
    for name in cfg.modalities:
        assert _moved(before, after, ("modalities", name, "diffuser"))

    kinds = {name: m.kind for name, m in cfg.modalities.items()}
    conditions = {name: jnp.asarray(batches[0][kind_entry(kind).batch_key][0]) for name, kind in kinds.items()}
    rule = rule_for_mode("released", kinds, 2.0, cfg.schedule.timesteps)
    assert rule.decayed == ("mask", "scribble")
    settings = SamplerSettings(steps=2, reweighting=rule, record=True)
    x_T = normal(jax.random.key(1), (BATCH, cfg.latent_size, cfg.latent_size, 3))
    graphdef, state = nnx.split(system)
    result = sample(graphdef, state, conditions, x_T, jax.random.key(2), settings)
    weights = np.asarray(result.trajectory.weights)
    assert weights.shape == (2, 3, BATCH, cfg.latent_size, cfg.latent_size, 1)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    assert (weights > 0).all() and weights[:, 2].std() > 0  # the scribble's weight varies per pixel
    assert result.images.shape == (BATCH, 32, 32, 3) and bool(jnp.isfinite(result.images).all())
