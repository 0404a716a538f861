"""The README's Python snippets run as written (against the shipped demo models), and its commands exist."""

import pathlib
import re

import numpy as np
import pytest

from cdiff_jax.commands.main import COMMANDS, EVALUATIONS

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.DOTALL | re.MULTILINE)


@pytest.mark.slow
def test_python_snippets_run_as_written(tmp_path, monkeypatch):
    snippets = blocks("python")
    assert snippets, "the README has no Python snippet"
    monkeypatch.chdir(tmp_path)  # snippets write relative to the working directory, never into the checkout
    namespaces = []
    for snippet in snippets:
        namespace = {"__name__": "__readme__"}
        exec(compile(snippet, str(README), "exec"), namespace)
        namespaces.append(namespace)
    sampled = [ns for ns in namespaces if "result" in ns]
    assert sampled, "no snippet samples (none defines `result`)"
    for ns in sampled:
        images = np.asarray(ns["result"].images)
        size = ns["system"].cfg.autoencoder.resolution
        assert images.shape == (ns["batch"], size, size, 3)
        assert np.isfinite(images).all() and images.std() > 0.05, "the samples are flat or not finite"
    assert (tmp_path / "samples.png").is_file()


def test_the_two_commands_stay_at_the_top():
    first_two = blocks("bash")[:2]
    setup = "python3.12 -m venv .venv && . .venv/bin/activate && pip install -e '.[dev]' && "
    assert first_two == [setup + "python sample.py\n", setup + "python -m pytest -q\n"]


def test_every_cdiff_command_in_the_readme_exists():
    text = README.read_text()
    named = set(re.findall(r"\bcdiff (\w[\w-]*)", text))
    assert named, "the README names no cdiff command"
    unknown = named - set(COMMANDS) - {"COMMAND"}
    assert not unknown, f"README names commands cdiff does not have: {sorted(unknown)}"
    evaluations = set(re.findall(r"\bcdiff evaluate ([a-z][\w-]*)", text))
    assert evaluations <= set(EVALUATIONS), sorted(evaluations - set(EVALUATIONS))
