"""The validators every command shares: one message per input kind, naming the flag."""

import math

import pytest

from cdiff_jax import requests as R
from cdiff_jax.nn.freeu import FreeU
from cdiff_jax.requests import UsageError


def test_the_demo_defaults_ship_inside_the_package():
    assert R.DEMO_CHECKPOINT.is_relative_to(R.PACKAGE) and (R.DEMO_CHECKPOINT / "config.json").is_file()
    assert R.DEMO_MASK.is_relative_to(R.PACKAGE) and R.DEMO_MASK.is_file()


@pytest.mark.parametrize(
    "check, value, flag",
    [
        (R.eta, -0.1, "--eta"),
        (R.eta, math.inf, "--eta"),
        (R.eta, math.nan, "--eta"),
        (R.mask_scale, 0.0, "--mask-scale"),
        (R.mask_scale, -math.inf, "--mask-scale"),
        (R.columns, 0, "--columns"),
        (R.batch, 0, "--batch"),
        (R.batch, R.MAX_BATCH + 1, "--seed"),
        (R.mode, "loud", "--mode"),
    ],
)
def test_each_check_names_its_flag_in_one_line(check, value, flag):
    with pytest.raises(UsageError, match=flag) as err:
        check(value)
    assert "\n" not in str(err.value)


def test_accepted_values_pass_through():
    assert (R.eta(0.0), R.eta(1.0), R.mask_scale(2.0), R.columns(1), R.batch(R.MAX_BATCH)) == (
        0.0,
        1.0,
        2.0,
        1,
        R.MAX_BATCH,
    )


def test_steps_follow_the_schedule():
    assert R.steps(50, 1000) == 50
    for bad in (0, 3, 1000, 5000):
        with pytest.raises(UsageError, match="--steps"):
            R.steps(bad, 1000)


def test_steps_follow_the_solvers_spacing():
    assert R.steps(3, 1000, "dpmpp") == 3  # not DDIM's "leading": any count below the schedule's length
    with pytest.raises(UsageError, match="--steps 1000: steps must be in 1..999"):
        R.steps(1000, 1000, "unipc", "linspace")


@pytest.mark.parametrize(
    "args, message",
    [
        (("euler", None, None, None), "--sampler euler: expected one of: ddim, dpmpp, unipc, dpmpp2m, dpmpp3m"),
        (("ddim", 2, None, None), "--order 2: sampler 'ddim' has order(s) 1, not 2"),
        (("dpmpp3m", 2, None, None), "--order 2: --sampler dpmpp3m is order 3; give --sampler dpmpp --order 2"),
        (("unipc", 4, None, None), "--order 4: sampler 'unipc' has order(s) 1, 2, 3, not 4"),
        (("dpmpp2m", None, "trailing", None), "--spacing trailing: expected one of: leading, linspace"),
        (("unipc", None, None, 0.5), "--eta 0.5: only DDIM draws noise; unipc is deterministic, drop --eta"),
        (("ddim", None, None, 2.0), "--eta 2.0: give a number in [0, 1]"),
    ],
)
def test_a_bad_sampler_is_one_line_naming_the_flag(args, message):
    with pytest.raises(UsageError) as err:
        R.sampler(*args)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_freeu_is_four_numbers():
    assert R.freeu(None) is None
    assert R.freeu("1.1,1.2,1,0.5") == FreeU(1.1, 1.2, 1.0, 0.5)
    for bad in ("1.1,1.2,1", "a,b,c,d", "1,1,1,inf", ""):
        with pytest.raises(UsageError, match="--freeu .*: give four numbers b1,b2,s1,s2"):
            R.freeu(bad)


def test_sampler_shorthands_and_defaults():
    assert R.sampler("ddim", None, None, None) == {"solver": "ddim", "order": None, "spacing": None, "eta": 1.0}
    assert R.sampler("dpmpp3m", None, "leading", None) == {
        "solver": "dpmpp",
        "order": 3,
        "spacing": "leading",
        "eta": 0.0,
    }
    assert R.sampler("unipc", 3, None, None)["order"] == 3


def test_guidance_one_scale_or_named_pairs():
    assert R.guidance("2", ["mask", "text"]) == {"mask": 2.0, "text": 2.0}
    assert R.guidance("text=3", ["mask", "text"]) == {"mask": 1.0, "text": 3.0}
    for bad in ("mask=2", "text", "text=x", "inf", "text=nan"):
        with pytest.raises(UsageError, match="--guidance"):
            R.guidance(bad, ["text"])


def test_output_folder_refuses_what_is_not_ours(tmp_path):
    assert R.output_folder(tmp_path / "new" / "deeper", is_ours=lambda p: False) == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    R.output_folder(tmp_path / "empty", is_ours=lambda p: False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert R.output_folder(tmp_path / "full", is_ours=lambda p: True) == tmp_path / "full"
    with pytest.raises(UsageError, match="--out .* not from this command"):
        R.output_folder(tmp_path / "full", is_ours=lambda p: False)
    with pytest.raises(UsageError, match="is a file"):
        R.output_folder(tmp_path / "full" / "x", is_ours=lambda p: True)


def test_a_non_square_mask_is_accepted_with_a_note(tmp_path, caplog):
    import numpy as np
    from PIL import Image

    from cdiff_jax.config import load_config

    Image.fromarray(np.ones((40, 64), np.uint8)).save(tmp_path / "wide.png")
    modality = load_config("tiny_system.py:mask").modalities["mask"]
    with caplog.at_level("WARNING", logger="cdiff_jax"):
        onehot = R.drawing(tmp_path / "wide.png", modality, "mask")
    assert onehot.shape[0] == 1 and "is 64x40, not square" in caplog.text
