"""StudyInput -> StudyResult: segmentation, features, report encoding, TMDL, explanations.

Pure: arrays in, a result out; models run through the InferenceBackend (ONNX Runtime in-process or
Triton); no file, DICOM or queue access (the tokenizer file is read once, beside the text encoder).

Steps, each a function tested alone with views that differ (tests/unit/test_pipeline_steps.py):
`segment_views` (per view: nodule and gland, the quality gate, the features), the report encoded once
per study, `tmdl_batch` (all analysable views in one batch, each view five times: all token groups, then
with each group (location, morphology, report, demographics) occluded), `aggregate` (the study's P(LLNM)
and 3-level risk are the view averages, as in the paper; a group's contribution share is its occlusion
effect on the mean logit over the sum of the four effects), `choose_index_view` (the view whose nodule
lies closest to the capsule, compared in mm among calibrated views, else in pixels: never mm against px);
the reported measurements are the index view's.

Burned-in calipers are not tissue: each view's image has them filled in first
(llnm.segmentation.marks), and every step reads that image. The masks, features and out-of-distribution
check would otherwise follow the marks (select cases with calipers drawn on every nodule: the
masks held once the models' inputs were cleaned, but all 56 views the gate passed were then declined as
unlike the training data, their texture and echogenicity read through the crosses).

Missing inputs get neutral values and a warning: no report -> the report tokens are masked out;
unknown sex -> 0 (between M = +1 and F = -1); unknown age -> 0 (= 45 years on the model's scale).

The quality gate (llnm.quality) decides which views are used: a view whose masks fail it is not
analysed. A study where good thyroid images simply show no nodule is the finding "no nodule found";
a study without any usable view is "not assessable: <reason>" with no probability, risk, distance or
size (never a number built on a wrong mask). Then each used view is scored against TMDL's training
data (llnm.model.ood, statistics shipped beside the model); views unlike it are dropped too, and a
study left with none is "not assessable by this model: input unlike the training data of this model".
Neither is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from llnm.features import clinical_vector, extract_features
from llnm.features.heatmap import tokens_to_heatmap
from llnm.inference.backend import (NODULE_SEG, TEXT_ENCODER, THYROID_SEG, TMDL, TMDL_MAX_BATCH, InferenceBackend,
                                    ModelNotFound)
from llnm.model.config import GROUPS, TMDLConfig, served_config
from llnm.observability.logs import get_logger
from llnm.observability.metrics import stage
from llnm.quality import OUT_OF_DISTRIBUTION, Reason, assess_view, main_reason, only_no_nodule, study_reason
from llnm.study import (FINDING_NO_NODULE, FINDING_NODULE, FINDING_NOT_ASSESSABLE, StudyInput, StudyResult,
                        ViewResult)
from llnm.text.tokenize import has_text

log = get_logger(__name__)

#: (backend, image) -> (nodule detection with .mask and .score, or None; gland mask or None)
Segmenter = Callable[[InferenceBackend, np.ndarray], tuple[Any, np.ndarray | None]]



def default_segmenter(backend: InferenceBackend, image: np.ndarray) -> tuple[Any, np.ndarray | None]:
    from llnm.segmentation import segment_gland, segment_nodule

    return segment_nodule(backend, image), segment_gland(backend, image)


@lru_cache(maxsize=4)
def _tokenizer(path: str):
    from llnm.text.tokenize import ReportTokenizer

    return ReportTokenizer(Path(path))


def _model_repository(backend: InferenceBackend) -> Path:
    repo = getattr(backend, "model_repository", None)
    if repo is None:
        from llnm.config import Settings

        repo = Settings.from_env().model_repository
    return Path(repo)


def encode_report(backend: InferenceBackend, text: str | None, config: TMDLConfig,
                  warnings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(1, m, width) token states and (1, m) mask; an all-zero mask when there is no report."""
    from llnm.text.encoder import encode_reports, tokenizer_path

    empty = (np.zeros((1, config.text_tokens, config.text_dim), np.float32),
             np.zeros((1, config.text_tokens), np.float32))
    if not has_text(text):
        warnings.append("no report text: the report tokens were left out (neutral)")
        return empty
    path = tokenizer_path(_model_repository(backend))
    if not backend.has_model(TEXT_ENCODER) or not path.is_file():
        warnings.append("text encoder not available: the report was not used")
        return empty
    return encode_reports(backend, _tokenizer(str(path)), [text], config.text_tokens)


def _versions(backend: InferenceBackend) -> dict[str, str]:
    versions = {}
    for name in (NODULE_SEG, THYROID_SEG, TEXT_ENCODER, TMDL):
        try:
            if backend.has_model(name):
                versions[name] = backend.model_version(name)
        except ModelNotFound:
            continue
    return versions


@lru_cache(maxsize=4)
def _ood_model(repository: str):
    from llnm.model.ood import load_for_repository

    return load_for_repository(Path(repository))


def _drop_unlike_training(backend: InferenceBackend, study: StudyInput, views: list[ViewResult],
                          analysable: list[int], warnings: list[str]) -> int:
    """Score every analysable view against TMDL's training data; views beyond the threshold leave
    `analysable` (in place). Returns how many left."""
    from llnm.model.ood import features_descriptor

    ood = _ood_model(str(_model_repository(backend)))
    if ood is None:
        if analysable:
            warnings.append("the model has no out-of-distribution statistics (llnm ood-fit): "
                            "its answer is not checked against its training data")
        return 0
    dropped = 0
    for i in list(analysable):
        views[i].ood_score = ood.score(features_descriptor(views[i].features, study.views[i].image,
                                                           views[i].gland_mask))
        if views[i].ood_score > ood.threshold:
            analysable.remove(i)
            views[i].used = False
            dropped += 1
            warnings.append(f"view {i + 1} not used: input unlike the training data of this model "
                            f"(distance {views[i].ood_score:.1f} > {ood.threshold:.1f})")
            log.info("view out of distribution", study_uid=study.study_uid, view=i + 1,
                     score=round(views[i].ood_score, 2), threshold=round(ood.threshold, 2))
    return dropped


def contribution_shares(full_logit: float, occluded_logits: dict[str, float]) -> dict[str, float]:
    """Share of each group: |logit change when the group is occluded| / sum of the changes."""
    effects = {g: abs(full_logit - v) for g, v in occluded_logits.items()}
    total = sum(effects.values())
    if total <= 0:
        return {g: 1.0 / len(effects) for g in effects}
    return {g: e / total for g, e in effects.items()}


def without_marks(study: StudyInput) -> StudyInput:
    """The study with each view's burned-in calipers filled in (llnm.segmentation.marks)."""
    from llnm.segmentation.marks import remove_marks

    return replace(study, views=[replace(view, image=remove_marks(view.image)) for view in study.views])


def segment_views(study: StudyInput, backend: InferenceBackend, segmenter: Segmenter, config: TMDLConfig,
                  warnings: list[str]) -> tuple[list[ViewResult], list[int]]:
    """Per view: segment the nodule and the gland, run the quality gate, compute the features of views that
    pass. Returns every view's result (in study order) and the indices of the views passing the gate; a
    declined view adds its reason to `warnings` (a view that simply shows no nodule does not)."""
    views: list[ViewResult] = []
    analysable: list[int] = []
    for number, view in enumerate(study.views, start=1):
        detection, gland = segmenter(backend, view.image)
        nodule = None if detection is None else np.asarray(detection.mask, dtype=bool)
        if nodule is not None and not nodule.any():
            nodule = None
        gland = None if gland is None or not np.asarray(gland).any() else np.asarray(gland, dtype=bool)
        score = 0.0 if detection is None else float(detection.score)
        result = ViewResult(nodule_mask=nodule, gland_mask=gland, nodule_score=score)
        result.quality = assess_view(view.image, nodule, gland, score, view.spacing_mm)
        if result.quality.passed:
            with stage("features"):
                result.features = extract_features(view.image, gland, nodule, view.spacing_mm,
                                                   **config.feature_options())
            result.used = True
            analysable.append(len(views))
        elif not only_no_nodule([result.quality]):
            reason = main_reason(result.quality.reasons)
            warnings.append(f"view {number} not used: {reason.text}")
            log.info("view declined by the quality gate", study_uid=study.study_uid, view=number,
                     reason=reason.code)
        views.append(result)
    return views, analysable


#: TMDL's group_keep rows per view: all four groups kept, then each group occluded in turn (GROUPS order)
GROUP_KEEPS = np.vstack([np.ones(len(GROUPS), np.float32), 1.0 - np.eye(len(GROUPS), dtype=np.float32)])


def tmdl_batch(features: list[Any], study: StudyInput, states: np.ndarray, mask: np.ndarray,
               shape_input: str = "ratio", location_input: str = "map") -> dict[str, np.ndarray]:
    """TMDL's one batch for the analysable views' `features`: view k fills rows k*5 .. k*5+4, first with
    every group kept, then with each group occluded (GROUP_KEEPS); the report and demographics are the
    study's, repeated. `shape_input`, `location_input`: the model's TMDLConfig fields."""
    per_view = len(GROUP_KEEPS)
    rows = len(features) * per_view
    return {
        "images": np.repeat(np.stack([f.images() for f in features]), per_view, axis=0),
        "text_states": np.repeat(states, rows, axis=0),
        "text_mask": np.repeat(mask, rows, axis=0),
        "clinical": np.repeat(np.stack([clinical_vector(study.sex, study.age_years, f, shape_input, location_input)
                                        for f in features]),
                              per_view, axis=0),
        "group_keep": np.tile(GROUP_KEEPS, (len(features), 1)),
    }


def infer_tmdl(backend: InferenceBackend, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TMDL on `tmdl_batch`'s rows, in requests of whole views within TMDL_MAX_BATCH rows (Triton refuses a
    larger one: 8 views are 40 rows); outputs concatenated in row order (each row is computed alone, so
    the split changes no number)."""
    per_view = len(GROUP_KEEPS)
    step = (TMDL_MAX_BATCH // per_view) * per_view
    rows = len(feed["group_keep"])
    parts = [backend.infer(TMDL, {k: v[i:i + step] for k, v in feed.items()}) for i in range(0, rows, step)]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


@dataclass
class Fused:
    """The study-level answer from TMDL's per-view rows."""

    probability: float
    risk_probabilities: np.ndarray  # (3,)
    contributions: dict[str, float]  # group -> share, summing to 1
    importance: np.ndarray  # (views, tokens): each view's token importance with all groups kept


def aggregate(out: dict[str, np.ndarray], n_views: int) -> Fused:
    """Average the views (as the paper does): P(LLNM) and the risk levels are the mean over views of the
    all-groups rows; a group's share is its occlusion effect on the view-mean logit
    (contribution_shares). `out` holds TMDL's outputs for the rows of `tmdl_batch`."""
    per_view = len(GROUP_KEEPS)
    prob = np.asarray(out["probability"]).reshape(n_views, per_view)
    logit = np.asarray(out["logit"]).reshape(n_views, per_view)
    risk = np.asarray(out["risk_probabilities"]).reshape(n_views, per_view, -1)
    importance = np.asarray(out["token_importance"]).reshape(n_views, per_view, -1)
    mean_logit = logit.mean(axis=0)
    contributions = contribution_shares(float(mean_logit[0]),
                                        {g: float(mean_logit[1 + j]) for j, g in enumerate(GROUPS)})
    return Fused(probability=float(prob[:, 0].mean()), risk_probabilities=risk[:, 0].mean(axis=0),
                 contributions=contributions, importance=importance[:, 0])


def choose_index_view(views: list[ViewResult], analysable: list[int]) -> int:
    """The view whose nodule lies closest to the capsule: its measurements are the ones reported.

    Distances are compared in one unit only: in mm among the calibrated views when any is calibrated (a
    pixel is a different length in each view, and a reported size should be in mm where one can be),
    else in pixels among all. Ties go to the higher detection score, then to the earlier view."""
    calibrated = [i for i in analysable if views[i].features.capsule_distance_mm is not None]
    if calibrated:
        return min(calibrated, key=lambda i: (views[i].features.capsule_distance_mm, -views[i].nodule_score, i))
    return min(analysable, key=lambda i: (views[i].features.capsule_distance_px, -views[i].nodule_score, i))


def analyse_study(study: StudyInput, backend: InferenceBackend, *, config: TMDLConfig | None = None,
                  segmenter: Segmenter | None = None) -> StudyResult:
    """The whole analysis of one study. `config`: the TMDL configuration the exported model was built
    with (default: the served model's own, `served_config`); `segmenter`: default the nodule_seg and
    thyroid_seg models."""
    if config is None:
        from llnm.config import Settings

        settings = Settings.from_env()
        config = served_config(settings.model_repository, settings.preset)
    segmenter = segmenter or default_segmenter
    # first: a Triton backend checks here that it serves this worker's models (llnm.inference.provenance)
    # and refuses the study before any model runs; the result names these versions
    versions = _versions(backend)
    warnings = list(study.warnings)
    study = without_marks(study)
    views, analysable = segment_views(study, backend, segmenter, config, warnings)

    out_of_distribution = _drop_unlike_training(backend, study, views, analysable, warnings)
    if not analysable and out_of_distribution:
        reason = Reason(OUT_OF_DISTRIBUTION, "input unlike the training data of this model")
        log.info("study not assessable", study_uid=study.study_uid, reason=reason.code, views=len(study.views))
        return StudyResult(study_uid=study.study_uid, finding=f"{FINDING_NOT_ASSESSABLE} by this model: {reason.text}",
                           probability=None, risk_level=None, views=views, warnings=warnings,
                           model_versions=versions, not_assessable_code=reason.code,
                           not_assessable_reason=reason.text)
    if not analysable:
        qualities = [v.quality for v in views]
        if only_no_nodule(qualities):
            log.info("no nodule in any view", study_uid=study.study_uid, views=len(study.views))
            return StudyResult(study_uid=study.study_uid, finding=FINDING_NO_NODULE, probability=None,
                               risk_level=None, views=views, warnings=warnings, model_versions=versions)
        reason = study_reason(qualities)
        log.info("study not assessable", study_uid=study.study_uid, reason=reason.code, views=len(study.views))
        return StudyResult(study_uid=study.study_uid, finding=f"{FINDING_NOT_ASSESSABLE}: {reason.text}",
                           probability=None, risk_level=None, views=views, warnings=warnings,
                           model_versions=versions, not_assessable_code=reason.code,
                           not_assessable_reason=reason.text)

    if study.sex is None or study.sex.upper()[:1] not in ("M", "F"):
        warnings.append("sex unknown: neutral value used")
    if study.age_years is None:
        warnings.append("age unknown: neutral value used (45 years)")
    states, mask = encode_report(backend, study.report_text, config, warnings)

    feed = tmdl_batch([views[i].features for i in analysable], study, states, mask, config.shape_input,
                      config.location_input)
    out = infer_tmdl(backend, feed)
    fused = aggregate(out, len(analysable))
    for k, i in enumerate(analysable):
        views[i].heatmap = tokens_to_heatmap(fused.importance[k], views[i].features, study.views[i].image.shape)
    probability, risk_probabilities, contributions = fused.probability, fused.risk_probabilities, fused.contributions
    index = choose_index_view(views, analysable)
    feats = views[index].features
    calibrated = study.views[index].spacing_mm is not None
    if not calibrated:
        warnings.append("uncalibrated image: distances reported in pixels only")
    if feats.extrathyroidal:
        warnings.append("nodule extends beyond the gland mask (possible extrathyroidal extension, or a gland "
                        "mask that misses part of the nodule): capsule distance 0")
    log.info("study analysed", study_uid=study.study_uid, probability=round(probability, 4),
             views=len(analysable))
    return StudyResult(
        study_uid=study.study_uid, finding=FINDING_NODULE, probability=probability,
        risk_level=int(np.argmax(risk_probabilities)) + 1,
        risk_probabilities=[float(v) for v in risk_probabilities],
        contributions=contributions, views=views, index_view=index,
        capsule_distance_mm=feats.capsule_distance_mm if calibrated else None,
        capsule_distance_px=feats.capsule_distance_px,
        nodule_length_mm=feats.length_mm if calibrated else None,
        nodule_width_mm=feats.width_mm if calibrated else None,
        location=dict(feats.location), calibrated=calibrated, warnings=warnings, model_versions=versions)
