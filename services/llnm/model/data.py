"""The training layout and the per-view feature cache (numpy; torch-free).

A training folder DIR holds (paths relative to DIR):
- labels.csv: study_uid,llnm,risk_level,p_true,age,sex,report
  (llnm 0/1; risk_level 1 low / 2 medium / 3 high; p_true optional, empty for real cohorts;
  age in years or empty; sex M/F or empty; report free text, may be empty)
- views.csv: study_uid,sop_instance_uid,image,gland_mask,nodule_mask,spacing_row_mm,spacing_col_mm,
  region_x0,region_y0,region_x1,region_y1
  (image: uint8 greyscale PNG of the B-mode tissue crop; masks: 0/255 PNG on the same grid;
  spacing empty when uncalibrated; region_* where the crop sits in the source frame, informative;
  an optional column `view` = transverse / longitudinal, read by the pooled view fusion and the location
  atlas; empty or any other value: orientation unknown; further columns are ignored)
`llnm phantom` writes this layout; docs/model-card.md says how to convert a hospital cohort.

Features are deterministic per (view, mask variant), so they are computed once and cached in
DIR/.cache/. Each view gets the ground-truth masks plus `jitters` perturbed copies (dilated/eroded
and shifted by a few pixels) because at run time the masks come from segmentation models.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from llnm.features import clinical_vector, extract_features
from llnm.features.measures import view_measures
from llnm.model.config import ORIENTATIONS, TMDLConfig
from llnm.observability.logs import get_logger

log = get_logger(__name__)

CACHE_VERSION = 6  # 4: per-view measurements (the auxiliary loss's targets); 5: their heterogeneity; 6: marks filled


@dataclass
class ViewRecord:
    image: Path
    gland_mask: Path
    nodule_mask: Path
    spacing_mm: tuple[float, float] | None
    orientation: str | None = None  # views.csv `view`: transverse / longitudinal; None when not given


@dataclass
class StudyRecord:
    study_uid: str
    llnm: int
    risk_level: int
    p_true: float | None
    age: float | None
    sex: str | None
    report: str
    views: list[ViewRecord] = field(default_factory=list)


def _float_or_none(value: str | None) -> float | None:
    value = (value or "").strip()
    return float(value) if value else None


def _orientation(value: str | None) -> str | None:
    """views.csv `view` as an orientation: transverse or longitudinal, else None (unknown). Anything else
    (a frame name, a scanner's own label) must not become an orientation of its own: the location atlas
    keeps one map per orientation."""
    value = (value or "").strip().lower()
    return value if value in ORIENTATIONS[:2] else None


def read_layout(data_dir: Path) -> list[StudyRecord]:
    """Studies of a training folder, in labels.csv order, each with its views."""
    data_dir = Path(data_dir)
    labels, views = data_dir / "labels.csv", data_dir / "views.csv"
    for path in (labels, views):
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: see the training layout in docs/model-card.md")
    studies: dict[str, StudyRecord] = {}
    with labels.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            studies[row["study_uid"]] = StudyRecord(
                study_uid=row["study_uid"], llnm=int(row["llnm"]),
                risk_level=int(row.get("risk_level") or (2 if int(row["llnm"]) else 1)),
                p_true=_float_or_none(row.get("p_true")), age=_float_or_none(row.get("age")),
                sex=(row.get("sex") or "").strip() or None, report=row.get("report") or "")
    with views.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            study = studies.get(row["study_uid"])
            if study is None:
                continue
            sr, sc = _float_or_none(row.get("spacing_row_mm")), _float_or_none(row.get("spacing_col_mm"))
            study.views.append(ViewRecord(
                image=data_dir / row["image"], gland_mask=data_dir / row["gland_mask"],
                nodule_mask=data_dir / row["nodule_mask"],
                spacing_mm=(sr, sc) if sr is not None and sc is not None else None,
                orientation=_orientation(row.get("view"))))
    return [s for s in studies.values() if s.views]


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def read_view_image(path: Path) -> np.ndarray:
    """A layout view's grey image as the runtime reads it: its burned-in calipers filled in
    (llnm.segmentation.marks, as `llnm.pipeline.without_marks` does), so that training, the baseline and
    the out-of-distribution fit see the pixels the worker will see."""
    from llnm.segmentation.marks import remove_marks

    return remove_marks(read_png(path))


def jitter_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible segmentation error: grow or shrink by up to ~4 % of the size, shift a few pixels."""
    size = np.sqrt(mask.sum())
    step = max(1, int(round(0.04 * size)))
    k = int(rng.integers(-step, step + 1))
    out = mask
    if k > 0:
        out = ndimage.binary_dilation(mask, iterations=k)
    elif k < 0:
        eroded = ndimage.binary_erosion(mask, iterations=-k)
        out = eroded if eroded.sum() >= 0.3 * mask.sum() else mask
    dr, dc = (int(v) for v in rng.integers(-step, step + 1, size=2))
    out = np.roll(out, (dr, dc), axis=(0, 1))
    return out if out.any() else mask


def view_arrays(image: np.ndarray, gland: np.ndarray, nodule: np.ndarray,
                spacing: tuple[float, float] | None, age: float | None, sex: str | None,
                config: TMDLConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(3, S, S) images and the clinical vector of one view (what TMDL sees besides the report), and
    its measurements (`llnm.features.measures`: the auxiliary loss's targets, never an input)."""
    feats = extract_features(image, gland, nodule, spacing, **config.feature_options())
    return (feats.images(), clinical_vector(sex, age, feats, config.shape_input, config.location_input),
            view_measures(image, nodule, feats, spacing))


@dataclass
class FeatureCache:
    images: np.ndarray  # (V, J + 1, 3, S, S) float16; variant 0 = the given masks
    clinical: np.ndarray  # (V, J + 1, len(config.clinical_inputs)) float32
    measures: np.ndarray  # (V, J + 1, len(MEASURES)) float32: targets of the auxiliary loss
    view_study: np.ndarray  # (V,) index into the study arrays
    view_orientation: np.ndarray  # (V,) int64 index into ORIENTATIONS (unknown when views.csv does not say)
    text_states: np.ndarray  # (N, text_tokens, width) float16
    text_mask: np.ndarray  # (N, text_tokens) float32
    llnm: np.ndarray  # (N,) int64
    risk_level: np.ndarray  # (N,) int64, 1..3
    p_true: np.ndarray  # (N,) float64, NaN when unknown
    study_uids: list[str]


def orientation_code(name: str | None) -> int:
    """Row of the orientation embedding for a views.csv `view` value (anything else: unknown)."""
    return ORIENTATIONS.index(name) if name in ORIENTATIONS[:2] else ORIENTATIONS.index("unknown")


def _cache_key(data_dir: Path, config: TMDLConfig, jitters: int, seed: int, encode_text) -> str:
    """Changes with the data, the feature settings and the text encoder (fingerprinted by its
    output on a fixed sentence)."""
    h = hashlib.sha256()
    states, mask = encode_text(["Solid hypoechoic nodule with irregular margins."])
    h.update(np.round(np.asarray(states, dtype=np.float32), 4).tobytes())
    h.update(np.asarray(mask, dtype=np.float32).tobytes())
    for name in ("labels.csv", "views.csv"):
        h.update((Path(data_dir) / name).read_bytes())
    h.update(f"{CACHE_VERSION}:{config.image_size}:{config.text_tokens}:{jitters}:{seed}".encode())
    h.update(f"{config.shape_input}:{config.image_sampling}:{config.location_aspect}".encode())
    if config.location_input != "map":  # caches of the earlier settings keep their keys
        h.update(config.location_input.encode())
    return h.hexdigest()[:16]


def _study_features(args: tuple[int, StudyRecord, TMDLConfig, int, int]
                    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """(images (J + 1, 3, S, S) float16, clinical (J + 1, C), measures (J + 1, K), orientation) of each
    usable view of one study.
    A function of its arguments alone (the jitter stream is seeded by seed, study and view), so studies
    can be computed in any order and in any process."""
    si, study, config, jitters, seed = args
    out = []
    for vi, view in enumerate(study.views):
        image = read_view_image(view.image)
        gland = read_png(view.gland_mask) > 127
        nodule = read_png(view.nodule_mask) > 127
        if not gland.any() or not nodule.any():
            continue
        rng = np.random.default_rng([seed, si, vi])
        variants_i, variants_c, variants_m = [], [], []
        for j in range(jitters + 1):
            g, n = (gland, nodule) if j == 0 else (jitter_mask(gland, rng), jitter_mask(nodule, rng))
            im, cl, me = view_arrays(image, g, n, view.spacing_mm, study.age, study.sex, config)
            variants_i.append(im)
            variants_c.append(cl)
            variants_m.append(me)
        out.append((np.stack(variants_i).astype(np.float16), np.stack(variants_c), np.stack(variants_m),
                    orientation_code(view.orientation)))
    return out


def _all_study_features(studies: list[StudyRecord], config: TMDLConfig, jitters: int, seed: int, workers: int,
                        progress: bool) -> Iterator[list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]]:
    """_study_features of every study, in labels.csv order; `workers` > 1 spreads the studies over that
    many processes (spawned, not forked: the caller may hold torch's thread pools)."""
    from tqdm import tqdm

    jobs = [(si, study, config, jitters, seed) for si, study in enumerate(studies)]
    bar = dict(total=len(jobs), desc="features", unit="study", disable=not progress)
    if workers <= 1:
        yield from tqdm(map(_study_features, jobs), **bar)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from tqdm(pool.map(_study_features, jobs, chunksize=8), **bar)


def build_cache(data_dir: Path, config: TMDLConfig, encode_text, jitters: int = 2, seed: int = 0,
                progress: bool = True, workers: int = 1) -> FeatureCache:
    """Features of every view (plus `jitters` mask variants) and the report encodings, cached on disk.

    encode_text(list[str], tokens) -> (states (B, tokens, width), mask (B, tokens)): the text encoder,
    asked for config.text_tokens. `workers`: processes for the image features (the same cache for
    any number: a paper-size cache is built where the GPU is, on its cores, instead of shipped there)."""
    from tqdm import tqdm

    data_dir = Path(data_dir)
    cache_dir = data_dir / ".cache"
    path = cache_dir / f"tmdl-{_cache_key(data_dir, config, jitters, seed, encode_text)}.npz"
    studies = read_layout(data_dir)
    if path.is_file():
        z = np.load(path)
        return FeatureCache(images=z["images"], clinical=z["clinical"], measures=z["measures"],
                            view_study=z["view_study"],
                            view_orientation=z["view_orientation"],
                            text_states=z["text_states"], text_mask=z["text_mask"], llnm=z["llnm"],
                            risk_level=z["risk_level"], p_true=z["p_true"],
                            study_uids=[s.study_uid for s in studies])
    images, clinical, measures, view_study, view_orientation = [], [], [], [], []
    for si, views in enumerate(_all_study_features(studies, config, jitters, seed, workers, progress)):
        for im, cl, me, orientation in views:
            images.append(im)
            clinical.append(cl)
            measures.append(me)
            view_study.append(si)
            view_orientation.append(orientation)
    states, masks = [], []
    reports = [s.report for s in studies]
    for start in tqdm(range(0, len(reports), 32), desc="reports", unit="batch", disable=not progress):
        st, mk = encode_text(reports[start:start + 32], config.text_tokens)
        states.append(st.astype(np.float16))
        masks.append(mk.astype(np.float32))
    cache = FeatureCache(
        images=np.stack(images), clinical=np.stack(clinical).astype(np.float32),
        measures=np.stack(measures).astype(np.float32),
        view_study=np.array(view_study, dtype=np.int64),
        view_orientation=np.array(view_orientation, dtype=np.int64), text_states=np.concatenate(states),
        text_mask=np.concatenate(masks), llnm=np.array([s.llnm for s in studies], dtype=np.int64),
        risk_level=np.array([s.risk_level for s in studies], dtype=np.int64),
        p_true=np.array([np.nan if s.p_true is None else s.p_true for s in studies], dtype=np.float64),
        study_uids=[s.study_uid for s in studies])
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # two trainings on one folder never share it
        np.savez(tmp, images=cache.images, clinical=cache.clinical, measures=cache.measures,
                 view_study=cache.view_study,
                 view_orientation=cache.view_orientation,
                 text_states=cache.text_states, text_mask=cache.text_mask, llnm=cache.llnm,
                 risk_level=cache.risk_level, p_true=cache.p_true)
        tmp.replace(path)
        log.info("feature cache written", path=str(path), views=len(view_study), studies=len(studies))
    except OSError as exc:  # a read-only data folder: work without the cache
        log.warning("feature cache not written", path=str(path), error=str(exc))
    return cache


def layout_sha256(data_dir: Path) -> str:
    """sha256 of a training folder's content, independent of where it lies: per study (labels.csv
    order) its label, risk level, p_true, age, sex and report, then per view its spacing and the bytes
    of its image and masks. Two folders with the same hash train the same model (same seed)."""
    h = hashlib.sha256()
    for study in read_layout(data_dir):
        h.update(json.dumps([study.study_uid, study.llnm, study.risk_level, study.p_true, study.age,
                             study.sex, study.report]).encode())
        for view in study.views:
            h.update(json.dumps(view.spacing_mm).encode())
            for path in (view.image, view.gland_mask, view.nodule_mask):
                h.update(Path(path).read_bytes())
    return h.hexdigest()


def git_commit(*paths: str) -> str | None:
    """The code's git commit (`git rev-parse HEAD`; None outside a checkout), with "+dirty" when tracked
    files differ from it (only `paths`, relative to the package's llnm/ folder, when given)."""
    cwd = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *paths], cwd=cwd,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def generator_record(data_dir: Path) -> dict | None:
    """What made a training folder, as its generator wrote it (`generator.json`), if it did."""
    path = Path(data_dir) / "generator.json"
    return json.loads(path.read_text()) if path.is_file() else None
