"""The scribble encoder: one context token per stroke width, a shared linear map of its flattened map."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from cdiff_jax.config import ScribbleEncoderConfig
from cdiff_jax.nn.scribble_encoder import ScribbleEncoder


def test_each_token_is_the_linear_map_of_its_flattened_map():
    cfg = ScribbleEncoderConfig(scribble_size=8, stroke_widths=(1, 3), context_dim=5)
    encoder = ScribbleEncoder(cfg, rngs=nnx.Rngs(0))
    tokens = np.random.default_rng(0).integers(0, 2, (2, 2, 64)).astype(np.float32)
    out = encoder(jnp.asarray(tokens))
    assert out.shape == (2, 2, 5)
    expected = tokens @ np.asarray(encoder.linear.kernel) + np.asarray(encoder.linear.bias)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
