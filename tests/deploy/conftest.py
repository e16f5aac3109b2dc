"""Fixtures of the deployment tests: the Helm chart rendered once per values set, the LLNM_*
names of llnm.config.Settings. Helpers live in deploy_support.py."""

from __future__ import annotations

import pytest
from deploy_support import CHART, VALUES_SETS, render_chart, values_for
from deploy_support import settings_env_names as _settings_env_names


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """The chart rendered once per values set: {values file name: manifests}."""
    return {name: render_chart(CHART, values_for(name)) for name in VALUES_SETS}


@pytest.fixture(scope="session")
def settings_env_names() -> set[str]:
    """LLNM_* variable names that llnm.config.Settings reads."""
    return _settings_env_names()
