"""Training checkpoints: orbax, asynchronous, the last K plus the best by validation loss.

Each checkpoint holds the train state (step, trainable parameters, optimizer state) and the
data iterator's position, so a resumed run continues the exact sequence of batches. orbax
writes into a temporary directory and renames it when complete, so a run killed mid-save
leaves the previous checkpoint as the latest usable one. A save that fails (a full disk) raises
CannotWrite naming its checkpoint, its partial files removed.

A remote directory (gs://bucket/run/checkpoints) is handed to orbax as an `epath.Path`: orbax writes it through
tensorstore's GCS driver and, there being no atomic rename on GCS, marks a complete checkpoint with its
commit_success.txt instead of renaming a temporary folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from cdiff_jax.paths import CannotWrite, is_remote, output_path, writing

VAL_METRIC = "val_loss"
RESUME = "the run stopped (free space, then run the same command: it resumes from the last complete checkpoint)"


class TrainCheckpoints:
    def __init__(self, directory: str | os.PathLike, keep: int = 3, asynchronous: bool = True):
        self.directory = output_path(directory)
        policy = checkpoint_managers.AnyPreservationPolicy(
            [
                checkpoint_managers.LatestN(keep),
                checkpoint_managers.BestN(
                    get_metric_fn=lambda m: m[VAL_METRIC], reverse=True, n=1, keep_checkpoints_without_metrics=False
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            enable_async_checkpointing=asynchronous,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._unfinished: int | None = None  # the step of an asynchronous save that may still be writing

    def save(self, step: int, state, data_state: bytes, val_loss: float | None = None, *, wait: bool = False) -> None:
        metrics = None if val_loss is None else {VAL_METRIC: float(val_loss)}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({"iterator": data_state.decode()})
        )
        self._finish()  # the previous save, so that its failure names its own checkpoint
        with self._writing(step):
            self.manager.save(step, args=args, metrics=metrics, force=True)
        self._unfinished = step
        if wait:
            self._finish()

    def _finish(self) -> None:
        """Wait for the asynchronous save still writing, if any."""
        step, self._unfinished = self._unfinished, None
        if step is not None:
            with self._writing(step):
                self.manager.wait_until_finished()

    @contextlib.contextmanager
    def _writing(self, step: int):
        """A failed save as CannotWrite naming its checkpoint; orbax's temporary folders of it are removed (orbax
        would remove them only when the run resumes, keeping the space the disk lacks until then)."""
        try:
            with writing(self.path(step), RESUME):
                yield
        except CannotWrite:
            if jax.process_index() == 0:
                for name in ocp.path.step.tmp_checkpoints(self.directory):
                    if is_remote(self.directory):
                        with contextlib.suppress(OSError):
                            (self.directory / name).rmtree(missing_ok=True)
                    else:
                        shutil.rmtree(self.directory / name, ignore_errors=True)
            raise

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def path(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def restore(self, step: int, abstract_state) -> tuple[object, bytes]:
        """The saved state in `abstract_state`'s type and shardings, and the iterator's position.

        Only the fields the checkpoint holds are read: a field this run keeps empty (None) may be
        absent from a checkpoint written before the field existed.
        """
        saved = self._saved_fields(step, abstract_state)
        target = {name: jax.tree.map(ocp.utils.to_shape_dtype_struct, getattr(abstract_state, name)) for name in saved}
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
        )
        return dataclasses.replace(abstract_state, **restored.state), restored.data["iterator"].encode()

    def _saved_fields(self, step: int, abstract_state) -> list[str]:
        """Names of the train-state fields in the checkpoint. Settings that add or drop a part of the state
        (ema_decay adds `ema`) cannot change on resume: say so instead of orbax's tree-structure error."""
        saved = ocp.StandardCheckpointer().metadata(self.path(step) / "state").item_metadata.tree
        held = {name for name, value in saved.items() if value is not None}
        expected = {f.name for f in dataclasses.fields(abstract_state) if getattr(abstract_state, f.name) is not None}
        if held != expected:
            raise ValueError(
                f"the checkpoint {self.path(step)} holds {sorted(held)} but this run's train state has "
                f"{sorted(expected)}: it was written with other settings (ema_decay > 0 keeps 'ema'); resume with "
                "the settings it was trained with, or start a new work directory"
            )
        return list(saved)

    def close(self) -> None:
        try:
            self._finish()
        finally:
            self.manager.close()
