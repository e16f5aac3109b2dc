"""Secondary Capture key image: the analysed frame with the result burned in, for PACS viewers that
show neither SR nor SEG.

The whole source frame as acquired (so the reader recognises it), with, inside each analysed tissue
region, the attention heatmap blended in, the gland outline (cyan) and the nodule outline (yellow);
below the frame a banner with the probability, the risk level, the capsule distance and
"RESEARCH USE ONLY". The banner is added below, never over the image. BurnedInAnnotation is copied
from the source (the frame keeps whatever the scanner burned in) and defaults to YES.

Header (PS3.3 A.8.1 Secondary Capture Image IOD): the Patient, Patient Study and General Study modules
are copied from the source in full; Laterality is the lobe when known, else absent with BodyPartExamined
THYROID (an unpaired body part, for which General Series Laterality, Type 2C, is not required: `body_part`);
LossyImageCompression "01" when the source was lossy (PS3.3 C.7.6.1.1.5: once lossy, always lossy), with
its ratio and method; SourceImageSequence (General Reference module, C.12.4) names the source frame.

Only masks that passed the quality gate are drawn (`llnm.dicom.common.reportable`): a not-assessable
study's key image is the frame as acquired with "not assessable: <reason>" below it and no outline,
heat map or number; a view the gate declined in an assessable study gets no outline and a banner line
saying why it was not used. With no nodule found, nothing was measured: no calibration line.

A study with no usable image gets a notice instead (`build_notice_image`): the text "not analysed:
<reason>" rendered on black, nothing of the received pixels.
"""

from __future__ import annotations

import copy
import textwrap

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from scipy import ndimage

from llnm import ALGORITHM_NAME, MANUFACTURER, __version__
from llnm.dicom import codes
from llnm.dicom.common import (
    SERIES_NUMBER,
    SHORT_LABEL,
    AnalysedFrame,
    add_common,
    dcm_code,
    laterality,
    reportable,
    versions_key,
)
from llnm.dicom.loading import FrameRef
from llnm.dicom.uids import output_instance_uid, output_series_uid
from llnm.quality import view_declined
from llnm.study import StudyResult

#: Patient (C.7.1.1), Patient Study (C.7.2.2) and General Study (C.7.2.1) attributes copied from the source
#: when present and not already set (highdicom's from_ref_dataset copies only some of them).
STUDY_ATTRIBUTES = (
    # Patient
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "PatientBirthDate",
    "PatientBirthTime", "PatientSex", "OtherPatientIDsSequence", "PatientComments", "PatientSpeciesDescription",
    "PatientBreedDescription", "ResponsiblePerson", "ResponsibleOrganization", "PatientIdentityRemoved",
    "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    # Patient Study
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge", "PatientSize",
    "PatientWeight", "PatientBodyMassIndex", "MeasuredAPDimension", "MeasuredLateralDimension",
    "MedicalAlerts", "Allergies", "SmokingStatus", "PregnancyStatus", "LastMenstrualDate",
    "AdditionalPatientHistory", "Occupation", "PatientState", "AdmissionID", "IssuerOfAdmissionIDSequence",
    "ServiceEpisodeID", "ServiceEpisodeDescription", "PatientSexNeutered",
    # General Study
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName",
    "ConsultingPhysicianIdentificationSequence", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyDescription", "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "RequestingServiceCodeSequence",
    "ReferencedStudySequence", "ProcedureCodeSequence", "ReasonForPerformedProcedureCodeSequence",
)
#: Transfer syntaxes that are lossy whatever the header says, and the method (PS3.3 C.7.6.1.1.5.1).
LOSSY_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1", "1.2.840.10008.1.2.4.51": "ISO_10918_1",
    "1.2.840.10008.1.2.4.81": "ISO_14495_1", "1.2.840.10008.1.2.4.91": "ISO_15444_1",
    "1.2.840.10008.1.2.4.100": "ISO_13818_2", "1.2.840.10008.1.2.4.101": "ISO_13818_2",
    "1.2.840.10008.1.2.4.102": "ISO_14496_10", "1.2.840.10008.1.2.4.103": "ISO_14496_10",
    "1.2.840.10008.1.2.4.104": "ISO_14496_10", "1.2.840.10008.1.2.4.105": "ISO_14496_10",
    "1.2.840.10008.1.2.4.106": "ISO_14496_10", "1.2.840.10008.1.2.4.107": "ISO_23008_2",
    "1.2.840.10008.1.2.4.108": "ISO_23008_2",
}

NODULE_RGB = (255, 220, 0)
GLAND_RGB = (0, 220, 255)
HEATMAP_ALPHA = 0.4


def _heat_colour(h: np.ndarray) -> np.ndarray:
    """A small 'hot' colour map: black-red-yellow-white for 0..1."""
    h = np.clip(h, 0.0, 1.0)[..., None]
    r = np.clip(3 * h, 0, 1)
    g = np.clip(3 * h - 1, 0, 1)
    b = np.clip(3 * h - 2, 0, 1)
    return np.concatenate([r, g, b], axis=-1) * 255.0


def _edge(mask: np.ndarray, width: int) -> np.ndarray:
    """The mask's pixels within `width` of its border. Eroded only over the mask's bounding box plus
    one background pixel each side (the same erosion as over the whole view, where the rest is 0)."""
    mask = mask.astype(bool)
    edge = np.zeros_like(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return edge
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1 = max(0, rows[0] - 1), min(mask.shape[0], rows[-1] + 2)
    c0, c1 = max(0, cols[0] - 1), min(mask.shape[1], cols[-1] + 2)
    box = mask[r0:r1, c0:c1]
    edge[r0:r1, c0:c1] = box & ~ndimage.binary_erosion(box, iterations=width, border_value=0)
    return edge


def _blend_heat(part: np.ndarray, heat: np.ndarray) -> None:
    """Blend the heat map into `part` in place, only where it is non-zero: elsewhere the weight is 0
    and the pixels stay as they are (the heat map is zero outside the smoothed token boxes)."""
    rows = np.flatnonzero(heat.any(axis=1))
    if not len(rows):
        return
    cols = np.flatnonzero(heat.any(axis=0))
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    h = heat[window]
    weight = HEATMAP_ALPHA * np.clip(h, 0, 1)[..., None]
    part[window] = part[window] * (1 - weight) + _heat_colour(h) * weight


def render(frame: AnalysedFrame, result: StudyResult) -> np.ndarray:
    """(H + banner, W, 3) uint8 RGB."""
    image = frame.ref.frame_rgb.astype(np.float32)  # astype copies: the source frame stays as read
    line = max(1, min(image.shape[:2]) // 200)
    for _, view, view_result in frame.views:
        r0, c0 = view.crop_offset
        h, w = view.image.shape
        part = image[r0:r0 + h, c0:c0 + w]
        if not reportable(result, view_result):
            continue  # a mask or heat map built on a declined segmentation is never drawn
        if view_result.heatmap is not None and view_result.heatmap.shape == (h, w):
            _blend_heat(part, view_result.heatmap)
        for mask, colour in ((view_result.gland_mask, GLAND_RGB), (view_result.nodule_mask, NODULE_RGB)):
            if mask is not None and mask.shape == (h, w) and mask.any():
                part[_edge(mask, line)] = colour
    rgb = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return np.concatenate([rgb, _banner(rgb.shape[1], result, frame)], axis=0)


def banner_lines(result: StudyResult, frame: AnalysedFrame | None = None) -> list[str]:
    if not result.assessable:  # the reason, and no number at all
        return [f"{ALGORITHM_NAME}: {result.finding}", f"{SHORT_LABEL}, NOT FOR DIAGNOSIS"]
    declines = []
    for index, _, view_result in (frame.views if frame is not None else []):
        reason = view_declined(view_result)
        if reason is not None:
            declines.append(f"view {index + 1} not used: {reason.text}")
    if result.probability is None:
        first = f"{ALGORITHM_NAME}: {result.finding}"
    else:
        risk = codes.RISK_NAMES.get(result.risk_level or 0, "unknown").upper()
        first = f"{ALGORITHM_NAME}: P(LLNM) = {100 * result.probability:.0f}%  risk {risk}"
    if result.calibrated and result.capsule_distance_mm is not None:
        second = f"capsule distance {result.capsule_distance_mm:.1f} mm"
    elif result.capsule_distance_px is not None:
        second = f"capsule distance {result.capsule_distance_px:.0f} px (uncalibrated)"
    else:  # nothing measured (no nodule found): no calibration to state
        second = "uncalibrated" if result.index_view is not None and not result.calibrated else ""
    return [first, second, *declines, f"{SHORT_LABEL}, NOT FOR DIAGNOSIS"]


def _banner(width: int, result: StudyResult, frame: AnalysedFrame | None = None) -> np.ndarray:
    return _text_block(width, [t for t in banner_lines(result, frame) if t])


def _text_block(width: int, lines: list[str]) -> np.ndarray:
    """White lines on black (the research-use line in red), (height, width, 3) uint8."""
    size = max(10, min(28, width // 36))
    font = ImageFont.load_default(size=size)
    height = (size + 4) * len(lines) + 8
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        colour = (255, 80, 80) if text.startswith(SHORT_LABEL) else (255, 255, 255)
        draw.text((6, 4 + i * (size + 4)), text, fill=colour, font=font)
    return np.asarray(canvas, dtype=np.uint8)


def _secondary_capture(header: Dataset, pixels: np.ndarray, study_uid: str, sop_instance_uid: str,
                       number: int, versions: str) -> hd.sc.SCImage:
    """The RGB Secondary Capture both key images are (PS3.3 A.8.1): in the source's study, series
    SERIES_NUMBER["SC"], modality US, converted by workstation (WSD), with no patient orientation."""
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=output_series_uid("SC", study_uid, versions),
        series_number=SERIES_NUMBER["SC"],
        sop_instance_uid=sop_instance_uid,
        instance_number=number,
        manufacturer=MANUFACTURER,
        patient_orientation=("A", "F"),  # highdicom insists; replaced by "unknown" (empty) below
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.PatientOrientation = ""
    body_part(sc, header)
    copy_study_modules(sc, header)
    sc.Modality = "US"
    sc.ConversionType = "WSD"
    return sc


def build_key_image(frame: AnalysedFrame, result: StudyResult, study_uid: str, number: int) -> hd.sc.SCImage:
    versions = versions_key(result)
    header = frame.ref.header
    sc = _secondary_capture(header, render(frame, result), study_uid,
                            output_instance_uid("SC", study_uid, [frame.key], versions), number, versions)
    copy_lossy_compression(sc, header)
    sc.SourceImageSequence = Sequence([source_image_item(frame.ref)])
    sc.BurnedInAnnotation = str(header.get("BurnedInAnnotation", "") or "YES")
    if result.assessable:
        sc.ImageComments = (f"{ALGORITHM_NAME} key image: nodule (yellow), gland (cyan), attention heatmap. "
                            "Research use only, not for diagnosis.")
    else:
        sc.ImageComments = (f"{ALGORITHM_NAME} key image: {result.finding}; no outline, heat map or "
                            "measurement. Research use only, not for diagnosis.")[:10240]
    add_common(sc, result, "Key image")
    return sc


#: Width of the notice image (`build_notice_image`) and the characters per line of its text.
NOTICE_WIDTH = 640
NOTICE_CHARACTERS = 52


def notice_lines(result: StudyResult, received: int) -> list[str]:
    """The notice's text: what the algorithm says about the study and that nothing else follows."""
    lines = textwrap.wrap(f"{ALGORITHM_NAME}: {result.finding}", NOTICE_CHARACTERS)
    lines += [f"{received} instance{'s' if received != 1 else ''} received, no image analysed",
              f"algorithm {ALGORITHM_NAME} {__version__}: no other result follows",
              f"{SHORT_LABEL}, NOT FOR DIAGNOSIS"]
    return lines


def build_notice_image(header: Dataset, result: StudyResult, study_uid: str, sources: list[str],
                       received: int) -> hd.sc.SCImage:
    """A key image for a study with no usable image: the notice as rendered text (nothing of the
    received pixels), so a PACS viewer that shows only images shows that the algorithm looked.
    `header`: a received instance whose Patient and Study modules are copied; `sources`: the received
    SOP Instance UIDs (its UID is derived from them and the result)."""
    versions = versions_key(result)
    sc = _secondary_capture(header, _text_block(NOTICE_WIDTH, notice_lines(result, received)), study_uid,
                            output_instance_uid("SC-notice", study_uid, sources, versions), 1, versions)
    sc.BurnedInAnnotation = "NO"  # only the algorithm's text, nothing that identifies the patient
    sc.ImageComments = (f"{ALGORITHM_NAME} notice: {result.finding}. No image of this study was analysed. "
                        "Research use only, not for diagnosis.")[:10240]
    add_common(sc, result, "Notice")
    return sc


#: Body Part Examined defined terms (PS3.16 Annex L) of the unpaired regions a thyroid study names, for which
#: General Series Laterality must be absent (dciodvfy: "should be absent (not empty) if an unpaired body part").
UNPAIRED_BODY_PARTS = frozenset({"THYROID", "NECK", "HEADNECK"})


def body_part(sc: Dataset, header: Dataset) -> None:
    """Laterality and BodyPartExamined of a key image (General Series, PS3.3 C.7.3.1).

    Laterality (Type 2C) is required only for a paired body part when no Image Laterality is sent.
    The lobe when the source names it (R/L), and then BodyPartExamined is not added (with THYROID, an
    unpaired region, a Laterality would be "present when condition unsatisfied"). Otherwise the body part
    this service reports on, the source's BodyPartExamined when it names the thyroid or neck, else THYROID,
    and no Laterality: an empty one is only for a paired part whose side is unknown. A source that names
    another body part (one that may be paired) keeps it, with Laterality present and empty (Type 2C: unknown)."""
    side = laterality(header)
    if "Laterality" in sc:
        del sc.Laterality
    if side:
        sc.Laterality = side
        return
    given = str(header.get("BodyPartExamined", "") or "").strip().upper()
    if given and given not in UNPAIRED_BODY_PARTS:
        sc.BodyPartExamined = given
        sc.Laterality = ""
        return
    sc.BodyPartExamined = given or "THYROID"


def copy_study_modules(sc: Dataset, header: Dataset) -> None:
    """Patient, Patient Study and General Study modules (PS3.3 C.7.1.1, C.7.2.2, C.7.2.1) of the source,
    in full: each attribute of STUDY_ATTRIBUTES the source has and the key image does not yet."""
    for keyword in STUDY_ATTRIBUTES:
        if keyword in header and keyword not in sc:
            sc[keyword] = copy.deepcopy(header[keyword])


def copy_lossy_compression(sc: Dataset, header: Dataset) -> None:
    """LossyImageCompression (General Image C.7.6.1, Type 3) "01" when the source frame was lossy, from
    its header or its transfer syntax, with LossyImageCompressionRatio/Method copied (or the method
    named from the transfer syntax when the header has none). A lossless source leaves it absent."""
    syntax = str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", "") or "")
    said = str(header.get("LossyImageCompression", "") or "").strip()
    lossy = said == "01" or (said != "00" and syntax in LOSSY_TRANSFER_SYNTAXES)
    if syntax in {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}:
        lossy = True  # JPEG baseline/extended is never lossless
    if not lossy:
        return
    sc.LossyImageCompression = "01"
    for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        if keyword in header and header[keyword].value not in (None, ""):
            sc[keyword] = copy.deepcopy(header[keyword])
    if "LossyImageCompressionMethod" not in sc and syntax in LOSSY_TRANSFER_SYNTAXES:
        sc.LossyImageCompressionMethod = LOSSY_TRANSFER_SYNTAXES[syntax]


def source_image_item(ref: FrameRef) -> Dataset:
    """SourceImageSequence item (General Reference C.12.4): the analysed source instance, its frame for a
    multi-frame one, purpose DCM 121322 "Source image for image processing operation"."""
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    if ref.frame_number is not None and ref.number_of_frames > 1:
        item.ReferencedFrameNumber = ref.frame_number
    item.PurposeOfReferenceCodeSequence = Sequence([dcm_code("121322", "Source image for image processing operation")])
    return item
