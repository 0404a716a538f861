"""The training loop, readable in one sitting: data -> compiled steps -> logs and checkpoints.

One trainer for every stage: the stage (`diffusion_stage`, `gan_stage`, `triplane_stage`, `ddgi_stage` in
stages.py) decides the model, the data, which parameters are trainable and the objective. It resumes from the
latest checkpoint in the work directory; on SIGTERM or SIGINT it saves and returns 128 + the signal number (143
for a preempted run), restoring the handlers it replaced; it stops on a non-finite loss naming the last good
checkpoint, and at intervals writes validation loss, sample grids and checkpoints (last K plus the best).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import pathlib
import signal
import threading

import jax
import numpy as np

from cdiff_jax.data.pipeline import restore_iterator_state, save_iterator_state
from cdiff_jax.parallel import data_mesh, global_batch
from cdiff_jax.paths import creatable_parent, is_remote, output_path
from cdiff_jax.progress import ProgressLine, log
from cdiff_jax.train.checkpoints import TrainCheckpoints
from cdiff_jax.train.config import TrainConfig
from cdiff_jax.train.ddgi_step import DDGI_STAGES
from cdiff_jax.train.metrics import MetricsWriter
from cdiff_jax.train.stages import ddgi_stage, diffusion_stage, gan_stage, triplane_stage, validation_loss


class TrainingDiverged(RuntimeError):
    pass


def _mean_where_run(values) -> float:
    """The mean over the steps that computed a term (nan marks a step that did not, e.g. no R1 that step)."""
    values = np.asarray(values, np.float64)
    run = values[~np.isnan(values)]
    return float(run.mean()) if run.size else float("nan")


def _crossed(before: int, after: int, every: int) -> bool:
    return every > 0 and before // every != after // every


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _StopRequest:
    """Remembers a SIGTERM/SIGINT so the loop can save and leave at the next step boundary.

    Only while `listening()`: the handlers it replaced come back when training returns or raises,
    so Ctrl-C interrupts a notebook again afterwards.
    """

    def __init__(self):
        self.signum = None

    def _handle(self, signum, frame):
        self.signum = signum

    @contextlib.contextmanager
    def listening(self):
        if threading.current_thread() is not threading.main_thread():  # Python allows handlers there only
            yield self
            return
        previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def requested(self) -> bool:
        flag = np.asarray(self.signum is not None)
        if jax.process_count() > 1:  # every host stops at the same step
            from jax.experimental import multihost_utils

            flag = multihost_utils.process_allgather(flag).any()
        return bool(flag)


def train(cfg: TrainConfig, workdir: str | pathlib.Path) -> int:
    """Train (or resume) the run in `workdir`; returns 0 when done, or 128 + the signal number
    when a SIGTERM/SIGINT stopped it after saving (143: preempted; rerun the same command to resume)."""
    workdir = check_workdir(workdir)
    lead = jax.process_index() == 0
    if cfg.global_batch % (jax.device_count() * cfg.gradient_accumulation):
        raise ValueError(
            f"global_batch {cfg.global_batch} must be divisible by the {jax.device_count()} devices"
            + (f" times gradient_accumulation={cfg.gradient_accumulation}" if cfg.gradient_accumulation > 1 else "")
        )
    if cfg.stage not in ("gan", "triplane", *DDGI_STAGES) and cfg.val_every and cfg.test_size < jax.device_count():
        raise ValueError(
            f"test_size {cfg.test_size} is smaller than the {jax.device_count()} devices validation "
            "shards over; build the dataset with a larger test split or set val_every=0"
        )
    check_same_run(cfg, workdir)

    mesh = data_mesh()
    if cfg.stage == "gan":
        stage = gan_stage(cfg, mesh)
    elif cfg.stage == "triplane":
        stage = triplane_stage(cfg, mesh)
    elif cfg.stage in DDGI_STAGES:
        stage = ddgi_stage(cfg, mesh)
    else:
        stage = diffusion_stage(cfg, mesh)
    state = stage.state
    batches = iter(stage.loader)
    if lead:  # the data and models were found: the run folder may be made
        record_run_settings(cfg, workdir)

    checkpoints = TrainCheckpoints(workdir / "checkpoints", keep=cfg.keep_checkpoints)
    latest = checkpoints.latest_step()
    if latest is not None:
        state, data_state = checkpoints.restore(latest, state)
        restore_iterator_state(batches, data_state)
        if lead:
            log.info("resumed from %s", checkpoints.path(latest))

    # A run killed before its first checkpoint restarts from step 0: its rows go too.
    writer = MetricsWriter(workdir / "train", enabled=lead, resume_step=latest or 0)
    val_writer = MetricsWriter(workdir / "val", enabled=lead, resume_step=latest or 0)
    progress = ProgressLine(cfg.steps)
    stop = _StopRequest()
    step = int(state.step)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(val_writer.close)
        cleanup.callback(writer.close)
        cleanup.callback(checkpoints.close)
        cleanup.enter_context(stop.listening())
        cleanup.callback(batches.close)
        writer.write_config(step, _settings(cfg))  # the settings this start runs with, beside its curves
        if lead and step < cfg.steps:
            log.info("compiling the training step (the first call; a minute or more on a CPU)")
        upcoming = _next_call(batches, step, cfg, mesh)
        while step < cfg.steps:
            inputs, k, data_state = upcoming
            state, metrics = stage.run(state, inputs)
            # The next call's batches are read and sent while the devices run this one (dispatch returns at once).
            upcoming = _next_call(batches, step + k, cfg, mesh)
            finite = np.asarray(metrics.finite)
            if not finite.all():
                bad = step + int(np.argmin(finite)) + 1
                last = checkpoints.latest_step()
                where = checkpoints.path(last) if last is not None else "none saved yet"
                raise TrainingDiverged(f"non-finite loss or gradient at step {bad}; last good checkpoint: {where}")
            before, step = step, int(state.step)
            losses = np.asarray(metrics.loss)
            progress.update(step, {"loss": float(losses.mean())}, examples_per_step=cfg.global_batch)
            if _crossed(before, step, cfg.log_every) or step == cfg.steps:
                terms = {name: _mean_where_run(v) for name, v in getattr(metrics, "terms", {}).items()}
                writer.write(
                    step,
                    {
                        "loss": float(losses.mean()),
                        "grad_norm": float(np.mean(metrics.grad_norm)),
                        "learning_rate": cfg.learning_rate,
                        **terms,
                    },
                )
            val_loss = None
            if stage.evaluate is not None and _crossed(before, step, cfg.val_every):
                val_loss = validation_loss(
                    cfg, functools.partial(stage.evaluate, state.export_params), stage.test_source, mesh
                )
                val_writer.write(step, {"loss": val_loss})
            if _crossed(before, step, cfg.sample_every):
                grid = workdir / "samples" / f"{step:07d}.png"
                stage.write_samples(state.export_params, grid)
                writer.write_image(step, "samples", grid)
            # Validated states are always saved, so the best one by validation loss can be kept.
            if _crossed(before, step, cfg.checkpoint_every) or val_loss is not None or step == cfg.steps:
                checkpoints.save(step, state, data_state, val_loss)
            if stop.requested():
                if checkpoints.latest_step() != step:  # the interval may have saved this step already
                    checkpoints.save(step, state, data_state)
                if lead:
                    log.info("stopped by signal %d at step %d; saved %s", stop.signum, step, checkpoints.path(step))
                return 128 + stop.signum  # the shell's status for a process ended by that signal
    stage.export(state.export_params, workdir)  # every process: each saves its part of the arrays
    if jax.process_count() > 1:  # no process ends before the export is whole
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("train:exported")
    return 0


def _next_call(batches, step: int, cfg: TrainConfig, mesh):
    """The batches of the call that starts at `step` as global arrays [k, batch, ...], k, and the data position
    after them (what a checkpoint of that call's state stores); None after the last step."""
    k = min(cfg.steps_per_call, cfg.steps - step)
    if k <= 0:
        return None
    local = [next(batches) for _ in range(k)]
    stacked = {name: np.stack([b[name] for b in local]) for name in local[0]}
    return global_batch(stacked, mesh, batch_axis=1), k, save_iterator_state(batches)


RUN_CONFIG = "train_config.json"  # the settings a run started with, checked when it resumes
# What a resumed run may change: how long it runs, what it logs and where the same data now lives, never what it
# computes.
RESUMABLE_CHANGES = frozenset(
    {
        "data_dir",
        "steps",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "val_every",
        "val_batches",
        "sample_every",
        "sample_count",
        "sample_steps",
        "data_workers",
    }
)


def _settings(cfg: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples as JSON lists, as stored


def check_same_run(cfg: TrainConfig, workdir: pathlib.Path) -> None:
    """Refuse to resume a run in `workdir` with settings that change what it computes (a resumed run must equal an
    uninterrupted one)."""
    settings = _settings(cfg)
    path = workdir / RUN_CONFIG
    if path.is_file():
        try:
            started = json.loads(path.read_text())
        except ValueError:
            raise ValueError(f"{path} is damaged; restore it or use a new --workdir") from None
        # a field added since the run started is recorded at its default, which keeps what older runs computed
        started = {**_settings(TrainConfig()), **started}
        changed = sorted(
            k
            for k in settings.keys() | started.keys()
            if k not in RESUMABLE_CHANGES and settings.get(k) != started.get(k)
        )
        if changed:
            first = changed[0]
            raise ValueError(
                f"--workdir {workdir} holds a run started with other settings ({len(changed)} differ, "
                f"e.g. {first}={started.get(first)!r}, now {settings.get(first)!r}); resume it with "
                "its settings or use a new --workdir"
            )


def record_run_settings(cfg: TrainConfig, workdir: pathlib.Path) -> None:
    """Write the settings a new run starts with (a resumed run keeps the first record). Through a temporary file
    renamed into place on a local disk; a remote object is written whole in one request (an object store shows a
    new object only once it is complete, and its renames are copies)."""
    path = workdir / RUN_CONFIG
    if not path.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        if is_remote(path):
            path.write_text(json.dumps(_settings(cfg), indent=1))
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(_settings(cfg), indent=1))
        tmp.replace(path)


def check_workdir(workdir: str | pathlib.Path) -> pathlib.Path:
    """`workdir` as a run directory we can write in (absent, or a folder), checked before any work. A remote one
    (gs://bucket/run) stays an `epath.Path` and is not probed (see `paths.creatable_parent`)."""
    workdir = output_path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"--workdir {workdir} is a file; give a folder for the run")
    if is_remote(workdir):
        return workdir
    try:
        creatable_parent(workdir / "probe")
    except OSError as err:
        raise ValueError(
            f"--workdir {workdir}: cannot create folders in {err.filename or workdir} ({err.strerror}); "
            "choose another --workdir"
        ) from None
    return workdir
