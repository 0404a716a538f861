"""The grain pipeline over an in-memory source: model inputs, shuffling, sharding, resumable state and the training
crops."""

import json

import numpy as np
import pytest

from cdiff_jax.data.masks import one_hot_mask
from cdiff_jax.data.pipeline import ZoomCrop, make_loader, restore_iterator_state, save_iterator_state
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
        examples.append(
            {
                "image": image,
                "mask": rng.integers(0, 19, (32, 32)).astype(np.uint8),
                "caption": caption.encode() if i % 2 else caption,  # TFDS gives bytes; plain sources may give str
                "name": f"{i}.jpg",
            }
        )
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
    whole = [
        _indices(b)
        for b in make_loader(_examples(), global_batch=4, seed=3, process_index=0, process_count=1, num_epochs=1)
    ]
    parts = [
        [
            _indices(b)
            for b in make_loader(_examples(), global_batch=4, seed=3, process_index=p, process_count=2, num_epochs=1)
        ]
        for p in range(2)
    ]
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


@pytest.mark.parametrize("crop_zoom", [None, 1.5])
def test_restored_iterator_continues_the_same_sequence(crop_zoom):
    def loader():
        return make_loader(_examples(), global_batch=3, seed=7, process_index=0, process_count=1, crop_zoom=crop_zoom)

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


def _record_of_row(examples):
    """Row -> record index, read from the numbered caption (the only field a crop leaves alone)."""
    captions = [ex["caption"].decode() if isinstance(ex["caption"], bytes) else ex["caption"] for ex in examples]
    ids = {tuple(caption_tokenizer().encode([c.lower()]).ids[0]): i for i, c in enumerate(captions)}
    return lambda batch: [ids[tuple(row)] for row in batch["tokens"]]


def test_crops_are_a_function_of_the_global_position():
    examples = _examples(12)  # three global batches an epoch, none left over

    def epochs(**where):
        return list(make_loader(examples, global_batch=4, seed=5, num_epochs=2, crop_zoom=1.5, **where))

    first = epochs(process_index=0, process_count=1)
    for want, got in zip(first, epochs(process_index=0, process_count=1), strict=True):  # the same run again
        np.testing.assert_array_equal(got["image"], want["image"])
    halves = [epochs(process_index=p, process_count=2) for p in range(2)]
    for whole, *parts in zip(first, *halves, strict=True):  # two processes' local batches make the same global batch
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), whole[key])
    crops = {}  # record -> its crop at each position it was read
    record_of = _record_of_row(examples)
    for batch in first:
        for row, i in enumerate(record_of(batch)):
            crops.setdefault(i, []).append(batch["image"][row])
    assert all(len(seen) == 2 for seen in crops.values())
    moved = [not np.array_equal(*seen) for seen in crops.values()]
    assert sum(moved) >= len(moved) - 1, "a record read in two epochs should (almost always) be cropped differently"
    uncropped = list(make_loader(examples, global_batch=4, seed=5, num_epochs=2, process_index=0, process_count=1))
    assert sum(not np.array_equal(a["image"], b["image"]) for a, b in zip(first, uncropped)) == len(first)


def _checkered(label):
    """255 on the classes of _regions_example drawn black on a 4x4 checkerboard, 0 on the others."""
    return np.where((label // 4 + label % 4) % 2, 255, 0)


def _regions_example(size=64):
    """An image, mask and scribble showing the same 4x4 square regions: class c has pixel value 15 c, and strokes
    cover the regions of one checkerboard colour."""
    cells = np.arange(32) // 8
    labels = (cells[:, None] * 4 + cells[None, :]).astype(np.uint8)
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 0] = np.repeat(np.repeat(labels, size // 32, axis=0), size // 32, axis=1) * 15
    scribble = _checkered(np.repeat(np.repeat(labels, 2, axis=0), 2, axis=1)).astype(np.uint8)
    return {"image": image, "mask": labels, "scribble": scribble, "caption": "the caption"}


def _uniform_cells(grid, reach=2):
    """The cells of a grid whose (2 reach + 1)^2 neighbourhood lies inside it and holds one value: where neither the
    crop's rounding nor what lies beyond the window's edge can matter."""
    padded = np.pad(grid.astype(int), reach, constant_values=-1)
    n = len(grid)
    windows = np.stack([padded[dy : dy + n, dx : dx + n] for dy in range(2 * reach + 1) for dx in range(2 * reach + 1)])
    return (windows == grid).all(axis=0)


def _agreement(image, grid, value_of_class):
    """Whether, away from region borders, every cell of `grid` lies on image pixels of its class's value."""
    step = len(image) // len(grid)

    def per_pixel(cells):
        return np.repeat(np.repeat(cells, step, axis=0), step, axis=1)

    close = np.abs(image[..., 0].astype(int) - per_pixel(value_of_class(grid))) <= 2
    return bool(close[per_pixel(_uniform_cells(grid))].all())


@pytest.mark.parametrize("seed", range(8))
def test_mask_and_scribble_get_the_image_s_crop(seed):
    example = _regions_example()
    rng = np.random.default_rng(seed)
    cropped = ZoomCrop(1.5).random_map(example, rng)
    assert cropped["image"].shape == (64, 64, 3) and cropped["image"].dtype == np.uint8
    assert cropped["mask"].shape == (32, 32) and cropped["scribble"].shape == (64, 64)
    assert cropped["caption"] == "the caption"
    assert not np.array_equal(cropped["image"], example["image"])  # this draw moved the picture
    image = cropped["image"]
    assert _agreement(image, cropped["mask"], lambda c: 15 * c.astype(int))
    strokes = cropped["scribble"].astype(int)
    assert (strokes == _checkered(np.rint(image[..., 0] / 15).astype(int)))[_uniform_cells(strokes)].all()
    assert not _agreement(image, example["mask"], lambda c: 15 * c.astype(int))  # the official uncropped mask


def test_a_crop_without_zoom_room_keeps_the_example():
    example = _regions_example()
    cropped = ZoomCrop(1.001).random_map(example, np.random.default_rng(0))  # round(1.001 * 64) = 64: nothing to do
    for key in ("image", "mask", "scribble"):
        np.testing.assert_array_equal(cropped[key], example[key])


@pytest.mark.slow
def test_workers_prepare_the_same_batches_and_a_run_may_resume_with_another_worker_count():
    def loader(workers):
        return make_loader(
            _examples(), global_batch=3, seed=7, process_index=0, process_count=1, worker_count=workers, crop_zoom=1.5
        )

    alone = _take(loader(0), 7)
    helped = iter(loader(2))  # each worker prepares every other batch
    for want in alone[:4]:
        _assert_same_batch(next(helped), want)
    state = save_iterator_state(helped)
    resumed = iter(loader(0))
    restore_iterator_state(resumed, state)
    for want in alone[4:]:
        _assert_same_batch(next(resumed), want)


def test_a_position_saved_by_grains_data_loader_resumes_at_its_step():
    """Runs checkpointed before `Loader` hold grain DataLoader positions: the last record index read."""
    expected = _take(make_loader(_examples(), global_batch=3, seed=7, process_index=0, process_count=1), 6)[4:]
    legacy = json.dumps(
        {"version": 2, "last_seen_indices": {"0": 4 * 3 - 1}, "last_worker_index": -1, "worker_count": 1}
    ).encode()
    resumed = iter(make_loader(_examples(), global_batch=3, seed=7, process_index=0, process_count=1))
    restore_iterator_state(resumed, legacy)
    for want in expected:
        _assert_same_batch(next(resumed), want)
    with pytest.raises(ValueError, match="older version with data workers"):
        restore_iterator_state(resumed, json.dumps({"last_seen_indices": {"0": 5, "1": 2}, "worker_count": 2}).encode())


def _assert_same_batch(got, want):
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
