"""Header-only decisions: is this instance an image to analyse, a report to read, our own output, or
something to ignore? Cheap enough for the listener to call on every received instance.

An "ignored:<reason>" ends up in the audit trail and the logs, so a header value appears in it only when
it has the form of its VR (a Modality code string, a UID): free text a peer put there never does."""

from __future__ import annotations

import re

from pydicom.dataset import Dataset

from llnm import MANUFACTURER
from llnm.dicom.reading import (
    SC_SOP_CLASSES,
    SUPPORTED_TRANSFER_SYNTAXES,
    US_SOP_CLASSES,
    transfer_syntax,
)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"  # our IOCM rejection notes (llnm.dicom.supersede)
REPORT_SOP_CLASSES = frozenset({BASIC_TEXT_SR, ENHANCED_SR, COMPREHENSIVE_SR, COMPREHENSIVE_3D_SR})
#: What the worker writes (SEG, SR, SC key image, the rejection note of a superseded result); with our
#: Manufacturer it is our own output.
OWN_OUTPUT_SOP_CLASSES = frozenset({SEGMENTATION_STORAGE, COMPREHENSIVE_SR, COMPREHENSIVE_3D_SR,
                                    ENHANCED_SR, KEY_OBJECT_SELECTION, *SC_SOP_CLASSES})


_CODE_STRING = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _shown_modality(modality: str) -> str:
    return modality if _CODE_STRING.match(modality) else "(malformed)"


def _shown_uid(uid: str) -> str:
    return uid if len(uid) <= 64 and _UID.match(uid) else "(malformed)"


def sop_class_uid(ds: Dataset) -> str:
    """The dataset's SOP Class UID, else its file meta's MediaStorageSOPClassUID; "" when neither."""
    value = ds.get("SOPClassUID")
    if value is None and getattr(ds, "file_meta", None) is not None:
        value = ds.file_meta.get("MediaStorageSOPClassUID")
    return str(value or "")


def is_own_output(ds: Dataset) -> bool:
    """An SR/SEG/SC this worker wrote, coming back to it: never analyse it again."""
    if sop_class_uid(ds) not in OWN_OUTPUT_SOP_CLASSES:
        return False
    # Ours set Manufacturer; someone else's object that merely lists us in ContributingEquipment
    # (e.g. a radiologist's edit of our SEG) is theirs and may be analysed.
    return str(ds.get("Manufacturer", "") or "") == MANUFACTURER


def classify_instance(ds: Dataset) -> str:
    """"image", "report", "own_output" or "ignored:<reason>", from the header alone."""
    sop_class = sop_class_uid(ds)
    if is_own_output(ds):
        return "own_output"
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if sop_class in REPORT_SOP_CLASSES:
        return "report"
    if sop_class in US_SOP_CLASSES or (sop_class in SC_SOP_CLASSES and modality == "US"):
        if modality and modality != "US" and sop_class not in SC_SOP_CLASSES:
            return f"ignored:modality {_shown_modality(modality)} is not US"
        ts = str(transfer_syntax(ds))
        if ts not in SUPPORTED_TRANSFER_SYNTAXES:
            return f"ignored:unsupported transfer syntax {_shown_uid(ts)}"
        if int(ds.get("SamplesPerPixel", 1) or 1) not in (1, 3):
            return "ignored:unsupported samples per pixel"
        return "image"
    if sop_class in SC_SOP_CLASSES:
        return f"ignored:secondary capture of modality {_shown_modality(modality) if modality else 'unknown'}, not US"
    if not sop_class:
        return "ignored:no SOP Class UID"
    if modality and modality != "US":
        return f"ignored:modality {_shown_modality(modality)} is not US"
    return f"ignored:SOP class {_shown_uid(sop_class)} is not an ultrasound image"
