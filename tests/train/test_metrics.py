"""TensorBoard event files (tensorboardX) and jsonl/csv logs."""

import csv
import errno
import json
import math
import textwrap

import numpy as np
import pytest
import tensorboardX.record_writer
from event_files import images, read_events, scalars, texts

from cdiff_jax import viz
from cdiff_jax.train import metrics
from cdiff_jax.train.metrics import MetricsWriter

STEPS = [(1, {"loss": 0.731, "lr": 1e-4}), (2, {"loss": 0.52, "lr": 2e-4}), (10, {"loss": 0.0213, "lr": 3e-4})]


def _write_run(run_dir, steps=STEPS, **kwargs):
    with MetricsWriter(run_dir, **kwargs) as writer:
        for step, scalars_ in steps:
            writer.write(step, scalars_)


def test_scalars_reach_the_event_file(tmp_path):
    _write_run(tmp_path)
    (path,) = tmp_path.glob("events.out.tfevents.*")
    assert read_events(path)[0].file_version == "brain.Event:2"
    assert scalars(path) == {tag: [(step, float(np.float32(s[tag]))) for step, s in STEPS] for tag in ("loss", "lr")}
    assert all(e.wall_time > 1.6e9 for e in read_events(path))


def test_sample_grid_and_settings_reach_the_event_file(tmp_path):
    grid = (np.arange(5 * 7 * 3) % 256).astype(np.uint8).reshape(5, 7, 3)
    viz.save_png(tmp_path / "grid.png", grid)
    settings = {"stage": "collab", "steps": 6, "init_from": [["autoencoder", "ae/system"]]}
    with MetricsWriter(tmp_path / "run") as writer:
        writer.write_config(0, settings)
        writer.write(4, {"loss": 0.5})
        writer.write_image(4, "samples", tmp_path / "grid.png")
    ((step, image),) = images(tmp_path / "run")["samples"]
    assert step == 4
    np.testing.assert_array_equal(image, grid)
    ((step, text),) = texts(tmp_path / "run")["config"]
    assert step == 0 and json.loads(textwrap.dedent(text)) == settings
    assert all(line.startswith("    ") for line in text.splitlines())  # a Markdown code block: shown verbatim


def test_float32_overflow_and_nan_are_stored(tmp_path):
    _write_run(tmp_path, [(1, {"grad_norm": 1e39, "r1": math.nan}), (2, {"grad_norm": -1e39, "r1": 0.5})])
    logged = scalars(tmp_path)
    assert logged["grad_norm"] == [(1, math.inf), (2, -math.inf)]
    assert math.isnan(logged["r1"][0][1]) and logged["r1"][1] == (2, 0.5)


def test_jsonl_and_csv(tmp_path):
    _write_run(tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "time"} for r in records] == [{"step": s, **x} for s, x in STEPS]
    assert all(r["time"] > 1.6e9 for r in records)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "time", "loss", "lr"]
    assert [[int(r[0]), float(r[2]), float(r[3])] for r in rows[1:]] == [[s, x["loss"], x["lr"]] for s, x in STEPS]
    assert [float(r[1]) for r in rows[1:]] == [r["time"] for r in records]


def test_a_writer_started_in_the_same_second_keeps_the_first_ones_events(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics.time, "time", lambda: 1_700_000_000.0)  # tensorboardX names files by it too
    _write_run(tmp_path, STEPS[:2])
    _write_run(tmp_path, [(3, {"lr": 5e-4, "loss": 0.4})])  # resumed run, keys in another order
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    assert scalars(tmp_path)["loss"] == [(1, np.float32(0.731)), (2, np.float32(0.52)), (3, np.float32(0.4))]
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "time", "loss", "lr"] and [r[0] for r in rows[1:]] == ["1", "2", "3"]
    assert rows[3][2:] == ["0.4", "0.0005"]


def test_csv_columns_are_fixed_by_the_first_write(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write(1, {"loss": 1.0, "lr": 0.1})
        writer.write(2, {"loss": 0.5})
        with pytest.raises(ValueError, match=r"new key\(s\) \['eval_loss'\]"):
            writer.write(3, {"loss": 0.4, "eval_loss": 0.6})
        with pytest.raises(ValueError, match="reserved"):
            writer.write(3, {"time": 1.0})
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [r[0::2] for r in csv.reader(f)] == [["step", "loss"], ["1", "1.0"], ["2", "0.5"]]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert scalars(tmp_path) == {"loss": [(1, 1.0), (2, 0.5)], "lr": [(1, np.float32(0.1))]}


def test_disabled_writer_writes_nothing(tmp_path):
    with MetricsWriter(tmp_path / "run", enabled=False) as writer:
        writer.write(1, {"loss": 1.0})
        writer.write_config(0, {"steps": 1})
        writer.write_image(1, "samples", tmp_path / "absent.png")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("checkpoint", [1, 0])
def test_a_resumed_writer_drops_the_rows_a_killed_run_wrote_after_its_checkpoint(tmp_path, checkpoint):
    """0: the run was killed before its first checkpoint, and restarts from the beginning."""
    _write_run(tmp_path, STEPS)  # steps 1, 2 and 10 logged, then the run killed
    with MetricsWriter(tmp_path, resume_step=checkpoint) as writer:
        writer.write(checkpoint + 1, {"loss": 0.5, "lr": 1e-3})
    kept = [1, 2] if checkpoint else [1]
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == kept
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [r[0] for r in csv.reader(f)] == ["step", *map(str, kept)]
    # TensorBoard purges the killed run's events from the resumed step on, as told by a START at that step.
    starts = [e.step for e in read_events(tmp_path) if e.HasField("session_log")]
    assert starts == [checkpoint + 1]


def test_a_full_disk_under_the_event_file_raises_in_the_caller(tmp_path, monkeypatch):
    """The event file is written on the calling thread: a full disk is an OSError of `write` (which the trainer
    reports in one line), not a dead writer thread that leaves the next writes waiting forever."""
    monkeypatch.setattr(tensorboardX.record_writer, "open_file", lambda path: open("/dev/full", "wb"))
    writer = MetricsWriter(tmp_path)
    with pytest.raises(OSError) as raised:
        for step in range(1, 4):
            writer.write(step, {"loss": 0.5})
    assert raised.value.errno == errno.ENOSPC
