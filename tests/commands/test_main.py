"""`cdiff` dispatches to every program: each command's --help is that program's own, in a fresh process."""

import os
import pathlib
import subprocess
import sys

import pytest

from cdiff_jax import __version__
from cdiff_jax.commands import main as cli

REPO = pathlib.Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "cdiff_jax.commands.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_every_command():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for name in cli.COMMANDS:
        assert f"\n  {name} " in proc.stdout, f"{name} missing from `cdiff --help`"


def test_no_arguments_is_usage_error():
    proc = run_cli()
    assert proc.returncode == 2
    assert "usage: cdiff COMMAND" in proc.stdout


def test_unknown_command_names_the_choices():
    proc = run_cli("sampel")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr  # one line
    assert "'sampel'" in proc.stderr and "sample" in proc.stderr and "evaluate" in proc.stderr


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"cdiff_jax {__version__}"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("train", "--help"), "--workdir"),
        (("edit", "--help"), "--image"),
        (("convert", "--help"), "--to-official"),
        (("evaluate", "--help"), "miniature"),
        (("evaluate", "miniature", "--help"), "usage: cdiff evaluate miniature"),
        (("evaluate", "weighting", "--help"), "usage: cdiff evaluate weighting"),
        (("evaluate", "toy-edit", "--help"), "usage: cdiff evaluate toy-edit"),
        (("evaluate", "ddgi", "--help"), "usage: cdiff evaluate ddgi"),
        (("evaluate", "judges", "--help"), "out_dir"),
    ],
)
def test_subcommand_help(args, expected):
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert expected in proc.stdout


def test_targets_exist():
    """Every target names an importable module with a main(argv) (sample: cdiff_jax/commands/sample.py)."""
    import importlib.util

    targets = [t for t, _ in cli.COMMANDS.values() if t] + [t for t, _ in cli.EVALUATIONS.values()]
    for target in targets:
        module, _, function = target.partition(":")
        assert function == "main", target
        assert importlib.util.find_spec(module) is not None, f"{target}: module not found"


def test_arguments_pass_through_unchanged(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_run", lambda target, argv, prog: seen.append((target, argv)) or 0)
    assert cli.main(["edit", "--image", "face.png"]) == 0
    assert cli.main(["sample", "--steps", "5"]) == 0
    assert cli.main(["evaluate", "--count", "4"]) == 0
    assert seen == [
        ("cdiff_jax.editing.run:main", ["--image", "face.png"]),
        ("cdiff_jax.commands.sample:main", ["--steps", "5"]),
        ("cdiff_jax.evaluation.miniature:main", ["--count", "4"]),
    ]


def test_help_does_not_import_jax():
    code = "import sys; from cdiff_jax.commands.main import main; main(['--help']); print('jax' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"
