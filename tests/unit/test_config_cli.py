from pathlib import Path

import pytest

from llnm.cli import COMMANDS, main
from llnm.config import Settings


def test_settings_read_llnm_variables_and_overrides_win():
    s = Settings.from_env({"LLNM_PORT": "11999", "LLNM_KEY_IMAGES": "false", "LLNM_DATA_DIR": "/tmp/x"})
    assert s.port == 11999 and s.key_images is False and s.data_dir == Path("/tmp/x")
    assert Settings.from_env({"LLNM_PORT": "1"}, port=2).port == 2


def test_settings_reject_bad_values_with_the_variable_name():
    with pytest.raises(ValueError, match="LLNM_PORT"):
        Settings.from_env({"LLNM_PORT": "eleven"})


def test_embedded_defaults_need_no_services():
    s = Settings.from_env({})
    assert s.broker_url == "" and s.inference_backend == "onnxruntime" and s.destinations == ""


def test_every_command_module_exists():
    import importlib

    for name, (module, _) in COMMANDS.items():
        mod = importlib.import_module(f"llnm.cli.{module}")
        assert callable(mod.configure) and callable(mod.run), name


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit):
        main(["no-such-command"])
