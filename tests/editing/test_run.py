"""`sample.py edit`: a resumable run directory, re-sampling without recomputation, and bad input."""

import json
import pathlib
import shutil

import numpy as np
import pytest
from conftest import reference_system
from PIL import Image

from cdiff_jax.checkpoint import load_config, save_system
from cdiff_jax.data.masks import save_label_png
from cdiff_jax.editing import run as edit_run

pytestmark = pytest.mark.slow

CAPTION = "This man has a very long beard. He is in his seventies."
FAST = [
    "--embedding-iterations",
    "4",
    "--finetune-iterations",
    "3",
    "--chunk",
    "1",
    "--steps",
    "4",
    "--embedding-lr",
    "1e-2",
    "--finetune-lr",
    "1e-4",
]


@pytest.fixture(scope="module")
def inputs(fixtures_root, tmp_path_factory):
    """The official architecture (converted fixture weights, any fixture layout) and inputs of its size."""
    root = tmp_path_factory.mktemp("edit_inputs")
    system = reference_system(fixtures_root, "codiff")
    save_system(root / "codiff", system)
    side = system.cfg.latent_size * system.cfg.autoencoder.downsample_factor
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / "face.png")
    Image.fromarray(rng.integers(0, 256, (side - 1, side, 3), dtype=np.uint8)).save(root / "odd.png")
    save_label_png(root / "mask.png", rng.integers(0, 19, (side, side)).astype(np.uint8))
    return root


def edit(inputs, out, *extra, image="face.png"):
    return edit_run.main(
        [
            "--checkpoint",
            str(inputs / "codiff"),
            "--image",
            str(inputs / image),
            "--text",
            CAPTION,
            "--mask",
            str(inputs / "mask.png"),
            "--out",
            str(out),
            *FAST,
            *extra,
        ]
    )


def sweep_pictures(out):
    (sweep,) = (out / "sweeps").iterdir()
    return sweep, {p.name: np.asarray(Image.open(p)) for p in sorted(sweep.glob("alpha*.png"))}


@pytest.fixture(scope="module")
def finished(inputs, tmp_path_factory):
    """An edit run to the end without interruption."""
    out = tmp_path_factory.mktemp("finished") / "edit"
    assert edit(inputs, out, "--alphas", "0,1,1.5") == 0
    return out


def copy_of(run, tmp_path):
    return pathlib.Path(shutil.copytree(run, tmp_path / "copy"))


def test_interrupted_edit_resumes_after_stage_a_with_the_same_result(inputs, finished, tmp_path, monkeypatch, capsys):
    whole_sweep, whole = sweep_pictures(finished)
    assert len(whole) == 3 and (whole_sweep / "sweep.png").is_file()
    assert json.loads((whole_sweep / "sweep.json").read_text())["alphas"]["text"] == [0.0, 1.0, 1.5]
    for name in (
        "input.png",
        "reconstruction.png",
        "edit.json",
        "mask/embeddings",
        "text/expert",
        "text/losses_embedding.json",
        "text/losses_finetune.json",
    ):
        assert (finished / name).exists(), name

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed during stage B")

    monkeypatch.setattr(edit_run, "finetune_expert", killed)
    with pytest.raises(KeyboardInterrupt):
        edit(inputs, tmp_path / "resumed", "--alphas", "0,1,1.5")
    assert (tmp_path / "resumed/mask/embeddings").is_dir() and not (tmp_path / "resumed/mask/expert").exists()
    monkeypatch.undo()

    calls = []
    real_stage_a = edit_run.optimise_embedding

    def counted(*args, **kwargs):
        calls.append(args[3].shape)  # the target context [1, tokens, width]: tokens differ between the modalities
        return real_stage_a(*args, **kwargs)

    monkeypatch.setattr(edit_run, "optimise_embedding", counted)
    assert edit(inputs, tmp_path / "resumed", "--alphas", "0,1,1.5") == 0
    text_tokens = load_config(inputs / "codiff").modalities["text"].encoder.max_len
    assert [shape[1] for shape in calls] == [text_tokens]  # the mask's stage A came from disk; only the text's ran
    assert "resuming the edit" in capsys.readouterr().err
    _, resumed = sweep_pictures(tmp_path / "resumed")
    for name, picture in whole.items():
        np.testing.assert_array_equal(resumed[name], picture, err_msg=name)


def test_other_alphas_sample_again_without_recomputing(inputs, finished, tmp_path, monkeypatch):
    run = copy_of(finished, tmp_path)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(edit_run, "optimise_embedding", must_not_run)
    monkeypatch.setattr(edit_run, "finetune_expert", must_not_run)
    assert (
        edit(inputs, run, "--alphas", "text:0,2", "--alphas", "mask:1,1", "--mode", "plain", "--sampler", "dpmpp2m")
        == 0
    )
    sweeps = sorted((run / "sweeps").iterdir())
    assert len(sweeps) == 2
    records = [json.loads((s / "sweep.json").read_text()) for s in sweeps]
    assert {tuple(r["alphas"]["text"]) for r in records} == {(0.0, 1.0, 1.5), (0.0, 2.0)}
    assert {(r["solver"], r["order"], r["eta"]) for r in records} == {("ddim", None, 1.0), ("dpmpp", 2, 0.0)}


def test_a_directory_holding_another_edit_is_refused(inputs, finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert edit(inputs, run, "--alphas", "1", "--seed", "3") == 2
    assert "holds another edit (it differs in seed)" in capsys.readouterr().err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


@pytest.mark.parametrize(
    "extra, image, message",
    [
        ((), "odd.png", "needs sides that are multiples of"),
        ((), "missing.png", "no such file"),
        (("--alphas", "text:0,1"), "face.png", "alphas for mask"),
        (("--alphas", "text:0,1", "--alphas", "mask:1"), "face.png", "same, non-zero number of alphas"),
        (("--steps", "3"), "face.png", "divides 1000"),
        (("--sampler", "unipc", "--eta", "0.5"), "face.png", "drop --eta"),
    ],
)
def test_bad_input_fails_early_and_writes_nothing(inputs, tmp_path, capsys, extra, image, message):
    assert edit(inputs, tmp_path / "out", *extra, image=image) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_sweep_runs_from_the_optimised_embedding_to_the_target(inputs, finished):
    cfg = load_config(inputs / "codiff")
    side = cfg.latent_size * cfg.autoencoder.downsample_factor
    _, pictures = sweep_pictures(finished)
    first, last = (pictures[name] for name in sorted(pictures)[:2])
    assert first.shape == last.shape == (side, side, 3)
    assert np.abs(first.astype(int) - last.astype(int)).max() > 0  # optimised and target embeddings differ
