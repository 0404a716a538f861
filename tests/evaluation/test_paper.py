"""The papers' evaluation command end to end: the demo system on a tiny prepared dataset, scored by the
metric networks of the reference fixtures (random weights: the numbers mean nothing, the wiring does)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy
from conftest import REPO, lpips_state_dict
from PIL import Image
from torch_files import full_file
from trainer_runs import prepared_noise_faces

from cdiff_jax.evaluation import paper
from cdiff_jax.evaluation.metrics import load_metric_networks, per_example_scores
from cdiff_jax.requests import DEMO_CHECKPOINT, DEMO_DDGI_HEADS, DEMO_GAN

pytestmark = pytest.mark.slow

RESOLUTION, EXAMPLES, TEST_SIZE, COUNT, BATCH = 64, 6, 4, 3, 2
METHODS = ("collaborative (released)", "DDGI")  # the uni-modal rows run through the same program in test_miniature


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_noise_faces(tmp_path_factory.mktemp("faces"), EXAMPLES, RESOLUTION, TEST_SIZE)


@pytest.fixture(scope="module")
def weights(fixtures_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("metric_networks")
    files = {
        name: full_file(fixtures_root / fixture, folder)
        for name, fixture in (
            ("inception", "fid_inception"),
            ("parser", "bisenet_parsing"),
            ("clip", "clip_tiny"),
            ("arcface", "arcface_irse50"),
        )
    }
    files["lpips"] = folder / "lpips.safetensors"
    safetensors.numpy.save_file(lpips_state_dict(np.random.default_rng(0)), files["lpips"])
    return {name: str(path) for name, path in files.items()}


def argv(data, weights, out, *extra, ddgi=True):
    args = [
        "--data",
        str(data),
        "--resolution",
        str(RESOLUTION),
        "--test-size",
        str(TEST_SIZE),
        "--checkpoint",
        str(DEMO_CHECKPOINT),
        "--count",
        str(COUNT),
        "--batch",
        str(BATCH),
        "--steps",
        "2",
        "--methods",
        *METHODS,
        "--out",
        str(out),
    ]
    if ddgi:
        args += ["--ddgi-heads", str(DEMO_DDGI_HEADS), "--ddgi-gan", str(DEMO_GAN)]
    for name, path in weights.items():
        args += [f"--{name}", path]
    return args + list(extra)


@pytest.fixture(scope="module")
def first_run(data, weights, tmp_path_factory):
    """The run's folder, its results.json, and the metric networks the run loaded (kept so that the checks
    below score with the very networks, and the programs compiled for them, that the run used)."""
    out = tmp_path_factory.mktemp("paper")
    loaded = []

    def load_and_keep(paths):
        loaded.append((dict(paths), load_metric_networks(paths)))
        return loaded[-1][1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paper, "load_metric_networks", load_and_keep)
        assert paper.main(argv(data, weights, out)) == 0
    (paths, networks), *others = loaded
    assert paths == weights and not others  # each network from its own file, loaded once
    return out, json.loads((out / "results.json").read_text()), networks


def paired_scores(networks, images, examples) -> dict[str, np.ndarray]:
    """Each image scored against the example at its own index, BATCH at a time (the run's batch shape, so the
    metric programs it compiled are reused), the last batch padded with its last row."""
    scores = {}
    for start in range(0, len(images), BATCH):
        rows = np.minimum(np.arange(start, start + BATCH), len(images) - 1)
        kept = min(BATCH, len(images) - start)
        for name, values in per_example_scores(
            networks, images[rows], {k: v[rows] for k, v in examples.items()}
        ).items():
            scores.setdefault(name, []).append(np.asarray(values)[:kept])
    return {name: np.concatenate(values) for name, values in scores.items()}


def test_every_column_is_computed_from_the_right_images(first_run, data):
    out, recorded, networks = first_run
    results = recorded["results"]
    assert list(results) == ["real images", *METHODS]
    for row in results.values():
        assert {"clip_score", "mask_accuracy", "miou", "lpips", "ssim", "identity"} <= set(row)
    for method in METHODS:
        assert "fid" in results[method] and results[method]["fid"]["mean"] > 0
    # The real images against themselves: no perceptual distance, full structure and identity.
    real = results["real images"]
    assert max(real["lpips"]["per_image"]) < 1e-6
    np.testing.assert_allclose(real["ssim"]["per_image"], 1.0, atol=1e-5)
    np.testing.assert_allclose(real["identity"]["per_image"], 1.0, atol=1e-5)

    # Example i's scores are those of sample i against triple i, and not of another pairing.
    examples = paper.evaluation_examples(str(data), RESOLUTION, TEST_SIZE, COUNT)
    method = paper.DDGI_METHOD
    images = paper.read_samples(out, method, COUNT)
    direct = paired_scores(networks, images, examples)
    shuffled = paired_scores(networks, images[::-1].copy(), examples)
    for name in ("clip_score", "mask_accuracy", "lpips", "ssim", "identity"):
        # Another batch composition may round differently (a CLIP score is 100 cosines: 1e-5 of it is float32 noise).
        np.testing.assert_allclose(results[method.name][name]["per_image"], direct[name], rtol=1e-4, atol=1e-4)
        assert not np.allclose(direct[name], shuffled[name], rtol=1e-4, atol=1e-4), name
    table = (out / "table.md").read_text()
    assert all(title in table for title in ("FID", "CLIP score", "mask accuracy", "mIoU", "LPIPS", "SSIM", "ID"))
    assert (out / "results.csv").read_text().count("\n") == 1 + len(results)


def test_a_rerun_continues_and_gives_the_same_table(first_run, data, weights, tmp_path):
    out, recorded, _ = first_run
    missing = paper.sample_path(out, paper.METHODS[-1], COUNT - 1)
    kept = paper.sample_path(out, paper.METHODS[-1], 0)
    kept_time = kept.stat().st_mtime_ns
    missing.unlink()
    assert paper.main(argv(data, weights, out)) == 0
    assert missing.is_file() and kept.stat().st_mtime_ns == kept_time
    assert json.loads((out / "results.json").read_text()) == recorded

    # Two devices sample the same collaborative images (sampling only: no metric networks, and no DDGI parts to
    # load for a row it does not make).
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    sharded = tmp_path / "sharded"
    method = paper.METHODS[-1]
    command = [
        sys.executable,
        "-m",
        "cdiff_jax.evaluation.paper",
        *argv(data, {}, sharded, ddgi=False),
        "--methods",
        method.name,
    ]
    run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    for i in range(COUNT):
        ours = np.asarray(Image.open(paper.sample_path(sharded, method, i)), np.int16)
        theirs = np.asarray(Image.open(paper.sample_path(out, method, i)), np.int16)
        assert np.abs(ours - theirs).max() <= 1, i  # the last float bit may round one pixel value apart


def test_bad_input_is_one_line_before_any_work(data, weights, tmp_path, capsys):
    cases = [
        (["--count", str(TEST_SIZE + 1)], f"holds {TEST_SIZE} examples"),
        (["--methods", "magic"], "--methods magic: expected some of"),
        (["--ddgi-at-step", "3"], "--ddgi-at-step 3: give 1..2"),
        (["--resolution", "32"], "the system makes 64x64 images"),
        (["--parser", weights["inception"]], "not face-parsing BiSeNet weights"),
        (["--data", str(tmp_path / "nothing")], "no prepared celeba_multimodal"),
    ]
    for extra, fragment in cases:
        out = tmp_path / "out"
        code = paper.main(argv(data, weights, out, *extra))
        err = capsys.readouterr().err
        assert code == 2 and fragment in err and err.count("\n") == 1, err
        assert not out.exists()


def test_the_sampler_and_its_order_reach_every_method(data, weights, tmp_path):
    protocol, out = paper.validate(paper.parse_args(argv(data, weights, tmp_path / "out", "--sampler", "dpmpp3m")))
    assert (protocol.sampler, protocol.order, protocol.eta) == ("dpmpp", 3, 0.0)
    assert protocol.sampling().order == 3 and not out.exists()
