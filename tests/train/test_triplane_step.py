"""The triplane stage's objective: the images' squared error plus the weighted absolute error of the rendered
depth against the toy world's."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cdiff_jax.config import load_config
from cdiff_jax.data import toy_faces_3d
from cdiff_jax.train.triplane_step import AutoDecoder, triplane_loss

TINY = load_config("tiny_eg3d.py:8")


def test_the_depth_term_adds_its_weighted_absolute_error_and_trains_the_geometry():
    model = AutoDecoder(TINY, identities=3, rngs=nnx.Rngs(0))
    source, inputs = toy_faces_3d.ToyViews(seed=4, identities=3), toy_faces_3d.ViewInputs(8)
    records = [inputs.map(source[i]) for i in range(3)]
    batch = {name: jnp.asarray(np.stack([r[name] for r in records])) for name in records[0]}
    key = jax.random.key(1)
    seen = model.views(batch["identity"], batch["camera"], key)
    image_error = float(jnp.mean(jnp.square(seen.image - batch["image"])))
    depth_error = float(jnp.mean(jnp.abs(seen.depth - batch["depth"])))
    assert depth_error > 0.01  # random weights do not render the world's geometry
    np.testing.assert_allclose(float(triplane_loss(model, batch, key)), image_error, rtol=1e-6)
    np.testing.assert_allclose(float(triplane_loss(model, batch, key, 0.5)), image_error + 0.5 * depth_error, rtol=1e-6)

    def decoder_gradient(weight):
        grads = nnx.grad(lambda m: triplane_loss(m, batch, key, weight))(model)
        return jax.tree.leaves(grads.generator.decoder)

    # the depth term reaches the density decoder: its gradient differs from the image term's alone
    assert any(not np.allclose(a, b) for a, b in zip(decoder_gradient(0.0), decoder_gradient(1.0)))
