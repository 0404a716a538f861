"""`sample.py gan`: a generator checkpoint's samples, their W+ codes, truncation, and bad input in one line."""

import errno
import json
import os

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from cdiff_jax.checkpoint import save_generator
from cdiff_jax.commands.sample import main
from cdiff_jax.config import StyleGAN2Config
from cdiff_jax.nn.stylegan2 import Generator

TINY = StyleGAN2Config(z_dim=8, w_dim=8, img_resolution=8, mapping_layers=1, channel_base=32, channel_max=8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    generator = Generator(TINY, rngs=nnx.Rngs(0))
    generator.mapping.w_avg.set_value(np.full(8, 0.5, np.float32))
    return save_generator(tmp_path_factory.mktemp("gan") / "generator", generator)


def test_samples_codes_and_settings(checkpoint, tmp_path):
    out = tmp_path / "out"
    assert main(["gan", "--checkpoint", str(checkpoint), "--count", "3", "--seed", "1", "--out", str(out)]) == 0
    ws = np.load(out / "ws.npy")
    assert ws.shape == (3, TINY.num_ws, TINY.w_dim) and not np.allclose(ws[0], ws[1])
    assert np.all(ws == ws[:, :1])  # one w per sample, broadcast over W+
    images = [np.asarray(Image.open(out / "images" / f"{i:03d}.png")) for i in range(3)]
    assert images[0].shape == (8, 8, 3) and (out / "grid.png").is_file()
    assert json.loads((out / "settings.json").read_text())["seed"] == 1
    again = tmp_path / "again"
    assert main(["gan", "--checkpoint", str(checkpoint), "--count", "3", "--seed", "1", "--out", str(again)]) == 0
    np.testing.assert_array_equal(np.load(again / "ws.npy"), ws)


def test_truncation_zero_gives_the_average_code(checkpoint, tmp_path):
    assert (
        main(
            [
                "gan",
                "--checkpoint",
                str(checkpoint),
                "--count",
                "2",
                "--truncation",
                "0",
                "--out",
                str(tmp_path / "avg"),
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(np.load(tmp_path / "avg/ws.npy"), 0.5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--count", "0"], "--count 0"),
        (["--truncation-cutoff", "99"], "has 4 W+ rows"),
        (["--checkpoint", "/nonexistent"], "is not a StyleGAN2 generator checkpoint"),
    ],
)
def test_bad_input_fails_in_one_line_and_writes_nothing(checkpoint, tmp_path, capsys, args, message):
    argv = ["gan", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_without_a_checkpoint_the_shipped_toy_gan_draws_toy_faces(tmp_path):
    out = tmp_path / "out"
    assert main(["gan", "--count", "2", "--out", str(out)]) == 0
    image = np.asarray(Image.open(out / "images" / "000.png"))
    assert image.shape == (64, 64, 3) and image.std() > 10


def test_a_disk_that_fills_up_while_writing_is_one_line_and_writes_nothing(checkpoint, tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", full)  # ws.npy, after the pictures
    out = tmp_path / "out"
    assert main(["gan", "--checkpoint", str(checkpoint), "--count", "2", "--out", str(out)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: cannot write {out}: No space left on device; nothing was written (free space or choose another --out)"
    ]
    assert list(tmp_path.iterdir()) == []
