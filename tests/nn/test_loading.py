"""Filling a module from an official state dict: layouts converted, float16 upcast exactly, problems named."""

import numpy as np
import pytest
from flax import nnx

from cdiff_jax.nn.loading import load_state_dict, variable_paths
from cdiff_jax.weights.state_dict_io import CheckpointReadError


class Tiny(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(2, 3, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(3, use_running_average=True, rngs=rngs)


KEYS = {
    "conv.kernel": "c.weight",
    "conv.bias": "c.bias",
    "bn.scale": "n.weight",
    "bn.bias": "n.bias",
    "bn.mean": "n.running_mean",
    "bn.var": "n.running_var",
}


def official(rng):
    return {
        "c.weight": rng.normal(size=(3, 2, 3, 3)).astype(np.float16),
        "c.bias": np.arange(3, dtype=np.float32),
        "n.weight": np.ones(3, np.float32),
        "n.bias": np.zeros(3, np.float32),
        "n.running_mean": np.full(3, 0.5, np.float32),
        "n.running_var": np.full(3, 2.0, np.float32),
        "n.num_batches_tracked": np.array(7, np.int64),
    }


def test_every_variable_is_read_in_our_layout():
    tensors = official(np.random.default_rng(0))
    model = load_state_dict(
        nnx.eval_shape(lambda: Tiny(rngs=nnx.Rngs(0))),
        tensors,
        KEYS,
        source="tiny.pth",
        network="Tiny",
        ignored=lambda key: key.endswith("num_batches_tracked"),
    )
    assert sorted(variable_paths(model)) == sorted(KEYS)
    kernel = np.asarray(model.conv.kernel[...])
    assert kernel.dtype == np.float32
    np.testing.assert_array_equal(kernel, np.transpose(tensors["c.weight"], (2, 3, 1, 0)).astype(np.float32))
    np.testing.assert_array_equal(model.bn.var[...], tensors["n.running_var"])


def test_missing_misshaped_and_unused_keys_are_named_in_one_line():
    tensors = official(np.random.default_rng(0))
    del tensors["c.bias"]
    tensors["n.weight"] = np.ones(4, np.float32)
    tensors["encoder.w"] = np.ones(1, np.float32)
    with pytest.raises(CheckpointReadError) as error:
        load_state_dict(
            nnx.eval_shape(lambda: Tiny(rngs=nnx.Rngs(0))), tensors, KEYS, source="tiny.pth", network="Tiny"
        )
    message = str(error.value)
    assert message.startswith("tiny.pth: not Tiny weights:") and "\n" not in message
    for part in (
        "missing c.bias",
        "n.weight has shape (4,), expected (3,)",
        "unexpected encoder.w",
        "unexpected n.num_batches_tracked",
    ):
        assert part in message
