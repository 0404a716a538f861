"""LPIPS: loading official-layout weights and the distance, against an independent NCHW numpy version."""

import numpy as np
import pytest
import safetensors.numpy
from conftest import LPIPS_PREFIX as PREFIX
from conftest import lpips_state_dict

from cdiff_jax.nn.lpips import LPIPS, LPIPS_VGG_CONV_INDICES, SCALE, SHIFT, VGG16_LAYOUT
from cdiff_jax.weights.state_dict_io import CheckpointReadError


def _conv3x3(x, w, b):
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, wd = x.shape[2:]
    out = sum(
        np.einsum("bchw,oc->bohw", xp[:, :, i : i + h, j : j + wd], w[:, :, i, j]) for i in range(3) for j in range(3)
    )
    return out + b[None, :, None, None]


def reference_lpips(sd, x, y):
    """LPIPS as the reference computes it, written out in NCHW numpy."""

    def trunk(img):
        h = (img - np.asarray(SHIFT)[None, :, None, None]) / np.asarray(SCALE)[None, :, None, None]
        taps, conv = [], 0
        for spec in VGG16_LAYOUT + ("M",):
            if spec == "M":
                taps.append(h)
                b, c, hh, ww = h.shape
                h = h.reshape(b, c, hh // 2, 2, ww // 2, 2).max(axis=(3, 5))
                continue
            index = LPIPS_VGG_CONV_INDICES[conv]
            key = next(k for k in sd if k.endswith(f".{index}.weight") and ".net.slice" in k)
            h = np.maximum(_conv3x3(h, sd[key].astype(np.float64), sd[key[:-6] + "bias"].astype(np.float64)), 0)
            conv += 1
        return taps

    total = 0.0
    for k, (fx, fy) in enumerate(zip(trunk(x), trunk(y))):
        nx = fx / (np.sqrt((fx**2).sum(1, keepdims=True)) + 1e-10)
        ny = fy / (np.sqrt((fy**2).sum(1, keepdims=True)) + 1e-10)
        lin = sd[f"{PREFIX}lin{k}.model.1.weight"][:, :, 0, 0].astype(np.float64)
        total = total + np.einsum("bchw,oc->bohw", (nx - ny) ** 2, lin).mean(axis=(1, 2, 3))
    return total


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    sd = lpips_state_dict(np.random.default_rng(0))
    path = tmp_path_factory.mktemp("lpips") / "autoencoder.safetensors"
    safetensors.numpy.save_file(sd, path)
    return sd, path


@pytest.mark.slow
def test_matches_reference_formula(weights):
    sd, path = weights
    model = LPIPS.from_checkpoint(path)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
    ours = np.asarray(model(x, y))
    ref = reference_lpips(sd, x.transpose(0, 3, 1, 2).astype(np.float64), y.transpose(0, 3, 1, 2).astype(np.float64))
    assert ours.shape == (2,)
    np.testing.assert_allclose(ours, ref, rtol=1e-4)
    assert np.all(ours > 0)
    np.testing.assert_allclose(np.asarray(model(x, x)), 0.0, atol=1e-7)


def test_missing_or_misshaped_weights_are_named(tmp_path, weights):
    sd, _ = weights
    with pytest.raises(CheckpointReadError, match="no LPIPS weights"):
        path = tmp_path / "vae_only.safetensors"
        safetensors.numpy.save_file({"encoder.conv_in.weight": sd["encoder.conv_in.weight"]}, path)
        LPIPS.from_checkpoint(path)
    broken = dict(sd)
    del broken[f"{PREFIX}net.slice3.12.weight"]
    broken[f"{PREFIX}lin2.model.1.weight"] = np.zeros((1, 7, 1, 1), np.float32)
    path = tmp_path / "broken.safetensors"
    safetensors.numpy.save_file(broken, path)
    with pytest.raises(CheckpointReadError, match=r"missing loss\.perceptual_loss\.net\.slice3\.12\.weight.*lin2"):
        LPIPS.from_checkpoint(path)
