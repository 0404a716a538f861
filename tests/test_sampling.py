"""The compiled sampler: parity with the reference DDIM, one loop, sharding, guidance, uni-modal."""

import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, assert_close_rel, nhwc, reference_system
from flax import nnx

from cdiff_jax.diffusion.collaboration import EqualWeights, Reweighting
from cdiff_jax.diffusion.ddim import ddim_coefficients, ddim_step
from cdiff_jax.diffusion.denoiser import Guidance, encode_conditions, predict
from cdiff_jax.diffusion.schedule import alphas_cumprod
from cdiff_jax.noise import normal
from cdiff_jax.sampling import SamplerSettings, sample
from cdiff_jax.text.tokenizer import caption_tokenizer

pytestmark = pytest.mark.slow


def steps_nhwc(x):
    """[S, B, C, H, W] -> [S, B, H, W, C]."""
    return np.transpose(np.asarray(x), (0, 1, 3, 4, 2))


def _reference_runs(fixtures_root):
    runs = sorted((fixtures_root / "collab_ddim").glob("ddim_eta*.npz"))
    assert runs, "no collaborative DDIM fixtures"
    return runs


def _conditions(io):
    ids = caption_tokenizer().encode([str(c).lower() for c in io["captions"]]).ids
    return {"mask": jnp.asarray(io["mask_onehot"]), "text": jnp.asarray(ids)}


def test_collaborative_ddim_matches_reference(fixtures_root):
    system = reference_system(fixtures_root, "codiff")
    graphdef, state = nnx.split(system)
    for run in _reference_runs(fixtures_root):
        io = np.load(run)
        steps, eta = int(io["ddim_steps"]), float(io["eta"])
        coeffs = ddim_coefficients(alphas_cumprod(system.cfg.schedule), steps, eta)
        np.testing.assert_array_equal(coeffs.timesteps, io["timesteps"])
        for ours, ref in [
            ("a_t", "a_t"),
            ("a_prev", "a_prev"),
            ("sigma", "sigma_t"),
            ("sqrt_one_minus_a_t", "sqrt_one_minus_a_t"),
        ]:
            assert_close_rel(getattr(coeffs, ours), io[ref], tol=1e-6, name=f"{run.name} {ref}")
        result = sample(
            graphdef,
            state,
            _conditions(io),
            nhwc(io["x_T"]),
            jax.random.key(0),
            SamplerSettings(steps=steps, eta=eta, record=True),
            step_noise=jnp.asarray(steps_nhwc(io["step_noise"])),
        )
        tr = result.trajectory
        checks = {
            "x_t_in": tr.x_t,
            "eps_combined": tr.eps,
            "pred_x0": tr.pred_x0,
            "influence_seg_mask": tr.weights[:, 0],
            "influence_text": tr.weights[:, 1],
            "raw_seg_mask_dd_out": tr.logits[:, 0],
            "raw_text_dd_out": tr.logits[:, 1],
            "eps_seg_mask_unet": tr.expert_eps[:, 0],
            "eps_text_unet": tr.expert_eps[:, 1],
        }
        for name, ours in checks.items():
            assert_close_rel(ours, steps_nhwc(io[name]), tol=1e-4, name=f"{run.name} {name}")
        assert_close_rel(result.latents, nhwc(io["z_0"]), tol=1e-4, name="z_0")
        assert_close_rel(result.images, nhwc(io["x_0_decoded"]), tol=1e-4, name="x_0_decoded")
        last = system.autoencoder.decode_latent(tr.pred_x0[-1])
        assert_close_rel(last, nhwc(io["pred_x0_last_decoded"]), tol=1e-4, name="pred_x0_last_decoded")


def _lowered(system, settings, conditions, x):
    from cdiff_jax.sampling import _sample_program

    graphdef, state = nnx.split(system)
    return _sample_program.lower(None, graphdef, state, conditions, {}, x, jax.random.key(0), None, {}, {}, settings)


PRNG_FUNCTIONS = ("threefry", "uniform", "random", "bits", "normal")  # jax's own helpers, some with loops


def _denoising_loops(stablehlo: str) -> int:
    """While loops outside the PRNG's own functions (threefry hashing and, in newer jax, uniform draws loop)."""
    functions = stablehlo.split("func.func ")[1:]
    return sum(
        f.count("stablehlo.while") for f in functions if not any(name in f.split("(", 1)[0] for name in PRNG_FUNCTIONS)
    )


def _program_ops(stablehlo: str) -> int:
    """Operations other than constants (newer jax passes the larger constant tables in as arguments)."""
    return sum(1 for line in stablehlo.splitlines() if " = " in line and "stablehlo.constant" not in line)


@pytest.mark.parametrize("solver, order", [("ddim", None), ("unipc", 3)])  # DPM-Solver++ runs the same step
def test_one_loop_and_compile_cost_and_memory_independent_of_steps(fixtures_root, solver, order):
    system = reference_system(fixtures_root, "codiff")
    io = np.load(_reference_runs(fixtures_root)[0])
    conditions, x = _conditions(io), nhwc(io["x_T"])
    texts, seconds, memory = {}, {}, {}
    for steps in (10, 200):
        lowered = _lowered(system, SamplerSettings(steps=steps, solver=solver, order=order), conditions, x)
        texts[steps] = lowered.as_text()
        start = time.perf_counter()
        compiled = lowered.compile()
        seconds[steps] = time.perf_counter() - start
        memory[steps] = compiled.memory_analysis().temp_size_in_bytes
    for text in texts.values():
        assert _denoising_loops(text) == 1
    ops = {s: _program_ops(t) for s, t in texts.items()}
    assert ops[10] == ops[200], "the program grows with the number of steps"
    assert seconds[200] < 2.5 * seconds[10] + 1.0, seconds
    # Only the per-step constants (a few scalars and a key each) may grow; one latent is far larger.
    assert memory[200] - memory[10] < 190 * 64 < x.size * 4 * 190, memory


def test_a_multistep_solver_samples_the_collaborative_system_step_by_step(fixtures_root):
    """The compiled loop is the plan's steps on the combined eps at each integer timestep, guidance included."""
    from cdiff_jax.diffusion import solvers

    system = reference_system(fixtures_root, "codiff")
    graphdef, state = nnx.split(system)
    io = np.load(_reference_runs(fixtures_root)[0])
    conditions, x_T = _conditions(io), nhwc(io["x_T"])
    contexts = encode_conditions(system, conditions)
    null_mask = jnp.zeros_like(conditions["mask"][:1])
    null = jnp.broadcast_to(encode_conditions(system, {"mask": null_mask})["mask"], contexts["mask"].shape)
    guidance = Guidance(
        scales={"mask": jnp.float32(2.0), "text": jnp.float32(1.0)},
        null_contexts={"mask": null, "text": contexts["text"]},
    )

    @jax.jit
    def by_hand(params, solver_state, row):
        x = solvers.current_sample(solver_state)
        eps = predict(
            nnx.merge(graphdef, params), x, jnp.full((x.shape[0],), row.timesteps), contexts, Reweighting(), guidance
        ).eps
        return solvers.step(solver_state, eps, row, None)[0]

    # UniPC: its corrector reads the sample before the last step too (DPM-Solver++ runs the same step).
    settings = SamplerSettings(steps=4, solver="unipc", reweighting=Reweighting(), guided=("mask",), record=True)
    result = sample(
        graphdef,
        state,
        conditions,
        x_T,
        jax.random.key(0),
        settings,
        guidance_scales={"mask": 2.0},
        null_conditions={"mask": null_mask},
    )
    plan = settings.plan(alphas_cumprod(system.cfg.schedule))
    np.testing.assert_array_equal(result.trajectory.timesteps, plan.timesteps)
    solver_state = solvers.initial(plan, x_T)
    for i in range(4):
        solver_state = by_hand(state, solver_state, jax.tree.map(lambda a, i=i: a[i], plan))
    assert_close_rel(result.latents, solvers.current_sample(solver_state), tol=1e-5, name="z_0")


def test_trajectory_only_on_request(fixtures_root):
    system = reference_system(fixtures_root, "codiff")
    io = np.load(_reference_runs(fixtures_root)[0])
    graphdef, state = nnx.split(system)
    plain = sample(graphdef, state, _conditions(io), nhwc(io["x_T"]), jax.random.key(1), SamplerSettings(steps=4))
    recorded = sample(
        graphdef, state, _conditions(io), nhwc(io["x_T"]), jax.random.key(1), SamplerSettings(steps=4, record=True)
    )
    assert plain.trajectory is None and recorded.trajectory.x_t.shape[0] == 4
    # The same computation in another program: equal up to the last float bits XLA's fusion may change.
    assert_close_rel(recorded.latents, plain.latents, tol=1e-6, name="z_0 with and without the trajectory")


def test_reference_step_spacing():
    from cdiff_jax.diffusion.ddim import ddim_timesteps

    np.testing.assert_array_equal(ddim_timesteps(1000, 50)[[0, 1, -1]], [1, 21, 981])
    assert len(ddim_timesteps(1000, 30)) == 31  # as the reference: T // S does not divide T
    with pytest.raises(ValueError, match="divides"):
        ddim_timesteps(1000, 3)


def test_uni_modal_sampling_is_the_same_loop_with_one_expert(fixtures_root):
    system = reference_system(fixtures_root, "text")
    graphdef, state = nnx.split(system)
    ids = jnp.asarray(caption_tokenizer().encode(["a man with a beard", "a woman"]).ids)
    x_T = normal(jax.random.key(2), (2, 8, 8, 3))
    noise = normal(jax.random.key(3), (4, 2, 8, 8, 3))
    result = sample(
        graphdef, state, {"text": ids}, x_T, jax.random.key(0), SamplerSettings(steps=4, eta=0.5), step_noise=noise
    )
    coeffs = ddim_coefficients(alphas_cumprod(system.cfg.schedule), 4, 0.5)
    context = system.modalities["text"].encoder(ids)
    x = x_T
    for i in range(4):
        eps = system.modalities["text"].expert(x, jnp.full((2,), coeffs.timesteps[i]), context)
        x, _ = ddim_step(
            x, eps, coeffs.a_t[i], coeffs.a_prev[i], coeffs.sigma[i], coeffs.sqrt_one_minus_a_t[i], noise[i]
        )
    assert_close_rel(result.latents, x, tol=1e-5, name="uni-modal z_0")


def test_equal_weights_average_the_experts_without_the_diffusers(fixtures_root):
    system = reference_system(fixtures_root, "codiff")
    io = np.load(_reference_runs(fixtures_root)[0])
    contexts = encode_conditions(system, _conditions(io))
    x = jnp.asarray(nhwc(io["x_T"]))
    t = jnp.full((x.shape[0],), 500)
    p = predict(system, x, t, contexts, EqualWeights())
    assert p.logits is None
    expected = sum(system.modalities[n].expert(x, t, contexts[n]) for n in contexts) / len(contexts)
    assert_close_rel(p.eps, expected, tol=1e-6, name="equal-weight eps")
    learned = predict(system, x, t, contexts)
    assert float(jnp.abs(learned.eps - p.eps).max()) > 1e-6  # the learned maps are not uniform


def test_classifier_free_guidance_per_modality(fixtures_root):
    system = reference_system(fixtures_root, "codiff")
    io = np.load(_reference_runs(fixtures_root)[0])
    contexts = encode_conditions(system, _conditions(io))
    null = encode_conditions(system, {"mask": jnp.zeros_like(jnp.asarray(io["mask_onehot"][:1]))})
    x, t = nhwc(io["x_T"]), jnp.asarray([501, 501])
    plain = predict(system, x, t, contexts)
    null_b = jnp.broadcast_to(null["mask"], contexts["mask"].shape)
    scale_one = Guidance(scales={"mask": 1.0, "text": 1.0}, null_contexts={"mask": null_b, "text": contexts["text"]})
    assert_close_rel(predict(system, x, t, contexts, guidance=scale_one).eps, plain.eps, tol=1e-6)
    g = 3.0
    guided = predict(
        system,
        x,
        t,
        contexts,
        guidance=Guidance(scales={"mask": g, "text": 1.0}, null_contexts={"mask": null_b, "text": contexts["text"]}),
    )
    e_null = system.modalities["mask"].expert(x, t, null_b)
    expected = e_null + g * (plain.expert_eps[0] - e_null)
    assert_close_rel(guided.expert_eps[0], expected, tol=1e-5)
    assert_close_rel(guided.expert_eps[1], plain.expert_eps[1], tol=1e-6)
    np.testing.assert_array_equal(guided.weights, plain.weights)


def test_guidance_arguments_are_checked(fixtures_root):
    system = reference_system(fixtures_root, "codiff")
    graphdef, state = nnx.split(system)
    with pytest.raises(ValueError, match="null condition"):
        sample(
            graphdef,
            state,
            {"mask": jnp.zeros((1, 19, 1024)), "text": jnp.zeros((1, 77), jnp.int32)},
            jnp.zeros((1, 8, 8, 3)),
            jax.random.key(0),
            SamplerSettings(steps=2, guided=("mask",)),
        )


def test_eight_devices_give_the_same_images_as_one_with_every_solver_kind(fixtures_root):
    script = textwrap.dedent(f"""
        import sys, numpy as np, jax, jax.numpy as jnp
        sys.path.insert(0, {str(REPO / "tests")!r})
        from flax import nnx
        import pathlib
        from conftest import reference_system
        from cdiff_jax.parallel import data_mesh, replicate, shard_batch
        from cdiff_jax.sampling import SamplerSettings, sample
        assert jax.device_count() == 8, jax.devices()
        system = reference_system(pathlib.Path({str(fixtures_root)!r}), "codiff")
        graphdef, state = nnx.split(system)
        rng = np.random.default_rng(0)
        conds = {{"mask": jnp.asarray(rng.integers(0, 2, (8, 19, 1024)).astype(np.float32)),
                  "text": jnp.asarray(rng.integers(1000, 3000, (8, 77)).astype(np.int32))}}
        x_T = jnp.asarray(rng.normal(size=(8, 8, 8, 3)).astype(np.float32))
        mesh = data_mesh()
        for settings in (SamplerSettings(steps=5), SamplerSettings(steps=4, solver="unipc", order=3)):
            one = sample(graphdef, state, conds, x_T, jax.random.key(7), settings)
            many = sample(graphdef, replicate(state, mesh), shard_batch(conds, mesh), shard_batch(x_T, mesh),
                          jax.random.key(7), settings)
            assert len(many.images.sharding.device_set) == 8
            err = np.abs(np.asarray(many.images) - np.asarray(one.images)).max() / np.abs(np.asarray(one.images)).max()
            print(settings.solver, "relative difference", err)
            assert err < 1e-5, (settings.solver, err)
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_step_reporters_reach_only_their_own_call_and_share_one_program():
    from cdiff_jax import sampling
    from cdiff_jax.config import load_config
    from cdiff_jax.system import init_system

    system = init_system(load_config("tiny_system.py:text"), seed=0)
    graphdef, state = nnx.split(system)
    conditions = {
        "text": jnp.asarray(caption_tokenizer(system.cfg.modalities["text"].encoder.max_len).encode(["a man"]).ids)
    }
    x_T = jnp.zeros((1, system.cfg.latent_size, system.cfg.latent_size, system.cfg.autoencoder.embed_dim))
    settings = SamplerSettings(steps=4)
    seen = {"a": [], "b": []}
    for name in ("a", "b"):
        sample(
            graphdef,
            state,
            conditions,
            x_T,
            jax.random.key(0),
            settings,
            on_step=lambda done, total, name=name: seen[name].append((done, total)),
        )
    assert seen["a"] == seen["b"] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    compiled = sampling._sample_program._cache_size()
    sample(graphdef, state, conditions, x_T, jax.random.key(0), settings, on_step=lambda done, total: None)
    assert sampling._sample_program._cache_size() == compiled, "a new reporter compiled a new program"
    assert not sampling._reporters, "a reporter outlived its call"
    quiet = sample(graphdef, state, conditions, x_T, jax.random.key(0), settings)
    assert seen["a"] == [(1, 4), (2, 4), (3, 4), (4, 4)]  # a call without a reporter reports to no one
    assert np.isfinite(np.asarray(quiet.images)).all()
