"""grain input pipeline: CelebA multi-modal examples -> batches of model inputs.

Sampling is grain's ``IndexSampler``: each shard (by default each JAX process) takes a disjoint,
contiguous part of the records and shuffles it with the seed, freshly every epoch. Everything is a
pure function of (seed, shard, step), so the iterator state is just a position: store it beside a
checkpoint and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import grain
import numpy as np
from absl import flags

from cdiff_jax.data.masks import one_hot_mask
from cdiff_jax.text.tokenizer import caption_tokenizer


class ToModelInputs(grain.transforms.Map):
    """``{image uint8 [R,R,3], mask uint8 [32,32], caption}`` -> what the experts are trained on.

    ``image`` float32 in [-1, 1], ``mask`` the reference's float32 one-hot [19, 1024], ``tokens`` int32 [77]
    of the lower-cased caption (as the reference's dataset lower-cases it before tokenizing).
    """

    def map(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        caption = example["caption"]
        if isinstance(caption, bytes):
            caption = caption.decode("utf-8")
        return {
            "image": np.asarray(example["image"], np.float32) / 127.5 - 1.0,
            "mask": one_hot_mask(example["mask"]),
            "tokens": caption_tokenizer().encode([caption.lower()]).ids[0].astype(np.int32),
        }


def make_loader(
    source: Sequence[Mapping[str, Any]],
    *,
    batch_size: int,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_epochs: int | None = None,
    shuffle: bool = True,
    drop_remainder: bool = True,
    worker_count: int = 0,
    worker_buffer_size: int = 1,
    read_options: grain.ReadOptions | None = None,
) -> grain.DataLoader:
    """A grain ``DataLoader`` of model-input batches over a random-access ``source``.

    ``shard_index``/``shard_count`` default to this JAX process among all of them. Shards drop the
    records left over by an uneven split, so every host runs the same number of steps; ``num_epochs=None``
    repeats forever. Iterators of the result support ``get_state()`` / ``set_state()``.

    With ``worker_count > 0`` each worker batches every ``worker_count``-th sampled record, so the batches
    depend on ``worker_count`` (still deterministic): resume with the worker count the state was saved with.
    """
    if (shard_index is None) != (shard_count is None):
        raise ValueError("pass both shard_index and shard_count, or neither (to shard by JAX process)")
    if worker_count and not flags.FLAGS.is_parsed():
        # grain's worker pool reads its absl flags, which only absl.app parses; use their defaults.
        flags.FLAGS.mark_as_parsed()
    if shard_index is None:
        shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    else:
        shard_options = grain.sharding.ShardOptions(shard_index, shard_count, drop_remainder=True)
    sampler = grain.samplers.IndexSampler(
        num_records=len(source), shard_options=shard_options, shuffle=shuffle, num_epochs=num_epochs, seed=seed,
    )
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=[ToModelInputs(), grain.transforms.Batch(batch_size, drop_remainder=drop_remainder)],
        worker_count=worker_count,
        worker_buffer_size=worker_buffer_size,
        read_options=read_options,
    )


def save_iterator_state(iterator: Iterable) -> bytes:
    """The position of a loader iterator (grain's JSON bytes), to store beside a checkpoint."""
    return iterator.get_state()


def restore_iterator_state(iterator: Iterable, state: bytes) -> None:
    """Move a fresh iterator of an identically configured loader to a saved position."""
    iterator.set_state(state)
