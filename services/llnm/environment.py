"""Third-party libraries kept from writing outside the data dir and the model repository, from reporting
home, and from quoting DICOM header values in logs. Applied once, when `llnm` is imported.

- ONNX Runtime's Linux wheels start Microsoft's 1DS telemetry when the native module loads: it writes a
  device id and an event database under `$XDG_CACHE_HOME` or `~/.cache/Microsoft/DeveloperTools/.onnxruntime/`
  (found by running `llnm predict` with HOME set to an empty folder; `ort.disable_telemetry_events()` does
  not stop it, `ORT_DISABLE_TELEMETRY=1` does). The variable is read when onnxruntime is imported, so it is
  set when `llnm` is imported: before any llnm code can import onnxruntime, in every service, CLI command
  and Celery worker. The Hugging Face variables cover `llnm export --text-encoder` (transformers). An
  operator's own setting of a variable is kept (setdefault).
- pydicom and highdicom log (and `warnings.warn`) the values they find non-conformant, a malformed
  UID, date or name from a received header included ("Invalid value for VR UI: '../../x'"). Only their
  errors reach our logs, and their value warnings never reach stderr; our own code says what it refused
  or repaired by attribute keyword. pydicom sets its own logger to WARNING when it is first imported
  (`pydicom.config.debug(False, False)`), so it is imported here, before the level is set: a service
  imports `llnm` before anything reads a data set, and the level set first was undone (found by the
  hostile-data tests run after another test folder: "Invalid value for VR UI: '../../x'" in the log).
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings

#: variable -> value: telemetry off, no phoning home.
PRIVATE_ENVIRONMENT = {
    "ORT_DISABLE_TELEMETRY": "1",  # ONNX Runtime: no 1DS telemetry, no ~/.cache/Microsoft/... files
    "HF_HUB_DISABLE_TELEMETRY": "1",  # huggingface_hub (transformers, at export time)
    "DO_NOT_TRACK": "1",  # the cross-tool convention (huggingface_hub honours it too)
}
#: Libraries whose warnings quote data set values.
VALUE_QUOTING_LOGGERS = ("pydicom", "highdicom")


def apply() -> None:
    """Set each variable unless the environment already has it; quiet the value-quoting loggers."""
    for name, value in PRIVATE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    try:
        importlib.import_module("pydicom.config")  # its first import resets the "pydicom" logger: before the levels
    except ModuleNotFoundError:  # a machine that only trains (a lent GPU machine) reads no data set and has none
        pass
    for name in VALUE_QUOTING_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r"Invalid value for VR", category=UserWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(pydicom|highdicom)(\.|$)")
