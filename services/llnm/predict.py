"""The whole pipeline on DICOM files, in-process: read -> analyse -> SEG + SR + key image + summary.

Used by `llnm predict` and by the worker. Per-file problems become warnings of their study. A study
with no usable image (only Doppler or colour frames, no ultrasound image of a supported SOP class) gets
notice objects: an SR and a key image that say "not analysed: <reason>" and name the algorithm, with
what was received as the SR's evidence, so the absence of a result is never ambiguous; no SEG and no
number. A study the quality gate declined ("not assessable") gets an SR and key images that say why, no
SEG and no number; summary.json says so ("assessable", "not_assessable") and, per view, what the gate
found, and lists every object written.
"""

from __future__ import annotations

import json
import warnings as pywarnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from llnm import ALGORITHM_NAME, RESEARCH_USE_STATEMENT, __version__
from llnm.config import Settings
from llnm.dicom.classify import sop_class_uid
from llnm.dicom.common import analysed_frames, calibration_state
from llnm.dicom.key_image import build_key_image, build_notice_image
from llnm.dicom.loading import (NO_BMODE_FRAME, NO_ULTRASOUND_IMAGE, FrameRef, InstanceFile, StudyFiles,
                                group_by_study, load_study, writer_source)
from llnm.dicom.seg import build_seg
from llnm.dicom.sr import build_notice_sr, build_sr, summary_numbers
from llnm.inference.backend import (NODULE_SEG, TEXT_ENCODER, THYROID_SEG, TMDL, InferenceBackend,
                                    ModelNotFound)
from llnm.observability.logs import get_logger
from llnm.observability.metrics import stage
from llnm.quality import NO_IMAGE, NO_IMAGE_TEXT
from llnm.storage.durable import write_durably
from llnm.storage.names import InvalidUID, validate_uid
from llnm.storage.outbox import encode
from llnm.study import StudyInput, StudyResult

log = get_logger(__name__)

Analyse = Callable[[StudyInput, InferenceBackend], StudyResult]

# highdicom's person-name warning quotes the patient's name: never let it reach stderr or a log, also
# outside build_datasets' catch_warnings (which is process-global and not thread-safe on its own).
pywarnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent the intended person name")
# highdicom also logs it (logging, WARNING): llnm.environment keeps highdicom's and pydicom's loggers to errors.


class OutputMismatch(RuntimeError):
    """A result object would name another study than the one read: nothing is written (a bug, or a
    source header the reader let through)."""

    audit_safe = True  # a fixed message (llnm.audit.error_text)


@dataclass
class StudyOutput:
    study_uid: str
    summary: dict
    datasets: list[Dataset]
    result: StudyResult | None


def _default_analyse() -> Analyse:
    from llnm.pipeline import analyse_study

    return analyse_study


def predict_paths(paths: list[Path], backend: InferenceBackend, settings: Settings,
                  analyse: Analyse | None = None) -> list[StudyOutput]:
    """One StudyOutput per study found under `paths` (files or folders), in StudyInstanceUID order.

    `analyse` defaults to llnm.pipeline.analyse_study; errors it raises (a model or Triton missing)
    propagate, so the caller can retry. Files that belong to no study are reported in every study's
    warnings.
    """
    groups, orphans = group_by_study(paths)
    outputs = []
    for uid in sorted(groups):
        groups[uid].warnings.extend(f"file {o}" for o in orphans)
        outputs.append(predict_study(groups[uid], backend, settings, analyse))
    return outputs


def predict_study(files: StudyFiles, backend: InferenceBackend, settings: Settings,
                  analyse: Analyse | None = None) -> StudyOutput:
    with stage("decode"):
        study = load_study(files, report_dir=settings.report_dir or None)
    if not study.views:
        notice = not_analysed_result(study, model_versions(backend))
        datasets = build_notice_datasets(files, notice, settings)
        summary = _summary(study, notice, datasets, status="no usable image")
        log.warning("study has no usable image", study_uid=study.study_uid, objects=len(datasets))
        return StudyOutput(study.study_uid, summary, datasets, None)
    result = (analyse or _default_analyse())(study, backend)
    datasets = build_datasets(study, result, settings)
    for ds in datasets:  # the study read and validated is the one every object names (never another)
        if str(ds.StudyInstanceUID) != study.study_uid:
            raise OutputMismatch("a result object names another study than the one analysed")
    summary = _summary(study, result, datasets, status="ok")
    log.info("study analysed", study_uid=study.study_uid, probability=result.probability,
             risk_level=result.risk_level, not_assessable=result.not_assessable_code, objects=len(datasets),
             views=len(study.views))
    return StudyOutput(study.study_uid, summary, datasets, result)


def build_datasets(study: StudyInput, result: StudyResult, settings: Settings) -> list[Dataset]:
    """SEG per analysed frame, one SR, and (if Settings.key_images) a key image per analysed frame."""
    frames = analysed_frames(study.views, result)
    out: list[Dataset] = []
    with pywarnings.catch_warnings():
        # highdicom warns about odd patient names in the source; never echo those values.
        pywarnings.simplefilter("ignore", UserWarning)
        segmentations: dict[str, Dataset] = {}  # the SR links each outlined nodule to its segment here
        for frame in frames:
            seg = build_seg(frame, result, study.study_uid)
            if seg is not None:
                out.append(seg)
                segmentations[frame.key] = seg
        evidence = _evidence(study)
        if evidence:
            out.append(build_sr(frames, study.views, result, study.study_uid, evidence,
                                profile=settings.sr_profile, segmentations=segmentations))
        if settings.key_images:
            for number, frame in enumerate(frames, start=1):
                out.append(build_key_image(frame, result, study.study_uid, number))
    return out


#: StudyResult.finding of a study with no usable image: "not analysed: <reason>".
NOT_ANALYSED = "not analysed"


def model_versions(backend: InferenceBackend | None) -> dict[str, str]:
    """The content hash of each model the backend serves: the algorithm's identity in a notice, where no
    model ran (the same identity as in an analysed study's objects)."""
    versions: dict[str, str] = {}
    for name in (NODULE_SEG, THYROID_SEG, TEXT_ENCODER, TMDL):
        try:
            if backend is not None and backend.has_model(name):
                versions[name] = backend.model_version(name)
        except ModelNotFound:
            continue
    return versions


def no_image_reason(study: StudyInput) -> str:
    """Why a study gave no view, from what reading it found (llnm.dicom.loading)."""
    if NO_ULTRASOUND_IMAGE in study.warnings:
        return NO_ULTRASOUND_IMAGE
    if NO_BMODE_FRAME in study.warnings:
        colour = any("Doppler" in w or "colour" in w for w in study.warnings)
        return f"{NO_BMODE_FRAME} (Doppler or colour only)" if colour else NO_BMODE_FRAME
    return NO_IMAGE_TEXT


def not_analysed_result(study: StudyInput, versions: dict[str, str]) -> StudyResult:
    """The result of a study with no usable image: nothing analysed, no number, the reason."""
    reason = no_image_reason(study)
    return StudyResult(study_uid=study.study_uid, finding=f"{NOT_ANALYSED}: {reason}", probability=None,
                       risk_level=None, model_versions=versions, not_assessable_code=NO_IMAGE,
                       not_assessable_reason=reason)


def build_notice_datasets(files: StudyFiles, result: StudyResult, settings: Settings) -> list[Dataset]:
    """The notice SR and (if Settings.key_images) key image of a study with no usable image; the SR's
    evidence is every instance received (our own outputs aside), its one group outlines the first
    received image when there is one. Nothing when nothing usable as evidence was received."""
    received = sorted((i for i in files.instances if i.kind != "own_output" and _valid_class(i.header)),
                      key=lambda i: (i.kind != "image", _order(i)))
    if not received:
        return []
    evidence = [writer_source(i.header, dict(files.repaired)) for i in received]
    image = evidence[0] if received[0].kind == "image" and "Rows" in evidence[0] and "Columns" in evidence[0] else None
    sources = sorted(str(ds.SOPInstanceUID) for ds in evidence)
    out: list[Dataset] = []
    try:
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore", UserWarning)  # never echo odd source names (see build_datasets)
            out.append(build_notice_sr(result, files.study_uid, evidence, image, profile=settings.sr_profile))
            if settings.key_images:
                out.append(build_notice_image(evidence[0], result, files.study_uid, sources, len(received)))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # A header highdicom cannot build from (the notice copies its patient and study modules): the
        # study keeps its summary ("no usable image"), as before notices existed, rather than failing.
        log.warning("notice objects not written", study_uid=files.study_uid, reason=type(exc).__name__)
        return []
    return out


def _valid_class(header: Dataset) -> bool:
    """A SOP Class UID to reference, in the dataset or (as the reader accepts) only in its file meta."""
    try:
        validate_uid(sop_class_uid(header))
    except InvalidUID:
        return False
    return True


def _order(inst: InstanceFile) -> tuple:
    """Series, instance number, SOP Instance UID: a stable order of the received instances."""
    header = inst.header
    try:
        number = int(header.get("InstanceNumber") or 0)
    except (TypeError, ValueError):
        number = 0
    return (str(header.get("SeriesInstanceUID", "")), number, str(header.get("SOPInstanceUID", "")))


def _evidence(study: StudyInput) -> list[Dataset]:
    seen: dict[str, Dataset] = {}
    for view in study.views:
        if isinstance(view.source, FrameRef):
            seen.setdefault(view.source.sop_instance_uid, view.source.header)
    return list(seen.values())


def _object_type(ds: Dataset) -> str:
    return {"SEG": "SEG", "SR": "SR"}.get(str(ds.get("Modality", "")), "SC")


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _gate(view_result) -> dict:
    """The quality gate's outcome of one view (llnm.quality.ViewQuality) for summary.json."""
    quality = view_result.quality
    return {
        "used": bool(view_result.used),
        "quality": None if quality is None else {
            "reasons": [r.code for r in quality.reasons],
            "nodule_inside_gland": _round(quality.nodule_inside_gland),
            "solidity": _round(quality.solidity),
            "nodule_area_share": _round(quality.nodule_area_share),
            "gland_area_share": _round(quality.gland_area_share),
        },
    }


def _summary(study: StudyInput, result: StudyResult | None, datasets: list[Dataset], status: str) -> dict:
    views = []
    for number, view in enumerate(study.views):
        ref = view.source
        gate = _gate(result.views[number]) if result is not None and number < len(result.views) else {}
        views.append({
            "sop_instance_uid": ref.sop_instance_uid if isinstance(ref, FrameRef) else None,
            "frame_number": ref.frame_number if isinstance(ref, FrameRef) else None,
            "crop_offset": list(view.crop_offset),
            "shape": list(view.image.shape),
            "spacing_mm": list(view.spacing_mm) if view.spacing_mm else None,
            "calibration": ref.calibration if isinstance(ref, FrameRef) else None,
            **gate,
        })
    numbers = summary_numbers(result) if result is not None else {
        "probability": None, "risk_level": None, "risk_label": None, "capsule_distance_mm": None, "capsule_distance_px": None,
        "nodule_size_mm": None, "nodule_size_px": None, "contributions": {}}
    warnings = list(study.warnings) + (list(result.warnings) if result is not None else [])
    assessable = result is not None and result.assessable  # summary_numbers is empty when it is not
    return {
        "study_uid": study.study_uid,
        "status": status,
        "finding": result.finding if result is not None else None,
        "assessable": assessable,
        "not_assessable": ({"code": result.not_assessable_code, "reason": result.not_assessable_reason}
                           if result is not None else {"code": NO_IMAGE, "reason": NO_IMAGE_TEXT})
        if not assessable else None,
        **numbers,
        "risk_probabilities": [round(float(p), 4) for p in result.risk_probabilities] if assessable else [],
        "location": dict(result.location) if assessable else {},
        "calibrated": bool(calibration_state(study.views, result)) if result is not None else False,
        "index_view": result.index_view if assessable else None,
        "views": views,
        "inputs": {"sex_known": study.sex is not None, "age_known": study.age_years is not None,
                   "report": study.report_text is not None},
        "warnings": list(dict.fromkeys(warnings)),
        "objects": [{
            "type": _object_type(ds),
            "sop_class_uid": str(ds.SOPClassUID),
            "sop_instance_uid": str(ds.SOPInstanceUID),
            "series_instance_uid": str(ds.SeriesInstanceUID),
            "file": f"{ds.SOPInstanceUID}.dcm",
        } for ds in datasets],
        "algorithm": {"name": ALGORITHM_NAME, "version": __version__,
                      "models": dict(sorted(result.model_versions.items())) if result else {}},
        "research_use": RESEARCH_USE_STATEMENT,
    }


def write_output(output: StudyOutput, out_dir: Path) -> Path:
    """out_dir/<study_uid>/summary.json and <SOPInstanceUID>.dcm for each object; returns the folder.

    Each file is written to a temporary name, fsynced and renamed, so a reader never sees half a file, and
    a rerun replaces the same names (deterministic UIDs) instead of adding new ones. Objects of an
    earlier, different result of the study (other UIDs) are removed: the folder holds one answer.

    The order keeps summary.json true whenever the writing stops (an error, a full disk, a crash): first
    every object of this result, then summary.json (one rename: it names the old result's objects until then,
    this result's after), and only then the old result's objects are removed. So summary.json always
    describes one whole result whose every object is in the folder; a write that stopped leaves at most
    objects it does not name (of the result being written, or of the one replaced), which the next write
    removes. The old summary.json stays until replaced, so that next write still knows what it supersedes.
    """
    folder = Path(out_dir) / validate_uid(output.study_uid)  # a UID, never a path
    folder.mkdir(parents=True, exist_ok=True)
    current = {f"{ds.SOPInstanceUID}.dcm" for ds in output.datasets}
    for ds in output.datasets:
        write_durably(folder / f"{ds.SOPInstanceUID}.dcm", encode(ds))
    text = json.dumps(output.summary, indent=2, sort_keys=False) + "\n"
    write_durably(folder / "summary.json", text.encode("utf-8"))
    for stale in folder.glob("*.dcm"):
        if stale.name not in current:
            stale.unlink()
    return folder
