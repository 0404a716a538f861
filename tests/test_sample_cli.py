"""sample.py as a user runs it: the demo, uni-modal and collaborative runs, and bad input."""

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, assemble_state_dict, reference_config
from cdiff_jax.checkpoint import save_system
from cdiff_jax.convert.converter import system_from_state_dict

_spec = importlib.util.spec_from_file_location("sample_cli", REPO / "sample.py")
sample_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sample_cli)


def run(*argv):
    return sample_cli.run(sample_cli.parse_args([str(a) for a in argv]))


@pytest.fixture(scope="module")
def checkpoints(fixtures_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    for kind in ("codiff", "text"):
        system, _ = system_from_state_dict(assemble_state_dict(fixtures_root, kind, "safetensors"),
                                           reference_config(fixtures_root, kind))
        save_system(root / kind, system)
    return root


def test_demo_writes_pictures_and_settings_deterministically(tmp_path, capsys):
    assert run("--out", tmp_path / "a", "--steps", "4", "--batch", "2", "--save-influence", "--save-trajectory") == 0
    assert run("--out", tmp_path / "b", "--steps", "4", "--batch", "2") == 0
    out = capsys.readouterr().out
    assert "shipped demo models" in out and "step 4/4" in out
    a = tmp_path / "a"
    for name in ("grid.png", "overlay_grid.png", "mask.png", "influence_mask.png", "influence_text.png",
                 "x_t.png", "pred_x0.png", "images/000.png", "images/001.png"):
        assert (a / name).is_file(), name
    settings = json.loads((a / "settings.json").read_text())
    assert settings["steps"] == 4 and settings["seed"] == 0 and settings["text"]
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(Image.open(a / f"images/00{i}.png")),
                                      np.asarray(Image.open(tmp_path / f"b/images/00{i}.png")))


def test_collaborative_and_uni_modal_checkpoints(checkpoints, tmp_path, capsys):
    mask = REPO / "cdiff_jax/data/examples/face_mask.png"
    assert run("--checkpoint", checkpoints / "codiff", "--mask", mask, "--text", "a man", "--steps", "4",
               "--batch", "2", "--out", tmp_path / "collab", "--guidance", "mask=1.5") == 0
    assert run("--checkpoint", checkpoints / "text", "--text", "a man in his forties", "--steps", "4",
               "--batch", "1", "--out", tmp_path / "text") == 0
    assert Image.open(tmp_path / "collab/images/001.png").size == (32, 32)
    assert (tmp_path / "text/grid.png").is_file()


def test_long_caption_is_announced(checkpoints, tmp_path, capsys):
    assert run("--checkpoint", checkpoints / "text", "--text", "word " * 100, "--steps", "2", "--batch", "1",
               "--out", tmp_path / "o") == 0
    assert "truncated" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing_mask", "photo_as_mask", "empty_caption", "not_a_checkpoint",
                                  "missing_modality", "bad_steps", "bad_guidance"])
def test_bad_input_is_one_line_and_writes_nothing(checkpoints, tmp_path, capsys, case):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(photo)
    args = {
        "missing_mask": ["--checkpoint", checkpoints / "codiff", "--mask", tmp_path / "nope.png"],
        "photo_as_mask": ["--checkpoint", checkpoints / "codiff", "--mask", photo],
        "empty_caption": ["--checkpoint", checkpoints / "text", "--text", "  "],
        "not_a_checkpoint": ["--checkpoint", tmp_path, "--text", "a man"],
        "missing_modality": ["--checkpoint", checkpoints / "text", "--mask", photo],
        "bad_steps": ["--checkpoint", checkpoints / "text", "--text", "a man", "--steps", "3"],
        "bad_guidance": ["--checkpoint", checkpoints / "text", "--text", "a man", "--guidance", "mask=2"],
    }[case]
    out = tmp_path / "out"
    assert run(*args, "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists()
