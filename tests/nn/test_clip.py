"""OpenAI CLIP: the fixture's weights in their real file format, read by our reader, give the original's
features, logits, CLIP scores and transformer outputs to 1e-5; preprocessing reproduces the original's input
exactly; the key map covers the real ViT-B/32 and ViT-L/14 state dicts exactly, shapes included."""

import json

import jax
import numpy as np
import pytest
from conftest import assert_close_rel, nhwc
from flax import nnx
from PIL import Image
from torch_files import write_state_dict

from cdiff_jax.nn.clip import CLIP, NON_WEIGHT_KEYS, CLIPConfig, clip_key_map, clip_outputs, preprocess
from cdiff_jax.weights.layout import to_flax_layout
from cdiff_jax.weights.state_dict_io import CheckpointReadError, read_state_dict

FIXTURE = "clip_tiny"  # this network's reference folder, for conftest's folder, reference and weight_file


@pytest.fixture(scope="module")
def config(folder):
    return json.loads((folder / "config.json").read_text())


@pytest.fixture(scope="module")
def heads(config):
    """The head counts of the fixture's constructor: not in the file, and the text's is not build_model's."""
    return {
        "transformer_heads": config["constructor_args"]["transformer_heads"],
        "vision_heads": config["derived"]["vision_heads"],
    }


@pytest.fixture(scope="module")
def model(weight_file, heads):
    return CLIP.from_checkpoint(weight_file, **heads)


@pytest.fixture(scope="module")
def outputs(model, reference):
    out = clip_outputs(*nnx.split(model), nhwc(reference["images"]), reference["tokens"])
    return jax.tree.map(np.asarray, out)


def test_features_logits_and_transformer_outputs(model, outputs, reference, config):
    assert model.cfg == CLIPConfig(**config["constructor_args"], vision_heads=config["derived"]["vision_heads"])
    for name in (
        "image_features",
        "text_features",
        "image_features_normed",
        "text_features_normed",
        "logits_per_image",
    ):
        assert_close_rel(outputs[name], reference[name], name=name)
    assert_close_rel(outputs["logits_per_image"].T, reference["logits_per_text"], name="logits_per_text")
    assert_close_rel(model.logit_scale[...], reference["logit_scale"], name="logit_scale")
    # The original holds transformer outputs as [L, N, D]; ours are [N, L, D].
    for ours, theirs in (
        ("image_transformer", "visual_transformer_out_lnd"),
        ("text_transformer", "text_transformer_out_lnd"),
    ):
        assert_close_rel(np.transpose(outputs[ours], (1, 0, 2)), reference[theirs], name=theirs)
    # Cosines lie in [-1, 1] and may all be small: compared to 1e-6 of that range (measured 1.2e-7), the scores
    # (100 x, clamped at 0) to 1e-4 (measured 9.5e-6), rather than relative to a possibly tiny maximum.
    np.testing.assert_allclose(outputs["cosine_per_pair"], reference["cosine_per_pair"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(outputs["clip_score"], reference["clip_score"], rtol=0, atol=1e-4)
    images, tokens = nhwc(reference["images"]), reference["tokens"]
    with pytest.raises(ValueError, match="NHWC"):
        model.encode_image(images[:, :-1])
    with pytest.raises(ValueError, match="clip_tokenizer.tokenize"):
        model.encode_text(tokens[:, :-1])
    with pytest.raises(ValueError, match="pairs image i with caption i"):
        model.clip_score(images, tokens[:-1])


def test_preprocessing_is_the_originals(reference, config):
    """PIL's bicubic resize, the centre crop and the normalisation done as the original does them give its
    input bit for bit; arrays and PIL images alike."""
    raw = reference["raw_images_nhwc"].astype(np.uint8)
    images = [Image.fromarray(image) if i % 2 else image for i, image in enumerate(raw)]
    ours = preprocess(images, config["constructor_args"]["image_resolution"])
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, nhwc(reference["images"]))
    with pytest.raises(ValueError, match="uint8"):
        preprocess([raw[0].astype(np.float32)], 8)


def test_key_map_covers_the_real_files_exactly(folder):
    """Each real model's configuration is read off its shapes as build_model does (its head counts are
    width // 64), and every key of its state dict is mapped, with the shape of our variable."""
    manifest = json.loads((folder / "real_manifest.json").read_text())["models"]
    assert manifest
    for name, described in manifest.items():
        keys = described["keys"]
        tensors = {key: np.broadcast_to(np.float32(0), entry["shape"]) for key, entry in keys.items()}
        cfg = CLIPConfig.from_state_dict(tensors, name)
        args = described["constructor_args"]
        assert cfg == CLIPConfig(**args, vision_heads=args["vision_width"] // 64), name
        model = nnx.eval_shape(lambda: CLIP(cfg, rngs=nnx.Rngs(0)))
        mapping = clip_key_map(model)
        assert sorted(mapping.values()) == sorted(keys), name
        for path, variable in nnx.to_flat_state(nnx.state(model)):
            key = mapping[".".join(map(str, path))]
            assert to_flax_layout(tensors[key], str(path[-1])).shape == variable.shape, (name, key)


def test_layout_sample_reads_in_the_real_dtypes(folder, heads, weight_file):
    sample = read_state_dict(folder / "layout_sample.pth").tensors
    small = np.load(folder / "small.npz")
    recipe = json.loads((folder / "recipe.json").read_text())
    assert list(sample) == recipe["layout_sample"]["keys"]
    cfg = CLIPConfig.from_state_dict(read_state_dict(weight_file).tensors, "fixture", **heads)
    mapped = set(clip_key_map(nnx.eval_shape(lambda: CLIP(cfg, rngs=nnx.Rngs(0)))).values())
    for key, value in sample.items():
        assert str(value.dtype) == recipe["dtypes"][key], key
        assert value.shape == small[key].shape, key
        np.testing.assert_array_equal(value, small[key])
        assert key in mapped, key


def test_a_file_of_the_wrong_kind_is_named(weight_file, heads, tmp_path):
    """The released state dicts' non-weight entries are ignored; a ResNet image tower (no `visual.proj`), a
    missing key, a misshaped tensor and another network's key are each named, in one line."""
    tensors = read_state_dict(weight_file).tensors
    extras = {key: np.array(77, np.int64) for key in NON_WEIGHT_KEYS}
    CLIP.from_checkpoint(write_state_dict(tmp_path / "released.pth", tensors | extras, ordered=True), **heads)

    def message(tensors) -> str:
        with pytest.raises(CheckpointReadError) as error:
            CLIP.from_checkpoint(write_state_dict(tmp_path / "other.pth", tensors, ordered=True), **heads)
        assert "\n" not in str(error.value), error.value
        return str(error.value)

    assert "missing visual.proj" in message({k: v for k, v in tensors.items() if k != "visual.proj"})
    extra = "visual.attnpool.c_proj.weight"
    changed = {k: v for k, v in tensors.items() if k != "ln_final.bias"}
    changed["visual.ln_pre.weight"] = np.zeros(3, np.float32)
    changed[extra] = np.zeros(3, np.float32)
    text = message(changed)
    assert "missing ln_final.bias" in text and "visual.ln_pre.weight has shape (3,)" in text, text
    assert f"unexpected {extra}" in text, text
