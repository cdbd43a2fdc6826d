"""The `hmsa` entry point: dispatch, help, and clear errors."""
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
