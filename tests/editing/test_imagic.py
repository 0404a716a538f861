"""Imagic's two stages on the tiny system: the reference's step, chunking-invariance, and what each changes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import with_random_zero_layers
from flax import nnx

from cdiff_jax.config import load_config
from cdiff_jax.diffusion.schedule import make_schedule
from cdiff_jax.editing.imagic import ImagicSettings, _adam_iterations, finetune_expert, imagic_loss, optimise_embedding
from cdiff_jax.noise import normal
from cdiff_jax.optimization import ACCELERATOR, CPU, POLICY_ENV, NonFiniteStep, adam
from cdiff_jax.system import init_system

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup():
    cfg = load_config("tiny_system.py:text")
    system = init_system(cfg, seed=0)
    z0 = normal(jax.random.key(1), (1, cfg.latent_size, cfg.latent_size, cfg.autoencoder.embed_dim))
    context = normal(jax.random.key(2), (1, 77, 16))
    return with_random_zero_layers(system.modalities["text"].expert), make_schedule(cfg.schedule), z0, context


@nnx.jit
def _losses(expert, schedule, z0, context, keys):
    return jax.vmap(lambda key: imagic_loss(expert, schedule, z0, context, key))(keys)


def mean_loss(expert, schedule, z0, context, n=64):
    """The loss at keys 100..100+n-1, compiled once for every expert state and context (eagerly: ~7 s a mean)."""
    return float(np.mean(_losses(expert, schedule, z0, context, jax.vmap(jax.random.key)(jnp.arange(100, 100 + n)))))


def test_first_embedding_step_is_adam_on_the_loss_gradient(setup):
    expert, schedule, z0, context = setup
    key = jax.random.key(7)
    settings = ImagicSettings(embedding_lr=1e-3, embedding_iterations=1, chunk=1)
    optimised, losses = optimise_embedding(expert, schedule, z0, context, key, settings)
    # Iteration 0 draws from fold_in(key, 0); Adam's first step is lr * g / (|g| + eps) per element.
    loss, g = jax.value_and_grad(lambda c: imagic_loss(expert, schedule, z0, c, jax.random.fold_in(key, 0)))(context)
    np.testing.assert_allclose(losses[0], loss, rtol=1e-5)
    np.testing.assert_allclose(optimised, context - 1e-3 * g / (jnp.abs(g) + 1e-8), atol=1e-6)


# Five iterations in chunks of 2 (two full chunks and a remainder), or one rolled call: fewer unrolled copies to
# compile than seven in chunks of 3.
@pytest.mark.parametrize("chunks", [(2, "cpu"), (5, "accelerator")])
def test_chunking_does_not_change_the_result(setup, chunks, monkeypatch):
    expert, schedule, z0, context = setup
    key = jax.random.key(3)
    one_call, losses_one = optimise_embedding(
        expert, schedule, z0, context, key, ImagicSettings(embedding_iterations=5, chunk=5)
    )
    chunk, policy = chunks  # the accelerator policy's rolled scan, on this backend
    monkeypatch.setenv(POLICY_ENV, policy)
    chunked, losses = optimise_embedding(
        expert, schedule, z0, context, key, ImagicSettings(embedding_iterations=5, chunk=chunk)
    )
    np.testing.assert_allclose(losses, losses_one, rtol=1e-5)
    np.testing.assert_allclose(chunked, one_call, atol=1e-6)


def test_stage_a_fits_the_embedding_and_keeps_the_expert(setup):
    expert, schedule, z0, context = setup
    before = jax.tree.map(np.asarray, nnx.state(expert))
    optimised, losses = optimise_embedding(
        expert,
        schedule,
        z0,
        context,
        jax.random.key(4),
        ImagicSettings(embedding_lr=1e-2, embedding_iterations=40, chunk=2),
    )
    assert losses.shape == (40,) and np.isfinite(losses).all()
    assert mean_loss(expert, schedule, z0, optimised) < mean_loss(expert, schedule, z0, context)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, nnx.state(expert)), before)


def test_stage_b_fits_the_expert_for_a_fixed_context(setup):
    expert, schedule, z0, context = setup
    tuned, losses = finetune_expert(
        expert,
        schedule,
        z0,
        context,
        jax.random.key(5),
        ImagicSettings(finetune_lr=1e-3, finetune_iterations=40, chunk=2),
    )
    assert losses.shape == (40,)
    graphdef = nnx.graphdef(expert)
    assert mean_loss(nnx.merge(graphdef, tuned), schedule, z0, context) < mean_loss(expert, schedule, z0, context)
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), nnx.state(expert), tuned)
    assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize("stage", ["embedding", "finetune"])
def test_a_non_finite_loss_stops_the_stage_with_the_last_good_state(setup, stage):
    expert, schedule, z0, context = setup
    bad = z0.at[0, 0, 0, 0].set(jnp.nan)
    # The learning rates and chunk of the two fitting tests above: the same compiled programs.
    settings = ImagicSettings(
        embedding_lr=1e-2, embedding_iterations=2, finetune_lr=1e-3, finetune_iterations=2, chunk=2
    )
    run = optimise_embedding if stage == "embedding" else finetune_expert
    with pytest.raises(NonFiniteStep, match=f"stage '{stage}': non-finite loss or gradient at iteration 1;") as caught:
        run(expert, schedule, bad, context, jax.random.key(6), settings)
    assert caught.value.step == 1
    unchanged = context if stage == "embedding" else nnx.state(expert)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, unchanged), caught.value.state)


def region_end(text: str, open_brace: int) -> int:
    """Index just past the brace that closes the one at `open_brace`."""
    depth = 0
    for i in range(open_brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    raise ValueError("unbalanced braces")


def loops_with_convolutions(stablehlo: str) -> int:
    """How many while loops of a lowered program contain a convolution (the PRNG's own small loops do not)."""
    found = 0
    for match in re.finditer(r"stablehlo\.while", stablehlo):
        cond_end = region_end(stablehlo, stablehlo.index("{", match.end()))
        body_end = region_end(stablehlo, stablehlo.index("{", cond_end))
        found += "stablehlo.convolution" in stablehlo[match.end() : body_end]
    return found


@pytest.mark.parametrize("count", [1, 3])
def test_an_unrolled_chunk_compiles_without_a_loop_even_for_one_iteration(setup, count):
    # XLA:CPU runs gradients inside a while loop far off its fast path, and a length-1 scan lowers to
    # a one-trip loop unless told to unroll everything (bench/edit_iterations.py: 37 s vs 4.7 s per
    # iteration at the released 256 size).
    expert, schedule, z0, context = setup
    graphdef, params = nnx.split(expert)

    def lowered(policy):
        return _adam_iterations.lower(
            graphdef,
            context,
            params,
            adam(1e-3).init(context),
            schedule,
            z0,
            jax.random.key(0),
            jnp.int32(0),
            stage="embedding",
            learning_rate=1e-3,
            count=count,
            policy=policy,
        ).as_text()

    assert CPU.unroll and not ACCELERATOR.unroll
    assert loops_with_convolutions(lowered(CPU)) == 0
    assert loops_with_convolutions(lowered(ACCELERATOR)) == 1
