"""The `hmsa` entry point: dispatch, help, and clear errors."""
import pathlib
import subprocess
import sys

from hmsa_jax import cli


def test_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "models" in out and "data-check" in out


def test_unknown_command_names_it(capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_models_command_lists_registry(capsys):
    import hmsa_jax
    assert cli.main(["models"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == hmsa_jax.list_models()


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "hmsa_jax.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: hmsa" in result.stdout


def test_a_workdir_that_is_a_file_is_refused_before_any_compute(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("someone's file")
    configs = pathlib.Path(__file__).resolve().parent.parent / "configs"
    for workdir, message in ((taken, "exists and is not a folder"), (taken / "run", "cannot create it")):
        assert cli.main(["train", f"--config={configs / 'synthetic_demo.py'}:tiny", f"--workdir={workdir}"]) == 2
        assert f"--workdir={workdir}: {message}" in capsys.readouterr().err
    assert taken.read_text() == "someone's file"


def test_one_flag_style_dashes_underscores_and_config_arguments():
    import pytest

    from hmsa_jax import flags
    from hmsa_jax.train.cli import argument_parser

    argv = ["--config.train.steps=3", "--stop_after=2", "--config", "configs/x.py:tiny",
            "--workdir", "/tmp/run_a", "--config.data.root=/d_e"]
    args, config_args = flags.parse(argument_parser(), argv)
    assert (args.stop_after, args.workdir) == (2, "/tmp/run_a")
    assert config_args == ["--config=configs/x.py:tiny", "--config.train.steps=3", "--config.data.root=/d_e"]
    assert flags.config_arguments(argv) == config_args
    with pytest.raises(SystemExit) as stop:  # argparse's one-line error, exit status 2
        flags.parse(argument_parser(), ["--stop-after=x"])
    assert stop.value.code == 2
