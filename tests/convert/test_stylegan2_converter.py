"""StyleGAN2 converters: NVIDIA network pickles, rosinality / pSp / e4e .pt files, the key maps at the
released sizes (gan_real_manifests/, shapes only) and the checkpoint directory round trip.

Numerical parity of the converted networks is tested in tests/nn/test_stylegan2.py; here the
converted state is compared leaf by leaf with a reference conversion, which needs no compilation.
"""

import json
import types

import jax
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from cdiff_jax.checkpoint import load_generator
from cdiff_jax.convert import stylegan2 as cv
from cdiff_jax.convert.__main__ import main as convert_main
from cdiff_jax.convert.gan import convert_gan
from cdiff_jax.weights.state_dict_io import read_torch_object


def leaves(generator):
    return {".".join(map(str, p)): np.asarray(v) for p, v in nnx.to_flat_state(nnx.state(generator))}


def assert_same_state(a, b):
    la, lb = leaves(a), leaves(b)
    assert la.keys() == lb.keys()
    for key in la:
        np.testing.assert_array_equal(la[key], lb[key], err_msg=key)


@pytest.fixture(scope="module")
def nvidia_folder(fixtures_root):
    return fixtures_root / "stylegan2"


@pytest.fixture(scope="module")
def nvidia_reference(nvidia_folder):
    """G_ema from g_ema.safetensors + config.json: the fixture's own record of the pickle's G_ema."""
    config = json.loads((nvidia_folder / "config.json").read_text())
    cfg = cv.config_from_init_kwargs(config["G"]["init_kwargs"])
    tensors = safetensors.numpy.load_file(nvidia_folder / "g_ema.safetensors")
    return cv.network_from_state_dict(tensors, cfg, cv.nvidia_key_map(cfg))


@pytest.fixture(scope="module")
def rosinality_pt(fixtures_root):
    return next((fixtures_root / "stylegan2_rosinality").glob("*.pt"))


@pytest.fixture(scope="module")
def rosinality_reference(rosinality_pt):
    return cv.load_gan_file(rosinality_pt).generator


# --- NVIDIA pickles ----------------------------------------------------------------------------


def test_pickle_gives_g_ema(nvidia_folder, nvidia_reference):
    """The pickle's G_ema equals the fixture's g_ema.safetensors (its non-EMA G differs from it)."""
    loaded = cv.load_gan_file(next(nvidia_folder.glob("*.pkl")))
    assert loaded.source_format == "nvidia-pickle"
    assert loaded.generator.cfg == nvidia_reference.cfg
    assert_same_state(loaded.generator, nvidia_reference)


def test_pickle_without_g_ema_or_with_another_class_fails(monkeypatch, nvidia_folder):
    pkl = next(nvidia_folder.glob("*.pkl"))
    monkeypatch.setattr(cv, "read_network_pickle", lambda path: {"G": None, "D": None})
    with pytest.raises(cv.GANConversionError, match=r"no 'G_ema'.*\['D', 'G'\]"):
        cv.load_gan_file(pkl)
    other = types.SimpleNamespace(class_name="TriPlaneGenerator", init_args=(), init_kwargs={})
    monkeypatch.setattr(cv, "read_network_pickle", lambda path: {"G_ema": other})
    with pytest.raises(cv.GANConversionError, match="'TriPlaneGenerator'"):
        cv.load_gan_file(pkl)


def test_unknown_generator_kwargs_are_named(nvidia_folder):
    kwargs = json.loads((nvidia_folder / "config.json").read_text())["G"]["init_kwargs"]
    kwargs = {
        **kwargs,
        "synthesis_kwargs": {**kwargs["synthesis_kwargs"], "architecture": "resnet", "magnitude_ema_beta": 0.999},
    }
    with pytest.raises(cv.GANConversionError, match="magnitude_ema_beta"):
        cv.config_from_init_kwargs(kwargs)
    del kwargs["synthesis_kwargs"]["magnitude_ema_beta"]
    with pytest.raises(cv.GANConversionError, match="architecture 'resnet'"):
        cv.config_from_init_kwargs(kwargs)


def test_strict_key_map_lists_every_problem(nvidia_folder, nvidia_reference):
    cfg = nvidia_reference.cfg
    tensors = safetensors.numpy.load_file(nvidia_folder / "g_ema.safetensors")
    dropped, misshaped = "mapping.fc1.bias", "synthesis.b8.conv0.weight"
    broken = {k: v for k, v in tensors.items() if k != dropped}
    broken[misshaped] = broken[misshaped][:, :, :2]
    broken["synthesis.b8.extra"] = np.zeros(3, np.float32)
    with pytest.raises(cv.GANConversionError) as err:
        cv.network_from_state_dict(broken, cfg, cv.nvidia_key_map(cfg))
    message = str(err.value)
    assert "\n" not in message
    for part in (
        f"missing in source: {dropped}",
        "unexpected in source: synthesis.b8.extra",
        f"misshaped: {misshaped}",
    ):
        assert part in message
    # A key map that forgets one of our leaves is caught as well.
    entries = {k: e for k, e in cv.nvidia_key_map(cfg).items() if k != dropped}
    with pytest.raises(cv.GANConversionError, match=r"not filled by any source tensor: mapping\.layers\.1\.bias"):
        cv.check_key_map(entries, {k: v.shape for k, v in tensors.items() if k != dropped}, cfg)


def test_filter_buffers_must_match_the_config(nvidia_folder, nvidia_reference):
    cfg = nvidia_reference.cfg
    tensors = safetensors.numpy.load_file(nvidia_folder / "g_ema.safetensors")
    key = f"synthesis.b{cfg.block_resolutions[1]}.resample_filter"
    tensors[key] = np.full_like(tensors[key], 1 / tensors[key].size)
    with pytest.raises(cv.GANConversionError, match=key.replace(".", r"\.")):
        cv.network_from_state_dict(tensors, cfg, cv.nvidia_key_map(cfg))


# --- rosinality / pSp / e4e ----------------------------------------------------------------------


def test_rosinality_architecture_from_shapes(fixtures_root, rosinality_reference):
    config = json.loads((fixtures_root / "stylegan2_rosinality" / "config.json").read_text())
    size, style_dim, n_mlp = config["G"]["init_args"]
    cfg = rosinality_reference.cfg
    assert (cfg.img_resolution, cfg.w_dim, cfg.z_dim, cfg.mapping_layers) == (size, style_dim, style_dim, n_mlp)
    assert cfg.num_ws == config["derived"]["n_latent"]
    assert {str(r): cfg.channels(r) for r in cfg.block_resolutions} == {
        r: c for r, c in config["derived"]["channels"].items() if int(r) <= size
    }
    assert cfg.mapping_lr_multiplier == config["G"]["init_kwargs"]["lr_mlp"]


def test_psp_checkpoint_layout(rosinality_pt, rosinality_reference):
    """pSp / e4e: the same generator under 'decoder.' in 'state_dict', latent_avg at the top level."""
    top = read_torch_object(rosinality_pt)
    psp = {
        "state_dict": {
            **{f"decoder.{k}": v for k, v in top["g_ema"].items()},
            "encoder.input_layer.0.weight": np.zeros((4, 3, 3, 3), np.float32),
        },
        "latent_avg": top["latent_avg"],
        "opts": {"output_size": 64},
    }
    loaded = cv.generator_from_torch_object(psp, "psp.pt")
    assert loaded.source_format == "psp"
    assert_same_state(loaded.generator, rosinality_reference)


def test_unrecognised_torch_checkpoint_names_the_supported_ones():
    with pytest.raises(cv.GANConversionError, match="not a recognised GAN checkpoint.*'g', 'g_optim'.*pSp"):
        cv.generator_from_torch_object({"g": {}, "g_optim": {}}, "train.pt")


def test_unsupported_channel_table_fails(rosinality_pt):
    g_ema = dict(read_torch_object(rosinality_pt)["g_ema"])
    shapes = {k: v.shape for k, v in g_ema.items()}
    shapes["input.input"] = (1, 3 * shapes["input.input"][1], 4, 4)
    with pytest.raises(cv.GANConversionError, match="channel table is not supported"):
        cv.config_from_rosinality_shapes(shapes)


# --- real released sizes: every key maps, shapes only ----------------------------------------------


def _real_manifests(root):
    nvidia, rosinality = [], []
    for path in sorted((root / "gan_real_manifests").glob("*.json")):
        manifest = json.loads(path.read_text())
        if manifest.get("G_class") == "training.networks.Generator":
            nvidia.append((path.name, manifest))
        elif "g_ema" in manifest:
            rosinality.append((path.name, manifest))
    return nvidia, rosinality


def test_real_size_key_maps_are_complete(fixtures_root):
    nvidia, rosinality = _real_manifests(fixtures_root)
    assert nvidia and rosinality, "gan_real_manifests/ should hold NVIDIA and rosinality generator manifests"
    for name, manifest in nvidia:
        cfg = cv.config_from_init_kwargs(manifest["G_init_kwargs"])
        assert cfg.num_ws == manifest["num_ws"], name
        shapes = {key: tuple(shape) for key, shape, _ in manifest["G_ema"]}
        cv.check_key_map(cv.nvidia_key_map(cfg), shapes, cfg)
    for name, manifest in rosinality:
        shapes = {key: tuple(shape) for key, shape, _ in manifest["g_ema"]}
        shapes["latent_avg"] = tuple(manifest["latent_avg"][0])
        cfg = cv.config_from_rosinality_shapes(shapes)
        size, style_dim, n_mlp = manifest["init_args"]
        assert (cfg.img_resolution, cfg.w_dim, cfg.mapping_layers, cfg.num_ws) == (
            size,
            style_dim,
            n_mlp,
            manifest["n_latent"],
        ), name
        cv.check_key_map(cv.rosinality_key_map(cfg), shapes, cfg)


def test_real_size_parameter_count(fixtures_root):
    """Our state holds exactly the numbers of the official state dict (filter buffers aside)."""
    nvidia, _ = _real_manifests(fixtures_root)
    name, manifest = nvidia[-1]
    cfg = cv.config_from_init_kwargs(manifest["G_init_kwargs"])
    ours = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(cv.abstract_network(cfg))))
    official = sum(int(np.prod(shape)) for key, shape, _ in manifest["G_ema"] if not key.endswith("resample_filter"))
    assert ours == official, name


# --- checkpoint directories and the CLI ------------------------------------------------------------


def test_convert_save_load_round_trip(tmp_path, rosinality_pt, rosinality_reference):
    dst = tmp_path / "decoder"
    description = convert_gan(rosinality_pt, dst)
    assert description.startswith("StyleGAN2 generator (rosinality)")
    assert (dst / "config.json").is_file()
    restored = load_generator(dst)
    assert restored.cfg == rosinality_reference.cfg
    assert_same_state(restored, cv.load_gan_file(rosinality_pt).generator)
    with pytest.raises(FileExistsError, match="exists"):
        convert_gan(rosinality_pt, dst)
    convert_gan(rosinality_pt, dst, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_routes_gan_files(tmp_path, rosinality_pt, capsys):
    dst = tmp_path / "out"
    assert convert_main([str(rosinality_pt), str(dst)]) == 0
    assert "rosinality" in capsys.readouterr().out
    assert convert_main([str(rosinality_pt), str(dst)]) == 1
    assert "exists" in capsys.readouterr().err
    assert convert_main([str(rosinality_pt), str(tmp_path / "x"), "--config", "released.py:512_codiff"]) == 1
    assert "--config does not apply" in capsys.readouterr().err
    missing = tmp_path / "missing.pkl"
    assert convert_main([str(missing), str(tmp_path / "y")]) == 1
    assert "no such file" in capsys.readouterr().err
