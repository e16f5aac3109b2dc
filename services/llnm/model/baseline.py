"""The simple baseline that stands beside every TMDL figure (issue 15): a logistic regression (scikit-learn)
on what a structured reading gives without any deep model.

Inputs per study, from the training layout (llnm.model.data): report fields parsed by keyword (margins,
echogenicity, calcifications, composition, shape, extrathyroidal extension, a suspicious central node,
vascularity, the TI-RADS grade), the nodule's geometry measured on the masks (closest capsule distance,
long and short axis, the vertical third of the closest view, aspect ratio, echogenicity contrast; mm where
calibrated) and demographics (sex, age). It is fitted on the same training folder as TMDL and scored on
the same evaluation folder, and `paired_bootstrap` gives the AUC difference TMDL - baseline with a 95 %
CI over the same resampled studies: a model that does not beat this baseline has not learned more than
its parsed inputs carry.

A fourth source, `pixels` (never in the default fit), measures what only the pixels show
(`llnm.features.measures`: internal heterogeneity, bright punctate foci, outline irregularity): with it
the regression is a hand-made pixel reader, the yardstick of whether a benchmark's pixel-only factors
can be read at all (`bench/fusion_headroom.py`).

Pure numpy/scikit-learn; no torch, no DICOM.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llnm.features import extract_features
from llnm.features.extract import NoduleFeatures
from llnm.features.measures import MEASURES, view_measures
from llnm.model.data import StudyRecord, read_layout, read_png, read_view_image
from llnm.model.metrics import auc, resample

#: report fields: name -> pattern (case-insensitive) whose presence sets the field to 1
REPORT_PATTERNS: dict[str, str] = {
    "margin_irregular": r"irregular|spiculated|infiltrat",
    "margin_lobulated": r"lobulated",
    "margin_ill_defined": r"ill[- ]defined|indistinct|blurred",
    "margin_smooth": r"smooth|well[- ]circumscribed|well[- ]defined",
    "echo_marked_hypo": r"marked(ly)?[- ]hypo|very hypo",
    "echo_hypo": r"hypoechoic|hypoechogenic",
    "echo_hyper": r"hyperechoic|hyperechogenic",
    "calc_micro": r"micro[- ]?calcification|punctate echogenic",
    "calc_macro": r"macro[- ]?calcification|coarse calcification",
    "calc_rim": r"rim calcification|peripheral calcification|eggshell",
    "composition_mixed": r"mixed|cystic|spongiform",
    "taller_than_wide": r"taller[- ]than[- ]wide",
    "extrathyroidal": r"extrathyroidal|extra-thyroidal|capsular (breach|invasion)",
    "central_node": r"central (compartment )?(lymph )?node|level vi",
    "vascularity": r"internal vascularity|intranodular (flow|vascularity)",
}
_TIRADS = re.compile(r"ti-?rads\s*(?:category\s*)?(?:tr)?\s*([1-5])", re.IGNORECASE)
_COMPILED = {name: re.compile(p, re.IGNORECASE) for name, p in REPORT_PATTERNS.items()}


def report_fields(text: str | None) -> dict[str, float]:
    """Keyword fields of one report, the TI-RADS grade (0 when not stated) and whether there was a report."""
    text = text or ""
    out = {name: float(bool(rx.search(text))) for name, rx in _COMPILED.items()}
    grade = _TIRADS.search(text)
    out["tirads"] = float(grade.group(1)) if grade else 0.0
    out["report_present"] = float(bool(text.strip()))
    return out


def measured_views(study: StudyRecord) -> list[tuple[np.ndarray, np.ndarray, NoduleFeatures, tuple[float, float] | None]]:
    """(image, nodule mask, features, spacing) of each view with a nodule and a gland on its masks: what
    the `image` and `pixels` sources measure."""
    out = []
    for view in study.views:
        image, gland, nodule = read_view_image(view.image), read_png(view.gland_mask) > 127, read_png(view.nodule_mask) > 127
        if nodule.any() and gland.any():
            out.append((image, nodule, extract_features(image, gland, nodule, view.spacing_mm, size=16), view.spacing_mm))
    return out


def geometry(study: StudyRecord) -> dict[str, float]:
    """The nodule's geometry over the study's views, measured on its masks (the layout's, i.e. the truth in
    a phantom or a cohort's outlines): the closest view's capsule distance and vertical third, the largest
    long/short axis, mean aspect ratio and echogenicity contrast. mm when calibrated, else pixels."""
    rows = [f for _, _, f, _ in measured_views(study)]
    if not rows:
        return {"capsule": 0.0, "length": 0.0, "width": 0.0, "upper": 0.0, "middle": 0.0, "aspect": 0.0,
                "echo": 0.0, "extrathyroidal": 0.0, "measured": 0.0}

    def mm(f, what: str) -> float:
        value = getattr(f, f"{what}_mm")
        return float(value) if value is not None else float(getattr(f, f"{what}_px"))

    closest = min(rows, key=lambda f: mm(f, "capsule_distance"))
    return {
        "capsule": math.log1p(mm(closest, "capsule_distance")),
        "length": math.log1p(max(mm(f, "length") for f in rows)),
        "width": math.log1p(max(mm(f, "width") for f in rows)),
        "upper": float(closest.location.get("vertical") == "upper"),
        "middle": float(closest.location.get("vertical") == "middle"),
        "aspect": float(np.mean([math.log(max(f.aspect_ratio, 1e-3)) for f in rows])),
        "echo": float(np.mean([f.echogenicity for f in rows])),
        "extrathyroidal": float(any(f.extrathyroidal for f in rows)),
        "measured": 1.0,
    }


#: the `pixels` source's measurements (`llnm.features.measures.MEASURES`), averaged over the views
PIXEL_MEASURES = ("heterogeneity", "foci", "irregularity")


def pixels(study: StudyRecord) -> dict[str, float]:
    """What only the pixels show, measured on the masks of each view and averaged over the views:
    internal heterogeneity, bright punctate foci, outline irregularity (`llnm.features.measures`)."""
    rows = []
    for image, nodule, f, spacing in measured_views(study):
        m = view_measures(image, nodule, f, spacing)
        rows.append([float(m[MEASURES.index(k)]) for k in PIXEL_MEASURES])
    if not rows:
        return {k: 0.0 for k in PIXEL_MEASURES} | {"measured": 0.0}
    return dict(zip(PIXEL_MEASURES, np.mean(rows, axis=0).tolist())) | {"measured": 1.0}


def demographics(study: StudyRecord) -> dict[str, float]:
    sex = (study.sex or "").upper()[:1]
    return {"male": float(sex == "M"), "sex_known": float(sex in ("M", "F")),
            "age": 0.0 if study.age is None else (float(study.age) - 45.0) / 15.0,
            "age_known": float(study.age is not None)}


#: the baseline's inputs by source; `Baseline.inputs` picks some (ablations: report only, image only)
SOURCES = {"report": lambda study: report_fields(study.report), "image": geometry, "demographics": demographics,
           "pixels": pixels}
#: the baseline that stands beside every TMDL figure
DEFAULT_INPUTS = ("report", "image", "demographics")


#: per (study, source) values already computed, shared by the fits of one comparison (`compare`): the
#: geometry reads every image and mask, so the full fit and the ablations read them once
Memo = dict[tuple[int, str], dict[str, float]]


#: the sources that read every image and mask (the rest parse text or copy numbers)
MEASURED_SOURCES = ("image", "pixels")


def _measure(args: tuple[StudyRecord, tuple[str, ...]]) -> list[dict[str, float]]:
    study, sources = args
    return [SOURCES[source](study) for source in sources]


def prefill(studies: list[StudyRecord], inputs: tuple[str, ...], memo: Memo, workers: int = 1) -> None:
    """Compute the measured sources of `studies` into `memo` in `workers` processes (each value is a
    function of its study alone, so the memo is the same for any number; 1: nothing done here, `design`
    computes them as it goes)."""
    sources = tuple(s for s in inputs if s in MEASURED_SOURCES)
    todo = [s for s in studies if any((id(s), source) not in memo for source in sources)]
    if workers <= 1 or not sources or not todo:
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        for study, values in zip(todo, pool.map(_measure, [(s, sources) for s in todo], chunksize=8)):
            for source, value in zip(sources, values):
                memo[(id(study), source)] = value


def design(studies: list[StudyRecord], inputs: tuple[str, ...],
           memo: Memo | None = None) -> tuple[np.ndarray, list[str]]:
    rows, names = [], None
    memo = {} if memo is None else memo
    for study in studies:
        values: dict[str, float] = {}
        for source in inputs:
            key = (id(study), source)
            if key not in memo:
                memo[key] = SOURCES[source](study)
            values.update({f"{source}.{k}": v for k, v in memo[key].items()})
        names = names or sorted(values)
        rows.append([values[n] for n in names])
    return np.asarray(rows, dtype=np.float64), names or []


@dataclass
class Baseline:
    """A fitted baseline: its input sources, the column names and the scikit-learn pipeline."""

    inputs: tuple[str, ...]
    names: list[str]
    model: object

    def predict(self, studies: list[StudyRecord], memo: Memo | None = None) -> np.ndarray:
        x, names = design(studies, self.inputs, memo)
        assert names == self.names, "the evaluation folder gives other baseline columns than training"
        return self.model.predict_proba(x)[:, 1]


def fit(train: list[StudyRecord] | Path, inputs: tuple[str, ...] = DEFAULT_INPUTS,
        c: float = 1.0, memo: Memo | None = None) -> Baseline:
    """L2-regularised logistic regression on standardised inputs (C=`c`, fixed: nothing is tuned on the
    evaluation set). `memo`: values computed by an earlier fit on the same study objects."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    studies = read_layout(train) if isinstance(train, Path) else train
    x, names = design(studies, inputs, memo)
    y = np.asarray([s.llnm for s in studies])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    model.fit(x, y)
    return Baseline(inputs, names, model)


def cross_fitted(studies: list[StudyRecord], inputs: tuple[str, ...] = DEFAULT_INPUTS, folds: int = 5,
                 seed: int = 0, memo: Memo | None = None, workers: int = 1) -> np.ndarray:
    """Each study's baseline probability from a fit on the other folds (stratified by the label), never
    on itself: soft training targets for TMDL (`llnm train --distill`) that carry no more of a study's own
    label than a held-out prediction does. An in-sample fit would hand back its labels, overfitted."""
    from sklearn.model_selection import StratifiedKFold

    memo = {} if memo is None else memo
    prefill(studies, inputs, memo, workers)
    y = np.asarray([s.llnm for s in studies])
    rarest = min(int((y == 1).sum()), int((y == 0).sum()))
    if rarest < 2:
        raise ValueError(f"cross-fitting needs at least two studies with and two without LLNM ({rarest} of the rarer)")
    folds = min(folds, rarest)  # a small cohort: fewer folds rather than a fold without a positive
    out = np.full(len(studies), np.nan)
    for fit_rows, score_rows in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        model = fit([studies[i] for i in fit_rows], inputs, memo=memo)
        out[score_rows] = model.predict([studies[i] for i in score_rows], memo)
    return out


def paired_bootstrap(p_model: np.ndarray, p_baseline: np.ndarray, y: np.ndarray, n: int = 1000,
                     seed: int = 0, groups: np.ndarray | None = None) -> dict[str, float]:
    """AUC(model) - AUC(baseline) on the same studies, with a 95 % percentile CI from resampling the
    studies once for both (paired), so the CI is of the difference, not of two separate AUCs.
    `groups` (one id per study, e.g. the patient): resample patients, not studies."""
    p_model, p_baseline, y = np.asarray(p_model), np.asarray(p_baseline), np.asarray(y)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        i = resample(rng, len(y), groups)
        if y[i].min() == y[i].max():
            continue
        diffs.append(auc(p_model[i], y[i]) - auc(p_baseline[i], y[i]))
    lo, hi = (np.percentile(diffs, [2.5, 97.5]) if diffs else (float("nan"), float("nan")))
    return {"difference": float(auc(p_model, y) - auc(p_baseline, y)), "ci_low": float(lo), "ci_high": float(hi),
            "model_auc": float(auc(p_model, y)), "baseline_auc": float(auc(p_baseline, y))}


def compare(train_dir: Path, data_dir: Path, uids: list[str], p_model: np.ndarray, y: np.ndarray, n: int = 1000,
            seed: int = 0, groups: np.ndarray | None = None, workers: int = 1) -> dict:
    """The baseline fitted on `train_dir` beside a model's study probabilities `p_model` for the studies
    `uids` of `data_dir` (labels `y`): the full baseline's paired difference, and its report-only and
    image-only fits (what each source alone carries for a linear reader). `workers`: processes that
    measure the masks (`prefill`; the same figures for any number)."""
    train = read_layout(train_dir)
    by_uid = {s.study_uid: s for s in read_layout(data_dir)}
    studies = [by_uid[u] for u in uids]
    out: dict = {"train": str(train_dir), "train_studies": len(train), "inputs": list(DEFAULT_INPUTS)}
    memo: Memo = {}
    prefill(train + studies, DEFAULT_INPUTS, memo, workers)
    out.update(paired_bootstrap(p_model, fit(train, memo=memo).predict(studies, memo), y, n=n, seed=seed,
                                groups=groups))
    for name, inputs in (("report_only_auc", ("report",)), ("image_only_auc", ("image",))):
        out[name] = float(auc(fit(train, inputs=inputs, memo=memo).predict(studies, memo), y))
    return out
