"""Shared layers: blocked attention must equal plain softmax attention exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdiff_jax.nn import layers
from cdiff_jax.nn.layers import QUERY_BLOCK, multi_head_attention


def plain_attention(q, k, v, heads):
    b, n, inner = q.shape
    d = inner // heads
    qh, kh, vh = (x.reshape(b, x.shape[1], heads, d) for x in (q, k, v))
    scores = jnp.einsum("bqhd,bkhd->bhqk", qh, kh) * d**-0.5
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), vh).reshape(b, n, inner)


@pytest.mark.parametrize("tokens,keys,heads,width", [(4 * QUERY_BLOCK, 4 * QUERY_BLOCK, 32, 2),
                                                     (2 * QUERY_BLOCK, 77, 4, 8), (QUERY_BLOCK, 19, 2, 4),
                                                     (3 * QUERY_BLOCK + 5, 7, 1, 16)])
def test_blocked_attention_equals_plain(tokens, keys, heads, width, monkeypatch):
    monkeypatch.setattr(layers, "BLOCKED_MIN_SCORES", 1)  # force the blocked path at small sizes
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, tokens, heads * width)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, keys, heads * width)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, keys, heads * width)), jnp.float32)
    ours = jax.jit(multi_head_attention, static_argnums=3)(q, k, v, heads)
    np.testing.assert_allclose(ours, plain_attention(q, k, v, heads), rtol=2e-6, atol=2e-6)
