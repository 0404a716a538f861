"""Mask encoder parity: label maps -> one-hot -> context, as the reference preprocesses them."""

import jax.numpy as jnp
import numpy as np
from conftest import assert_close_rel, reference_system

from cdiff_jax.data.masks import masks_to_onehot


def test_label_maps_to_context(fixtures_root):
    io = np.load(fixtures_root / "mask_unet/io.npz")
    encoder = reference_system(fixtures_root, "mask").modalities["mask"].encoder
    one_hot = masks_to_onehot(list(io["label_map_128"]), size=encoder.cfg.mask_size)
    np.testing.assert_array_equal(one_hot, io["mask_onehot"])
    assert_close_rel(encoder(jnp.asarray(one_hot)), io["context"], name="context")
