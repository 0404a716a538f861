"""The autoencoder stage's step against a direct transcription of LDM's objective with full gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cdiff_jax.config import load_config
from cdiff_jax.nn.discriminator import DiscriminatorConfig, PatchDiscriminator
from cdiff_jax.optimization import adam
from cdiff_jax.system import init_system
from cdiff_jax.train.autoencoder_step import (
    ADAM_BETAS,
    AutoencoderObjective,
    autoencoder_train_steps,
    init_autoencoder_state,
)
from cdiff_jax.train.step import trainable_filter, trainable_prefixes

# Plain gradient steps for the comparison: Adam's first step is lr * sign(g), which turns float noise in
# the gradients that are zero in exact arithmetic (key biases, biases before a GroupNorm) into +-lr.
COMPARE_TX = optax.sgd(1.0)


@pytest.fixture(scope="module")
def parts():
    system = init_system(load_config("tiny_system.py:text"), seed=0)
    graphdef, params, frozen = nnx.split(system, trainable_filter(trainable_prefixes("autoencoder", system.cfg)), ...)
    disc_graphdef, disc_params = nnx.split(
        PatchDiscriminator(DiscriminatorConfig(filters=8, layers=2), rngs=nnx.Rngs(1))
    )
    images = jax.random.uniform(jax.random.key(2), (1, 4, 32, 32, 3), minval=-1, maxval=1)
    return graphdef, params, frozen, disc_graphdef, disc_params, images


def direct_step(parts, objective, key, tx):
    """One generator and one discriminator update written as LDM writes them, gradients by jax.grad; with
    `objective.accumulation`, as Lightning accumulates them (the step's docstring)."""
    graphdef, params, frozen, disc_graphdef, disc_params, images = parts
    new_params, new_disc_params, d_weight = _direct_step(
        graphdef, disc_graphdef, objective, tx, params, frozen, disc_params, images, key
    )
    return new_params, new_disc_params, float(d_weight)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _direct_step(graphdef, disc_graphdef, objective, tx, params, frozen, disc_params, images, key):
    """`direct_step` as one program: run op by op, each of the four gradients' many operations compiles alone."""
    count = objective.accumulation
    micro = images[0].reshape(count, -1, *images.shape[2:])
    k_gen, k_disc = jax.random.split(jax.random.fold_in(key, 0))
    keys = (lambda k, i: k) if count == 1 else jax.random.fold_in  # Lightning draws anew per micro-batch

    def reconstruct(p, x, k):
        ae = nnx.merge(graphdef, p, frozen).autoencoder
        mean, logvar = ae.encode(x)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(k, mean.shape)
        kl = 0.5 * jnp.sum(mean**2 + jnp.exp(logvar) - 1 - logvar) / x.shape[0]
        return ae.decode(z), kl

    def last_kernel(grads):
        return grads["autoencoder"]["decoder"]["conv_out"]["kernel"].get_value()

    grads, d_weights = [], []
    for i, x in enumerate(micro):  # each micro-batch's backward, its adaptive weight its own

        def parts_of_loss(p, x=x, i=i):
            recon, kl = reconstruct(p, x, keys(k_gen, i))
            nll = jnp.sum(jnp.abs(x - recon)) / x.shape[0]
            g = -jnp.mean(nnx.merge(disc_graphdef, disc_params)(recon))
            return nll, kl, g

        nll_grads = jax.grad(lambda p: parts_of_loss(p)[0])(params)
        g_grads = jax.grad(lambda p: parts_of_loss(p)[2])(params)
        d_weight = jnp.linalg.norm(last_kernel(nll_grads)) / (jnp.linalg.norm(last_kernel(g_grads)) + 1e-4)
        d_weight = jnp.clip(d_weight, 0, 1e4) * objective.disc_weight

        def total(p, parts_of_loss=parts_of_loss, d_weight=d_weight):
            nll, kl, g = parts_of_loss(p)
            return (nll + objective.kl_weight * kl + d_weight * g) / count  # Lightning scales the loss

        grads.append(jax.grad(total)(params))
        d_weights.append(d_weight)
    grads = jax.tree.map(lambda *g: sum(g), *grads)
    updates, _ = tx.update(grads, tx.init(params), params)
    new_params = optax.apply_updates(params, updates)

    d_grads = []
    for i, x in enumerate(micro):  # the discriminator's turn of each micro-batch; the last after the update
        fresh = reconstruct(new_params if i == count - 1 else params, x, keys(k_disc, i))[0]

        def hinge(dp, x=x, fresh=fresh):
            disc = nnx.merge(disc_graphdef, dp)
            return 0.5 * (jnp.mean(jax.nn.relu(1 - disc(x))) + jnp.mean(jax.nn.relu(1 + disc(fresh)))) / count

        d_grads.append(jax.grad(hinge)(disc_params))
    d_grads = jax.tree.map(lambda *g: sum(g), *d_grads)
    d_updates, _ = tx.update(d_grads, tx.init(disc_params), disc_params)
    return new_params, optax.apply_updates(disc_params, d_updates), sum(d_weights) / count


def our_step(parts, objective, key, tx):
    graphdef, params, frozen, disc_graphdef, disc_params, images = parts
    state = init_autoencoder_state(params, tx, disc_params, tx)
    state = jax.tree.map(jnp.copy, state)  # the step donates its state
    return autoencoder_train_steps(
        graphdef, frozen, state, {"image": images}, key, tx, disc_graphdef, tx, None, objective
    )


@pytest.mark.slow
@pytest.mark.parametrize("accumulation", [1, 2])
def test_matches_ldm_objective_with_the_discriminator_on(parts, accumulation):
    objective = AutoencoderObjective(perceptual_weight=0.0, disc_start=0, accumulation=accumulation)
    key = jax.random.key(7)
    state, metrics = our_step(parts, objective, key, COMPARE_TX)
    params, disc_params, d_weight = direct_step(parts, objective, key, COMPARE_TX)
    assert bool(metrics.finite[0]) and int(state.step) == 1
    np.testing.assert_allclose(float(metrics.terms["d_weight"][0]), d_weight, rtol=1e-4)
    steps = [
        (np.asarray(ours - before), np.asarray(ref - before))
        for ours, ref, before in [
            *zip(jax.tree.leaves(state.params), jax.tree.leaves(params), jax.tree.leaves(parts[1])),
            *zip(jax.tree.leaves(state.disc_params), jax.tree.leaves(disc_params), jax.tree.leaves(parts[4])),
        ]
    ]
    # float32 noise scales with the largest gradient: it is all there is where the exact gradient is 0.
    noise = 1e-7 * max(np.abs(ref).max() for _, ref in steps)
    for ours_step, ref_step in steps:
        assert np.abs(ours_step - ref_step).max() <= 1e-4 * np.abs(ref_step).max() + noise
    assert (
        max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(disc_params), jax.tree.leaves(parts[4]))) > 1e-3
    )


@pytest.mark.slow
def test_before_disc_start_only_the_autoencoder_learns(parts):
    state, metrics = our_step(
        parts,
        AutoencoderObjective(perceptual_weight=0.0, disc_start=5),
        jax.random.key(3),
        adam(1e-3, betas=ADAM_BETAS),
    )
    for ours, before in zip(jax.tree.leaves(state.disc_params), jax.tree.leaves(parts[4])):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(before))
    assert all(float(metrics.terms[k][0]) == 0 for k in ("g_loss", "d_weight", "disc_loss"))
    assert int(state.disc_opt_state[0].count) == 1  # torch's Adam counts the zero-gradient step too
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(parts[1]))]
    assert all(changed)


@pytest.mark.slow
def test_a_non_finite_loss_leaves_both_networks_unchanged(parts):
    graphdef, params, frozen, disc_graphdef, disc_params, images = parts
    bad = (*parts[:5], images.at[0, 0, 0, 0, 0].set(jnp.nan))
    state, metrics = our_step(
        bad, AutoencoderObjective(perceptual_weight=0.0, disc_start=0), jax.random.key(3), adam(1e-3, betas=ADAM_BETAS)
    )
    assert not bool(metrics.finite[0]) and int(state.step) == 0
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), state.params)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, disc_params), state.disc_params)
