"""Training steps: parity of two AdamW steps with the reference, and the compiled step's behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_close_rel, nhwc, reference_config, reference_system
from flax import nnx

from cdiff_jax.convert import keymap
from cdiff_jax.diffusion.schedule import make_schedule
from cdiff_jax.nn.remat import set_policy
from cdiff_jax.optimization import adam, loop_policy
from cdiff_jax.train.objectives import eps_loss
from cdiff_jax.train.step import (
    StepSettings,
    _train_steps,
    init_train_state,
    train_steps,
    trainable_filter,
    trainable_prefixes,
)

pytestmark = pytest.mark.slow


def _official_names(system, params):
    kinds = {n: m.kind for n, m in system.cfg.modalities.items()}
    paths = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(params)]
    return paths, keymap.official_key_map(paths, "codiff", kinds)


def test_two_adamw_steps_match_reference(fixtures_root):
    io = np.load(fixtures_root / "dd_train_loss/io.npz")
    system = reference_system(fixtures_root, "codiff")
    graphdef, params, frozen = nnx.split(system, trainable_filter(trainable_prefixes("collab", system.cfg)), ...)
    paths, names = _official_names(system, params)
    assert sorted(names[p] for p in paths) == sorted(io["grad_param_names"].tolist())

    schedule = make_schedule(system.cfg.schedule)
    contexts = {"mask": jnp.asarray(io["cond_seg_mask"]), "text": jnp.asarray(io["cond_text"])}
    z0, noise, t = nhwc(io["x_start"]), nhwc(io["noise"]), jnp.asarray(io["t"])

    def loss_fn(p):
        return eps_loss(nnx.merge(graphdef, p, frozen), schedule, z0, contexts, t, noise)

    tx = adam(float(io["lr"]), weight_decay=float(io["adamw_weight_decay"]))
    opt_state = tx.init(params)
    order = {name: i for i, name in enumerate(io["grad_param_names"].tolist())}
    for step in (1, 2):
        (loss, x_noisy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        assert_close_rel(loss, io[f"step{step}_loss"], name=f"step{step} loss")
        assert_close_rel(optax.tree.norm(grads), io[f"step{step}_grad_norm"], name=f"step{step} grad norm")
        for name in ("seg_mask", "text"):
            sub = {p: g for p, g in zip(paths, jax.tree.leaves(grads)) if f"{name}_confidence" in names[p]}
            norm = np.sqrt(sum(float(jnp.sum(g**2)) for g in sub.values()))
            assert_close_rel(norm, io[f"step{step}_grad_norm_{name}_dd"], name=f"{name} grad norm")
        per_param = np.zeros(len(order))
        for p, g in zip(paths, jax.tree.leaves(grads)):
            per_param[order[names[p]]] = float(jnp.linalg.norm(g.ravel()))
        assert_close_rel(per_param, io[f"step{step}_per_param_grad_norm"], tol=1e-4, name="per-parameter grad norms")
        if step == 1:
            assert_close_rel(x_noisy, nhwc(io["step1_x_noisy"]), name="x_noisy")
        updates, opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if step == 1:
            delta = jax.tree.map(lambda a, b: a - b, new_params, params)
            assert_close_rel(optax.tree.norm(delta), io["step1_update_norm"], name="update norm")
        params = new_params


# One optimizer object for every test: it is a static argument of the compiled steps, so the tests that step
# the same shapes reuse one program instead of tracing it again.
SGD = optax.sgd(0.1)


def _tiny_collab_batch(system, k, b, seed=0):
    rng = np.random.default_rng(seed)
    res = system.cfg.autoencoder.resolution
    return {
        "image": jnp.asarray(rng.uniform(-1, 1, (k, b, res, res, 3)), jnp.float32),
        "mask": jnp.asarray(rng.integers(0, 2, (k, b, 19, 1024)), jnp.float32),
        "tokens": jnp.asarray(rng.integers(1000, 3000, (k, b, 77)), jnp.int32),
    }


def _split(system):
    return nnx.split(system, trainable_filter(trainable_prefixes("collab", system.cfg)), ...)


def test_scan_of_k_steps_equals_k_calls(fixtures_root):
    system = reference_system(fixtures_root, "codiff")
    graphdef, params, frozen = _split(system)
    # Plain gradient steps: a call of one step and a call of three compile differently, so rounding differs
    # in the last bits, which Adam would blow up to ~lr where a gradient is exactly zero in theory.
    schedule, tx, key = make_schedule(system.cfg.schedule), SGD, jax.random.key(0)
    batches = _tiny_collab_batch(system, 3, 2)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731  (train_steps donates its state)
    together, metrics = train_steps(graphdef, frozen, init_train_state(copy(params), tx), batches, schedule, key, tx)
    state = init_train_state(copy(params), tx)
    losses = []
    for i in range(3):
        state, m = train_steps(
            graphdef, frozen, state, jax.tree.map(lambda x: x[i : i + 1], batches), schedule, key, tx
        )
        losses.append(float(m.loss[0]))
    assert int(together.step) == 3 and bool(metrics.finite.all())
    np.testing.assert_allclose(metrics.loss, losses, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), together.params, state.params)
    # Only the diffusers moved.
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(together.params)))


def test_gradient_accumulation_is_the_whole_batch_s_step(fixtures_root):
    """Two micro-batches of 2 take the step one batch of 4 takes: the same draws (condition dropout included),
    the same loss and gradient up to float rounding; a different split of the randomness would fail this."""
    system = reference_system(fixtures_root, "codiff")
    graphdef, params, frozen = _split(system)
    schedule, tx, key = make_schedule(system.cfg.schedule), SGD, jax.random.key(3)
    batches = _tiny_collab_batch(system, 1, 4, seed=1)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731  (train_steps donates its state)
    results = {}
    for accumulation in (1, 2):
        settings = StepSettings(condition_dropout=0.5, accumulation=accumulation)
        results[accumulation] = train_steps(
            graphdef, frozen, init_train_state(copy(params), tx), batches, schedule, key, tx, settings
        )
    (whole, whole_metrics), (split, split_metrics) = results[1], results[2]
    np.testing.assert_allclose(split_metrics.loss, whole_metrics.loss, rtol=1e-5)
    np.testing.assert_allclose(split_metrics.grad_norm, whole_metrics.grad_norm, rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), split.params, whole.params)


def test_activation_checkpointing_takes_the_same_step_in_less_memory(fixtures_root):
    """An expert step (its UNet and text encoder trained, the autoencoder frozen) with every block recomputed in
    the backward pass: the loss and the updated parameters of the step without, up to float rounding, and a
    compiled program that needs less temporary memory (XLA's memory analysis)."""
    system = reference_system(fixtures_root, "codiff")
    schedule, tx, key = make_schedule(system.cfg.schedule), SGD, jax.random.key(5)
    batches = _tiny_collab_batch(system, 1, 2, seed=2)
    results, temp_bytes = {}, {}
    for policy in ("none", "full"):
        graphdef, params, frozen = nnx.split(
            system, trainable_filter(trainable_prefixes("expert", system.cfg, "text")), ...
        )
        module = nnx.merge(graphdef, params, frozen)  # a new module object: the cached system stays as it is
        set_policy(module, policy)
        graphdef = nnx.graphdef(module)
        state = init_train_state(jax.tree.map(jnp.copy, params), tx)  # the step donates its state
        compiled = _train_steps.lower(
            graphdef, frozen, state, batches, schedule, key, tx, StepSettings(), loop_policy()
        ).compile()
        temp_bytes[policy] = compiled.memory_analysis().temp_size_in_bytes
        results[policy] = compiled(frozen, state, batches, schedule, key)
    (plain, plain_metrics), (recomputed, recomputed_metrics) = results["none"], results["full"]
    assert float(plain_metrics.grad_norm[0]) > 0
    np.testing.assert_allclose(recomputed_metrics.loss, plain_metrics.loss, rtol=1e-6)
    np.testing.assert_allclose(recomputed_metrics.grad_norm, plain_metrics.grad_norm, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), recomputed.params, plain.params)
    assert temp_bytes["full"] < temp_bytes["none"], temp_bytes


def test_the_average_follows_ldm_lit_ema(fixtures_root):
    system = reference_system(fixtures_root, "codiff")
    graphdef, params, frozen = _split(system)
    schedule, tx, key = make_schedule(system.cfg.schedule), SGD, jax.random.key(0)
    settings = StepSettings(ema_decay=0.5)
    batches = _tiny_collab_batch(system, 3, 2)
    state = init_train_state(jax.tree.map(jnp.copy, params), tx, ema=True)
    expected = jax.tree.map(np.asarray, params)
    for i in range(3):
        state, _ = train_steps(
            graphdef, frozen, state, jax.tree.map(lambda x: x[i : i + 1], batches), schedule, key, tx, settings
        )
        decay = min(0.5, (1 + (i + 1)) / (10 + (i + 1)))  # LitEma counts the update being made
        expected = jax.tree.map(lambda e, p: e - (1 - decay) * (e - np.asarray(p)), expected, state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), state.ema, expected)
    assert state.export_params is state.ema
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(state.ema), jax.tree.leaves(state.params)))


def test_non_finite_loss_keeps_the_last_good_parameters(fixtures_root):
    system = reference_system(fixtures_root, "codiff")
    graphdef, params, frozen = _split(system)
    schedule, tx = make_schedule(system.cfg.schedule), adam(1e-3, weight_decay=0.01)
    batches = _tiny_collab_batch(system, 1, 2)
    batches["image"] = batches["image"].at[0, 0, 0, 0, 0].set(jnp.nan)
    before = jax.tree.map(np.asarray, params)
    state, metrics = train_steps(
        graphdef, frozen, init_train_state(jax.tree.map(jnp.copy, params), tx), batches, schedule, jax.random.key(0), tx
    )
    assert not bool(metrics.finite[0]) and int(state.step) == 0
    jax.tree.map(np.testing.assert_array_equal, before, state.params)


def test_a_non_finite_step_stops_the_call_at_the_last_good_state(fixtures_root):
    system = reference_system(fixtures_root, "codiff")
    graphdef, params, frozen = _split(system)
    schedule, tx, key = make_schedule(system.cfg.schedule), SGD, jax.random.key(0)
    batches = _tiny_collab_batch(system, 3, 2)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731
    first, _ = train_steps(
        graphdef, frozen, init_train_state(copy(params), tx), jax.tree.map(lambda x: x[:1], batches), schedule, key, tx
    )
    batches["image"] = batches["image"].at[1, 0, 0, 0, 0].set(jnp.nan)  # the second step's loss is NaN
    state, metrics = train_steps(graphdef, frozen, init_train_state(copy(params), tx), batches, schedule, key, tx)
    # the third step's batch is fine, but it comes after the bad one: the call keeps the first step's state
    assert metrics.finite.tolist() == [True, False, False] and int(state.step) == 1
    assert np.isnan(metrics.loss[1]) and np.isfinite(metrics.loss[2])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), state.params, first.params)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)))


def test_stage_validation(fixtures_root):
    cfg = reference_config(fixtures_root, "text")
    with pytest.raises(ValueError, match="two or more"):
        trainable_prefixes("collab", cfg)
    with pytest.raises(ValueError, match="modalities"):
        trainable_prefixes("expert", cfg, "mask")
    assert trainable_prefixes("expert", cfg, "text")[0] == ("modalities", "text", "expert")
