"""A training run whose --workdir is a bucket (gs://bucket/run), without a network: a fake store that keeps
gs://BUCKET/KEY in a local folder ROOT/BUCKET/KEY, behind both of the ways our files reach GCS (etils.epath's gs://
backend, and tensorstore's GCS driver under orbax). Every path keeps its gs:// name up to the fake, so the code
takes its remote branches (no write probe, no renames, uploads of the metrics files) as on a TPU pod."""

import json
import logging
import os

import pytest
from conftest import REPO
from etils.epath import backend, gpath
from orbax.checkpoint._src.path import gcs_utils

from cdiff_jax.config import load_config
from cdiff_jax.paths import creatable_parent, is_remote, output_path
from cdiff_jax.train import trainer
from cdiff_jax.train.metrics import CSV_NAME, JSONL_NAME, MetricsWriter

pytestmark = pytest.mark.slow


class LocalBucket(backend._OsPathBackend):
    """epath's backend for gs:// paths, each object a file under `root`."""

    def __init__(self, root):
        self.root = str(root)
        self.calls = 0

    def local(self, path) -> str:
        path = os.fspath(path)
        assert path.startswith("gs://"), path  # a local path routed here would be a bug of the fake's
        self.calls += 1
        return os.path.join(self.root, path.removeprefix("gs://"))

    def remote(self, local) -> str:
        return "gs://" + os.path.relpath(local, self.root)

    def open(self, path, mode):
        return super().open(self.local(path), mode)

    def exists(self, path):
        return super().exists(self.local(path))

    def isdir(self, path):
        return super().isdir(self.local(path))

    def listdir(self, path):
        return super().listdir(self.local(path))

    def glob(self, path):
        return [self.remote(p) for p in super().glob(self.local(path))]

    def walk(self, top, *, top_down=True, on_error=None):
        for root, dirs, files in super().walk(self.local(top), top_down=top_down, on_error=on_error):
            yield self.remote(root), dirs, files

    def makedirs(self, path, *, exist_ok=False, mode=None):
        return super().makedirs(self.local(path), exist_ok=exist_ok, mode=mode)

    def mkdir(self, path, *, exist_ok=False, mode=None):
        return super().mkdir(self.local(path), exist_ok=exist_ok, mode=mode)

    def rmtree(self, path):
        return super().rmtree(self.local(path))

    def remove(self, path):
        return super().remove(self.local(path))

    def rename(self, path, dst):
        return super().rename(self.local(path), self.local(dst))

    def replace(self, path, dst):
        return super().replace(self.local(path), self.local(dst))

    def copy(self, path, dst, overwrite):
        return super().copy(self.local(path), self.local(dst), overwrite=overwrite)

    def stat(self, path):
        return super().stat(self.local(path))


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """The fake store's root folder; the test runs in an empty folder of its own, where a gs:// path mistaken for
    a local one would make a folder named `gs:`."""
    store = LocalBucket(tmp_path / "store")
    (tmp_path / "store").mkdir()
    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", store)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # epath's own choice would be tf's gfile
    monkeypatch.setattr(
        gcs_utils, "get_kvstore_for_gcs", lambda path: {"driver": "file", "path": store.local(os.fspath(path))}
    )
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return store


def test_remote_paths_stay_remote(bucket):
    path = output_path("gs://bucket/run")
    assert is_remote(path) and str(path) == "gs://bucket/run" and str(path / "train") == "gs://bucket/run/train"
    assert str(creatable_parent(path / "probe")) == "gs://bucket/run"  # nothing probed: no request at all
    assert bucket.calls == 0
    assert str(output_path("run")) == os.path.join(os.getcwd(), "run")  # local ones as ever


def test_metrics_are_uploaded_whole_and_resume_from_the_store(bucket):
    root = bucket.root + "/bucket/run/train"
    with MetricsWriter("gs://bucket/run/train", resume_step=0) as writer:
        writer.write(1, {"loss": 1.0})
        writer.write(2, {"loss": 0.5})
        assert [json.loads(line)["step"] for line in open(f"{root}/{JSONL_NAME}")] == [1, 2]  # at each flush
    with MetricsWriter("gs://bucket/run/train", resume_step=1) as writer:  # step 2 was after the checkpoint
        writer.write(2, {"loss": 0.25})
    assert [json.loads(line)["loss"] for line in open(f"{root}/{JSONL_NAME}")] == [1.0, 0.25]
    assert open(f"{root}/{CSV_NAME}").read().splitlines()[0] == "step,time,loss"
    assert len([n for n in os.listdir(root) if n.startswith("events.out.tfevents.")]) == 2
    assert os.listdir(".") == []


def test_a_run_in_a_bucket_writes_everything_there(bucket, data_dir, caplog):
    workdir = "gs://bucket/run"
    assert trainer.train(_tiny(data_dir), workdir) == 0
    run = os.path.join(bucket.root, "bucket", "run")
    assert sorted(os.listdir(run)) == ["checkpoints", "samples", "system", "train", "train_config.json", "val"]
    assert os.listdir(os.path.join(run, "checkpoints")) == ["2"]
    assert "commit_success.txt" in os.listdir(os.path.join(run, "checkpoints", "2"))  # GCS's completion marker
    assert os.listdir(os.path.join(run, "samples")) == ["0000002.png"]
    assert sorted(os.listdir(os.path.join(run, "system"))) == ["config.json", "params"]
    for logs in ("train", "val"):
        names = os.listdir(os.path.join(run, logs))
        assert {JSONL_NAME, CSV_NAME} <= set(names) and any(n.startswith("events.out.tfevents.") for n in names)
    assert [json.loads(line)["step"] for line in open(os.path.join(run, "train", JSONL_NAME))] == [2]  # one row a call
    assert os.listdir(".") == []  # no local folder named gs:
    # A longer run resumes from the store's checkpoint, its metrics continued there.
    with caplog.at_level(logging.INFO, logger="cdiff_jax"):
        assert trainer.train(_tiny(data_dir, steps=4), workdir) == 0
    assert "resumed from gs://bucket/run/checkpoints/2" in caplog.messages
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["2", "4"]
    assert [json.loads(line)["step"] for line in open(os.path.join(run, "train", JSONL_NAME))] == [2, 4]
    assert os.listdir(".") == []


def _tiny(data_dir, steps=2):
    """configs/train_tiny.py for `steps` steps, two to a call, validating, sampling and saving every two."""
    return load_config(str(REPO / "configs/train_tiny.py")).replace(
        data_dir=str(data_dir), steps=steps, steps_per_call=2, sample_every=2, val_every=2, checkpoint_every=2
    )
