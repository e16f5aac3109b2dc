"""The one place where the listener relies on pynetdicom internals (pynetdicom has no public API for them).

- `accept`: the accept loop. A pre-association stage in front of pynetdicom's association server, so a
  silent socket or a stalled TLS handshake holds no association slot and never blocks the loop.
- `association`: inside an association. C-STORE data sets received into our files, PDUs and command sets
  bounded, each PDV checked before pynetdicom decodes it, aborts from the reader thread, and pynetdicom's
  per-PDU log lines folded into one line per bad connection.

Both were read and checked against pynetdicom `TESTED_VERSION`; pyproject.toml pins `SUPPORTED_VERSIONS`;
`check_hook_points` lists what changed in the installed release, and the listener refuses to start on any.
After an upgrade, `tests/security/test_pynetdicom_hooks.py`, `test_accept_loop.py` and `test_tls_peers.py`
must pass before the pin is widened.
"""

from __future__ import annotations

from typing import Any

from llnm.listener.pynetdicom_adapter import accept, association
from llnm.listener.pynetdicom_adapter.association import SUPPORTED_VERSIONS, TESTED_VERSION

__all__ = ["SUPPORTED_VERSIONS", "TESTED_VERSION", "accept", "association", "check_hook_points"]


def check_hook_points(ae: Any) -> list[str]:
    """Everything the adapter relies on that the installed pynetdicom lacks, as readable lines (empty: fits)."""
    return association.check_hook_points() + accept.check_hook_points(ae)
