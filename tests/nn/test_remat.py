"""Activation checkpointing: the same gradients in less compiled memory, and set by name on a whole system."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cdiff_jax.config import AutoencoderConfig, TextEncoderConfig, load_config
from cdiff_jax.nn.autoencoder import AutoencoderKL
from cdiff_jax.nn.kernels import PLAIN_FORMS
from cdiff_jax.nn.remat import POLICIES, check_policy, set_policy
from cdiff_jax.nn.text_encoder import TextEncoder
from cdiff_jax.nn.unet import UNet
from cdiff_jax.system import abstract_system


def networks():
    """(module, inputs, the module's output) of the networks checkpointed outside the UNet. The plain kernel forms
    compile fastest, and checkpointing does not depend on the forms."""
    image = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    ids = jax.random.randint(jax.random.key(1), (2, 7), 0, 50)
    autoencoder = AutoencoderKL(
        AutoencoderConfig(ch=32, ch_mult=(1,), num_res_blocks=1, resolution=8, attn_resolutions=(8,)),
        rngs=nnx.Rngs(1),
        forms=PLAIN_FORMS,
    )
    text_encoder = TextEncoder(
        TextEncoderConfig(vocab_size=50, max_len=7, width=32, depth=2), rngs=nnx.Rngs(2), forms=PLAIN_FORMS
    )
    return {
        "text_encoder": (text_encoder, (ids,), lambda m, ids: m(ids)),
        "autoencoder": (autoencoder, (image,), lambda m, x: m.reconstruct(x)),
    }


def gradient_program(module, policy: str, forward):
    set_policy(module, policy)
    graphdef, state = nnx.split(module)

    @jax.jit
    def grads(state, *inputs):
        return jax.grad(lambda s: jnp.mean(forward(nnx.merge(graphdef, s), *inputs) ** 2))(state)

    return grads, state


# Each policy is a compilation of its own (seconds each on a CPU): "dots" is checked on the quickest network. The
# UNet's blocks (and the text encoder's) are checked inside a whole training step in tests/train/test_step.py.
@pytest.mark.slow
@pytest.mark.parametrize("name, policies", [("autoencoder", ("none", "full")), ("text_encoder", tuple(POLICIES))])
def test_checkpointing_changes_no_gradient_and_lowers_the_compiled_memory(name, policies):
    module, inputs, forward = networks()[name]
    results, temp_bytes = {}, {}
    for policy in policies:
        grads, state = gradient_program(module, policy, forward)
        compiled = grads.lower(state, *inputs).compile()
        temp_bytes[policy] = compiled.memory_analysis().temp_size_in_bytes
        results[policy] = compiled(state, *inputs)
    reference = jax.tree.leaves(results["none"])
    assert max(float(jnp.max(jnp.abs(g))) for g in reference) > 0
    for policy in policies[1:]:
        for got, want in zip(jax.tree.leaves(results[policy]), reference, strict=True):
            # float rounding: recomputation may order a sum differently; tiny entries are judged on their tensor's scale
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))
    assert temp_bytes["full"] < temp_bytes["none"], temp_bytes


def test_a_policy_reaches_every_checkpointing_module_of_a_system():
    system = abstract_system(load_config("tiny_system.py"))
    set_policy(system, "full")
    holders = [m for _, m in nnx.iter_modules(system) if hasattr(m, "remat")]
    assert {"UNet", "TextEncoder", "VaeLevel", "VaeMiddle"} <= {type(m).__name__ for m in holders}
    assert {m.remat for m in holders} == {"full"}
    # Every expert and diffuser of the system is reached, not only the first.
    assert sum(isinstance(m, UNet) for m in holders) == 2 * len(system.cfg.modalities)


def test_an_unknown_policy_is_named_with_the_choices():
    with pytest.raises(ValueError, match="remat='some'.*none, full, dots"):
        check_policy("some")
