"""Export to the official format: the converter's inverse, file for file, and its refusals."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from conftest import REPO, assemble_state_dict, assert_close_rel, reference_config, reference_system
from flax import nnx

from cdiff_jax.checkpoint import save_system
from cdiff_jax.config import load_config
from cdiff_jax.convert import export, keymap
from cdiff_jax.convert.__main__ import main
from cdiff_jax.convert.converter import system_from_state_dict
from cdiff_jax.convert.export import OFFICIAL_CONSTANTS, official_differences, official_state_dict
from cdiff_jax.system import abstract_system
from cdiff_jax.weights.state_dict_io import read_state_dict

TINY = REPO / "configs" / "tiny_system.py"


def fixture_kinds(root) -> list[str]:
    """The official checkpoint types the fixtures make up: the autoencoder's, each uni-modal LDM's (named by the
    collaborative manifest) and the collaborative one."""
    manifest = json.loads((root / "collab_ddim" / "state_dict_manifest.json").read_text())
    return ["vae", *(key.removesuffix("_ldm_keys") for key in manifest if key.endswith("_ldm_keys")), "codiff"]


def params_of(system) -> dict[str, np.ndarray]:
    return {".".join(map(str, path)): var.get_value() for path, var in nnx.to_flat_state(nnx.state(system, nnx.Param))}


def test_official_convert_export_gives_the_official_file_back(fixtures_root):
    """Same keys; every tensor our system holds identical (the schedule buffers too); the text-logit head, which
    the converter drops and no model runs, comes back as zeros of its shape."""
    kinds = fixture_kinds(fixtures_root)
    assert {"vae", "codiff"} < set(kinds) and len(kinds) > 2
    for kind in kinds:
        official = assemble_state_dict(fixtures_root, kind, "safetensors")
        system = reference_system(fixtures_root, kind)
        exported = official_state_dict(system.cfg, params_of(system))
        assert sorted(exported) == sorted(official), kind
        for key, value in official.items():
            if keymap.TEXT_LOGIT_HEAD in key:
                assert exported[key].shape == value.shape and not exported[key].any(), key
            else:
                assert exported[key].dtype == value.dtype and np.array_equal(exported[key], value), key


@pytest.fixture(scope="module")
def codiff_dir(fixtures_root, tmp_path_factory):
    return save_system(tmp_path_factory.mktemp("ours") / "codiff", reference_system(fixtures_root, "codiff"))


@pytest.mark.slow
def test_convert_export_convert_gives_identical_parameters(fixtures_root, codiff_dir, tmp_path, capsys):
    out = tmp_path / "codiff.ckpt"
    assert main(["--to-official", str(codiff_dir), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    loaded = read_state_dict(out)
    assert loaded.source_format == "ckpt" and loaded.extras == {}  # Lightning's {"state_dict": ...}, nothing else
    again, report = system_from_state_dict(loaded.tensors, reference_config(fixtures_root, "codiff"))
    assert report.schedule_checked
    jax.tree.map(np.testing.assert_array_equal, params_of(again), params_of(reference_system(fixtures_root, "codiff")))
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_official_constants_are_our_defaults():
    """The official YAML reader leaves these fields at our defaults, so the defaults must be the official values."""
    for (config_class, field), value in OFFICIAL_CONSTANTS.items():
        assert {f.name: f.default for f in dataclasses.fields(config_class)}[field] == value


def test_what_the_official_code_cannot_build_is_named(fixtures_root):
    codiff = reference_config(fixtures_root, "codiff")
    assert official_differences(codiff) == []
    three = load_config(f"{TINY}:three")
    assert any("'scribble'" in d for d in official_differences(three))
    assert any("kind 'scribble'" in d for d in official_differences(load_config(f"{TINY}:scribble")))
    mask, text = codiff.modalities["mask"], codiff.modalities["text"]
    cases = {
        "dynamic diffusers differ": {
            "text": dataclasses.replace(text, diffuser=dataclasses.replace(text.diffuser, model_channels=64))
        },
        "dynamic diffusers only for mask": {"text": dataclasses.replace(text, diffuser=None)},
        "holds one modality of each kind": {"text2": text},
        "heads is 4": {"text": dataclasses.replace(text, encoder=dataclasses.replace(text.encoder, heads=4))},
        "num_classes is 20": {
            "mask": dataclasses.replace(mask, encoder=dataclasses.replace(mask.encoder, num_classes=20))
        },
    }
    for phrase, modalities in cases.items():
        cfg = dataclasses.replace(codiff, modalities={**codiff.modalities, **modalities})
        assert any(phrase in d for d in official_differences(cfg)), (phrase, official_differences(cfg))
    shifted = dataclasses.replace(codiff, autoencoder=dataclasses.replace(codiff.autoencoder, latent_shift=(1, 2, 3)))
    assert official_differences(shifted) == []  # folded into the weights
    two_experts = dataclasses.replace(
        codiff, modalities={name: dataclasses.replace(m, diffuser=None) for name, m in codiff.modalities.items()}
    )
    assert official_differences(two_experts) == [
        "2 modalities without dynamic diffusers; an official model of one expert holds one modality"
    ]


def test_a_latent_shift_is_folded_into_the_autoencoder(fixtures_root):
    """Models trained here centre their latents (latent_shift), which LDM cannot express; folded into the weights,
    the official autoencoder, converted back without a shift, encodes and decodes the same latents (which a shift
    left out would move). Only the maps between the encoder and the decoder change, so both stand aside (identities)
    to keep the test fast."""
    plain = reference_system(fixtures_root, "vae")
    ae = plain.cfg.autoencoder
    cfg = dataclasses.replace(plain.cfg, autoencoder=dataclasses.replace(ae, latent_shift=(0.5, -1.0, 2.0)))
    shifted = abstract_system(cfg)
    nnx.update(shifted, nnx.state(plain, nnx.Param))
    back, _ = system_from_state_dict(official_state_dict(cfg, params_of(shifted)), plain.cfg)
    assert back.cfg.autoencoder.latent_shift == ()
    for system in (shifted, back):
        system.autoencoder.encoder = system.autoencoder.decoder = lambda h: h
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 4, 4, 2 * ae.z_channels)).astype(np.float32)
    latent = rng.normal(size=(2, 4, 4, ae.embed_dim)).astype(np.float32)
    centred = shifted.autoencoder.encode_latent(features, latent)
    assert_close_rel(back.autoencoder.encode_latent(features, latent), centred, name="encode")
    assert_close_rel(back.autoencoder.decode_latent(latent), shifted.autoencoder.decode_latent(latent), name="decode")


def _refused(capsys, *args) -> str:
    assert main(["--to-official", *map(str, args)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


def _config_only(directory, cfg):
    """A directory with the config of a system and no parameters: enough for what is refused before reading them."""
    (directory / "params").mkdir(parents=True)
    (directory / "config.json").write_text(cfg.to_json())
    return directory


@pytest.mark.parametrize(
    "case",
    ["not_a_checkpoint", "official_file", "suffix", "exists", "directory_out", "scribble", "text_heads", "config"],
)
def test_bad_input_is_one_line_and_writes_nothing(fixtures_root, codiff_dir, tmp_path, capsys, case):
    src, out, extra = codiff_dir, tmp_path / "out.safetensors", []
    if case == "not_a_checkpoint":
        src = tmp_path / "empty"
        src.mkdir()
    elif case == "official_file":
        src = fixtures_root / "autoencoder" / "model.ckpt"
    elif case == "suffix":
        out = tmp_path / "out.pt"
    elif case == "exists":
        out.write_text("mine")
    elif case == "directory_out":
        out = tmp_path / "folder.ckpt"
        out.mkdir()
        extra = ["--overwrite"]
    elif case == "scribble":
        src = _config_only(tmp_path / "three", load_config(f"{TINY}:three"))
    elif case == "text_heads":
        cfg = reference_config(fixtures_root, "text")
        text = cfg.modalities["text"]
        src = _config_only(
            tmp_path / "heads",
            dataclasses.replace(
                cfg,
                modalities={
                    "text": dataclasses.replace(text, encoder=dataclasses.replace(text.encoder, heads=2, head_dim=4))
                },
            ),
        )
    elif case == "config":
        extra = ["--config", "released.py:256_vae"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    message = _refused(capsys, src, out, *extra)
    expected = {
        "not_a_checkpoint": "not a cdiff_jax checkpoint",
        "official_file": "not a cdiff_jax checkpoint",
        "suffix": ".safetensors or .ckpt",
        "exists": "--overwrite",
        "directory_out": "not a file",
        "scribble": "kind 'scribble'",
        "text_heads": "heads is 2",
        "config": "--config",
    }[case]
    assert expected in message, message
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    if case == "exists":
        assert out.read_text() == "mine"


def test_overwrite_replaces_the_file_and_a_failed_write_keeps_it(fixtures_root, tmp_path, capsys, monkeypatch):
    """A write that fails leaves the file it would have replaced (and no temporary); one that succeeds replaces it
    with the official file, here as .safetensors, whose tensors are the official ones."""
    ours = save_system(tmp_path / "vae", reference_system(fixtures_root, "vae"))
    old = {tmp_path / "vae.ckpt", tmp_path / "vae.safetensors"}
    for out in old:
        out.write_text("old")

    def fail(path, *args, **kwargs):
        path.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(export, "write_state_dict", fail)
    with pytest.raises(OSError, match="disk full"):
        main(["--to-official", str(ours), str(tmp_path / "vae.ckpt"), "--overwrite"])
    assert all(out.read_text() == "old" for out in old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae", "vae.ckpt", "vae.safetensors"]
    assert main(["--to-official", str(ours), str(tmp_path / "vae.safetensors"), "--overwrite"]) == 0
    assert "checkpoint type: vae" in capsys.readouterr().out
    exported = read_state_dict(tmp_path / "vae.safetensors").tensors
    official = assemble_state_dict(fixtures_root, "vae", "safetensors")
    assert sorted(exported) == sorted(official)
    jax.tree.map(np.testing.assert_array_equal, exported, official)
