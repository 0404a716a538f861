"""Training observability: TensorBoard event files (through tensorboardX) and metrics.jsonl / metrics.csv (the
console line is `cdiff_jax.progress.ProgressLine`). A remote run directory (gs://...) gets whole-file uploads of
local copies at each flush (`MetricsWriter` says why and what that costs)."""

from __future__ import annotations

import csv
import json
import logging
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Mapping

import numpy as np
from etils import epath
from PIL import Image
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.summary import image, scalar, text

from cdiff_jax.paths import is_remote

JSONL_NAME = "metrics.jsonl"
CSV_NAME = "metrics.csv"

# tensorboardX warns of every nan it is given; here nan marks a term no step of the interval computed (an R1
# penalty between its steps), not a fault (a non-finite loss stops the run).
logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)


def _drop_rows_after(run_dir: pathlib.Path, step: int) -> None:
    """Rewrite metrics.jsonl and metrics.csv (atomically) without the rows of steps after `step`."""
    for name in (JSONL_NAME, CSV_NAME):
        path = run_dir / name
        if not path.exists():
            continue
        lines = path.read_text().splitlines(keepends=True)
        if name == JSONL_NAME:
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        else:
            kept = lines[:1] + [line for line in lines[1:] if line.strip() and int(line.split(",", 1)[0]) <= step]
        if len(kept) != len(lines):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(kept))
            tmp.replace(path)


def _csv_header(path: pathlib.Path) -> list[str] | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, newline="") as f:
        return next(csv.reader(f))


class MetricsWriter:
    """Appends every `write(step, scalars)` to a TensorBoard event file, metrics.jsonl and metrics.csv; the
    sample grids (`write_image`) and the run's settings (`write_config`) go to TensorBoard only.

    Each writer starts a new event file (TensorBoard merges those of a directory), so a resumed run continues
    the same logs. All three files are written and flushed on the calling thread at every write (tensorboardX's
    SummaryWriter writes from a thread of its own, which dies on a full disk and then blocks the caller): a failed
    write raises here, where the trainer turns it into one line.

    A CSV cannot grow columns, so metrics.csv has them fixed by the first write ever made in the
    run directory (read back from its header on resume): `step`, `time`, then that write's keys.
    A later write with a key outside them raises ValueError before anything is written; give such
    metrics their own run directory or include them from the first write on. Keys missing from a
    write are left empty. metrics.jsonl has no such restriction.

    A run resumed from step S passes `resume_step=S` (0 when no checkpoint was saved): rows of later steps in
    metrics.jsonl and metrics.csv (written by a run that was killed after that checkpoint) are dropped, so no
    step appears twice there, and TensorBoard is told to purge its events of those steps.

    Only one process of a multi-host run should log: with `enabled=False` (the trainer passes
    `jax.process_index() == 0`) nothing is created or written.

    A remote `run_dir` (gs://bucket/run/train) cannot be appended to: an object is only ever written whole. The
    three files are then written in a local temporary folder as above (metrics.jsonl and metrics.csv first copied
    from the run directory, to resume them), and every file that grew is uploaded whole, replacing its object, at
    each write's flush. Each upload costs the file's whole size, so the event file grows costly with many sample
    grids (log them less often, or start a new writer); what a crash leaves is the last upload, and a failed upload
    raises here as a failed local write does. The local copies go when the writer closes.
    """

    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        if not enabled:
            return
        self._remote, self._uploaded = None, {}  # the remote run directory; file name -> size uploaded
        if is_remote(run_dir):
            self._remote = epath.Path(run_dir)
            self._remote.mkdir(parents=True, exist_ok=True)
            run_dir = pathlib.Path(tempfile.mkdtemp(prefix="cdiff-metrics-"))
            for name in (JSONL_NAME, CSV_NAME):
                if (self._remote / name).exists():
                    (run_dir / name).write_bytes((self._remote / name).read_bytes())
                    self._uploaded[name] = (run_dir / name).stat().st_size
        run_dir = pathlib.Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._run_dir = run_dir
        if resume_step is not None:
            _drop_rows_after(run_dir, resume_step)
        # tensorboardX names event files by the second and truncates an existing one: the suffix keeps two
        # writers started in the same second (a quick restart) apart, in the order they started.
        self._events = EventsWriter(str(run_dir / "events"), filename_suffix=f".{time.time_ns()}")
        if resume_step is not None:  # TensorBoard hides the earlier files' events from this step on
            self._events.write_event(Event(step=resume_step + 1, file_version="brain.Event:2"))
            self._events.write_event(Event(step=resume_step + 1, session_log=SessionLog(status=SessionLog.START)))
            self._events.flush()
        self._jsonl = open(run_dir / JSONL_NAME, "a")
        self._columns = _csv_header(run_dir / CSV_NAME)  # None until the first write fixes them
        self._csv_file = open(run_dir / CSV_NAME, "a", newline="")
        self._csv = csv.writer(self._csv_file)
        self._upload()

    def _upload(self) -> None:
        """With a remote run directory, each local file that changed since its last upload, uploaded whole."""
        if self._remote is None:
            return
        for file in sorted(self._run_dir.iterdir()):
            size = file.stat().st_size
            if self._uploaded.get(file.name) != size:
                (self._remote / file.name).write_bytes(file.read_bytes())
                self._uploaded[file.name] = size

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        step = int(step)
        values = {tag: float(value) for tag, value in scalars.items()}  # float() also fetches device scalars
        reserved = {"step", "time"} & values.keys()
        if reserved:
            raise ValueError(f"scalar names {sorted(reserved)} are reserved for the step and the wall time")
        if self._columns is None:
            self._columns = ["step", "time", *values]
            self._csv.writerow(self._columns)
        new = [tag for tag in values if tag not in self._columns]
        if new:
            raise ValueError(
                f"{CSV_NAME} columns are fixed to {self._columns} by the first write; new key(s) {new} "
                "cannot be added (log them from the first write on, or use another run directory)"
            )
        row = {"step": step, "time": time.time(), **values}
        for tag, value in values.items():
            self._events.write_event(Event(wall_time=row["time"], step=step, summary=scalar(tag, value)))
        self._jsonl.write(json.dumps(row) + "\n")
        self._csv.writerow([row.get(column, "") for column in self._columns])
        self._events.flush()
        self._jsonl.flush()
        self._csv_file.flush()
        self._upload()

    def write_image(self, step: int, tag: str, png: str | os.PathLike) -> None:
        """The PNG file `png` (a sample grid the stage wrote) as TensorBoard image `tag`."""
        if self.enabled:
            source = epath.Path(png) if is_remote(png) else pathlib.Path(png)
            with source.open("rb") as f, Image.open(f) as picture:
                summary = image(tag, np.asarray(picture.convert("RGB")), dataformats="HWC")
            self._events.write_event(Event(wall_time=time.time(), step=int(step), summary=summary))
            self._events.flush()
            self._upload()

    def write_config(self, step: int, settings: Mapping) -> None:
        """The run's settings as TensorBoard text `config`, JSON indented into a Markdown code block so the text
        tab shows it verbatim."""
        if self.enabled:
            block = "\n".join("    " + line for line in json.dumps(settings, indent=1).splitlines())
            self._events.write_event(Event(wall_time=time.time(), step=int(step), summary=text("config", block)))
            self._events.flush()
            self._upload()

    def close(self) -> None:
        if self.enabled:
            self._events.close()
            self._jsonl.close()
            self._csv_file.close()
            self.enabled = False
            if self._remote is not None:
                try:
                    self._upload()
                finally:
                    shutil.rmtree(self._run_dir, ignore_errors=True)

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
