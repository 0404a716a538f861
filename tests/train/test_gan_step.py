"""StyleGAN2's training iteration: G_ema's schedule, style mixing, lazy R1's optimizer, the guard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cdiff_jax.config import StyleGAN2Config, StyleGAN2DiscriminatorConfig
from cdiff_jax.nn.stylegan2 import Generator
from cdiff_jax.nn.stylegan2_discriminator import Discriminator
from cdiff_jax.train.gan_step import GANObjective, ema_beta, gan_train_steps, init_gan_state, mixed_ws, optimizers

TINY = StyleGAN2Config(z_dim=8, w_dim=8, img_resolution=8, mapping_layers=1, channel_base=32, channel_max=8)
BATCH = 4


def objective(**changes):
    settings = dict(
        batch=BATCH,
        r1_gamma=1.0,
        r1_interval=16,
        style_mixing=0.9,
        ema_kimg=10.0,
        ema_rampup=0.05,
        w_avg_beta=TINY.w_avg_beta,
    )
    return GANObjective(**{**settings, **changes})


@pytest.mark.parametrize("images_seen", [0, 32, 3200, 10**6])
@pytest.mark.parametrize("rampup", [0.05, None])
def test_ema_beta_is_the_official_half_life_with_rampup(images_seen, rampup):
    ema_nimg = 10_000 if rampup is None else min(10_000, images_seen * rampup)
    expected = 0.5 ** (32 / max(ema_nimg, 1e-8))
    got = float(ema_beta(objective(batch=32, ema_rampup=rampup), jnp.asarray(images_seen)))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-30)


def test_style_mixing_takes_the_rows_from_one_cutoff_on_from_a_second_code():
    mapping = lambda z: 2.0 * z  # noqa: E731 -- any injective mapping shows which code a row came from
    z, z_mix = jnp.ones((3, 8)), -jnp.ones((3, 8))
    cutoffs = []
    for seed in range(40):
        ws, w_mean = mixed_ws(mapping, jax.random.key(seed), z, z_mix, 10, 0.5)
        ws = np.asarray(ws)
        first = np.all(ws == 2.0, axis=(0, 2))  # rows of z
        cutoff = int(np.argmin(first)) if not first.all() else 10
        assert first[:cutoff].all() and np.all(ws[:, cutoff:] == -2.0)  # one switch, for the whole batch
        np.testing.assert_array_equal(w_mean, np.full(8, 2.0))  # the unmixed code's mean
        cutoffs.append(cutoff)
    mixed = [c for c in cutoffs if c < 10]
    assert 0.25 < len(mixed) / len(cutoffs) < 0.75 and min(mixed) >= 1 and len(set(mixed)) > 2
    ws, _ = mixed_ws(mapping, jax.random.key(0), z, z_mix, 10, 0.0)
    assert np.all(np.asarray(ws) == 2.0)


def test_the_discriminator_runs_lazy_r1_with_scaled_rate_and_betas():
    g_tx, d_tx = optimizers(0.01, 16)
    ratio = 16 / 17
    g1, g2 = jnp.array([1.0, -2.0]), jnp.array([3.0, 0.5])
    params = jnp.zeros(2)
    for tx, lr, b2 in ((g_tx, 0.01, 0.99), (d_tx, 0.01 * ratio, 0.99**ratio)):
        opt = tx.init(params)
        u1, opt = tx.update(g1, opt, params)
        u2, opt = tx.update(g2, opt, params)
        v1 = (1 - b2) * g1**2
        v2 = b2 * v1 + (1 - b2) * g2**2  # beta1 = 0: the first moment is the gradient itself
        np.testing.assert_allclose(u1, -lr * g1 / (np.sqrt(v1 / (1 - b2)) + 1e-8), rtol=1e-5)
        np.testing.assert_allclose(u2, -lr * g2 / (np.sqrt(v2 / (1 - b2**2)) + 1e-8), rtol=1e-5)


@pytest.fixture(scope="module")
def setup():
    g_graphdef, g_params, g_buffers = nnx.split(Generator(TINY, rngs=nnx.Rngs(0)), nnx.Param, ...)
    d_cfg = StyleGAN2DiscriminatorConfig(img_resolution=8, channel_base=32, channel_max=8, mbstd_group_size=4)
    d_graphdef, d_params = nnx.split(Discriminator(d_cfg, rngs=nnx.Rngs(1)))
    g_tx, d_tx = optimizers(0.002, 16)
    real = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, BATCH, 8, 8, 3)), jnp.float32)

    def state():
        return jax.tree.map(jnp.copy, init_gan_state(g_params, g_buffers, d_params, g_tx, d_tx))  # runs donate it

    def run(state, images, with_r1):
        return gan_train_steps(
            g_graphdef, d_graphdef, state, {"image": images}, jax.random.key(0), g_tx, d_tx, objective(), with_r1
        )

    return state, run, real


@pytest.mark.slow
def test_an_r1_call_penalises_its_first_iteration_only_and_tracks_w_avg(setup):
    make_state, run, real = setup
    start = make_state()
    w_avg_before = np.asarray(start.g_buffers["mapping"]["w_avg"][...])
    state, metrics = run(start, real, True)
    assert np.asarray(metrics.finite).all() and int(state.step) == 2
    penalty = np.asarray(metrics.terms["r1_penalty"])
    assert np.isfinite(penalty[0]) and penalty[0] > 0 and np.isnan(penalty[1])
    w_avg = np.asarray(state.g_buffers["mapping"]["w_avg"][...])
    assert np.all(w_avg_before == 0) and np.isfinite(w_avg).all() and np.abs(w_avg).max() > 0
    state, metrics = run(state, real, False)
    assert np.isnan(np.asarray(metrics.terms["r1_penalty"])).all() and int(state.step) == 4


@pytest.mark.slow
def test_g_ema_starts_as_a_copy_and_then_lags(setup):
    make_state, run, real = setup
    state, _ = run(make_state(), real[:1], False)  # iteration 0: beta = 0
    for ema, param in zip(jax.tree.leaves(state.g_ema), jax.tree.leaves(state.g_params)):
        np.testing.assert_array_equal(ema, param)
    state, _ = run(state, real[:1], False)  # then 0 < beta < 1: between the old average and the new parameters
    lags = [
        np.abs(np.asarray(e) - np.asarray(p)).max()
        for e, p in zip(jax.tree.leaves(state.g_ema), jax.tree.leaves(state.g_params))
    ]
    assert max(lags) > 0


@pytest.mark.slow
def test_a_non_finite_batch_leaves_the_state_as_it_was(setup):
    make_state, run, real = setup
    state, metrics = run(make_state(), real.at[1].set(jnp.nan), True)
    assert np.asarray(metrics.finite).tolist() == [True, False] and int(state.step) == 1
