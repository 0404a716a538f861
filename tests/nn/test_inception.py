"""pytorch-fid's InceptionV3: its real weight file format, read by our reader, gives its features.

Tolerance: the fixture's float32 features are themselves up to 2.8e-5 (pool3 of upsampled 64x64
inputs) and 4.8e-5 (Mixed_7c) relative from the same network run in float64, and ours are as close
to float64 as torch's (measured once with jax_enable_x64); 1e-4 is that noise with a margin.
"""

import json

import jax
import numpy as np
import pytest
from conftest import assert_close_rel, unmapped_real_keys
from flax import nnx
from torch_files import fixture_state_dict, write_state_dict

from cdiff_jax.nn.inception import InceptionV3, inception_key_map, pool3_features
from cdiff_jax.weights.state_dict_io import CheckpointReadError, read_state_dict

FIXTURE = "fid_inception"  # this network's reference folder, for conftest's folder, reference and weight_file

FLOAT32_NOISE = 1e-4


@pytest.fixture(scope="module")
def model(weight_file):
    return InceptionV3.from_checkpoint(weight_file)


def _nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


@pytest.mark.slow
def test_pool3_features_of_every_input_size(model, reference):
    inputs = [key for key in reference if key.startswith("pool3_")]
    assert inputs, "the fixture holds no pool3_<input> arrays"
    graphdef, state = nnx.split(model)
    for key in inputs:
        images = _nhwc(reference[key.removeprefix("pool3_")])
        features = pool3_features(graphdef, state, images)
        assert_close_rel(features, reference[key], tol=FLOAT32_NOISE, name=key)


@pytest.mark.slow
def test_intermediate_blocks(model, folder, reference):
    recorded = json.loads((folder / "config.json").read_text())
    hooks = recorded["hooks"]
    name = recorded["hooks_recorded_for_input"]
    count = reference[f"{next(iter(hooks))}_{name}"].shape[0]
    outputs = jax.jit(lambda images: nnx.merge(*nnx.split(model)).blocks(images))(_nhwc(reference[name][:count]))
    for hook in hooks:
        ours = outputs[hook.replace("mixed", "Mixed")]
        assert_close_rel(np.transpose(ours, (0, 3, 1, 2)), reference[f"{hook}_{name}"], tol=FLOAT32_NOISE, name=hook)


def test_key_map_covers_the_real_file_exactly(folder):
    model = nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0)))
    unmapped = unmapped_real_keys(folder, model, inception_key_map(model))
    assert unmapped == {key for key in unmapped if key.startswith("fc.")} == {"fc.weight", "fc.bias"}


def test_layout_sample_reads_in_the_real_dtypes(folder):
    sample = read_state_dict(folder / "layout_sample.pth").tensors
    small = np.load(folder / "small.npz")
    dtypes = json.loads((folder / "recipe.json").read_text())["dtypes"]
    assert sample
    for key, value in sample.items():
        assert str(value.dtype) == dtypes[key], key
        np.testing.assert_array_equal(value, small[key])


@pytest.mark.slow
def test_a_file_of_another_network_is_named(folder, tmp_path):
    tensors = fixture_state_dict(folder)
    first = next(iter(tensors))
    del tensors[first]
    tensors["Mixed_5b.branch1x1.bn.weight"] = np.zeros(3, np.float16)
    tensors["encoder.conv_in.weight"] = np.zeros(3, np.float16)
    path = write_state_dict(tmp_path / "other.pth", tensors)
    with pytest.raises(CheckpointReadError) as error:
        InceptionV3.from_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message
    assert f"missing {first}" in message and "Mixed_5b.branch1x1.bn.weight has shape (3,)" in message
    assert "unexpected encoder.conv_in.weight" in message
