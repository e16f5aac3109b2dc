"""DICOM Segmentation of the nodule and the thyroid gland on one analysed source frame.

One SEG per analysed source frame (highdicom supports a single source frame when the image has no
Frame of Reference, which is the rule for ultrasound). Segments: 1 nodule (SCT Morphologically
Abnormal Structure / Nodule, in the thyroid), 2 thyroid gland (SCT Anatomical Structure / Thyroid);
a segment whose mask is empty is left out and the rest renumbered. Only masks that passed the quality
gate are written (`llnm.dicom.common.reportable`): none of a view the gate declined, so a frame with no
such mask, and every frame of a not-assessable study, gets no SEG at all.

Single frames of a cine: highdicom refuses a multi-frame source without a Frame of Reference. We let
highdicom build the SEG against a single-frame stand-in of the chosen frame (same SOP Instance UID,
same geometry) and then point every reference at the real instance: the SOP Class UID becomes the
multi-frame one and each DerivationImage/SourceImage item gets ReferencedFrameNumber. The result
references exactly the frame analysed, and no extra derived image is written.

OHIF needs PixelMeasuresSequence and PlaneOrientationSequence in the shared functional groups; we
write both and an empty PatientOrientation (Type 2C, dciodvfy asks for it). PixelSpacing is the
ultrasound region's, when every region written has the same (`AnalysedFrame.spacing_mm`); when uncalibrated,
or when the regions of the frame differ (a dual display with one half uncalibrated or calibrated otherwise),
it is 1 x 1, a nominal value (PS3.3 C.7.6.16.2.1 has no "unknown" for PixelSpacing, and OHIF needs one),
stated in ContentDescription; the SR says whether its measurements are calibrated ("Uncalibrated": sizes in
{pixels}). SliceThickness and SpacingBetweenSlices are not written: a 2D ultrasound
frame without Frame of Reference has neither (Type 1C/3 in the Pixel Measures macro, required only for
VOLUME or SAMPLED frames), and we do not invent them. highdicom's reader (hd.seg.segread, 0.28) insists on
SliceThickness in any PixelMeasuresSequence and so refuses this SEG as written (docs/dicom-conformance.md 2.2).

FRACTIONAL, 8 bits, OCCUPANCY, values 0 or MaximumFractionalValue 255 (PS3.3 C.8.20.2), for every
frame size. A BINARY SEG packs its 1-bit pixels without padding (PS3.5 8.1.1): a row of Columns, and a
frame of Rows x Columns, that is not a multiple of 8 ends mid-byte. Orthanc 1.10's DICOMweb plugin answers
every `/frames/N` of a BINARY SEG whose Columns is not a multiple of 8 with 400 ("Bad file format"; seen
for 441 columns with 317 and with 320 rows), and OHIF 3.13, which fetches those frames when it previews the SEG,
stays at "Loading SEG..." for ever. Ultrasound frames come in any size, and one type for all sizes keeps
one behaviour for every receiver (8 times the bytes of BINARY: 0.96 MB for two segments of 600 x 800).
OCCUPANCY (the share of the pixel inside the segment) is what a thresholded mask says, all or nothing;
it is not a probability. OHIF reads a FRACTIONAL SEG holding only 0 and the maximum as a binary one.

Nothing in the object is random: the Dimension Organization UID (highdicom makes a random one) is derived
from the SEG's SOP Instance UID. The creation times (InstanceCreation, Content, ContributionDateTime) are
the clock's here; llnm.dicom.supersede sets them to the first run's, so the same inputs give the same bytes.
"""

from __future__ import annotations

import copy

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from llnm import ALGORITHM_NAME, MANUFACTURER, __version__
from llnm.dicom import codes
from llnm.dicom.common import SERIES_NUMBER, AnalysedFrame, add_common, algorithm_key, reportable, versions_key
from llnm.dicom.reading import CURRENT_CLASS, US_IMAGE_STORAGE
from llnm.dicom.uids import deterministic_uid, output_instance_uid, output_series_uid
from llnm.study import StudyResult

SEGMENTS = (
    ("nodule", "Thyroid nodule", codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, codes.NODULE, (255, 220, 0)),
    ("gland", "Thyroid gland", codes.ANATOMICAL_STRUCTURE, codes.THYROID, (0, 220, 255)),
)
#: stored value of a pixel inside a segment (PS3.3 C.8.20.2.3: 8-bit FRACTIONAL, 0 = outside)
MAX_FRACTIONAL_VALUE = 255


def algorithm_identification(result: StudyResult) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, version=__version__,
        family=codes.ARTIFICIAL_INTELLIGENCE,
        source=MANUFACTURER,
        parameters={k: v for k, v in sorted(result.model_versions.items())} or None,
    )


def _single_frame_stand_in(frame: AnalysedFrame) -> Dataset:
    header = frame.ref.header
    stand_in = Dataset()
    for elem in header:
        if elem.keyword in {"NumberOfFrames", "FrameIncrementPointer", "FrameTime", "FrameTimeVector",
                            "CineRate", "PerFrameFunctionalGroupsSequence"}:
            continue
        stand_in.add(copy.deepcopy(elem))
    stand_in.file_meta = header.file_meta
    if frame.ref.number_of_frames > 1 or frame.ref.sop_class_uid in CURRENT_CLASS:
        # one frame of a current class (highdicom has no IOD for the retired ultrasound classes);
        # _point_at_source_frame names the real class again in every reference
        stand_in.SOPClassUID = US_IMAGE_STORAGE
    return stand_in


def _point_at_source_frame(seg: Dataset, frame: AnalysedFrame) -> None:
    """Rewrite references from the single-frame stand-in to the real multi-frame instance."""
    ref = frame.ref

    def fix(items, in_source_images: bool) -> None:
        for item in items or []:
            if str(item.get("ReferencedSOPInstanceUID", "")) == ref.sop_instance_uid:
                item.ReferencedSOPClassUID = ref.sop_class_uid
                if ref.frame_number is not None and in_source_images:
                    item.ReferencedFrameNumber = ref.frame_number
            for elem in item:
                if elem.VR == "SQ":
                    fix(elem.value, elem.keyword == "SourceImageSequence")

    # highdicom shares item objects between sequences: unshare before adding frame numbers.
    for keyword in ("ReferencedSeriesSequence", "SourceImageSequence", "PerFrameFunctionalGroupsSequence"):
        if keyword in seg:
            setattr(seg, keyword, copy.deepcopy(seg[keyword].value))
    for elem in seg:
        if elem.VR == "SQ" and elem.keyword != "SegmentSequence":
            fix(elem.value, elem.keyword == "SourceImageSequence")


def _fix_dimension_organization(seg: Dataset, uid: str) -> None:
    """Replace highdicom's random Dimension Organization UID (PS3.3 C.7.6.17) everywhere it is used."""
    for item in seg.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = uid
    for item in seg.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = uid


def build_seg(frame: AnalysedFrame, result: StudyResult, study_uid: str) -> Dataset | None:
    """The SEG of one analysed frame, or None when no mask that passed the quality gate has a pixel."""
    frame = AnalysedFrame(frame.ref, [v for v in frame.views if reportable(result, v[2])])
    if not frame.views:
        return None
    masks, descriptions = [], []
    algorithm = algorithm_identification(result)
    for name, label, category, seg_type, colour in SEGMENTS:
        mask = frame.full_mask(name)
        if not mask.any():
            continue
        masks.append(mask)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=len(masks), segment_label=label,
            segmented_property_category=category, segmented_property_type=seg_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            # stable for the same finding of the same study and algorithm, whatever the result says
            tracking_uid=hd.UID(output_instance_uid(f"SEG-segment-{name}", study_uid, [frame.key],
                                                     algorithm_key(result))),
            tracking_id=f"{label} ({ALGORITHM_NAME})",
            anatomic_regions=[codes.THYROID] if name == "nodule" else None,
            display_color=hd.color.CIELabColor.from_rgb(*colour),  # the key image's colours
        ))
    if not masks:
        return None
    spacing = frame.spacing_mm
    pixel_spacing = [float(spacing[0]), float(spacing[1])] if spacing else [1.0, 1.0]
    versions = versions_key(result)
    sop_instance_uid = output_instance_uid("SEG", study_uid, [frame.key], versions)
    seg = hd.seg.Segmentation(
        source_images=[_single_frame_stand_in(frame)],
        pixel_array=np.stack(masks, axis=-1).astype(np.uint8)[None],
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.OCCUPANCY,
        max_fractional_value=MAX_FRACTIONAL_VALUE,
        segment_descriptions=descriptions,
        series_instance_uid=output_series_uid("SEG", study_uid, versions),
        series_number=SERIES_NUMBER["SEG"],
        sop_instance_uid=sop_instance_uid,
        instance_number=1 + frame.views[0][0],  # the view's place in the study
        manufacturer=MANUFACTURER,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=__version__,
        device_serial_number="0",
        content_label="LLNM_SEG",
        content_description=("Research use only" if spacing
                             else "Research use only; uncalibrated, PixelSpacing 1 x 1 nominal"),
        pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=pixel_spacing, slice_thickness=None),
        omit_empty_frames=False,
    )
    _fix_dimension_organization(seg, deterministic_uid("SEG-dimension-organization", sop_instance_uid))
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PlaneOrientationSequence" not in shared:
        shared.PlaneOrientationSequence = hd.PlaneOrientationSequence(
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        )
    seg.PatientOrientation = ""
    _point_at_source_frame(seg, frame)
    add_common(seg, result, "Segmentation")
    seg.ImageComments = "Research use only, not for diagnosis."
    return seg

