"""FID as pytorch-fid computes it: its statistics and distances, and the command on image folders."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, assert_close_rel
from PIL import Image
from torch_files import full_file

from cdiff_jax.evaluation.fid import main
from cdiff_jax.evaluation.frechet import frechet_distance, gaussian_statistics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(fixtures_root):
    return dict(np.load(fixtures_root / "fid_inception" / "io.npz"))


@pytest.fixture(scope="module")
def weights(fixtures_root, tmp_path_factory):
    return full_file(fixtures_root / "fid_inception", tmp_path_factory.mktemp("inception"))


def test_statistics_and_distance_equal_pytorch_fids(reference):
    cases = sorted({key.split("_")[1] for key in reference if key.startswith("fidmetric_")})
    assert cases, "the fixture holds no fidmetric_<case>_* arrays"
    for case in cases:
        get = lambda name: reference[f"fidmetric_{case}_{name}"]  # noqa: E731
        stats = [gaussian_statistics(get("feats1")), gaussian_statistics(get("feats2"))]
        for (mu, sigma), which in zip(stats, "12"):
            np.testing.assert_allclose(mu, get(f"mu{which}"), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(sigma, get(f"sigma{which}"), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(frechet_distance(*stats[0], *stats[1]), get("fid"), rtol=1e-8)
        assert abs(frechet_distance(*stats[0], *stats[0]) - get("fid_self")) < 1e-8 * get("fid")


def _write_folder(folder, images_nchw):
    """The fixture's inputs are uint8 / 255 exactly, so PNGs hold them without loss."""
    folder.mkdir()
    for i, image in enumerate(images_nchw):
        pixels = np.rint(np.transpose(image, (1, 2, 0)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return folder


def _fid_line(text):
    return float(next(line for line in text.splitlines() if line.startswith("FID:")).split()[1])


def test_folders_and_statistics_files_give_the_references_fid(reference, weights, tmp_path, capsys):
    inputs = sorted(key.removeprefix("pool3_") for key in reference if key.startswith("pool3_"))
    folders = [_write_folder(tmp_path / name, reference[name]) for name in inputs[:2]]
    expected = frechet_distance(
        *gaussian_statistics(reference[f"pool3_{inputs[0]}"]), *gaussian_statistics(reference[f"pool3_{inputs[1]}"])
    )

    stats = tmp_path / "out" / "first.npz"
    assert main([str(folders[0]), str(stats), "--save-stats", "--weights", str(weights)]) == 0
    with np.load(stats) as saved:
        mu, sigma = gaussian_statistics(reference[f"pool3_{inputs[0]}"])
        assert_close_rel(saved["mu"], mu, tol=1e-4, name="mu")
        assert_close_rel(saved["sigma"], sigma, tol=2e-4, name="sigma")
    capsys.readouterr()
    assert main([str(stats), str(folders[1]), "--weights", str(weights), "--batch-size", "3"]) == 0
    from_stats = _fid_line(capsys.readouterr().out)
    assert_close_rel(from_stats, expected, tol=1e-3, name="FID")

    # The command as users run it, on four devices with a batch that does not divide the folder.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdiff_jax.evaluation.fid",
            *map(str, folders),
            "--weights",
            str(weights),
            "--batch-size",
            "3",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    assert_close_rel(_fid_line(run.stdout), from_stats, tol=1e-5, name="FID on four devices")


def test_bad_input_is_one_line_before_any_work(reference, weights, tmp_path, capsys):
    mixed = _write_folder(tmp_path / "mixed", reference[next(k for k in reference if k.startswith("x"))][:2])
    Image.new("RGB", (17, 9)).save(mixed / "999.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    not_stats = tmp_path / "other.npz"
    np.savez(not_stats, features=np.zeros(3))
    lpips_like = tmp_path / "vgg.pth"
    lpips_like.write_bytes(b"not a torch file")
    cases = [
        ([str(mixed), str(mixed)], "999.png is 17x9 but"),
        ([str(empty), str(mixed)], "holds 0 image(s)"),
        ([str(tmp_path / "missing"), str(mixed)], "no such folder"),
        ([str(not_stats), str(mixed)], "not FID statistics; expected arrays mu and sigma"),
    ]
    for argv, fragment in cases:
        assert main([*argv, "--weights", str(weights)]) == 2
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1, err
    assert main([str(mixed), str(mixed), "--weights", str(lpips_like)]) == 2
    assert "vgg.pth" in capsys.readouterr().err

    existing = tmp_path / "taken.npz"
    existing.write_bytes(b"ours")
    with pytest.raises(SystemExit):
        main([str(mixed), str(existing), "--save-stats", "--weights", str(weights)])
    assert "exists" in capsys.readouterr().err and existing.read_bytes() == b"ours"
