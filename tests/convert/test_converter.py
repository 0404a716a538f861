"""The converter: exact coverage of the released key sets, strictness, and the CLI."""

import errno
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import assemble_state_dict, reference_config
from flax import nnx
from safetensors.numpy import save_file

from cdiff_jax import checkpoint
from cdiff_jax.checkpoint import load_system
from cdiff_jax.config import load_config
from cdiff_jax.convert import keymap
from cdiff_jax.convert.__main__ import main as convert_main
from cdiff_jax.convert.converter import ConversionError, detect_checkpoint_type, system_from_state_dict
from cdiff_jax.convert.export import official_state_dict
from cdiff_jax.system import abstract_system
from cdiff_jax.weights.layout import to_flax_layout

MANIFEST_TO_CONFIG = {"vae": "vae", "mask_ldm": "mask", "text_ldm": "text", "codiff": "codiff"}


def _manifest_files(fixtures_root):
    files = sorted((fixtures_root / "real_config_manifests").glob("*.json"))
    assert files, "no real-config manifests"
    return files


@pytest.mark.slow
def test_released_configs_cover_the_real_key_sets_exactly(fixtures_root):
    """With shapes only (eval_shape): our tree maps onto exactly the official keys and shapes."""
    for path in _manifest_files(fixtures_root):
        resolution, kind = path.stem.split("_", 1)
        ckpt_type = MANIFEST_TO_CONFIG[kind]
        manifest = json.loads(path.read_text())
        cfg = load_config(f"released.py:{resolution}_{ckpt_type}")
        system = abstract_system(cfg)
        ours = {".".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(system, nnx.Param))}
        names = keymap.official_key_map(ours, ckpt_type, {n: m.kind for n, m in cfg.modalities.items()})
        expected = {
            k: tuple(v[0]) for k, v in manifest.items() if k not in keymap.SCHEDULE_BUFFERS and not keymap.is_ignored(k)
        }
        assert sorted(names.values()) == sorted(expected), path.name
        for ours_path, official in names.items():
            leaf = ours_path.rsplit(".", 1)[-1]
            converted = to_flax_layout(np.empty(expected[official], np.float32), leaf).shape
            assert converted == tuple(ours[ours_path]), f"{path.name}: {official}"


def test_type_detection(fixtures_root):
    for kind in ("vae", "text", "mask", "codiff"):
        assert detect_checkpoint_type(assemble_state_dict(fixtures_root, kind, "safetensors")) == kind
    with pytest.raises(ConversionError, match="cannot tell"):
        detect_checkpoint_type({"foo.weight": np.zeros(1)})


def test_both_formats_give_identical_parameters(fixtures_root):
    cfg = reference_config(fixtures_root, "codiff")
    a, _ = system_from_state_dict(assemble_state_dict(fixtures_root, "codiff", "ckpt"), cfg)
    b, report = system_from_state_dict(assemble_state_dict(fixtures_root, "codiff", "safetensors"), cfg)
    assert report.schedule_checked and report.dropped  # to_logits is dropped on purpose
    assert all(keymap.is_ignored(k) for k in report.dropped)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(a, nnx.Param), nnx.state(b, nnx.Param))


@pytest.fixture(scope="module")
def text_ldm(fixtures_root):
    return assemble_state_dict(fixtures_root, "text", "safetensors"), reference_config(fixtures_root, "text")


def test_missing_unexpected_and_misshaped_keys_are_all_listed(text_ldm):
    tensors, cfg = text_ldm
    broken = dict(tensors)
    del broken["model.diffusion_model.out.2.bias"]
    broken["model.diffusion_model.extra.weight"] = np.zeros(3, np.float32)
    key = "model.diffusion_model.time_embed.0.weight"
    broken[key] = np.zeros((1, 1), np.float32)
    with pytest.raises(ConversionError) as err:
        system_from_state_dict(broken, cfg)
    message = str(err.value)
    assert "out.2.bias" in message and "extra.weight" in message and key in message


def test_schedule_and_type_mismatches(text_ldm):
    tensors, cfg = text_ldm
    with pytest.raises(ConversionError, match="betas"):
        system_from_state_dict({**tensors, "betas": tensors["betas"] * 1.01}, cfg)
    with pytest.raises(ConversionError, match="type 'text'"):
        system_from_state_dict(tensors, load_config("released.py:256_mask"))


def _convert_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "cdiff_jax.convert", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


@pytest.mark.slow
def test_cli_converts_a_collaborative_safetensors_with_official_yaml(fixtures_root, tmp_path):
    src = tmp_path / "codiff.safetensors"
    save_file(assemble_state_dict(fixtures_root, "codiff", "safetensors"), str(src))
    dst = tmp_path / "out"
    result = _convert_cli(src, dst, "--config", fixtures_root / "collab_ddim/config.yaml")
    assert result.returncode == 0, result.stderr
    assert "checkpoint type: codiff" in result.stdout
    system = load_system(dst)
    ref, _ = system_from_state_dict(
        assemble_state_dict(fixtures_root, "codiff", "ckpt"), reference_config(fixtures_root, "codiff")
    )
    jax.tree.map(np.testing.assert_array_equal, nnx.state(system, nnx.Param), nnx.state(ref, nnx.Param))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("case", ["truncated", "directory", "missing", "unrelated_pickle", "wrong_config"])
def test_cli_bad_inputs_are_one_line_errors_and_write_nothing(fixtures_root, tmp_path, case):
    src = tmp_path / "model.ckpt"
    config = []
    if case == "truncated":
        data = (fixtures_root / "autoencoder/model.ckpt").read_bytes()
        src.write_bytes(data[: len(data) // 2])
    elif case == "directory":
        src = tmp_path
    elif case == "unrelated_pickle":
        import pickle

        src.write_bytes(pickle.dumps({"a": [1, 2]}))
    elif case == "wrong_config":
        src = fixtures_root / "autoencoder/model.ckpt"
        config = ["--config", "released.py:256_vae"]
    dst = tmp_path / "out"
    result = _convert_cli(src, dst, *config)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert not dst.exists()


def _one_line_refusal(result):
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


@pytest.mark.slow
def test_overwrite_replaces_only_our_checkpoints(fixtures_root, tmp_path):
    """Pointed at the source's own folder, --overwrite refuses: the .ckpt and the unrelated file stay."""
    folder = tmp_path / "weights"
    folder.mkdir()
    src = folder / "model.ckpt"
    src.write_bytes((fixtures_root / "autoencoder/model.ckpt").read_bytes())
    (folder / "notes.txt").write_text("mine")
    config = ["--config", str(fixtures_root / "autoencoder/config.yaml")]
    assert "not a cdiff_jax checkpoint" in _one_line_refusal(_convert_cli(src, folder, *config, "--overwrite"))
    assert sorted(p.name for p in folder.iterdir()) == ["model.ckpt", "notes.txt"]
    # a file as the destination: refused, nothing hidden left beside it
    (tmp_path / "a_file").write_text("x")
    assert "not a cdiff_jax checkpoint" in _one_line_refusal(
        _convert_cli(src, tmp_path / "a_file", *config, "--overwrite")
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "weights"]
    # our own checkpoint is replaced whole
    assert _convert_cli(src, tmp_path / "ours", *config).returncode == 0
    assert _convert_cli(src, tmp_path / "ours", *config).returncode == 1  # exists, no --overwrite
    assert _convert_cli(src, tmp_path / "ours", *config, "--overwrite").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "ours", "weights"]


@pytest.mark.slow
def test_a_given_config_skips_type_detection(fixtures_root, tmp_path):
    """Keys the detector does not know: without --config the type is unknown; with it, the strict key map
    says exactly which keys differ (here every one, under a foreign prefix)."""
    tensors = {f"ema.{k}": v for k, v in assemble_state_dict(fixtures_root, "vae", "safetensors").items()}
    src = tmp_path / "renamed.safetensors"
    save_file(tensors, str(src))
    assert "cannot tell the checkpoint type" in _convert_cli(src, tmp_path / "a").stderr
    result = _convert_cli(src, tmp_path / "b", "--config", fixtures_root / "autoencoder/config.yaml")
    assert result.returncode == 1 and "cannot tell" not in result.stderr and "unexpected: ema." in result.stderr


@pytest.mark.slow
def test_export_of_the_released_configs_equals_the_spec_manifests(fixtures_root):
    """The export's keys and shapes at the real sizes are the official checkpoints' (../shared/spec/checkpoint-keys),
    from shapes alone. It is in this module to reuse the abstract systems of the real-size test above (cached per
    process), which take seconds each to build."""
    spec = fixtures_root.parent / "spec" / "checkpoint-keys"
    files = sorted(spec.glob("keys_*.txt"))
    assert files, f"no key manifests in {spec}"
    for path in files:
        resolution, kind = path.stem.removeprefix("keys_").split("_")[:2]
        cfg = load_config(f"released.py:{resolution}_{kind}")
        flat = nnx.to_flat_state(nnx.state(abstract_system(cfg), nnx.Param))
        params = {".".join(map(str, p)): np.broadcast_to(np.float32(0), v.shape) for p, v in flat}
        exported = {key: list(value.shape) for key, value in official_state_dict(cfg, params).items()}
        manifest = dict(line.split("\t") for line in path.read_text().splitlines())
        assert exported == {key: json.loads(shape) for key, shape in manifest.items()}, path.name


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        ValueError(
            "RESOURCE_EXHAUSTED: Error writing \"w/c/0\": No space left on device [os_error_code='28']"
        ),  # orbax's
    ],
)
def test_a_disk_that_fills_up_while_writing_is_one_line_and_writes_nothing(
    fixtures_root, tmp_path, capfd, monkeypatch, failure
):
    def fills_up(path, tree):
        path.mkdir()
        (path / "half_written").write_bytes(b"\0" * 100)
        raise failure

    monkeypatch.setattr(checkpoint, "save_tree", fills_up)
    dst = tmp_path / "out"
    assert (
        convert_main(
            [
                str(fixtures_root / "autoencoder/model.ckpt"),
                str(dst),
                "--config",
                str(fixtures_root / "autoencoder/config.yaml"),
            ]
        )
        == 1
    )
    assert capfd.readouterr().err.splitlines() == [
        f"error: cannot write {dst}: No space left on device; nothing was written (free space or choose another DST)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_the_tensor_loop_shows_a_bar_on_a_terminal(text_ldm, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    system_from_state_dict(*text_ldm)
    assert "converting" in sys.stderr.getvalue() and "tensor" in sys.stderr.getvalue()
