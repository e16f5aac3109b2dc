"""Every coded concept the worker writes, in one place (listed in docs/dicom-conformance.md).

Standard codes (SNOMED CT "SCT", DICOM "DCM", UCUM) where one exists; the few concepts with no
standard code use the private coding scheme 99LLNM, declared in CodingSchemeIdentificationSequence
of every object that uses it.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from llnm import MANUFACTURER

PRIVATE_SCHEME = "99LLNM"


def _p(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME, meaning)


# Anatomy and findings (SNOMED CT)
THYROID = Code("69748006", "SCT", "Thyroid")
RIGHT_LOBE = Code("29565003", "SCT", "Right lobe of thyroid")
LEFT_LOBE = Code("79163004", "SCT", "Left lobe of thyroid")
LOBE_OF_THYROID = Code("119281005", "SCT", "Lobe of thyroid")
NODULE = Code("27925004", "SCT", "Nodule")
THYROID_NODULE = Code("237495005", "SCT", "Thyroid Nodule")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
# Nodule length and width as CID 7470 linear measurements (OHIF prints "Length" with an empty label)
LENGTH = Code("103339001", "SCT", "Long axis")
WIDTH = Code("103340004", "SCT", "Short axis")
LOW_RISK = Code("75976002", "SCT", "Low risk")
MODERATE_RISK = Code("25594002", "SCT", "Moderate risk")
HIGH_RISK = Code("15508007", "SCT", "High risk")
RISK_CODES = {1: LOW_RISK, 2: MODERATE_RISK, 3: HIGH_RISK}
RISK_NAMES = {1: "low", 2: "medium", 3: "high"}

# Procedure and document (DCM, LOINC)
US_THYROID_REPORT = Code("25010-0", "LN", "US Thyroid Report")
IMAGING_MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")
COMMENT = Code("121106", "DCM", "Comment")
FINDING = Code("121071", "DCM", "Finding")
SEGMENTATION_DERIVATION = Code("113076", "DCM", "Segmentation")
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")

# Units (UCUM)
MM = Code("mm", "UCUM", "millimeter")
PERCENT = Code("%", "UCUM", "Percent")
PIXELS = Code("{pixels}", "UCUM", "pixels")
#: UCUM annotations (dimensionless) naming the risk level, so the word shows beside the number
RISK_UNITS = {1: Code("{low}", "UCUM", "low"), 2: Code("{medium}", "UCUM", "medium"),
              3: Code("{high}", "UCUM", "high")}

# Concepts with no standard code. Meanings are short on purpose: OHIF prints "meaning: value unit"
# beside the outline, and a line longer than ~40 characters runs off the viewport. The full
# definitions are in docs/dicom-conformance.md.
CAPSULE_DISTANCE = _p("LLNM001", "Capsule distance")  # minimum distance, nodule to thyroid capsule
LLNM_PROBABILITY = _p("LLNM002", "LLNM probability")  # P(lateral lymph node metastasis)
LLNM_RISK_LEVEL = _p("LLNM003", "LLNM risk level")  # CODE: low / moderate / high risk
LLNM_RISK = _p("LLNM008", "LLNM risk")  # NUM 1-3, unit {low}/{medium}/{high}: visible in OHIF
CALIBRATION = _p("LLNM004", "Spatial calibration")
CALIBRATED = _p("LLNM005", "Calibrated from ultrasound region or pixel spacing")
UNCALIBRATED = _p("LLNM006", "Uncalibrated: measured in pixels")
NODULE_LOCATION = _p("LLNM007", "Nodule location within the lobe")
CONTRIBUTION_PREFIX = "LLNM1"
CONTRIBUTION_MEANINGS = {
    "location": "Location share",  # the CPDT capsule-distance map
    "morphology": "Morphology share",  # texture, margin, shape, echogenicity
    "report": "Report share",  # the radiology report text
    "demographics": "Age/sex share",
}


def contribution_code(name: str) -> Code:
    """A stable code per contribution name; unknown names get a code derived from their text."""
    known = list(CONTRIBUTION_MEANINGS)
    if name in known:
        return _p(f"{CONTRIBUTION_PREFIX}{known.index(name):02d}",
                  CONTRIBUTION_MEANINGS[name])
    return _p(f"{CONTRIBUTION_PREFIX}X{name.upper()[:8]}", f"{name.capitalize()} share"[:64])


def lobe_code(laterality: str | None) -> Code:
    return {"R": RIGHT_LOBE, "L": LEFT_LOBE}.get((laterality or "").upper(), LOBE_OF_THYROID)


def coding_scheme_identification() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "LLNM worker concepts"
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return item
