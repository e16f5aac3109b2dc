"""Deterministic UIDs for what we write, so reprocessing replaces instead of piling up.

A result object's UID is a name-based UUID (RFC 4122 version 5) under the ISO/IEC 9834-8 arc
"2.25", derived from: the output type ("SEG", "SR", "SC" ...), the study, the source SOP Instance UIDs
and frame numbers it describes, the software version, the model content hashes and a digest of what the
result says (so a changed answer is never hidden behind the UIDs of the old one). The same inputs
through the same software and models give the same UIDs, so a PACS that receives the result again
holds one copy (keeping the first or overwriting it is the PACS's choice: llnm.dicom.supersede makes the
bytes identical too); a new model version or a changed result gives new UIDs, and llnm.dicom.supersede
marks the old result as replaced (predecessor reference, IOCM rejection note). No registered root is
needed and no UID is random.
"""

from __future__ import annotations

import uuid

from pydicom.uid import UID

#: Fixed namespace for the worker's UIDs (uuid5 of the project name in the URL namespace).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/llnm-worker/llnm")


def deterministic_uid(*parts: object) -> UID:
    name = "\x1f".join(str(p) for p in parts)
    return UID(f"2.25.{uuid.uuid5(NAMESPACE, name).int}")


def versions_key(software_version: str, model_versions: dict[str, str]) -> str:
    return software_version + ";" + ";".join(f"{k}={v}" for k, v in sorted(model_versions.items()))


def output_series_uid(kind: str, study_uid: str, versions: str) -> UID:
    return deterministic_uid("series", kind, study_uid, versions)


def output_instance_uid(kind: str, study_uid: str, sources: list[str], versions: str) -> UID:
    """`sources`: "<SOPInstanceUID>[:<frame>]" of every source frame the object describes."""
    return deterministic_uid("instance", kind, study_uid, *sorted(sources), versions)
