"""The schedule recomputed in float64 equals the reference's float32 buffers.

Linspace, squares, products, quotients and square roots are correctly rounded IEEE operations, so those
buffers must match bit for bit on any machine. Logarithms are not: numpy's and the C library's float64 log
may differ by an ulp between CPUs and builds, which can move the float32 result by one ulp.
"""

import jax.numpy as jnp
import numpy as np
from conftest import assert_close_rel, nhwc, reference_config

from cdiff_jax.convert.keymap import SCHEDULE_BUFFERS
from cdiff_jax.diffusion.schedule import make_schedule, q_sample, reference_buffers
from cdiff_jax.weights.state_dict_io import read_state_dict


def test_buffers_equal_the_reference(fixtures_root):
    cfg = reference_config(fixtures_root, "text").schedule
    tensors = read_state_dict(fixtures_root / "text_unet/model.safetensors").tensors
    ours = reference_buffers(cfg)
    for name in SCHEDULE_BUFFERS:
        if name.startswith("log_") or "_log_" in name:
            np.testing.assert_array_max_ulp(ours[name], tensors[name], maxulp=1)
        else:
            np.testing.assert_array_equal(ours[name], tensors[name], err_msg=name)
    schedule = make_schedule(cfg)
    np.testing.assert_array_equal(schedule.alphas_cumprod, tensors["alphas_cumprod"])
    np.testing.assert_array_equal(schedule.betas, tensors["betas"])


def test_q_sample_matches_training_fixture(fixtures_root):
    io = np.load(fixtures_root / "dd_train_loss/io.npz")
    schedule = make_schedule(reference_config(fixtures_root, "codiff").schedule)
    x = q_sample(schedule, nhwc(io["x_start"]), jnp.asarray(io["t"]), nhwc(io["noise"]))
    assert_close_rel(x, nhwc(io["step1_x_noisy"]), name="x_noisy")
