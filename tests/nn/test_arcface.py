"""pSp's ArcFace IR-SE50: its real weight file format, read by our reader, gives the official embeddings and
IDLoss quantities to 1e-5; the key map covers the real checkpoint exactly."""

import json

import numpy as np
import pytest
from conftest import assert_close_rel, nhwc, unmapped_real_keys
from flax import nnx
from torch_files import write_state_dict

from cdiff_jax.nn.arcface import ArcFace, arcface_key_map, arcface_stages, identity_features, identity_similarity
from cdiff_jax.weights.state_dict_io import CheckpointReadError, read_state_dict

FIXTURE = "arcface_irse50"  # this network's reference folder, for conftest's folder, reference and weight_file


@pytest.fixture(scope="module")
def shape(folder):
    """The network's (units per stage, input size) as the fixture's constructor had them."""
    config = json.loads((folder / "config.json").read_text())
    return tuple(config["units_per_stage"]), config["constructor_args"]["input_size"]


@pytest.fixture(scope="module")
def model(weight_file, shape):
    return ArcFace.from_checkpoint(weight_file, *shape)


@pytest.mark.slow
def test_stage_outputs_and_embeddings(model, reference):
    outputs = arcface_stages(*nnx.split(model), nhwc(reference["faces112"]))
    stages = [key for key in reference if key.startswith("stage") and key.endswith("_out")]
    assert stages, "the fixture holds no stageK_out arrays"
    for key in stages:
        ours = np.transpose(outputs[key.removesuffix("_out")], (0, 3, 1, 2))
        assert_close_rel(ours, reference[key], name=key)
    assert_close_rel(outputs["unnormalized"], reference["embedding_unnormalized"], name="embedding_unnormalized")
    embeddings = np.asarray(outputs["embedding"])
    assert_close_rel(embeddings, reference["embeddings"], name="embeddings")
    assert_close_rel([embeddings[0] @ embeddings[1]], reference["cosine"], name="cosine")


@pytest.mark.slow
def test_idloss_quantities(model, reference):
    y_hat, y, x = (nhwc(reference[f"idloss_{name}"]) for name in ("y_hat", "y", "x"))
    assert_close_rel(identity_features(model, y_hat), reference["idloss_y_hat_feats"], name="y_hat_feats")
    target = np.asarray(identity_similarity(model, y_hat, y))
    quantities = {
        "diff_target": target,
        "diff_input": np.asarray(identity_similarity(model, y_hat, x)),
        "diff_views": np.asarray(identity_similarity(model, y, x)),
        "loss": [np.mean(1 - target)],
    }
    quantities["sim_improvement"] = np.mean(target - quantities["diff_views"])
    # Cosines and their differences are bounded by 1: compared to 1e-5 of that range, since a relative test
    # of a near-zero one (diff_target is -4.5e-4 in the shared set) would measure float32 cancellation.
    for name, ours in quantities.items():
        np.testing.assert_allclose(ours, reference[f"idloss_{name}"], rtol=0, atol=1e-5, err_msg=name)
    with pytest.raises(ValueError, match="256, 256, 3"):
        identity_similarity(model, y_hat[:, :112, :112], y[:, :112, :112])
    with pytest.raises(ValueError, match="equal shapes"):
        identity_similarity(model, y_hat, np.concatenate([y, y]))


def test_key_map_covers_the_real_file_exactly(folder, shape):
    model = nnx.eval_shape(lambda: ArcFace(*shape, rngs=nnx.Rngs(0)))
    unmapped = unmapped_real_keys(folder, model, arcface_key_map(model))
    assert unmapped and all(key.endswith(".num_batches_tracked") for key in unmapped)


def test_layout_sample_reads_in_the_real_dtypes(folder, shape):
    sample = read_state_dict(folder / "layout_sample.pth").tensors
    small = np.load(folder / "small.npz")
    dtypes = json.loads((folder / "recipe.json").read_text())["dtypes"]
    mapped = set(arcface_key_map(nnx.eval_shape(lambda: ArcFace(*shape, rngs=nnx.Rngs(0)))).values())
    assert {str(value.dtype) for value in sample.values()} == {"float16", "int64"}
    for key, value in sample.items():
        assert str(value.dtype) == dtypes[key], key
        np.testing.assert_array_equal(value, small[key])
        assert key in mapped or key.endswith(".num_batches_tracked"), key


@pytest.mark.slow
def test_a_file_of_the_wrong_kind_is_named(weight_file, shape, tmp_path):
    """Without `num_batches_tracked` (old checkpoints may lack it) the file still loads; a missing key, a
    misshaped tensor and a deeper network's extra unit are each named, in one line."""
    tensors = {
        key: value
        for key, value in read_state_dict(weight_file).tensors.items()
        if not key.endswith(".num_batches_tracked")
    }
    ArcFace.from_checkpoint(write_state_dict(tmp_path / "no_counters.pth", tensors), *shape)
    extra = f"body.{sum(shape[0])}.res_layer.2.weight"
    first = next(iter(tensors))
    del tensors[first]
    tensors["body.0.res_layer.2.weight"] = np.zeros(32, np.float16)
    tensors[extra] = np.zeros(256, np.float16)
    with pytest.raises(CheckpointReadError) as error:
        ArcFace.from_checkpoint(write_state_dict(tmp_path / "other.pth", tensors), *shape)
    message = str(error.value)
    assert "\n" not in message, message
    assert f"missing {first}" in message and "body.0.res_layer.2.weight has shape (32,)" in message
    assert f"unexpected {extra}" in message
