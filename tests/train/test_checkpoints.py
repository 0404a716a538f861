"""Training checkpoints: restore what was saved, and refuse a train state of another shape clearly."""

import jax.numpy as jnp
import numpy as np
import pytest

from cdiff_jax.train.checkpoints import TrainCheckpoints
from cdiff_jax.train.step import TrainState


def state(ema: bool) -> TrainState:
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    return TrainState(step=jnp.asarray(7, jnp.int32), params=params, opt_state={"mu": params["w"] * 0.5},
                      ema={"w": params["w"] + 1.0} if ema else None)


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
