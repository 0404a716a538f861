"""The table of modality kinds: every kind has every entry, and the code looks kinds up there."""

import dataclasses
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cdiff_jax.conditions import encode_inputs, null_condition
from cdiff_jax.config import (
    ENCODER_CONFIGS,
    DDGIHeadsConfig,
    EG3DConfig,
    ModalityConfig,
    StyleGAN2Config,
    SystemConfig,
    UNetConfig,
    load_config,
)
from cdiff_jax.convert.keymap import checkpoint_prefixes
from cdiff_jax.diffusion.collaboration import Reweighting, rule_for_mode
from cdiff_jax.modalities import KINDS, ModalityKind, kind_entry, spatial_names

REPO = pathlib.Path(__file__).resolve().parents[1]
THREE = load_config(f"{REPO / 'configs' / 'tiny_system.py'}:three")

# One user input per kind, as a command line or dataset would give it.
_LABELS = np.repeat(np.arange(19, dtype=np.uint8), 4)[:64].reshape(8, 8)
_DRAWING = np.zeros((64, 64), np.uint8)
_DRAWING[20:44, 30] = 255
USER_INPUTS = {"text": "This man has a short beard.", "mask": _LABELS, "scribble": _DRAWING}


def test_every_kind_has_every_entry():
    assert set(USER_INPUTS) == set(KINDS) == set(ENCODER_CONFIGS)
    assert {m.kind for m in THREE.modalities.values()} == set(KINDS)  # the tiny config has one of each
    for kind, entry in KINDS.items():
        for field in dataclasses.fields(ModalityKind):
            assert getattr(entry, field.name) is not None or field.name == "official_name", (kind, field.name)
        assert entry.config is ENCODER_CONFIGS[kind]
    for field in ("batch_key", "example_field"):
        values = [getattr(e, field) for e in KINDS.values()]
        assert len(set(values)) == len(values) and "image" not in values, field


@pytest.mark.parametrize("name", sorted(THREE.modalities))
def test_parse_null_and_encoder_agree(name):
    cfg = THREE.modalities[name]
    entry = kind_entry(cfg.kind)
    parsed = encode_inputs([USER_INPUTS[cfg.kind]] * 2, cfg)
    null = null_condition(cfg)
    assert parsed.shape == (2,) + null.shape[1:] and parsed.dtype == null.dtype
    assert not np.array_equal(parsed[:1], null)  # an input says something, the null condition nothing
    encoder = entry.encoder(cfg.encoder, rngs=nnx.Rngs(0))
    context = encoder(jnp.asarray(np.concatenate([parsed, null])))
    assert context.shape[0] == 3 and context.shape[-1] == cfg.expert.context_dim
    # What the pipeline stores per example parses to the same condition as the user input.
    assert entry.parse([USER_INPUTS[cfg.kind]], entry.config())[0].shape == entry.null(entry.config()).shape[1:]


def test_unknown_kind_is_a_one_line_error_listing_kinds():
    expert = UNetConfig(num_heads=2)
    encoder = ENCODER_CONFIGS["mask"]()
    for attempt in (lambda: kind_entry("sketch"), lambda: ModalityConfig("sketch", encoder, expert)):
        with pytest.raises(ValueError) as err:
            attempt()
        message = str(err.value)
        assert "'sketch'" in message and "text, mask, scribble" in message and "\n" not in message
    raw = json.loads(THREE.to_json())
    raw["modalities"]["mask"]["kind"] = "sketch"
    with pytest.raises(ValueError, match="unknown modality kind 'sketch'; expected one of: text, mask, scribble"):
        SystemConfig.from_json(json.dumps(raw))
    with pytest.raises(ValueError, match="needs a ScribbleEncoderConfig, got a MaskEncoderConfig"):
        ModalityConfig("scribble", encoder, expert)


def test_three_modality_json_round_trip_and_shipped_json_unchanged():
    assert SystemConfig.from_json(THREE.to_json()) == THREE
    parsers = {
        "collab": SystemConfig,
        "gan": StyleGAN2Config,
        "ddgi_heads": DDGIHeadsConfig,
        "ddgi3d_heads": DDGIHeadsConfig,
        "triplane": EG3DConfig,
    }
    shipped = sorted((REPO / "cdiff_jax" / "demo_models").glob("*/config.json"))
    assert sorted(path.parent.name for path in shipped) == sorted(parsers)  # a new shipped model is checked too
    for path in shipped:
        text = path.read_text()
        parsed = parsers[path.parent.name].from_json(text)
        assert json.loads(parsed.to_json()) == json.loads(text), path


def test_spatial_kinds_are_the_decayed_ones():
    kinds = {name: m.kind for name, m in THREE.modalities.items()}
    assert spatial_names(kinds) == ("mask", "scribble")
    assert spatial_names({"layout": "mask", "caption": "text"}) == ("layout",)  # by kind, not by name
    assert spatial_names(["mask", "text", "caption"]) == ("mask",)  # plain names are read as kinds
    rule = rule_for_mode("released", kinds, 3.0, 500)
    assert rule == Reweighting(decayed=("mask", "scribble"), schedule="cosine", scale=3.0, num_timesteps=500)
    assert rule_for_mode("linear", {"layout": "mask", "caption": "text"}).decayed == ("layout",)
    assert rule_for_mode("released", ["mask", "text"]) == Reweighting()  # the released model, as before
    assert rule_for_mode("released", {"m": "mask", "s": "scribble"}) is None  # nothing left to take the rest
    assert rule_for_mode("released", {"t": "text"}) is None and rule_for_mode("plain", kinds) is None


def test_official_prefixes_come_from_the_kinds():
    prefixes = checkpoint_prefixes("codiff", {"layout": "mask", "caption": "text"})
    assert prefixes["modalities.layout.diffuser"] == "model.seg_mask_confidence_predictor.diffusion_model."
    assert prefixes["modalities.caption.encoder"] == "cond_stage_model.text_cond_stage_model."
    assert checkpoint_prefixes("mask", {"layout": "mask"})["modalities.layout.expert"] == "model.diffusion_model."
    with pytest.raises(ValueError, match="no official collaborative checkpoint holds a scribble"):
        checkpoint_prefixes("codiff", {"mask": "mask", "scribble": "scribble"})
    with pytest.raises(ValueError, match="unknown modality kind 'sketch'"):
        checkpoint_prefixes("sketch", {})
