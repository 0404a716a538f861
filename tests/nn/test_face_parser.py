"""face-parsing.PyTorch's BiSeNet: its real weight file format, read by our reader, gives its logits and labels.

Measured on the shared set: the three heads and the upsampled logits are within 2.4e-6 relative of the
official float32 outputs (1e-5 asserted), no label differs, and our preprocessing reproduces `x` bit for bit.
"""

import json

import numpy as np
import pytest
from conftest import assert_close_rel, unmapped_real_keys
from flax import nnx
from torch_files import write_state_dict

from cdiff_jax.data.masks import CLASS_NAMES
from cdiff_jax.nn.face_parser import (
    PARSER_CLASS_NAMES,
    PARSER_TO_CELEBAMASKHQ,
    FaceParser,
    face_parser_key_map,
    preprocess,
    to_celebamaskhq,
)
from cdiff_jax.weights.state_dict_io import CheckpointReadError, read_state_dict

FIXTURE = "bisenet_parsing"  # this network's reference folder, for conftest's folder, reference and weight_file

FLOAT32_NOISE = 1e-5
HEADS = ("conv_out_lowres", "conv_out16_lowres", "conv_out32_lowres")

# The two class lists as the sources write them, both enumerated from 1 with 0 = background:
# face-parsing.PyTorch prepropess_data.py `atts` (the parser's training labels) ...
PREPROPESS_DATA_ATTS = [
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "eye_g",
    "l_ear",
    "r_ear",
    "ear_r",
    "nose",
    "mouth",
    "u_lip",
    "l_lip",
    "neck",
    "neck_l",
    "cloth",
    "hair",
    "hat",
]
# ... and CelebAMask-HQ face_parsing/Data_preprocessing/g_mask.py `label_list` ("list2", our masks' order).
G_MASK_LABEL_LIST = [
    "skin",
    "nose",
    "eye_g",
    "l_eye",
    "r_eye",
    "l_brow",
    "r_brow",
    "l_ear",
    "r_ear",
    "mouth",
    "u_lip",
    "l_lip",
    "hair",
    "hat",
    "ear_r",
    "neck_l",
    "neck",
    "cloth",
]


@pytest.fixture(scope="module")
def model(weight_file):
    return FaceParser.from_checkpoint(weight_file)


@pytest.fixture(scope="module")
def outputs(model, reference):
    """Our three low-resolution heads and full-resolution logits (NCHW, as the fixture) for every image of `x`."""
    heads, logits = nnx.jit(lambda m, x: (m.heads(x), m(x)))(model, np.transpose(reference["x"], (0, 2, 3, 1)))
    return dict(zip(HEADS, map(_nchw, heads))), _nchw(logits)


def _nchw(array):
    return np.transpose(np.asarray(array), (0, 3, 1, 2))


def test_low_resolution_heads(outputs, reference):
    heads, _ = outputs
    for name in HEADS:
        assert_close_rel(heads[name], reference[name], tol=FLOAT32_NOISE, name=name)


def test_full_resolution_logits(outputs, reference):
    _, logits = outputs
    expected = reference["feat_out"]
    assert_close_rel(logits[: len(expected)], expected, tol=FLOAT32_NOISE, name="feat_out")


def test_parse_gives_the_labels_in_our_order(model, outputs, reference):
    """Labels may differ only where our two best logits are within float32 noise of each other."""
    _, logits = outputs
    expected = reference["labels"]
    ours = model.parse(reference["raw_images_nhwc"].astype(np.uint8), expected.shape[1:])
    assert ours.shape == expected.shape
    top2 = np.sort(logits, axis=1)[:, -2:]
    near_tie = top2[:, 1] - top2[:, 0] <= FLOAT32_NOISE * np.abs(logits).max()
    differs = ours != to_celebamaskhq(expected)
    assert not (differs & ~near_tie).any(), f"{differs.sum()} labels differ, {(differs & ~near_tie).sum()} not ties"
    assert near_tie.sum() <= 1e-3 * near_tie.size, f"{near_tie.sum()} near-tied pixels"


def test_preprocessing_reproduces_x(reference):
    """PIL bilinear resize, ToTensor and Normalize: measured bit-identical to torchvision's."""
    expected = np.transpose(reference["x"], (0, 2, 3, 1))
    ours = preprocess(reference["raw_images_nhwc"].astype(np.uint8), expected.shape[1:3])
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, expected)


def test_layout_sample_reads_in_the_real_dtypes(folder):
    sample = read_state_dict(folder / "layout_sample.pth").tensors
    small = np.load(folder / "small.npz")
    dtypes = json.loads((folder / "recipe.json").read_text())["dtypes"]
    mapped = set(face_parser_key_map(nnx.eval_shape(lambda: FaceParser(rngs=nnx.Rngs(0)))).values())
    assert sample
    for key, value in sample.items():
        assert str(value.dtype) == dtypes[key], key
        np.testing.assert_array_equal(value, small[key])
        assert key in mapped or key.endswith("num_batches_tracked"), key


def test_key_map_covers_the_real_checkpoint_exactly(folder):
    model = nnx.eval_shape(lambda: FaceParser(rngs=nnx.Rngs(0)))
    unmapped = unmapped_real_keys(folder, model, face_parser_key_map(model))
    assert all(key.endswith("num_batches_tracked") for key in unmapped)


def test_a_file_of_another_network_is_named(weight_file, tmp_path):
    tensors = read_state_dict(weight_file).tensors
    missing = next(key for key in tensors if key.endswith(".weight"))
    misshaped = "conv_out.conv_out.weight"
    del tensors[missing]
    tensors[misshaped] = np.zeros((18, 256, 1, 1), np.float16)
    path = write_state_dict(tmp_path / "other.pth", tensors)
    with pytest.raises(CheckpointReadError) as error:
        FaceParser.from_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message
    assert f"missing {missing}" in message and f"{misshaped} has shape (1, 1, 256, 18)" in message


def test_class_order_follows_the_sources_names(folder):
    assert PARSER_CLASS_NAMES == ("background", *PREPROPESS_DATA_ATTS)
    assert CLASS_NAMES == ("background", *G_MASK_LABEL_LIST)
    ours_by_name = {name: index for index, name in enumerate(["background", *G_MASK_LABEL_LIST])}
    expected = [ours_by_name[name] for name in ["background", *PREPROPESS_DATA_ATTS]]
    np.testing.assert_array_equal(PARSER_TO_CELEBAMASKHQ, expected)
    np.testing.assert_array_equal(to_celebamaskhq(np.arange(19)), expected)
    table = json.loads((folder / "class_table.json").read_text())
    np.testing.assert_array_equal(PARSER_TO_CELEBAMASKHQ, table["parser_to_celebamaskhq_lut"])
    # makeup.py's parser ids: hair 17, upper lip 12, lower lip 13.
    assert [CLASS_NAMES[to_celebamaskhq(i)] for i in (17, 12, 13)] == ["hair", "u_lip", "l_lip"]
