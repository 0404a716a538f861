"""The grain pipeline over an in-memory source: model inputs, shuffling, sharding and resumable state."""

import numpy as np
import pytest

from cdiff_jax.data.masks import one_hot_mask
from cdiff_jax.data.pipeline import make_loader, restore_iterator_state, save_iterator_state
from cdiff_jax.text.tokenizer import caption_tokenizer

N = 10


def _examples(n=N, size=16):
    """Example dicts as the TFDS source yields them; pixel [0, 0, 0] holds the example's index."""
    rng = np.random.default_rng(0)
    examples = []
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        image[0, 0, 0] = i
        caption = f"This Man has a Beard, number {i}."
        examples.append({
            "image": image,
            "mask": rng.integers(0, 19, (32, 32)).astype(np.uint8),
            "caption": caption.encode() if i % 2 else caption,  # TFDS gives bytes; plain sources may give str
            "name": f"{i}.jpg",
        })
    return examples


def _indices(batch):
    return [int(v) for v in np.rint((batch["image"][:, 0, 0, 0] + 1.0) * 127.5)]


def _take(loader, count):
    iterator = iter(loader)
    return [next(iterator) for _ in range(count)]


def test_batches_hold_model_inputs():
    examples = _examples()
    (batch,) = _take(make_loader(examples, global_batch=4, seed=0, process_index=0, process_count=1), 1)
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["mask"].shape == (4, 19, 1024) and batch["mask"].dtype == np.float32
    assert batch["tokens"].shape == (4, 77) and batch["tokens"].dtype == np.int32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    for row, i in enumerate(_indices(batch)):
        ex = examples[i]
        np.testing.assert_allclose(batch["image"][row], ex["image"] / 127.5 - 1.0, atol=1e-6)
        np.testing.assert_array_equal(batch["mask"][row], one_hot_mask(ex["mask"]))
        caption = ex["caption"].decode() if isinstance(ex["caption"], bytes) else ex["caption"]
        np.testing.assert_array_equal(batch["tokens"][row], caption_tokenizer().encode([caption.lower()]).ids[0])


def test_epochs_are_seeded_permutations():
    def order(seed):
        loader = make_loader(_examples(), global_batch=1, seed=seed, process_index=0, process_count=1, num_epochs=2)
        return [i for batch in loader for i in _indices(batch)]

    first = order(1)
    assert first == order(1)
    assert sorted(first[:N]) == sorted(first[N:]) == list(range(N))
    assert first[:N] != first[N:]  # reshuffled every epoch
    assert order(2) != first


def test_processes_split_each_global_batch_as_one_process_reads_it():
    whole = [_indices(b) for b in make_loader(_examples(), global_batch=4, seed=3, process_index=0,
                                              process_count=1, num_epochs=1)]
    parts = [[_indices(b) for b in make_loader(_examples(), global_batch=4, seed=3, process_index=p,
                                               process_count=2, num_epochs=1)] for p in range(2)]
    assert len(whole) == N // 4  # epochs drop the remainder
    assert [a + b for a, b in zip(*parts)] == whole
    assert len({i for batch in whole for i in batch}) == 4 * (N // 4)


def test_default_is_this_process_and_bad_arguments_are_clear():
    batches = list(make_loader(_examples(), global_batch=4, seed=0, num_epochs=1))  # one process: all records
    assert [len(b["tokens"]) for b in batches] == [4, 4]
    with pytest.raises(ValueError, match="both process_index and process_count"):
        make_loader(_examples(), global_batch=4, seed=0, process_index=0)
    with pytest.raises(ValueError, match="not divisible"):
        make_loader(_examples(), global_batch=3, seed=0, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="cannot fill"):
        make_loader(_examples(), global_batch=16, seed=0)


@pytest.mark.parametrize("worker_count", [0, 2])
def test_restored_iterator_continues_the_same_sequence(worker_count):
    def loader():
        return make_loader(_examples(), global_batch=3, seed=7, process_index=0, process_count=1,
                           worker_count=worker_count)

    iterator = iter(loader())
    first = next(iterator)
    for _ in range(3):  # into the second epoch
        next(iterator)
    state = save_iterator_state(iterator)
    assert isinstance(state, bytes)
    expected = [next(iterator) for _ in range(5)]
    assert not np.array_equal(expected[0]["image"], first["image"])  # so a no-op restore would fail

    resumed = iter(loader())
    restore_iterator_state(resumed, state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
