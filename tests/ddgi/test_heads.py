"""DDGI's M and T: shapes from the config, the identity start, the attention gate, and trainability."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from scipy.special import softmax

from cdiff_jax.config import DDGIHeadsConfig
from cdiff_jax.ddgi.absmnet import content_attention
from cdiff_jax.ddgi.heads import DDGIHeads

CFG = DDGIHeadsConfig(
    num_ws=10, w_dim=16, middle=(4, 24), levels=((4, 24), (8, 12)), mapping_channels=8, modulation_channels=8
)
TOKENS = 6


def _inputs(cfg, batch=2, seed=0):
    """Drawn by numpy: eager jax.random draws of these six shapes compile for about 30 s on XLA:CPU."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
    size, channels = cfg.middle
    middle = normal(batch, size, size, channels)
    features = [normal(batch, s, s, c) for s, c in cfg.levels]
    attention = [
        jnp.asarray(softmax(3 * rng.standard_normal((batch, s * s, TOKENS)), axis=-1), jnp.float32)
        for s, _ in cfg.levels
    ]
    content = jnp.array([[False, True, True, True, False, False], [False, True, False, False, False, False]])
    w_avg = normal(cfg.w_dim)
    return middle, features, attention, content, w_avg


def test_codes_start_at_the_average_code_and_have_the_gan_shape():
    heads = DDGIHeads(CFG, rngs=nnx.Rngs(0))
    middle, features, attention, content, w_avg = _inputs(CFG)
    codes = heads(middle, features, attention, content, w_avg)
    assert codes.w.shape == (2, CFG.num_ws, CFG.w_dim)
    np.testing.assert_array_equal(codes.w, jnp.broadcast_to(w_avg, codes.w.shape))
    np.testing.assert_array_equal(codes.gamma, 1.0)
    np.testing.assert_array_equal(codes.beta, 0.0)


def test_content_attention_takes_the_strongest_content_token_per_pixel():
    probabilities = jnp.array([[[0.7, 0.1, 0.2], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.0, 0.0, 1.0]]])
    gate = content_attention(probabilities, jnp.array([[False, True, True]]))
    np.testing.assert_allclose(gate[0, ..., 0], [[0.2, 0.6], [0.4, 1.0]])
    empty = content_attention(probabilities, jnp.zeros((1, 3), bool))
    np.testing.assert_array_equal(empty, 0.0)


def test_the_local_stream_follows_where_the_text_attends_and_gating_off_ignores_it():
    heads = DDGIHeads(CFG, rngs=nnx.Rngs(0))
    middle, features, attention, content, w_avg = _inputs(CFG)
    streams = heads.modulation.streams(features, attention, content)
    total = sum(c for _, c in CFG.levels)
    assert streams.shape == (2, CFG.modulation_size, CFG.modulation_size, 2 * total)
    # Attention that moves onto a non-content token removes that pixel's local features.
    moved = [a.at[:, 0].set(jnp.eye(TOKENS)[0]) for a in attention]
    local = heads.modulation.streams(features, moved, content)[..., :total]
    first_level = CFG.levels[0][1]
    assert not np.allclose(local, streams[..., :total])
    ungated = DDGIHeads(CFG.__class__(**{**CFG.__dict__, "attention_gating": False}), rngs=nnx.Rngs(0))
    same = ungated.modulation.streams(features, attention, content)
    np.testing.assert_allclose(same, ungated.modulation.streams(features, moved, content))
    np.testing.assert_allclose(
        same[..., first_level:total],
        jax.image.resize(features[1], (2, CFG.modulation_size, CFG.modulation_size, CFG.levels[1][1]), "bilinear"),
        rtol=1e-6,
    )


def test_a_few_adam_steps_fit_m_and_then_t_to_a_target_code():
    heads = DDGIHeads(CFG, rngs=nnx.Rngs(1))
    middle, features, attention, content, w_avg = _inputs(CFG)
    target = jnp.asarray(np.random.default_rng(9).standard_normal((2, CFG.num_ws, CFG.w_dim)), jnp.float32)
    graphdef, state = nnx.split(heads)

    def loss(state, trained):
        codes = nnx.merge(graphdef, state)(middle, features, attention, content, w_avg)
        return jnp.mean((codes.w - target) ** 2)

    def fit(state, part, steps=40):
        params = nnx.state(nnx.merge(graphdef, state), nnx.All(nnx.Param, nnx.PathContains(part)))
        tx = optax.adam(3e-2)
        opt = tx.init(params)

        @jax.jit
        def step(state, params, opt):
            def objective(p):
                return loss(nnx.merge_state(state, p), part)

            value, grads = jax.value_and_grad(objective)(params)
            updates, opt = tx.update(grads, opt, params)
            return optax.apply_updates(params, updates), opt, value

        for _ in range(steps):
            params, opt, value = step(state, params, opt)
        return nnx.merge_state(state, params), float(value)

    start = float(loss(state, None))
    after_m, loss_m = fit(state, "mapping")
    after_t, loss_t = fit(after_m, "modulation")
    assert loss_m < 0.5 * start
    assert loss_t < loss_m
    # Stage 2 leaves M untouched.
    untouched = nnx.state(nnx.merge(graphdef, after_t), nnx.PathContains("mapping"))
    jax.tree.map(
        np.testing.assert_array_equal, untouched, nnx.state(nnx.merge(graphdef, after_m), nnx.PathContains("mapping"))
    )


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(levels=()), "at least one"),
        (dict(middle=(6, 8)), "powers of two"),
        (dict(num_ws=0), "positive"),
    ],
)
def test_bad_configs_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        DDGIHeadsConfig(**{**CFG.__dict__, **bad})
