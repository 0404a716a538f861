"""Training checkpoints: restore what was saved, refuse a train state of another shape clearly, and report a save
that fails (a full disk) in one line naming its checkpoint."""

import errno
import os

import jax.numpy as jnp
import numpy as np
import pytest

from cdiff_jax.paths import CannotWrite
from cdiff_jax.train.checkpoints import RESUME, TrainCheckpoints
from cdiff_jax.train.step import TrainState


def state(ema: bool) -> TrainState:
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    return TrainState(
        step=jnp.asarray(7, jnp.int32),
        params=params,
        opt_state={"mu": params["w"] * 0.5},
        ema={"w": params["w"] + 1.0} if ema else None,
    )


@pytest.mark.parametrize("saved_with_ema", [False, True])
def test_restore_returns_the_saved_state_and_iterator(tmp_path, saved_with_ema):
    checkpoints = TrainCheckpoints(tmp_path, asynchronous=False)
    checkpoints.save(7, state(saved_with_ema), b'{"position": 3}', wait=True)
    restored, data = checkpoints.restore(7, state(saved_with_ema))
    checkpoints.close()
    assert data == b'{"position": 3}'
    assert int(restored.step) == 7
    np.testing.assert_array_equal(restored.params["w"], state(saved_with_ema).params["w"])
    assert (restored.ema is None) == (not saved_with_ema)


@pytest.mark.parametrize("saved_with_ema", [False, True])
def test_resuming_with_another_ema_setting_names_the_setting(tmp_path, saved_with_ema):
    checkpoints = TrainCheckpoints(tmp_path, asynchronous=False)
    checkpoints.save(7, state(saved_with_ema), b"{}", wait=True)
    with pytest.raises(ValueError, match="ema_decay"):
        checkpoints.restore(7, state(not saved_with_ema))
    checkpoints.close()


def test_a_checkpoint_written_before_a_field_existed_restores_with_the_field_empty(tmp_path):
    """Checkpoints from before TrainState had `ema` hold no such key; a run without EMA resumes them."""
    older = state(ema=False)
    checkpoints = TrainCheckpoints(tmp_path, asynchronous=False)
    checkpoints.save(7, {"step": older.step, "params": older.params, "opt_state": older.opt_state}, b"{}", wait=True)
    restored, _ = checkpoints.restore(7, state(ema=False))
    checkpoints.close()
    assert isinstance(restored, TrainState) and restored.ema is None
    np.testing.assert_array_equal(restored.opt_state["mu"], older.opt_state["mu"])


FULL = "RESOURCE_EXHAUSTED: Error writing \"w/c/0\": No space left on device [os_error_code='28']"  # tensorstore's


def test_a_save_that_fails_in_the_background_names_its_checkpoint_and_leaves_no_temporary(tmp_path, monkeypatch):
    """orbax writes in the background and reports a failure when the next save (or close) waits for it: the one line
    names the checkpoint that failed, not the one being started, and its partial files are removed."""
    checkpoints = TrainCheckpoints(tmp_path)
    failures = [ValueError(FULL)]

    def wait_until_finished():
        if failures:
            raise failures.pop()

    monkeypatch.setattr(
        checkpoints.manager,
        "save",
        lambda step, **_: (tmp_path / f"{step}.orbax-checkpoint-tmp" / "state").mkdir(parents=True),
    )
    monkeypatch.setattr(checkpoints.manager, "wait_until_finished", wait_until_finished)
    checkpoints.save(2, state(ema=False), b"{}")
    with pytest.raises(CannotWrite) as err:
        checkpoints.save(4, state(ema=False), b"{}")
    assert str(err.value) == f"cannot write {tmp_path / '2'}: No space left on device; {RESUME}"
    assert list(tmp_path.iterdir()) == []
    checkpoints.close()


def test_a_save_that_fails_at_once_names_its_checkpoint_and_keeps_the_previous_one(tmp_path, monkeypatch):
    checkpoints = TrainCheckpoints(tmp_path, asynchronous=False)
    checkpoints.save(2, state(ema=False), b"{}", wait=True)
    real_save = checkpoints.manager.save

    def fills_up(step, **kwargs):
        (tmp_path / f"{step}.orbax-checkpoint-tmp").mkdir()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoints.manager, "save", fills_up)
    with pytest.raises(CannotWrite, match=f"cannot write {tmp_path / '4'}: No space left on device"):
        checkpoints.save(4, state(ema=False), b"{}", wait=True)
    monkeypatch.setattr(checkpoints.manager, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2"] and checkpoints.latest_step() == 2
    restored, _ = checkpoints.restore(2, state(ema=False))
    checkpoints.close()
    assert int(restored.step) == 7
