"""noise.normal is jax.random.normal's draw whatever the shape: the same random bits, and the same values up to
the last bit XLA:CPU's vectorisation of the elementwise transform may change (it differs between CPUs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdiff_jax.noise import normal, normals


@pytest.mark.parametrize("shape", [(), (5,), (3, 7), (2, 4, 4, 3), (1, 2, 3, 4, 5)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_normal_draws_what_jax_random_normal_draws(shape, dtype):
    key = jax.random.fold_in(jax.random.key(3), len(shape))
    size = int(np.prod(shape))
    np.testing.assert_array_equal(jax.random.bits(key, (size,)).reshape(shape), jax.random.bits(key, shape))
    got = np.asarray(normal(key, shape, dtype), np.float32)
    want = np.asarray(jax.random.normal(key, shape, dtype), np.float32)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2 * float(jnp.finfo(dtype).eps), atol=1e-7)


def test_normal_under_jit_and_vmap_matches_too():
    keys = jax.random.split(jax.random.key(0), 3)
    got = jax.jit(jax.vmap(lambda k: normal(k, (4, 6))))(keys)
    want = jax.vmap(lambda k: jax.random.normal(k, (4, 6)))(keys)
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=1e-7)


def test_normals_cuts_independent_arrays_of_the_shapes_from_one_draw():
    shapes = [(2, 3), (4,), (2, 2, 2)]
    arrays = normals(jax.random.key(1), shapes)
    assert [a.shape for a in arrays] == shapes
    flat = np.concatenate([np.ravel(a) for a in arrays])
    np.testing.assert_array_equal(flat, jax.random.normal(jax.random.key(1), (flat.size,)))
    assert len(np.unique(flat)) == flat.size  # no value repeated between the arrays
