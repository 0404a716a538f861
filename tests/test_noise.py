"""noise.normal is jax.random.normal value for value, whatever the shape."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdiff_jax.noise import normal, normals


@pytest.mark.parametrize("shape", [(), (5,), (3, 7), (2, 4, 4, 3), (1, 2, 3, 4, 5)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_normal_draws_what_jax_random_normal_draws(shape, dtype):
    key = jax.random.fold_in(jax.random.key(3), len(shape))
    np.testing.assert_array_equal(np.asarray(normal(key, shape, dtype), np.float32),
                                  np.asarray(jax.random.normal(key, shape, dtype), np.float32))


def test_normal_under_jit_and_vmap_matches_too():
    keys = jax.random.split(jax.random.key(0), 3)
    got = jax.jit(jax.vmap(lambda k: normal(k, (4, 6))))(keys)
    want = jax.vmap(lambda k: jax.random.normal(k, (4, 6)))(keys)
    np.testing.assert_array_equal(got, want)


def test_normals_cuts_independent_arrays_of_the_shapes_from_one_draw():
    shapes = [(2, 3), (4,), (2, 2, 2)]
    arrays = normals(jax.random.key(1), shapes)
    assert [a.shape for a in arrays] == shapes
    flat = np.concatenate([np.ravel(a) for a in arrays])
    np.testing.assert_array_equal(flat, jax.random.normal(jax.random.key(1), (flat.size,)))
    assert len(np.unique(flat)) == flat.size  # no value repeated between the arrays
