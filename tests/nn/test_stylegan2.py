"""StyleGAN2 generator parity with the official code (stylegan2-ada-pytorch and rosinality fixtures).

Every case, size and key comes from the fixture folders (config.json, io.npz); the generators are
built from the fixture weights once per module and the jitted programs are shared by all cases.
"""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from cdiff_jax.config import StyleGAN2Config
from cdiff_jax.convert.stylegan2 import (
    config_from_init_kwargs,
    load_gan_file,
    network_from_state_dict,
    nvidia_key_map,
)
from cdiff_jax.nn import stylegan2 as sg
from tests.conftest import assert_close_rel


def nchw(x):
    return np.transpose(np.asarray(x), (0, 3, 1, 2))


class Reference:
    """A fixture folder: io arrays, config, and our generator split into (graphdef, state)."""

    def __init__(self, folder, generator):
        self.io = dict(np.load(folder / "io.npz"))
        self.config = json.loads((folder / "config.json").read_text())
        self.generator = generator
        self.graphdef, self.state = nnx.split(generator)

    def ws(self, z, c=None, **kw):
        return sg.map_latents(self.graphdef, self.state, jnp.asarray(z), c, **kw)

    def image(self, ws, **kw):
        return nchw(sg.synthesize(self.graphdef, self.state, jnp.asarray(ws), **kw))


@pytest.fixture(scope="module")
def nvidia(fixtures_root):
    folder = fixtures_root / "stylegan2"
    config = json.loads((folder / "config.json").read_text())
    cfg = config_from_init_kwargs(config["G"]["init_kwargs"])
    tensors = safetensors.numpy.load_file(folder / "g_ema.safetensors")
    return Reference(folder, network_from_state_dict(tensors, cfg, nvidia_key_map(cfg)))


@pytest.fixture(scope="module")
def rosinality(fixtures_root):
    folder = fixtures_root / "stylegan2_rosinality"
    pt = next(folder.glob("*.pt"))
    return Reference(folder, load_gan_file(pt).generator)


def _labels(ref):
    c = ref.io.get("c")
    return None if c is None or c.shape[1] == 0 else jnp.asarray(c)


# --- config -----------------------------------------------------------------------------------


def test_config_json_round_trip_and_derived_sizes(nvidia):
    cfg = nvidia.generator.cfg
    assert StyleGAN2Config.from_json(cfg.to_json()) == cfg
    derived = nvidia.config["derived"]
    assert cfg.num_ws == derived["num_ws"]
    assert list(cfg.block_resolutions) == derived["block_resolutions"]
    assert {str(r): cfg.channels(r) for r in cfg.block_resolutions} == {
        r: b["out_channels"] for r, b in derived["blocks"].items()
    }


def test_config_rejects_unsupported_architecture():
    with pytest.raises(ValueError, match="architecture 'resnet' is not implemented"):
        StyleGAN2Config(architecture="resnet")
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Config(img_resolution=48)


def test_sampling_buffers_are_state_but_not_params(nvidia):
    params = nnx.state(nvidia.generator, nnx.Param)
    buffers = nnx.state(nvidia.generator, sg.Buffer)
    names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(buffers)}
    assert "mapping.w_avg" in names
    assert len([n for n in names if n.endswith("noise_const")]) == len(nvidia.config["derived"]["noise_layers"])
    assert not {".".join(map(str, p)) for p, _ in nnx.to_flat_state(params)} & names


# --- NVIDIA stylegan2-ada-pytorch -------------------------------------------------------------


def test_nvidia_mapping_layers(nvidia):
    io, mapping = nvidia.io, nvidia.generator.mapping
    x = mapping.inputs(jnp.asarray(io["z"]), _labels(nvidia))
    assert_close_rel(x, io["mapping.input"], name="mapping.input")
    for i, layer in enumerate(mapping.layers):
        x = sg.lrelu(layer(x))
        assert_close_rel(x, io[f"mapping.fc{i}"], name=f"mapping.fc{i}")
    assert_close_rel(mapping.w_avg[...], io["w_avg"], name="w_avg")


def test_nvidia_truncation(nvidia):
    io, cases = nvidia.io, nvidia.config["cases"]
    c = _labels(nvidia)
    assert_close_rel(nvidia.ws(io["z"], c), io["ws"], name="ws")
    for case in ("truncation", "truncation_cutoff"):
        psi, cutoff = cases[case]["psi"], cases[case]["cutoff"]
        key = f"ws_psi{psi}" + ("" if cutoff is None else f"_cutoff{cutoff}")
        ws = nvidia.ws(io["z"], c, truncation_psi=psi, truncation_cutoff=cutoff)
        assert_close_rel(ws, io[key], name=key)


@jax.jit(static_argnames="graphdef")
def _walk_blocks(graphdef, state, ws):
    """Synthesis with constant noise, block by block: per block its layers' styles, conv0's output,
    and the block's (x, img), all NCHW."""
    synthesis = nnx.merge(graphdef, state).synthesis
    noises = iter(synthesis.noises(ws.shape[0], "const", None, None))
    records, x, img = [], None, None
    for block, rows in zip(synthesis.blocks, synthesis.block_ws(ws)):
        layer_noise = [next(noises) for _ in block.convs]
        record = {
            f"{name}.affine": layer.affine(rows[:, i])
            for i, (name, layer) in enumerate(zip(["conv0", "conv1"][-len(block.convs) :], block.convs))
        }
        record["torgb.affine"] = block.torgb.affine(rows[:, -1])
        if block.conv0 is not None:
            record["conv0"] = jnp.transpose(block.conv0(x, rows[:, 0], layer_noise[0]), (0, 3, 1, 2))
        x, img = block(x, img, rows, layer_noise)
        record["x"], record["img"] = jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(img, (0, 3, 1, 2))
        records.append(record)
    return records


def test_nvidia_synthesis_per_block(nvidia):
    io = nvidia.io
    records = _walk_blocks(nvidia.graphdef, nvidia.state, jnp.asarray(io["ws"]))
    for res, record in zip(nvidia.generator.cfg.block_resolutions, records):
        for name, value in record.items():
            if name != "conv0":
                assert_close_rel(value, io[f"synthesis.b{res}.{name}"], name=f"synthesis.b{res}.{name}")
    assert_close_rel(records[-1]["img"], io["img_const"], name="img_const")


def _nvidia_noise(ref, kind):
    """Per noise layer in order: recorded draws [B, 1, R, R] -> [B, R, R]; explicit noise stays [R, R]."""
    arrays = [ref.io[f"{kind}.{name}"] for name in ref.config["derived"]["noise_layers"]]
    return [jnp.asarray(a[:, 0] if a.ndim == 4 else a) for a in arrays]


def test_nvidia_noise_modes(nvidia):
    io = nvidia.io
    assert_close_rel(nvidia.image(io["ws"], noise_mode="none"), io["img_none"], name="img_none")
    # noise_mode='random' draws [B, 1, R, R] per layer; replaying the recorded draws gives img_random.
    # Explicit noise is what the official code gets by overwriting noise_const (one [R, R] per layer,
    # passed here for every sample: one compiled program serves both cases).
    batch = io["ws"].shape[0]
    explicit = [jnp.broadcast_to(n, (batch, *n.shape[-2:])) for n in _nvidia_noise(nvidia, "noise_explicit")]
    for key, noise in (("img_random", _nvidia_noise(nvidia, "noise_random")), ("img_noise_explicit", explicit)):
        assert_close_rel(nvidia.image(io["ws"], noise=noise), io[key], name=key)


def test_nvidia_wplus_inputs(nvidia):
    io, c = nvidia.io, _labels(nvidia)
    ws, ws2 = nvidia.ws(io["z"], c), nvidia.ws(io["z2"], c)
    assert_close_rel(ws2, io["ws2"], name="ws2")
    ws_mix = ws.at[:, io["mix_layers"]].set(ws2[:, io["mix_layers"]])
    t = jnp.asarray(io["interp_t"])[:, None, None]
    perlayer = jnp.stack(
        [nvidia.ws(io["z_perlayer"][:, layer], c)[:, 0] for layer in range(io["z_perlayer"].shape[1])], 1
    )
    cases = {
        "mix": ws_mix,
        "interp": ws + t * (ws2 - ws),
        "wplus_offsets": nvidia.generator.mapping.w_avg[...] + io["wplus_offsets"],
        "wplus_perlayer": perlayer,
    }
    for name, codes in cases.items():
        assert_close_rel(codes, io[f"ws_{name}"], name=f"ws_{name}")
    psi = nvidia.config["cases"]["truncation"]["psi"]
    cases[f"psi{psi}_const"] = io[f"ws_psi{psi}"]
    # All cases in one batch: one compiled program (constant noise broadcasts over the batch).
    images = np.split(nvidia.image(jnp.concatenate([jnp.asarray(v) for v in cases.values()])), len(cases))
    for name, image in zip(cases, images):
        assert_close_rel(image, io[f"img_{name}"], name=f"img_{name}")


def test_generate_is_mapping_then_synthesis(nvidia):
    io = nvidia.io
    psi = nvidia.config["cases"]["truncation"]["psi"]
    img = sg.generate(nvidia.graphdef, nvidia.state, jnp.asarray(io["z"]), _labels(nvidia), truncation_psi=psi)
    assert_close_rel(nchw(img), io[f"img_psi{psi}_const"], name="generate")


def test_random_noise_follows_the_key(nvidia):
    ws, key = nvidia.io["ws"], jax.random.key(3)
    first = nvidia.image(ws, noise_mode="random", key=key)
    np.testing.assert_array_equal(first, nvidia.image(ws, noise_mode="random", key=key))
    assert np.abs(first - nvidia.image(ws, noise_mode="random", key=jax.random.key(4))).max() > 1e-3
    assert np.abs(first - nvidia.io["img_const"]).max() > 1e-3
    assert np.abs(first - nvidia.io["img_none"]).max() > 1e-3


def test_bad_inputs_fail_with_one_line(nvidia):
    ws = jnp.asarray(nvidia.io["ws"])
    with pytest.raises(ValueError, match="noise_mode 'fixed'"):
        sg.synthesize(nvidia.graphdef, nvidia.state, ws, noise_mode="fixed")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        sg.synthesize(nvidia.graphdef, nvidia.state, ws, noise_mode="random")
    with pytest.raises(ValueError, match="noise layers"):
        sg.synthesize(nvidia.graphdef, nvidia.state, ws, noise=[jnp.zeros((4, 4))])
    with pytest.raises(ValueError, match="this generator takes"):
        sg.synthesize(nvidia.graphdef, nvidia.state, ws[:, 1:])


# --- rosinality (the pSp / e4e decoder) ---------------------------------------------------------


def test_rosinality_mapping(rosinality):
    io, mapping = rosinality.io, rosinality.generator.mapping
    x = mapping.inputs(jnp.asarray(io["z"]), None)
    assert_close_rel(x, io["style.input_pixelnorm"], name="style.input_pixelnorm")
    for i, layer in enumerate(mapping.layers, 1):
        x = sg.lrelu(layer(x))
        assert_close_rel(x, io[f"style.{i}"], name=f"style.{i}")
    assert_close_rel(rosinality.ws(io["z"])[:, 0], io["w"], name="w")
    assert_close_rel(rosinality.ws(io["z"]), io["latent"], name="latent")
    assert_close_rel(mapping.w_avg[...], io["latent_avg"], name="latent_avg")


def test_rosinality_images(rosinality):
    io = rosinality.io
    cut = int(io["inject_index"][0])
    ws, ws2 = rosinality.ws(io["z"]), rosinality.ws(io["z2"])
    mixed = jnp.concatenate([ws[:, :cut], ws2[:, cut:]], axis=1)
    assert_close_rel(mixed, io["latent_mix"], name="latent_mix")
    assert_close_rel(rosinality.generator.mapping.w_avg[...] + io["wplus_offsets"], io["wplus"], name="wplus")
    cases = {
        "img_const": jnp.asarray(io["latent"]),
        "img_w": ws,
        "img_mix": mixed,
        "img_wplus": jnp.asarray(io["wplus"]),
    }
    for key in [k for k in io if re.fullmatch(r"img_trunc[\d.]+", k)]:
        psi = key[len("img_trunc") :]
        truncated = rosinality.ws(io["z"], truncation_psi=float(psi))
        assert_close_rel(truncated, io[f"latent_trunc{psi}"], name=f"latent_trunc{psi}")
        cases[key] = truncated
    # All cases in one batch: one compiled program.
    images = np.split(rosinality.image(jnp.concatenate(list(cases.values()))), len(cases))
    for key, image in zip(cases, images):
        assert_close_rel(image, io[key], name=key)
    layers = len(rosinality.generator.synthesis.noise_layers)
    noise = [jnp.asarray(io[f"noise_explicit.{i}"][:, 0]) for i in range(layers)]
    assert_close_rel(rosinality.image(io["wplus"], noise=noise), io["img_wplus_noise"], name="img_wplus_noise")
