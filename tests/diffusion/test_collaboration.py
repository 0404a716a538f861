"""Influence maps and the combined eps: parity in training and sampler mode, and the N-modality rule."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close_rel, nhwc, reference_system

from cdiff_jax.diffusion.collaboration import Reweighting, decay, influence_weights
from cdiff_jax.diffusion.denoiser import predict


def _cases(io):
    return sorted({name.split("_")[0] for name in io.files if name.startswith("case")})


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_dynamic_diffusers_match_reference(fixtures_root, fmt):
    io = np.load(fixtures_root / "dynamic_diffuser/io.npz")
    system = reference_system(fixtures_root, "codiff", fmt)
    contexts = {"mask": jnp.asarray(io["cond_seg_mask"]), "text": jnp.asarray(io["cond_text"])}
    cases = _cases(io)
    assert cases
    for case in cases:
        sampler = bool(io[f"{case}_is_sampler_mode"])
        reweighting = Reweighting(scale=float(io[f"{case}_seg_mask_scale_factor"])) if sampler else None
        p = predict(system, nhwc(io["x_t"]), jnp.asarray(io[f"{case}_t"]), contexts, reweighting)
        ref = lambda key: nhwc(io[f"{case}_{key}"])  # noqa: E731
        for i, name in enumerate(["seg_mask", "text"]):
            assert_close_rel(p.logits[i], ref(f"raw_{name}_dd_out"), name=f"{case} raw {name}")
            assert_close_rel(p.weights[i], ref(f"influence_{name}"), name=f"{case} influence {name}")
            assert_close_rel(p.expert_eps[i], ref(f"eps_{name}_unet"), name=f"{case} eps {name}")
        softmax = jnp.exp(p.logits) / jnp.exp(p.logits).sum(0)
        assert_close_rel(softmax[0], ref("softmax_seg_mask"), name=f"{case} softmax")
        assert_close_rel(p.eps, ref("eps_combined"), name=f"{case} eps combined")
        if sampler:
            assert_close_rel(decay(jnp.asarray(io[f"{case}_t"][:1]), "cosine")[0], io[f"{case}_schedule_scale"])


def test_reweighting_for_three_modalities_sums_to_one():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 4, 4, 1)), jnp.float32)
    names = ("mask", "text", "sketch")
    w = influence_weights(logits, jnp.asarray([900, 10]), names, Reweighting(decayed=("mask", "sketch")))
    np.testing.assert_allclose(w.sum(0), 1.0, rtol=1e-6)
    plain = influence_weights(logits, jnp.asarray([900, 10]), names)
    # Late in sampling (t=10) the decayed modalities lose almost all weight to text.
    assert float(w[1, 1].min()) > 0.99 and float(plain[1, 1].max()) < 0.99


def test_linear_decay_and_two_modality_formula():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(2, 1, 3, 3, 1)), jnp.float32)
    t = jnp.asarray([400])
    w = influence_weights(logits, t, ("mask", "text"), Reweighting(schedule="linear", scale=3.0))
    m = np.asarray(jnp.exp(logits[0]) / jnp.exp(logits).sum(0)) * 0.4
    np.testing.assert_allclose(w[0], 3 * m / (1 + 2 * m), rtol=1e-5)
    np.testing.assert_allclose(w[1], (1 - m) / (1 + 2 * m), rtol=1e-5)


def test_reweighting_rejects_bad_arguments():
    logits = jnp.zeros((2, 1, 2, 2, 1))
    with pytest.raises(ValueError, match="strict subset"):
        influence_weights(logits, jnp.asarray([1]), ("text", "sketch"), Reweighting())
    with pytest.raises(ValueError, match="schedule"):
        Reweighting(schedule="exp")
