"""The sampling command as a user runs it: the demo, uni-modal and collaborative runs, and bad input
refused through the real command line before any work."""

import errno
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, assemble_state_dict, png_header_only, reference_config
from flax import nnx
from PIL import Image

from cdiff_jax import viz
from cdiff_jax.checkpoint import save_system
from cdiff_jax.commands.sample import main
from cdiff_jax.config import load_config
from cdiff_jax.convert.converter import system_from_state_dict
from cdiff_jax.requests import DEMO_MASK, MAX_BATCH
from cdiff_jax.system import init_system


def run(*argv):
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def checkpoints(fixtures_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    for kind in ("codiff", "text"):
        system, _ = system_from_state_dict(
            assemble_state_dict(fixtures_root, kind, "safetensors"), reference_config(fixtures_root, kind)
        )
        save_system(root / kind, system)
    return root


@pytest.mark.slow
def test_demo_writes_pictures_and_settings_deterministically(tmp_path, capsys):
    assert run("--out", tmp_path / "a", "--steps", "4", "--batch", "2", "--save-influence", "--save-trajectory") == 0
    assert run("--out", tmp_path / "b", "--steps", "4", "--batch", "2") == 0
    captured = capsys.readouterr()
    assert "shipped demo models" in captured.err and "wrote 2 samples" in captured.out
    a = tmp_path / "a"
    for name in (
        "grid.png",
        "overlay_grid.png",
        "mask.png",
        "influence_mask.png",
        "influence_text.png",
        "x_t.png",
        "pred_x0.png",
        "images/000.png",
        "images/001.png",
    ):
        assert (a / name).is_file(), name
    settings = json.loads((a / "settings.json").read_text())
    assert settings["steps"] == 4 and settings["seed"] == 0 and settings["text"]
    for i in range(2):
        np.testing.assert_array_equal(
            np.asarray(Image.open(a / f"images/00{i}.png")), np.asarray(Image.open(tmp_path / f"b/images/00{i}.png"))
        )
    # a previous run's folder is ours to replace: nothing of it is left (its trajectory pictures, which this run
    # does not make) and nothing beside it; the batch and steps above, so no other program to compile
    before = np.asarray(Image.open(a / "images/000.png"))
    assert run("--out", a, "--steps", "4", "--batch", "2", "--seed", "1") == 0
    assert not (a / "x_t.png").exists() and not (a / "pred_x0.png").exists()
    assert not np.array_equal(np.asarray(Image.open(a / "images/000.png")), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


@pytest.mark.slow
def test_collaborative_and_uni_modal_checkpoints(checkpoints, fixtures_root, tmp_path, capsys):
    assert (
        run(
            "--checkpoint",
            checkpoints / "codiff",
            "--mask",
            DEMO_MASK,
            "--text",
            "a man",
            "--steps",
            "4",
            "--batch",
            "2",
            "--out",
            tmp_path / "collab",
            "--guidance",
            "mask=1.5",
            "--save-z",
        )
        == 0
    )
    assert (
        run(
            "--checkpoint",
            checkpoints / "text",
            "--text",
            "a man in his forties",
            "--steps",
            "3",
            "--sampler",
            "dpmpp2m",
            "--freeu",
            "1.1,1.2,1,1",
            "--batch",
            "1",
            "--out",
            tmp_path / "text",
        )
        == 0
    )
    settings = json.loads((tmp_path / "text/settings.json").read_text())
    assert (settings["sampler"], settings["order"], settings["steps"], settings["eta"]) == ("dpmpp", 2, 3, 0.0)
    assert settings["freeu"] == {"b1": 1.1, "b2": 1.2, "s1": 1.0, "s2": 1.0}
    side = reference_config(fixtures_root, "codiff").autoencoder.resolution
    assert Image.open(tmp_path / "collab/images/001.png").size == (side, side)
    cfg = reference_config(fixtures_root, "codiff")
    z = np.load(tmp_path / "collab/latents.npy")
    assert z.shape == (2, cfg.latent_size, cfg.latent_size, cfg.autoencoder.embed_dim) and np.isfinite(z).all()
    picture = np.asarray(Image.open(tmp_path / "collab/latents.png"))
    assert picture.shape[0] > 2 * 64 and picture.shape[1] > cfg.autoencoder.embed_dim * 64
    assert (tmp_path / "text/grid.png").is_file()


@pytest.mark.slow
def test_long_caption_is_announced(checkpoints, tmp_path, capsys):
    assert (
        run(
            "--checkpoint",
            checkpoints / "text",
            "--text",
            "word " * 100,
            "--steps",
            "2",
            "--batch",
            "1",
            "--out",
            tmp_path / "o",
        )
        == 0
    )
    assert "truncated" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny systems (collaborative, text alone, text alone with NaN weights) and inputs to refuse."""
    root = tmp_path_factory.mktemp("tiny")
    save_system(root / "collab", init_system(load_config("tiny_system.py"), seed=0))
    system = init_system(load_config("tiny_system.py:text"), seed=0)
    save_system(root / "text", system)
    graphdef, state = nnx.split(system)
    save_system(root / "nan", nnx.merge(graphdef, jax.tree.map(lambda x: x * np.nan, state)))
    photo = root / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(photo)
    (root / "foreign").mkdir()
    (root / "foreign/notes.txt").write_text("not ours")
    (root / "a_file").write_text("not a folder")
    png_header_only(root / "bomb.png", 30000, 30000)
    strokes = np.zeros((32, 32), np.uint8)
    strokes[8:24, 15:17] = 255
    Image.fromarray(strokes).save(root / "strokes.png")
    return root


TEXT = ["--text", "a man"]
CASES = {  # name: (checkpoint, arguments, what the message must name)
    "missing_mask": ("collab", ["--mask", "{root}/nope.png"], "no such file"),
    "photo_as_mask": ("collab", ["--mask", "{root}/photo.png"], "--mask"),
    "mask_bomb": ("collab", ["--mask", "{root}/bomb.png"], "more pixels than any face or mask"),
    "empty_caption": ("text", ["--text", "  "], "--text is empty"),
    "caption_without_words": ("text", ["--text", "\U0001f600 \U0001f389"], "no word the text encoder knows"),
    "not_a_checkpoint": ("{root}/foreign", TEXT, "not a cdiff_jax checkpoint"),
    "missing_modality": ("text", ["--mask", str(DEMO_MASK)], "drop --mask"),
    "scribble_without_its_modality": ("collab", TEXT + ["--scribble", "{root}/strokes.png"], "drop --scribble"),
    "no_condition": ("text", [], "give --mask, --text or both"),
    "steps_zero": ("text", TEXT + ["--steps", "0"], "--steps"),
    "steps_not_dividing": ("text", TEXT + ["--steps", "3"], "--steps"),
    "steps_beyond_schedule": ("text", TEXT + ["--steps", "5000"], "--steps"),
    "eta_above_one": ("text", TEXT + ["--eta", "1.5"], "--eta"),
    "eta_nan": ("text", TEXT + ["--eta", "nan"], "--eta"),
    "freeu_three_numbers": ("text", TEXT + ["--freeu", "1.1,1.2,1"], "--freeu 1.1,1.2,1: give four numbers"),
    "sampler_unknown": ("text", TEXT + ["--sampler", "euler"], "--sampler euler: expected one of"),
    "sampler_order": ("text", TEXT + ["--sampler", "dpmpp", "--order", "5"], "--order 5"),
    "eta_with_a_deterministic_sampler": ("text", TEXT + ["--sampler", "unipc", "--eta", "1"], "drop --eta"),
    "sampler_steps_beyond_schedule": ("text", TEXT + ["--sampler", "dpmpp2m", "--steps", "1000"], "--steps 1000"),
    "guidance_inf": ("text", TEXT + ["--guidance", "inf"], "--guidance"),
    "guidance_unknown_modality": ("text", TEXT + ["--guidance", "mask=2"], "--guidance"),
    "guidance_not_a_number": ("text", TEXT + ["--guidance", "text=x"], "--guidance"),
    "mask_scale_zero": ("text", TEXT + ["--mask-scale", "0"], "--mask-scale"),
    "mask_scale_nan": ("text", TEXT + ["--mask-scale", "nan"], "--mask-scale"),
    "columns_zero": ("text", TEXT + ["--columns", "0"], "--columns"),
    "batch_zero": ("text", TEXT + ["--batch", "0"], "--batch"),
    "batch_huge": ("text", TEXT + ["--batch", str(MAX_BATCH + 1)], "--seed"),
    "out_foreign_folder": ("text", TEXT + ["--out", "{root}/foreign"], "--out"),
    "out_is_a_file": ("text", TEXT + ["--out", "{root}/a_file"], "--out"),
    "out_cannot_be_created": ("text", TEXT + ["--out", "/proc/cdiff_out"], "cannot create a folder in /proc"),
    "non_finite_samples": ("nan", TEXT + ["--steps", "2", "--batch", "1"], "not finite"),
}
# Each kind of check once more through the real command line (a subprocess pays seconds of imports).
THROUGH_THE_SCRIPT = (
    "photo_as_mask",
    "mask_bomb",
    "not_a_checkpoint",
    "steps_not_dividing",
    "eta_nan",
    "guidance_inf",
    "sampler_unknown",
    "mask_scale_zero",
    "columns_zero",
    "batch_huge",
    "out_foreign_folder",
    "non_finite_samples",
)


def _case_argv(root, out, case):
    checkpoint, args, _ = CASES[case]
    argv = [
        "--checkpoint",
        str(root / checkpoint) if "{" not in checkpoint else checkpoint.format(root=root),
        *(a.format(root=root) for a in args),
    ]
    return argv if "--out" in args else argv + ["--out", str(out)]


def _assert_refused(code, stderr, case, out, root, before):
    assert code != 0
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and CASES[case][2] in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) <= 3, stderr
    assert not out.exists()
    assert sorted(str(p) for p in root.rglob("*")) == before  # nothing changed, no temporary folder left


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_in_one_line_and_creates_nothing(tiny, tmp_path, capfd, case):
    before = sorted(str(p) for p in tiny.rglob("*"))
    code = main(_case_argv(tiny, tmp_path / "out", case))
    _assert_refused(code, capfd.readouterr().err, case, tmp_path / "out", tiny, before)


@pytest.mark.slow
@pytest.mark.parametrize("case", THROUGH_THE_SCRIPT)
def test_bad_input_through_the_script(tiny, tmp_path, case):
    before = sorted(str(p) for p in tiny.rglob("*"))
    result = subprocess.run(
        [sys.executable, str(REPO / "sample.py"), *_case_argv(tiny, tmp_path / "out", case)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    _assert_refused(result.returncode, result.stderr, case, tmp_path / "out", tiny, before)


def test_edit_is_a_subcommand_of_the_same_script(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "sample.py"),
            "edit",
            "--image",
            str(tmp_path / "none.png"),
            "--text",
            "a man",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"error: --image {tmp_path / 'none.png'}: no such file")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_scribble_joins_mask_and_caption_in_a_three_modality_system(tiny, tmp_path):
    save_system(tmp_path / "three", init_system(load_config("tiny_system.py:three"), seed=0))
    assert (
        run(
            "--checkpoint",
            tmp_path / "three",
            "--mask",
            DEMO_MASK,
            "--text",
            "a man",
            "--scribble",
            tiny / "strokes.png",
            "--steps",
            "2",
            "--batch",
            "1",
            "--save-influence",
            "--out",
            tmp_path / "o",
        )
        == 0
    )
    assert json.loads((tmp_path / "o/settings.json").read_text())["scribble"] == str(tiny / "strokes.png")
    assert (tmp_path / "o/influence_scribble.png").is_file()


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_disk_that_fills_up_while_writing_is_one_line_and_keeps_the_previous_run(tiny, tmp_path, capfd, monkeypatch):
    out = tmp_path / "out"
    argv = ["--checkpoint", str(tiny / "text"), "--text", "a man", "--steps", "2", "--batch", "1", "--out", str(out)]
    assert main(argv) == 0
    previous = _files(out)
    capfd.readouterr()
    real_save_png = viz.save_png

    def fills_up(path, picture):  # the first picture is written, the disk is full at the second
        if any(out.parent.glob(".out.tmp-*/images/*.png")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save_png(path, picture)

    monkeypatch.setattr(viz, "save_png", fills_up)
    assert main(argv) == 1
    assert capfd.readouterr().err.splitlines() == [
        f"error: cannot write {out}: No space left on device; nothing was written (free space or choose another --out)"
    ]
    assert _files(out) == previous and list(tmp_path.iterdir()) == [out]  # no temporary folder left beside it


def test_a_disk_that_fills_up_while_editing_is_one_line_and_keeps_the_finished_stages(
    tiny, tmp_path, capfd, monkeypatch
):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(viz, "save_png", full)  # input.png, the first picture an edit writes
    out = tmp_path / "edit"
    assert (
        main(
            [
                "edit",
                "--checkpoint",
                str(tiny / "collab"),
                "--image",
                str(tiny / "photo.png"),
                "--text",
                "a man",
                "--out",
                str(out),
            ]
        )
        == 1
    )
    assert capfd.readouterr().err.splitlines() == [
        f"error: cannot write {out}: No space left on device; the finished stages are kept (free space, then run "
        "again to resume)"
    ]
