"""LLNM worker: lateral lymph node metastasis prediction from thyroid ultrasound (LLNM-Net).

Research use only, not for diagnosis.
"""

from llnm import environment as _environment

_environment.apply()  # before anything imports onnxruntime: no telemetry files under $HOME (llnm.environment)

__version__ = "0.1.0"

#: Stated on every result object, in logs at start-up and in the README.
RESEARCH_USE_STATEMENT = (
    "Research use only, not for diagnosis. Trained on synthetic studies; "
    "not validated on a clinical cohort."
)

#: Identifies this software in ContributingEquipment and in SR/SEG/SC objects we write.
MANUFACTURER = "LLNM worker (open source)"
ALGORITHM_NAME = "LLNM-Net"
