"""Files or folders of DICOM -> one `StudyInput` per study, with each view's DICOM frame reference.

Steps per study: read every header; sort instances into images, reports, our own outputs and the
ignored (each ignored or broken file becomes a warning, the rest of the study goes on); decode each
image, choose its representative frame (cines) and drop non-B-mode frames; crop every calibrated 2D
tissue region of the chosen frame to a view (without regions: the ultrasound image found in the
pixels, the scanner's interface cut away); read sex, age and the report.

One reading of each file: a file is grouped, and its outputs are written, under the UIDs of its header
read, validated as the listener validates them (`llnm.storage.names.validate_uid`); a file whose full
read (with pixel data) carries other top-level UIDs is skipped, never half-trusted. The header the
writers copy patient and study attributes from is that header read, with missing or malformed Type 2
attributes emptied (`patient.writer_header`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from llnm.dicom import frames as frame_choice
from llnm.dicom import patient
from llnm.dicom.classify import BASIC_TEXT_SR, ENHANCED_SR, classify_instance, sop_class_uid
from llnm.dicom.reading import (
    MULTIFRAME_SOP_CLASSES,
    UnreadableInstance,
    decode_frame,
    number_of_frames,
    read_full,
    read_header,
    rgb_to_grey,
)
from llnm.dicom.regions import Crop, has_doppler_region, tissue_crops
from llnm.observability.logs import get_logger
from llnm.segmentation.marks import fill
from llnm.segmentation.region import find_image_region
from llnm.storage.names import InvalidUID, validate_uid
from llnm.study import StudyInput, View

log = get_logger(__name__)

#: At most this many views go to the pipeline per study (in series/instance order): the paper uses
#: two views of the index nodule; more candidates let the pipeline pick them, fewer keep it fast.
MAX_VIEWS = 8
#: A file that does not parse is an error only when it claims to be DICOM (or has no suffix, as
#: PACS exports often do); anything else in a folder (PNG, CSV, JSON) is skipped quietly.
DICOM_SUFFIXES = frozenset({"", ".dcm", ".dicom", ".dic", ".ima"})
#: Why a study gave no view (the last of its warnings says which; the notice objects quote it).
NO_ULTRASOUND_IMAGE = "no ultrasound image in the study"
NO_BMODE_FRAME = "no B-mode greyscale frame in the study"


@dataclass
class FrameRef:
    """Where a view came from: enough to reference it from SEG/SR and to draw the key image."""

    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    frame_number: int | None  # 1-based within a multi-frame instance; None for single-frame
    number_of_frames: int
    header: Dataset  # the source instance without pixel data
    crop: Crop
    frame_rgb: np.ndarray  # the whole source frame, (Rows, Columns, 3) uint8

    @property
    def calibration(self) -> str:
        return self.crop.calibration


@dataclass
class InstanceFile:
    path: Path
    header: Dataset
    kind: str  # classify_instance()


@dataclass
class StudyFiles:
    study_uid: str
    instances: list[InstanceFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: {keyword: "missing", "malformed" or patient.CONVERTED_ACR_NEMA}: patient/study attributes the
    #: writers get empty (unknown), or, for an ACR-NEMA date, converted
    repaired: dict[str, str] = field(default_factory=dict)


#: The UIDs a file is grouped, spooled and written under.
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def iter_files(paths: list[Path]) -> list[Path]:
    """Files named, and every file under folders named (sorted, hidden files skipped)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")))
        elif p.is_file():
            out.append(p)
    return out


def _may_be_dicom(path: Path) -> bool:
    """Named like DICOM: .dcm etc., no suffix, or a UID-like name whose last part is digits."""
    suffix = path.suffix.lower()
    return suffix in DICOM_SUFFIXES or suffix[1:].isdigit()


def group_by_study(paths: list[Path]) -> tuple[dict[str, StudyFiles], list[str]]:
    """Headers of every file, grouped by StudyInstanceUID; second: errors of files with no study."""
    studies: dict[str, StudyFiles] = {}
    orphans: list[str] = []
    seen: set[tuple[str, str]] = set()
    for path in iter_files(paths):
        try:
            header = read_header(path)
        except UnreadableInstance as exc:
            if _may_be_dicom(path):
                orphans.append(f"{path.name}: {exc}")
            else:  # a PNG or CSV beside the DICOM files is not an input error
                log.debug("not DICOM, skipped", path=path.name)
            continue
        try:
            study_uid = validate_uid(header.get("StudyInstanceUID"))
        except InvalidUID:  # never a folder name or an output's study: names no value
            orphans.append(f"{path.name}: no valid StudyInstanceUID")
            continue
        sf = studies.setdefault(study_uid, StudyFiles(study_uid))
        try:
            sop_uid = validate_uid(header.get("SOPInstanceUID"))
            validate_uid(header.get("SeriesInstanceUID"))
        except InvalidUID:
            sf.warnings.append(f"file {path.name} skipped: no valid SOPInstanceUID or SeriesInstanceUID")
            continue
        if (study_uid, sop_uid) in seen:
            sf.warnings.append(f"instance {sop_uid} received twice: {path.name} not used")
            continue
        seen.add((study_uid, sop_uid))
        sf.instances.append(InstanceFile(path, header, classify_instance(header)))
    return studies, orphans


def _order_key(inst: InstanceFile) -> tuple:
    h = inst.header

    def num(keyword: str) -> int:
        try:
            return int(h.get(keyword) or 0)
        except (TypeError, ValueError):
            return 0

    return (num("SeriesNumber"), str(h.get("SeriesInstanceUID", "")), num("InstanceNumber"),
            str(h.get("SOPInstanceUID", "")))


def _label(inst: InstanceFile) -> str:
    """How a warning names a file: its SOP Instance UID (never a patient attribute)."""
    return str(inst.header.get("SOPInstanceUID", "") or inst.path.name)


def load_study(files: StudyFiles, report_dir: str | Path | None = None) -> StudyInput:
    """Decode the images of one study into views; every problem becomes a warning, never a crash."""
    warnings = list(files.warnings)
    views: list[View] = []
    images = sorted((i for i in files.instances if i.kind == "image"), key=_order_key)
    for inst in files.instances:
        if inst.kind.startswith("ignored:"):
            warnings.append(f"instance {_label(inst)} ignored: {inst.kind.split(':', 1)[1]}")
    for inst in images:
        if len(views) >= MAX_VIEWS:
            warnings.append(f"more than {MAX_VIEWS} views: instance {_label(inst)} and later not analysed")
            break
        try:
            views.extend(_views_of_instance(inst, warnings, files.repaired))
        except UnreadableInstance as exc:
            warnings.append(f"instance {_label(inst)} skipped: {exc}")
            log.warning("instance skipped", study_uid=files.study_uid,
                        sop_instance_uid=_label(inst), reason=str(exc).split(" (", 1)[0])
        except Exception as exc:  # a header the reader did not foresee (no Rows...): this instance only
            # the exception's type, never its message (a library's message may quote a header value)
            warnings.append(f"instance {_label(inst)} skipped: it cannot be read ({type(exc).__name__})")
            log.warning("instance skipped", study_uid=files.study_uid,
                        sop_instance_uid=_label(inst), reason=type(exc).__name__)
    if len(views) > MAX_VIEWS:  # the last instance read held more regions than were left
        warnings.append(f"more than {MAX_VIEWS} views: {len(views) - MAX_VIEWS} region(s) of instance "
                        f"{views[MAX_VIEWS].source.sop_instance_uid} not analysed")
        views = views[:MAX_VIEWS]
    if not images:
        warnings.append(NO_ULTRASOUND_IMAGE)
    elif not views:
        warnings.append(NO_BMODE_FRAME)
    headers = [i.header for i in images] or [i.header for i in files.instances]
    sex, age, report = None, None, None
    if headers:
        sex = patient.patient_sex(headers[0])
        if sex is None:
            warnings.append("patient sex unknown (PatientSex missing or not M/F)")
        age, age_source = patient.patient_age_years(headers[0])
        if age is None:
            warnings.append("patient age unknown (no PatientAge, no PatientBirthDate with StudyDate)")
        elif age_source != "PatientAge":
            warnings.append(f"patient age computed from {age_source} and StudyDate")
    for keyword, state in sorted(files.repaired.items()):  # keyword only: never the value
        if state == patient.CONVERTED_ACR_NEMA:
            warnings.append(f"{keyword} {state}: written as the same value in the DICOM form")
            log.info("patient or study date or time in the ACR-NEMA form: converted", study_uid=files.study_uid,
                     reason=f"{keyword} {state}")
            continue
        warnings.append(f"{keyword} {state}: treated as unknown (written empty)")
        log.warning("patient or study attribute missing or malformed: treated as unknown",
                    study_uid=files.study_uid, reason=f"{keyword} {state}")
    report = _report_text(files, report_dir, warnings)
    return StudyInput(study_uid=files.study_uid, views=views, report_text=report, age_years=age,
                      sex=sex, warnings=warnings)


def _report_text(files: StudyFiles, report_dir: str | Path | None, warnings: list[str]) -> str | None:
    # A Basic Text SR is most likely the radiologist's report; scanner measurement SRs come last.
    rank = {BASIC_TEXT_SR: 0, ENHANCED_SR: 1}
    reports = [i for i in files.instances if i.kind == "report"]
    for inst in sorted(reports, key=lambda i: (rank.get(str(i.header.get("SOPClassUID", "")), 2), _order_key(i))):
        try:
            text = patient.sr_text(read_full_sr(inst.path))
        except UnreadableInstance as exc:
            warnings.append(f"report {_label(inst)} unreadable: {exc}")
            continue
        if text:
            return text
    text = patient.sidecar_report(report_dir, files.study_uid)
    if text:
        return text
    warnings.append("no radiology report (no SR text in the study, no sidecar report)")
    return None


def read_full_sr(path: Path) -> Dataset:
    import pydicom

    try:
        return pydicom.dcmread(str(path))
    except Exception as exc:
        raise UnreadableInstance(f"not a readable DICOM file ({type(exc).__name__})") from exc


def same_uids(header: Dataset, full: Dataset) -> None:
    """Raise UnreadableInstance unless the full read carries the header read's top-level UIDs (a second
    Study Instance UID after the pixel data, which pydicom's full read would take, is refused)."""
    for keyword in UID_KEYWORDS:
        if str(header.get(keyword, "") or "").strip() != str(full.get(keyword, "") or "").strip():
            raise UnreadableInstance(f"its header and full read disagree ({keyword})")


def _views_of_instance(inst: InstanceFile, warnings: list[str],
                       repaired: dict[str, str] | None = None) -> list[View]:
    header = inst.header
    if has_doppler_region(header):
        warnings.append(f"instance {_label(inst)} skipped: Doppler region (not B-mode)")
        return []
    ds = read_full(inst.path)
    same_uids(header, ds)
    source = writer_source(header, repaired)
    crop_warnings: list[str] = []
    crops = tissue_crops(ds, crop_warnings)
    warnings.extend(f"instance {_label(inst)}: {w}" for w in crop_warnings)
    n = number_of_frames(ds)
    if n > 1 and sop_class_uid(source) not in MULTIFRAME_SOP_CLASSES:
        # A single-frame SOP class cannot have its frames referenced: read it as its first frame.
        warnings.append(f"instance {_label(inst)}: {n} frames in a single-frame SOP class, first frame used")
        n = 1
    main = crops[0]
    if n == 1:
        chosen = 0
        rgb = decode_frame(ds, 0)
    else:
        scores: dict[int, float] = {}
        for index in frame_choice.candidate_frame_indices(n):
            part = decode_frame(ds, index)[main.row0:main.row1, main.col0:main.col1]
            if frame_choice.is_bmode(part, whole_frame=main.region_index is None):
                scores[index] = frame_choice.sharpness(rgb_to_grey(part))
        picked = frame_choice.pick_representative(scores, n)
        if picked is None:
            warnings.append(f"instance {_label(inst)} skipped: no B-mode frame in the cine (colour)")
            return []
        chosen, rgb = picked, decode_frame(ds, picked)
    if rgb.shape[:2] != (int(ds.Rows), int(ds.Columns)):
        raise UnreadableInstance("decoded frame size does not match Rows/Columns")
    out = []
    for crop in crops:
        part = rgb[crop.row0:crop.row1, crop.col0:crop.col1]
        if not frame_choice.is_bmode(part, whole_frame=crop.region_index is None):
            warnings.append(f"instance {_label(inst)}: colour in the tissue region "
                            f"(Doppler/elastography), not analysed")
            continue
        if crop.region_index is None:
            crop = image_crop(crop, rgb_to_grey(part))
            part = rgb[crop.row0:crop.row1, crop.col0:crop.col1]
        ref = FrameRef(  # identity and header from the header read (same_uids: the full read agrees)
            sop_instance_uid=str(source.SOPInstanceUID), sop_class_uid=sop_class_uid(source),
            series_uid=str(source.SeriesInstanceUID),
            frame_number=chosen + 1 if n > 1 else None, number_of_frames=n,
            header=source, crop=crop, frame_rgb=rgb,
        )
        if crop.spacing_mm is None:
            warnings.append(f"instance {_label(inst)}: uncalibrated (no ultrasound region calibration "
                            f"or PixelSpacing): measured in pixels")
        grey = fill(rgb_to_grey(part), frame_choice.overlay_mask(part))  # coloured calipers: not tissue
        out.append(View(image=grey, spacing_mm=crop.spacing_mm, source=ref,
                        crop_offset=crop.offset))
    return out


def writer_source(header: Dataset, repaired: dict[str, str] | None) -> Dataset:
    """The header the writers copy from: the header read without pixel data, its UIDs the validated ones
    (group_by_study checked them) and its missing or malformed patient/study attributes emptied;
    `repaired` collects which (a malformed value beats a missing one across instances)."""
    source, fixed = patient.writer_header(_strip_pixels(header))
    for keyword in UID_KEYWORDS:
        tag = tag_for_keyword(keyword)
        source[tag] = DataElement(tag, "UI", validate_uid(header.get(keyword)))
    if "SOPClassUID" not in source and sop_class_uid(header):  # the class in the file meta only
        source.add_new("SOPClassUID", "UI", sop_class_uid(header))
    if repaired is not None:
        repaired.update({k: v for k, v in fixed.items() if repaired.get(k) != "malformed"})
    return source


def image_crop(whole: Crop, grey: np.ndarray) -> Crop:
    """Without ultrasound regions, the ultrasound image found in the pixels (the scanner's interface
    around it cut away; llnm.segmentation.region), keeping the frame's spacing and calibration."""
    found = find_image_region(grey)
    if not found.found:
        return whole
    return replace(whole, row0=whole.row0 + found.row0, col0=whole.col0 + found.col0,
                   row1=whole.row0 + found.row1, col1=whole.col0 + found.col1)


def _strip_pixels(ds: Dataset) -> Dataset:
    header = Dataset()
    header.file_meta = ds.file_meta
    for elem in ds:
        if elem.tag.group == 0x7FE0 or elem.keyword in {"PixelData", "FloatPixelData",
                                                        "DoubleFloatPixelData"}:
            continue
        header.add(elem)
    return header


def read_studies(paths: list[Path], report_dir: str | Path | None = None
                 ) -> tuple[list[StudyInput], list[str]]:
    """Every study found under `paths`; second: errors of files that belong to no study."""
    groups, orphans = group_by_study(paths)
    return [load_study(groups[uid], report_dir) for uid in sorted(groups)], orphans

