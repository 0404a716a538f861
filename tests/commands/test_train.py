"""`cdiff train` (cdiff_jax/commands/train.py): argument handling before any work, and a disk that fills up while it
works; end to end in tests/train."""

import errno
import os
import pathlib
import subprocess
import sys

import jax
import pytest
from conftest import REPO

from cdiff_jax.commands.train import main, parse_overrides


def test_parse_overrides_literals_and_strings():
    assert parse_overrides(["steps=200", "data_dir=data/tfds", "init_from=(('a','b'),)", "lr=1e-4"]) == {
        "steps": 200,
        "data_dir": "data/tfds",
        "init_from": (("a", "b"),),
        "lr": 1e-4,
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["steps"])


def test_unknown_config_field_is_one_line_error(tmp_path, capsys):
    code = main(["--config", "configs/train_tiny.py", "--workdir", str(tmp_path / "run"), "--set", "stpes=3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown config fields ['stpes']" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_missing_config_is_one_line_error(tmp_path, capsys):
    code = main(["--config", "no_such_config.py", "--workdir", str(tmp_path / "run")])
    assert code == 2
    assert "no_such_config.py" in capsys.readouterr().err


BAD = {  # --config / --set / --workdir -> what the one line must say
    "mistyped_stage": (["--config", "configs/train_tiny.py:expert_txt"], "unknown stage 'expert_txt'"),
    "steps_not_a_number": (["--set", "steps=abc"], "--set steps='abc': expected an integer"),
    "batch_zero": (["--set", "global_batch=0"], "global_batch=0: must be >= 1"),
    "steps_per_call_zero": (["--set", "steps_per_call=0"], "steps_per_call=0: must be >= 1"),
    "uneven_micro_batches": (["--set", "gradient_accumulation=3"], "must split into gradient_accumulation=3 equal"),
    "accumulating_gan": (
        ["--config", "configs/train_demo.py:gan", "--set", "gradient_accumulation=2"],
        "only the collab, expert and autoencoder stages accumulate",
    ),
    "negative_steps": (["--set", "steps=-3"], "steps=-3: must be >= 1"),
    "dropout_above_one": (["--set", "condition_dropout=1.5"], "condition_dropout=1.5: must be in [0, 1]"),
    "crop_without_zoom": (["--set", "crop_zoom=1"], "crop_zoom=1: must be > 1 (None: no crops)"),
    "cropping_gan": (
        ["--config", "configs/train_demo.py:gan", "--set", "crop_zoom=1.125"],
        "crop_zoom=1.125: only the collab, expert and autoencoder stages crop their training images",
    ),
    "experts_not_a_tuple": (["--set", "ddgi_experts=text"], "expected a tuple whose entries are each a string"),
    "workdir_is_a_file": (["--workdir", "{tmp}/a_file"], "is a file"),
    "workdir_cannot_be_created": (["--workdir", "/proc/cdiff_run"], "cannot create folders in /proc"),
    "no_dataset": (["--set", "data_dir={tmp}/nowhere"], "python -m cdiff_jax.data.celeba_multimodal"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_settings_fail_in_one_line_before_any_work(tmp_path, capsys, case):
    (tmp_path / "a_file").write_text("not a folder")
    argv = {"--config": "configs/train_tiny.py", "--workdir": str(tmp_path / "run")}
    extra, message = BAD[case]
    extra = [a.format(tmp=tmp_path) for a in extra]
    for flag in ("--config", "--workdir"):
        if flag in extra:
            argv[flag] = extra.pop(extra.index(flag) + 1)
            extra.remove(flag)
    before = sorted(tmp_path.iterdir())
    code = main([item for pair in argv.items() for item in pair] + extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert sorted(tmp_path.iterdir()) == before  # no run folder, no probe left behind


def test_bad_settings_through_the_script(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "--config",
            "configs/train_tiny.py:expert_txt",
            "--workdir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: config 'configs/train_tiny.py:expert_txt': unknown stage 'expert_txt' (`arg`: collab, autoencoder, "
        "expert_text, expert_mask or expert_scribble.)"
    ]
    assert not (tmp_path / "run").exists()


def test_a_run_resumes_only_with_the_settings_it_started_with(tmp_path, capsys):
    from cdiff_jax.config import load_config
    from cdiff_jax.train.trainer import check_same_run, record_run_settings

    cfg = load_config("configs/train_tiny.py")
    record_run_settings(cfg, tmp_path / "run")  # a new run records its settings
    check_same_run(cfg.replace(steps=100, sample_every=0), tmp_path / "run")  # longer, fewer pictures
    code = main(["--config", "configs/train_tiny.py", "--workdir", str(tmp_path / "run"), "--set", "global_batch=4"])
    err = capsys.readouterr().err
    assert code == 2 and "global_batch=8, now 4" in err and "new --workdir" in err and err.count("\n") == 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["train_config.json"]


def test_a_run_started_before_a_field_existed_resumes_at_that_fields_default(tmp_path, capsys):
    import json

    from cdiff_jax.config import load_config
    from cdiff_jax.train.trainer import RUN_CONFIG, check_same_run, record_run_settings

    cfg = load_config("configs/train_tiny.py")
    record_run_settings(cfg, tmp_path / "run")
    record = tmp_path / "run" / RUN_CONFIG
    older = {k: v for k, v in json.loads(record.read_text()).items() if k not in ("remat", "crop_zoom")}
    record.write_text(json.dumps(older))  # as written before those fields were added
    check_same_run(cfg, tmp_path / "run")
    with pytest.raises(ValueError, match=r"remat='none', now 'full'"):  # the default is what the run computed
        check_same_run(cfg.replace(remat="full"), tmp_path / "run")


def test_a_test_split_smaller_than_the_devices_is_one_line(tmp_path, capsys, monkeypatch):
    """Validation shards the test split over the devices: a split of 2 on 4 devices is refused before any work."""
    monkeypatch.setattr(jax, "device_count", lambda: 4)
    code = main(["--config", "configs/train_tiny.py", "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "test_size 2 is smaller than the 4 devices validation shards over" in err and "val_every=0" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("where", ["checkpoint", "metrics"])
def test_a_disk_that_fills_up_while_training_is_one_line_naming_the_path(data_dir, tmp_path, capfd, monkeypatch, where):
    """A full disk during a checkpoint save names the checkpoint, its partial files removed; during a metrics write,
    the work directory. orbax's and the trainer's tracebacks stay off the terminal."""
    from orbax.checkpoint import CheckpointManager

    from cdiff_jax.train.checkpoints import RESUME
    from cdiff_jax.train.metrics import MetricsWriter

    workdir = tmp_path / "run"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fills_up(manager, step, **kwargs):
        (pathlib.Path(manager.directory) / f"{step}.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
        full()

    if where == "checkpoint":
        monkeypatch.setattr(CheckpointManager, "save", fills_up)
    else:
        monkeypatch.setattr(MetricsWriter, "write", full)
    code = main(
        [
            "--config",
            "configs/train_tiny.py",
            "--workdir",
            str(workdir),
            "--set",
            f"data_dir={data_dir}",
            "--set",
            "steps=2",
        ]
    )
    err = capfd.readouterr().err
    path = workdir / "checkpoints" / "2" if where == "checkpoint" else workdir
    assert code == 1 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if str(workdir) in line or "error" in line.lower()] == [
        f"error: cannot write {path}: No space left on device; {RESUME}"
    ]
    assert list((workdir / "checkpoints").iterdir()) == []
