"""`llnm.environment.apply` (run when `llnm` is imported): telemetry off, and on a machine without
pydicom (a lent GPU machine that only trains, scripts/device/) importing `llnm` still works."""

import importlib
import logging
import os

from llnm import environment


def test_apply_without_pydicom_sets_the_variables_and_quiets_the_loggers(monkeypatch):
    real = importlib.import_module

    def without_pydicom(name, *args, **kwargs):
        if name.split(".")[0] == "pydicom":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(environment.importlib, "import_module", without_pydicom)
    for name in environment.PRIVATE_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    logging.getLogger("pydicom").setLevel(logging.DEBUG)
    environment.apply()
    assert all(os.environ[k] == v for k, v in environment.PRIVATE_ENVIRONMENT.items())
    assert logging.getLogger("pydicom").level == logging.ERROR
