"""`cdiff train` (cdiff_jax/commands/train.py): argument handling before any work; end to end in tests/train."""

import pytest

from cdiff_jax.commands.train import main, parse_overrides


def test_parse_overrides_literals_and_strings():
    assert parse_overrides(["steps=200", "data_dir=data/tfds", "init_from=(('a','b'),)", "lr=1e-4"]) == {
        "steps": 200, "data_dir": "data/tfds", "init_from": (("a", "b"),), "lr": 1e-4}
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
