"""The package's optimisation loop: the optimizer, the non-finite guard, and the loop policy."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cdiff_jax.optimization import ACCELERATOR, CPU, POLICY_ENV, adam, first_rejected, loop_policy, run_steps


def quadratic_step(carry, batch):
    """Gradient descent on sum((x - target)^2); a NaN target makes the loss and gradient NaN."""
    x, count = carry
    loss, grad = jax.value_and_grad(lambda v: jnp.sum((v - batch) ** 2))(x)
    return (x - 0.1 * grad, count + 1), loss, (loss, grad)


def run(policy, batches, x0):
    return jax.jit(lambda c, b: run_steps(quadratic_step, c, b, policy))((x0, jnp.int32(0)), batches)


@pytest.mark.parametrize("policy", [CPU, ACCELERATOR], ids=["cpu", "accelerator"])
def test_the_guard_keeps_the_state_of_the_last_good_step(policy):
    x0 = jnp.array([1.0, -2.0])
    batches = jnp.array([[0.0, 0.0], [3.0, 1.0], [np.nan, 0.0], [1.0, 1.0]])
    (x, count), losses, applied = run(policy, batches, x0)
    (good, good_count), _, _ = run(policy, batches[:2], x0)
    np.testing.assert_array_equal(applied, [True, True, False, False])  # the step after the bad one is not applied
    np.testing.assert_array_equal(x, good)
    assert int(count) == int(good_count) == 2
    assert np.isnan(losses[2]) and first_rejected(applied) == 2
    assert first_rejected(jnp.ones(3, bool)) is None


def test_both_policies_compute_the_same_steps():
    x0 = jnp.array([1.0, -2.0])
    batches = jnp.arange(10.0).reshape(5, 2)
    (a, _), losses_a, applied_a = run(CPU, batches, x0)
    (b, _), losses_b, applied_b = run(ACCELERATOR, batches, x0)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(losses_a, losses_b, rtol=1e-6)
    assert bool(applied_a.all()) and bool(applied_b.all())


@pytest.mark.parametrize("length", [1, 3])
def test_the_cpu_policy_compiles_no_loop_even_for_one_step(length):
    def lowered(policy):
        fn = jax.jit(lambda c, b: run_steps(quadratic_step, c, b, policy))
        return fn.lower((jnp.zeros(2), jnp.int32(0)), jnp.zeros((length, 2))).as_text()

    assert len(re.findall(r"stablehlo\.while", lowered(CPU))) == 0
    assert len(re.findall(r"stablehlo\.while", lowered(ACCELERATOR))) == 1


def test_the_policy_follows_the_backend_unless_overridden(monkeypatch):
    monkeypatch.delenv(POLICY_ENV, raising=False)
    assert loop_policy() == (CPU if jax.default_backend() == "cpu" else ACCELERATOR)
    monkeypatch.setenv(POLICY_ENV, "accelerator")
    assert loop_policy() == ACCELERATOR
    monkeypatch.setenv(POLICY_ENV, "tpu")
    with pytest.raises(ValueError, match=f"{POLICY_ENV}='tpu' is not a loop policy; set it to one of"):
        loop_policy()


def test_adam_is_torchs_adam_and_adamw():
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([0.5, 0.1, -4.0])}

    def first_update(tx):
        return tx.update(grads, tx.init(params), params)[0]["w"]

    # torch.optim.Adam's first step is lr * g / (|g| + eps); AdamW also subtracts lr * decay * w.
    np.testing.assert_allclose(first_update(adam(0.1)), -0.1 * grads["w"] / (jnp.abs(grads["w"]) + 1e-8), rtol=1e-5)
    np.testing.assert_allclose(
        first_update(adam(0.1, weight_decay=0.01)), first_update(adam(0.1)) - 0.1 * 0.01 * params["w"], rtol=1e-5
    )
    schedule = optax.linear_schedule(0.0, 1.0, 10)
    np.testing.assert_array_equal(first_update(adam(schedule)), 0.0)
