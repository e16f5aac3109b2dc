"""What flows between the concerns: a study as arrays going into the pipeline, and its result.

DICOM reading produces a `StudyInput`; `llnm.pipeline.analyse_study` turns it into a `StudyResult`;
DICOM writing and `summary.json` consume that. Nothing here knows DICOM, Celery or sockets; the
`source` of a view is an opaque reference that only the DICOM code interprets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


#: What a study's result says (StudyResult.finding); "not assessable" is followed by ": <reason>".
FINDING_NODULE = "nodule"
FINDING_NO_NODULE = "no nodule found"
FINDING_NOT_ASSESSABLE = "not assessable"


@dataclass
class View:
    """One B-mode frame to analyse, already cropped to the ultrasound tissue region."""

    image: np.ndarray  # (H, W) uint8 greyscale
    spacing_mm: tuple[float, float] | None  # (row, column) mm per pixel; None: uncalibrated
    source: Any = None  # where it came from (DICOM frame reference); opaque to the pipeline
    crop_offset: tuple[int, int] = (0, 0)  # (row, column) of image[0, 0] in the source frame


@dataclass
class StudyInput:
    study_uid: str
    views: list[View]
    report_text: str | None = None
    age_years: float | None = None
    sex: str | None = None  # "M", "F" or None (unknown)
    warnings: list[str] = field(default_factory=list)  # from reading: skipped files, missing inputs


@dataclass
class ViewResult:
    nodule_mask: np.ndarray | None  # (H, W) bool in the view's pixels; None: no nodule found
    gland_mask: np.ndarray | None  # (H, W) bool; None: no gland found
    nodule_score: float = 0.0  # detector confidence of the index nodule
    features: Any = None  # llnm.features.NoduleFeatures, or None without both masks
    heatmap: np.ndarray | None = None  # (H, W) float32 in [0, 1]: attention rollout over the view
    quality: Any = None  # llnm.quality.ViewQuality: the gate's measurements and reasons
    used: bool = False  # passed the quality gate and went into the result
    ood_score: float | None = None  # distance to TMDL's training data (llnm.model.ood); None: not scored


@dataclass
class StudyResult:
    study_uid: str
    finding: str  # "nodule", "no nodule found" or "not assessable: <reason>"
    probability: float | None  # P(LLNM), None when no nodule could be analysed
    risk_level: int | None  # 1 low, 2 medium, 3 high
    risk_probabilities: list[float] = field(default_factory=list)
    contributions: dict[str, float] = field(default_factory=dict)  # location, morphology, report, demographics
    views: list[ViewResult] = field(default_factory=list)
    index_view: int | None = None  # the view whose measurements are reported
    capsule_distance_mm: float | None = None  # None when uncalibrated
    capsule_distance_px: float | None = None
    nodule_length_mm: float | None = None
    nodule_width_mm: float | None = None
    location: dict[str, str] = field(default_factory=dict)  # {"vertical": "upper", "horizontal": "medial"}
    calibrated: bool = False
    warnings: list[str] = field(default_factory=list)
    model_versions: dict[str, str] = field(default_factory=dict)  # model name -> content hash
    #: set when the study was declined: no view passed the quality gate (llnm.quality)
    not_assessable_code: str | None = None
    not_assessable_reason: str | None = None

    @property
    def assessable(self) -> bool:
        return self.not_assessable_code is None
