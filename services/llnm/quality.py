"""The quality gate: is a view's segmentation trustworthy enough to report any number built on it?

Everything the product reports (capsule distance, size, the location map, P(LLNM)) stands on the
nodule and gland masks. A view is used only when all checks pass; each failed check is a `Reason`
with a stable code (metrics, tests) and a sentence (SR, summary.json, audit trail). The thresholds
were chosen on the "select" cases of the real whole frames (`bench/segmentation_gate.py`), never on
the held-out cases, to decline what is wrong rather than what is merely unusual (the detector score
and solidity by how well they separate bad nodule masks from good ones; the nodule-inside-gland share
is not a nodule-mask check but protects the capsule distance, so it is set at one half):

- blank image: almost no grey-level variation (a blank, a test pattern, a frame cut to nothing);
- no gland / no nodule: the models found nothing;
- low confidence: the nodule detector's score below `MIN_NODULE_SCORE`;
- nodule outside the gland: less than `MIN_INSIDE_GLAND` of the nodule lies in the gland mask (every
  thyroid nodule lies in the thyroid: one of the masks is wrong; a nodule breaking through the capsule
  still lies mostly inside);
- implausible sizes: nodule or gland area outside plausible shares of the image, or (calibrated) a
  nodule outside `NODULE_MM_RANGE`, or an image deeper than `MAX_DEPTH_MM`: thyroid ultrasound images
  the neck with a high-frequency linear probe set to a few centimetres of depth, while abdominal,
  pelvic, obstetric and cardiac views show 12-20 cm (a pelvic view routed by mistake passed every other
  check, and the out-of-distribution check only by 1 %);
- irregular mask: the nodule mask is not compact (solidity, area over convex hull, below
  `MIN_SOLIDITY`): fragments or a mask cut by a wrong box rather than a nodule outline.

Uncalibrated views pass (their distances are reported in pixels only and the SR says so).
Pure numpy/scipy: arrays in, reasons out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llnm.features.extract import axes_extent

MIN_IMAGE_STD = 4.0  # grey levels
#: the detector's own confidence threshold (nodule.CONF_THRESHOLD): declines exactly the unsure detections
#: the segmentation keeps as a fallback (bench/segmentation_gate.py never sweeps below it; the model card)
MIN_NODULE_SCORE = 0.25
MIN_INSIDE_GLAND = 0.5  # below: the capsule distance would be measured to a gland that misses the nodule
NODULE_AREA_RANGE = (0.0008, 0.5)  # share of the view's pixels
GLAND_AREA_RANGE = (0.02, 0.9)
NODULE_MM_RANGE = (2.0, 80.0)  # long axis, calibrated views only
MAX_DEPTH_MM = 100.0  # rows x row spacing of a calibrated view: neck views show 3-6 cm, a large goiter 8
MIN_SOLIDITY = 0.7

#: Reason codes: bounded, stable (metric labels and tests use them).
BLANK_IMAGE = "blank_image"
NO_GLAND = "no_gland"
NO_NODULE = "no_nodule"
LOW_CONFIDENCE = "low_confidence"
NODULE_OUTSIDE_GLAND = "nodule_outside_gland"
IMPLAUSIBLE_SIZE = "implausible_size"
IRREGULAR_MASK = "irregular_mask"
#: not a segmentation check: TMDL's input lies outside its training data (llnm.model.ood)
OUT_OF_DISTRIBUTION = "out_of_distribution"
#: before any view: the study holds no B-mode ultrasound image (Doppler/colour only, not US, unreadable)
NO_IMAGE = "no_image"
NO_IMAGE_TEXT = "no B-mode ultrasound image to analyse (Doppler or colour only, or no ultrasound image)"
CODES = (BLANK_IMAGE, NO_GLAND, NO_NODULE, LOW_CONFIDENCE, NODULE_OUTSIDE_GLAND, IMPLAUSIBLE_SIZE,
         IRREGULAR_MASK, OUT_OF_DISTRIBUTION, NO_IMAGE)


@dataclass(frozen=True)
class Reason:
    """Why a view is not used: a stable code and a sentence for the reader."""

    code: str
    text: str


@dataclass(frozen=True)
class ViewQuality:
    """The gate's measurements of one view and its verdict."""

    reasons: tuple[Reason, ...]
    nodule_inside_gland: float | None  # share of the nodule's pixels inside the gland mask
    nodule_area_share: float | None
    gland_area_share: float | None
    solidity: float | None

    @property
    def passed(self) -> bool:
        return not self.reasons


def solidity(mask: np.ndarray) -> float:
    """Area over convex-hull area of a bool mask (1 for a convex blob, lower for fragments/notches)."""
    from scipy.spatial import ConvexHull, QhullError

    rows, cols = np.nonzero(mask)
    if rows.size < 3:
        return 1.0
    # pixel corners, so a one-pixel-wide line has a hull of its own area
    pts = np.concatenate([np.stack([rows + dr, cols + dc], axis=1) for dr in (0, 1) for dc in (0, 1)])
    try:
        hull = ConvexHull(pts)
    except QhullError:
        return 1.0
    return float(min(1.0, rows.size / max(hull.volume, 1.0)))


def assess_view(image: np.ndarray, nodule: np.ndarray | None, gland: np.ndarray | None,
                nodule_score: float, spacing_mm: tuple[float, float] | None) -> ViewQuality:
    """Run every check on one view; `nodule`/`gland` are bool masks on the image's grid or None."""
    reasons: list[Reason] = []
    image = np.asarray(image)
    total = float(image.size) or 1.0
    if float(image.std()) < MIN_IMAGE_STD:
        reasons.append(Reason(BLANK_IMAGE, "blank image: no ultrasound content"))
    if spacing_mm is not None and image.shape[0] * spacing_mm[0] > MAX_DEPTH_MM:
        depth = image.shape[0] * spacing_mm[0]
        reasons.append(Reason(IMPLAUSIBLE_SIZE, f"the image shows {depth / 10:.1f} cm of depth, a thyroid view "
                              f"at most {MAX_DEPTH_MM / 10:g} cm: another examination"))
    has_gland = gland is not None and bool(np.any(gland))
    has_nodule = nodule is not None and bool(np.any(nodule))
    if not has_gland:
        reasons.append(Reason(NO_GLAND, "no thyroid gland found"))
    if not has_nodule:
        reasons.append(Reason(NO_NODULE, "no nodule found"))
    inside = nodule_share = gland_share = solid = None
    if has_gland:
        gland_share = float(np.count_nonzero(gland)) / total
        if not GLAND_AREA_RANGE[0] <= gland_share <= GLAND_AREA_RANGE[1]:
            reasons.append(Reason(IMPLAUSIBLE_SIZE, f"gland covers {gland_share:.0%} of the image "
                                  f"(plausible {GLAND_AREA_RANGE[0]:.0%}-{GLAND_AREA_RANGE[1]:.0%})"))
    if has_nodule:
        if nodule_score < MIN_NODULE_SCORE:
            reasons.append(Reason(LOW_CONFIDENCE, f"nodule detection confidence {nodule_score:.2f} "
                                  f"below {MIN_NODULE_SCORE:.2f}"))
        nodule_share = float(np.count_nonzero(nodule)) / total
        if not NODULE_AREA_RANGE[0] <= nodule_share <= NODULE_AREA_RANGE[1]:
            reasons.append(Reason(IMPLAUSIBLE_SIZE, f"nodule covers {nodule_share:.1%} of the image"))
        if spacing_mm is not None:
            length = axes_extent(nodule, spacing_mm)[0]  # the long axis the result reports
            if not NODULE_MM_RANGE[0] <= length <= NODULE_MM_RANGE[1]:
                reasons.append(Reason(IMPLAUSIBLE_SIZE, f"nodule long axis {length:.1f} mm "
                                      f"(plausible {NODULE_MM_RANGE[0]:g}-{NODULE_MM_RANGE[1]:g} mm)"))
        solid = solidity(nodule)
        if solid < MIN_SOLIDITY:
            reasons.append(Reason(IRREGULAR_MASK, f"nodule outline not compact (solidity {solid:.2f})"))
    if has_gland and has_nodule:
        inside = float(np.count_nonzero(nodule & gland)) / float(np.count_nonzero(nodule))
        if inside < MIN_INSIDE_GLAND:
            reasons.append(Reason(NODULE_OUTSIDE_GLAND, f"only {inside:.0%} of the nodule lies inside the "
                                  "gland found: the masks disagree"))
    return ViewQuality(tuple(reasons), inside, nodule_share, gland_share, solid)


#: most telling first: a blank frame says all; a nodule found but failing a check tells more than nothing found
PRIORITY = (BLANK_IMAGE, NODULE_OUTSIDE_GLAND, IRREGULAR_MASK, IMPLAUSIBLE_SIZE, LOW_CONFIDENCE, NO_GLAND,
            NO_NODULE, OUT_OF_DISTRIBUTION, NO_IMAGE)


def main_reason(reasons: tuple[Reason, ...] | list[Reason]) -> Reason:
    return min(reasons, key=lambda r: PRIORITY.index(r.code))


def study_reason(qualities: list[ViewQuality]) -> Reason | None:
    """Why a study has no usable view (None when one passed): the most telling reason of its views."""
    if not qualities:
        return Reason(NO_IMAGE, NO_IMAGE_TEXT)
    if any(q.passed for q in qualities):
        return None
    return main_reason([r for q in qualities for r in q.reasons])


def only_no_nodule(qualities: list[ViewQuality]) -> bool:
    """Every view is a good thyroid image in which simply no nodule was found (a finding, not a decline)."""
    return bool(qualities) and all([r.code for r in q.reasons] == [NO_NODULE] for q in qualities)


def declined(quality: ViewQuality | None) -> Reason | None:
    """The main reason the gate declined a view; None when the view passed, merely shows no nodule in a
    good thyroid image (a finding, not a decline), or was never assessed."""
    if quality is None or quality.passed or only_no_nodule([quality]):
        return None
    return main_reason(quality.reasons)


def view_declined(view) -> Reason | None:
    """Why a view (llnm.study.ViewResult) was left out of the result: the gate's main reason (`declined`),
    or OUT_OF_DISTRIBUTION for a view that passed the gate and still was not used (the pipeline drops
    such a view only when TMDL's input check finds it unlike the training data)."""
    quality = view.quality
    reason = declined(quality)
    if reason is None and quality is not None and quality.passed and not view.used:
        return Reason(OUT_OF_DISTRIBUTION, "input unlike the training data of this model")
    return reason
