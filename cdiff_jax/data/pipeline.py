"""grain input pipeline: CelebA multi-modal examples -> batches of model inputs.

The order of records is defined for the global batch (``GlobalBatchSampler``), so a run on one
process and on many sees the same global batches. Everything is a pure function of (seed, step),
the random training crops (``ZoomCrop``) included: each record's draws come from a generator seeded
by (seed, its global position). So the iterator state is just a position: store it beside a
checkpoint and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags
from PIL import Image

from cdiff_jax.modalities import KINDS


class ToModelInputs(grain.transforms.Map):
    """``{image uint8 [R,R,3], mask uint8 [32,32], caption, scribble uint8 [64,64]}`` -> model inputs.

    ``image`` float32 in [-1, 1], and under each kind's batch key what its expert is trained on, parsed
    as its row in `cdiff_jax.modalities` parses user input with the default encoder config: ``mask``
    the reference's float32 one-hot [19, 1024], ``tokens`` int32 [77] of the lower-cased caption (as
    the reference's dataset lower-cases it before tokenizing), ``scribble`` float32 [3, 1024] stroke
    tokens. A kind whose field the examples lack (data prepared before it existed) is left out.
    """

    def map(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        inputs = {"image": np.asarray(example["image"], np.float32) / 127.5 - 1.0}
        for kind in KINDS.values():
            if kind.example_field in example:
                inputs[kind.batch_key] = kind.parse([example[kind.example_field]], kind.config())[0]
        return inputs


class ZoomCrop(grain.transforms.RandomMap):
    """The official training jitter (DalleTransformerPreprocessor, phase "train") on images of the training size R.

    The official code shrinks a larger image to a side in [R, 9/8 R] and crops R x R from it; the prepared
    dataset holds images of size R, so the same windows come from an enlargement here: the image is
    enlarged (PIL bicubic) to a side t drawn uniformly from the whole pixels in [R, round(zoom * R)], and
    the window's offsets are drawn from 0 .. t - R - 1 on each axis (albumentations 0.4.3's RandomCrop
    never reaches the last one). ``mask`` and ``scribble`` get the same window, by nearest neighbour at
    their own grids, and the caption stays. The official code leaves its precomputed 32x32 mask whole;
    cropped alike, a condition keeps describing its pixels.
    """

    def __init__(self, zoom: float):
        self.zoom = zoom

    def random_map(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = np.asarray(example["image"])
        size = image.shape[0]
        zoomed = int(rng.integers(size, round(self.zoom * size) + 1))
        top, left = (int(rng.integers(0, max(zoomed - size, 1))) for _ in range(2))
        image = np.asarray(Image.fromarray(image).resize((zoomed, zoomed), Image.Resampling.BICUBIC))
        cropped = {**example, "image": image[top : top + size, left : left + size]}
        for name in ("mask", "scribble"):
            if name in example:
                grid = np.asarray(example[name])
                rows, cols = (_window_cells(len(grid), size, zoomed, offset) for offset in (top, left))
                cropped[name] = grid[np.ix_(rows, cols)]
        return cropped


def _window_cells(cells: int, size: int, zoomed: int, offset: int) -> np.ndarray:
    """For each of ``cells`` cells across the window [offset, offset + size) of a side-``zoomed`` enlargement,
    the cell of the whole frame's ``cells`` grid holding its centre (integer arithmetic, so exact)."""
    return (2 * cells * offset + (2 * np.arange(cells) + 1) * size) // (2 * zoomed)


class GlobalBatchSampler:
    """Record order defined for the global batch, whatever the number of processes.

    Step s of every run uses global positions [s*G, (s+1)*G) of a per-epoch permutation of the
    records (seeded, epochs drop the remainder); process p reads positions p*L .. (p+1)*L - 1 of
    that step with L = G / process_count. So the concatenated local batches equal the batch a
    single process would read, and each process decodes only its own examples. Each record carries a
    generator seeded by (seed, global position) for the random transforms, so their draws do not depend
    on the process count either, and a record's draws differ from epoch to epoch.
    """

    def __init__(
        self,
        num_records: int,
        global_batch: int,
        seed: int,
        shuffle: bool = True,
        process_index: int = 0,
        process_count: int = 1,
        num_epochs: int | None = None,
    ):
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
        if num_records < global_batch:
            raise ValueError(f"{num_records} records cannot fill one global batch of {global_batch}")
        self.num_records, self.global_batch, self.seed, self.shuffle = num_records, global_batch, seed, shuffle
        self.local_batch = global_batch // process_count
        self.process_index = process_index
        self.per_epoch = (num_records // global_batch) * global_batch
        self.max_index = None if num_epochs is None else num_epochs * self.per_epoch // process_count

    def __repr__(self) -> str:  # grain compares it with the one saved in an iterator state
        return (
            f"GlobalBatchSampler(num_records={self.num_records}, global_batch={self.global_batch}, "
            f"seed={self.seed}, shuffle={self.shuffle}, process_index={self.process_index}, "
            f"local_batch={self.local_batch}, max_index={self.max_index})"
        )

    # The sampler lives as long as its loader; the cache keeps at most two epochs' permutations.
    @functools.lru_cache(maxsize=2)  # noqa: B019
    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_records)

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        if index < 0 or (self.max_index is not None and index >= self.max_index):
            raise IndexError(index)
        step, offset = divmod(index, self.local_batch)
        position = step * self.global_batch + self.process_index * self.local_batch + offset
        epoch, within = divmod(position, self.per_epoch)
        record = int(self._order(epoch)[within]) if self.shuffle else within  # no arange over an endless source
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(position,)))  # apart from _order's
        return grain.RecordMetadata(index=index, record_key=record, rng=rng)


def make_loader(
    source: Sequence[Mapping[str, Any]],
    *,
    global_batch: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    num_epochs: int | None = None,
    shuffle: bool = True,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    read_options: grain.ReadOptions | None = None,
    inputs: grain.transforms.Map | None = None,
    crop_zoom: float | None = None,
) -> Loader:
    """A `Loader` of this process's part of each global batch of model inputs.

    ``inputs`` turns a record into model inputs (default `ToModelInputs`); ``crop_zoom`` first
    applies `ZoomCrop` with that zoom to every record.
    ``process_index``/``process_count`` default to this JAX process among all of them; with one
    process the batches are whole global batches. ``num_epochs=None`` repeats forever.
    ``worker_count`` processes prepare whole batches beside this one (each worker every Nth batch, read
    back in order), so the batches are the same for any worker count, and a run may resume with another.
    """
    if (process_index is None) != (process_count is None):
        raise ValueError("pass both process_index and process_count, or neither (this JAX process)")
    if process_index is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    sampler = GlobalBatchSampler(len(source), global_batch, seed, shuffle, process_index, process_count, num_epochs)
    if worker_count and not flags.FLAGS.is_parsed():
        # grain's worker pool reads its absl flags, which only absl.app parses; use their defaults.
        flags.FLAGS.mark_as_parsed()
    read = ReadBatch(source, sampler, [*([ZoomCrop(crop_zoom)] if crop_zoom else []), inputs or ToModelInputs()])
    # No reading threads by default: not every transform is thread-safe (two threads loading the caption tokenizer at
    # once fail), and the trainer reads the next batches while the devices run a step anyway.
    return Loader(
        read, worker_count, worker_buffer_size, read_options or grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    )


class ReadBatch:
    """Step -> this process's batch of that step: its records read, transformed (a random transform with the
    record's generator) and stacked. A whole batch is one element of the dataset, so that workers split steps,
    never batches."""

    def __init__(self, source, sampler: GlobalBatchSampler, operations: list):
        self.source, self.sampler, self.operations = source, sampler, operations

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        examples = []
        for offset in range(self.sampler.local_batch):
            record = self.sampler[step * self.sampler.local_batch + offset]
            example = self.source[record.record_key]
            for op in self.operations:
                example = (
                    op.random_map(example, record.rng)
                    if isinstance(op, grain.transforms.RandomMap)
                    else op.map(example)
                )
            examples.append(example)
        return {name: np.stack([ex[name] for ex in examples]) for name in examples[0]}

    @property
    def steps(self) -> int:
        """Batches in the sampler's epochs (endless: as many as an index can count)."""
        if self.sampler.max_index is None:
            return sys.maxsize
        return self.sampler.max_index // self.sampler.local_batch


class Loader:
    """The batches of `ReadBatch`, step after step, here or prepared ahead in worker processes."""

    def __init__(self, read: ReadBatch, worker_count: int, worker_buffer_size: int, read_options: grain.ReadOptions):
        self.read, self.worker_count, self.worker_buffer_size = read, worker_count, worker_buffer_size
        self.read_options = read_options

    def __iter__(self) -> LoaderIterator:
        return LoaderIterator(self)

    def batches_from(self, step: int) -> Iterator[dict[str, np.ndarray]]:
        dataset = grain.MapDataset.range(step, max(step, self.read.steps)).map(self.read)
        dataset = dataset.to_iter_dataset(self.read_options)
        if self.worker_count:
            dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(self.worker_count, self.worker_buffer_size))
        return iter(dataset)


class LoaderIterator:
    """Iterates a `Loader`; its state is the next step, so restoring it needs no worker's state."""

    def __init__(self, loader: Loader, step: int = 0):
        self.loader, self.step = loader, step
        self._batches = loader.batches_from(step)

    def __iter__(self) -> LoaderIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._batches)
        self.step += 1
        if self.loader.worker_count:  # out of the workers' shared memory, which is freed as soon as it is dropped
            batch = {name: np.array(value) for name, value in batch.items()}
        return batch

    def get_state(self) -> bytes:
        return json.dumps({"step": self.step}).encode()

    def close(self) -> None:
        """Stop the workers and free their shared memory (which the end of the process would only warn about)."""
        getattr(self._batches, "close", lambda: None)()
        self._batches = iter(())  # dropped now, not at interpreter exit, when grain's teardown fails noisily

    def set_state(self, state: bytes) -> None:
        self.step = _next_step(json.loads(state), self.loader.read.sampler.local_batch)
        self.close()
        self._batches = self.loader.batches_from(self.step)


def _next_step(state: dict, local_batch: int) -> int:
    """The next step of a saved position; also of grain DataLoader positions (runs saved before `Loader`)."""
    if "step" in state:
        return int(state["step"])
    if state.get("worker_count", 1) > 1:
        raise ValueError(
            "this checkpoint's data position was saved by an older version with data workers; resume "
            "it with that version, or start a new run"
        )
    return (int(state["last_seen_indices"]["0"]) + 1) // local_batch


def save_iterator_state(iterator: Iterable) -> bytes:
    """The position of a loader iterator (JSON bytes: the next step), to store beside a checkpoint."""
    return iterator.get_state()


def restore_iterator_state(iterator: Iterable, state: bytes) -> None:
    """Move a fresh iterator of an identically configured loader to a saved position."""
    iterator.set_state(state)
