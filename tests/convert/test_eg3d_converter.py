"""EG3D network pickles -> our TriPlaneGenerator: the fixture's pickle (G_ema, its settings), the
released FFHQ-512 key manifest, refusals, and the checkpoint round trip through `cdiff convert`."""

import json

import jax
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from cdiff_jax.checkpoint import NotACheckpointError, load_eg3d_generator, load_generator
from cdiff_jax.config import EG3D_SUPERRESOLUTION
from cdiff_jax.convert import eg3d as cv
from cdiff_jax.convert.__main__ import main as convert_main
from cdiff_jax.convert.stylegan2 import GANConversionError, abstract_network, check_key_map


@pytest.fixture(scope="module")
def folder(fixtures_root):
    return fixtures_root / "eg3d"


@pytest.fixture(scope="module")
def pickle_path(folder):
    return next(folder.glob("*.pkl"))


@pytest.fixture(scope="module")
def generator(pickle_path):
    return cv.load_eg3d_pickle(pickle_path)


def leaves(module):
    return dict(jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(module))))


def test_pickle_gives_g_ema_exactly(folder, generator):
    """Every G_ema tensor lands (the safetensors export of G_ema is the ground truth; G differs from it)."""
    tensors = safetensors.numpy.load_file(folder / "g_ema.safetensors")
    cfg = generator.cfg
    from_safetensors = cv.network_from_state_dict(tensors, cfg, cv.eg3d_key_map(cfg))
    ours, theirs = leaves(generator), leaves(from_safetensors)
    assert ours.keys() == theirs.keys()
    for path, value in ours.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(theirs[path]), err_msg=str(path))


def test_settings_come_from_the_stored_arguments(folder, generator):
    config = json.loads((folder / "config.json").read_text())
    kwargs, rendering = config["G"]["init_kwargs"], config["rendering_kwargs"]
    cfg = generator.cfg
    assert (cfg.z_dim, cfg.w_dim, cfg.img_resolution) == (kwargs["z_dim"], kwargs["w_dim"], kwargs["img_resolution"])
    assert (cfg.ray_start, cfg.ray_end, cfg.box_warp) == (
        rendering["ray_start"],
        rendering["ray_end"],
        rendering["box_warp"],
    )
    assert cfg.avg_camera_pivot == tuple(rendering["avg_camera_pivot"])
    assert cfg.sr_conv_clamp == (256 if kwargs["sr_num_fp16_res"] > 0 else None)


def test_unsupported_super_resolution_lists_the_supported(folder):
    kwargs = json.loads((folder / "config.json").read_text())["G"]["init_kwargs"]
    kwargs = {
        **kwargs,
        "rendering_kwargs": {
            **kwargs["rendering_kwargs"],
            "superresolution_module": "training.superresolution.MyUpsampler",
        },
    }
    with pytest.raises(GANConversionError, match="MyUpsampler.*not supported; supported:.*Hybrid8XDC"):
        cv.config_from_pickle(kwargs, 64)


def _real_eg3d_manifests(root):
    found = []
    for path in sorted((root / "gan_real_manifests").glob("*.json")):
        manifest = json.loads(path.read_text())
        if manifest.get("G_class") == "training.triplane.TriPlaneGenerator":
            found.append((path.name, manifest))
    return found


def test_real_size_key_maps_are_complete(fixtures_root):
    manifests = _real_eg3d_manifests(fixtures_root)
    assert manifests, "gan_real_manifests/ should hold an EG3D generator manifest"
    for name, manifest in manifests:
        cfg = cv.config_from_pickle(manifest["G_init_kwargs"], 128)
        assert cfg.num_ws == manifest["backbone_num_ws"], name
        shapes = {key: tuple(shape) for key, shape, _ in manifest["G_ema"]}
        check_key_map(cv.eg3d_key_map(cfg), shapes, cfg)
        ours = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(abstract_network(cfg))))
        official = sum(
            int(np.prod(shape))
            for key, shape, _ in manifest["G_ema"]
            if not key.endswith("resample_filter") and key != "dataset_label_std"
        )
        assert ours == official, name


def test_every_super_resolution_module_builds_its_resolution():
    for name, spec in EG3D_SUPERRESOLUTION.items():
        cfg = cv.EG3DConfig(superresolution=name, img_resolution=spec.img_resolution)
        shapes = {tuple(block.torgb.bias.shape) for block in abstract_network(cfg).superresolution.blocks}
        assert shapes == {(3,)}, name


def test_convert_command_round_trip_and_kind_checks(tmp_path, pickle_path, generator, capsys):
    dst = tmp_path / "eg3d"
    assert convert_main([str(pickle_path), str(dst)]) == 0
    assert "EG3D generator" in capsys.readouterr().out
    restored = load_eg3d_generator(dst)
    assert restored.cfg == generator.cfg
    ours, theirs = leaves(restored), leaves(generator)
    assert all(np.array_equal(np.asarray(v), np.asarray(theirs[k])) for k, v in ours.items())
    with pytest.raises(NotACheckpointError, match="holds an EG3D generator"):
        load_generator(dst)
