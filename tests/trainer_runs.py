"""What the trainer's test modules share: a tiny prepared dataset (the `data_dir` fixture, a plugin of
tests/conftest.py) and train.py run in a subprocess."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO
from flax import nnx
from PIL import Image

from cdiff_jax.checkpoint import load_system
from cdiff_jax.commands.train import parse_overrides
from cdiff_jax.config import load_config
from cdiff_jax.data.celeba_multimodal import build_dataset
from cdiff_jax.data.masks import save_label_png
from cdiff_jax.train import trainer

EXAMPLES = 18


def prepared_noise_faces(root, examples: int, resolution: int, test_size: int):
    """A prepared dataset of noise images with random 32x32 masks and numbered captions, in root/tfds."""
    rng = np.random.default_rng(0)
    for sub in ("image", "mask", "text"):
        (root / "manual" / sub).mkdir(parents=True)
    captions = {}
    for i in range(examples):
        Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(
            root / "manual/image" / f"{i}.png"
        )
        save_label_png(root / "manual/mask" / f"{i}.png", rng.integers(0, 19, (32, 32)).astype(np.uint8))
        captions[f"{i}.png"] = {"Beard_and_Age": f"This man has beard of length {i}. He is in his thirties."}
    (root / "manual/text/captions.json").write_text(json.dumps(captions))
    build_dataset(root / "manual", root / "tfds", resolution=resolution, test_size=test_size)
    return root / "tfds"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_noise_faces(tmp_path_factory.mktemp("toy"), EXAMPLES, 32, 2)


def train_cmd(workdir, data_dir, *sets, config="configs/train_tiny.py"):
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "--config",
        str(REPO / config),
        "--workdir",
        str(workdir),
        "--set",
        f"data_dir={data_dir}",
    ]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def run_train(workdir, data_dir, *sets, env=None, config="configs/train_tiny.py"):
    result = subprocess.run(
        train_cmd(workdir, data_dir, *sets, config=config), capture_output=True, text=True, env=env, cwd=REPO
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def train_here(workdir, data_dir, *sets, config="configs/train_tiny.py"):
    """`run_train` in this process, for runs that are not the command line under test: a subprocess imports and
    traces everything again (a test process has the devices `run_train`'s subprocess inherits)."""
    cfg = load_config(str(REPO / config)).replace(data_dir=str(data_dir), **parse_overrides(list(sets)))
    assert trainer.train(cfg, workdir) == 0


def trained_params(workdir):
    return jax.tree.map(np.asarray, nnx.state(load_system(workdir / "system"), nnx.Param))
