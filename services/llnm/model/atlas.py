"""The location risk map of the paper's Eq. 15, one map per view orientation.

Shen et al. 2025, Methods ("Model interpretation method"): every location feature image x_l (the CPDT
map, 1 - d_i/d_max on the nodule, 0 elsewhere) is registered onto a standard template by symmetric
diffeomorphic registration (SyN, mutual information, linear interpolation), giving x_l^R; then

    Risk_Meta = Norm( sum over metastatic patients of x_l^R  -  sum over non-metastatic of x_l^R )   (15)

with Norm a min-max scaling of the matrix to [0, 1]. Here the registration moves each gland mask
(first normalised to its bounding box on a size x size grid) onto the mean normalised gland of its
orientation, and the same warp moves x_l. Transverse and longitudinal views are different sections
of the lobe (medial/lateral against upper/middle/lower), so each orientation gets its own template
and map; views without a recorded orientation share the map "unknown". A nodule's location risk is
the mean of its orientation's Risk_Meta over its registered nodule mask. The sums are not balanced
by class: as in the paper, a cohort with fewer positives than negatives pulls the map down where
nodules are common, and only the ranking of locations is meaningful. This is a training/evaluation
tool (antspyx, part of the `train` extra); the runtime sees location through x_l instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llnm.features import crop_resize
from llnm.features.cpdt import cpdt

UNKNOWN = "unknown"


@dataclass
class OrientationMap:
    template: np.ndarray  # (size, size) float32 mean normalised gland of this orientation, thresholded at 0.5
    meta_sum: np.ndarray  # (size, size) float32 sum of registered x_l over metastatic views
    non_sum: np.ndarray  # (size, size) float32 sum of registered x_l over non-metastatic views
    views: int

    @property
    def risk(self) -> np.ndarray:
        """Risk_Meta of Eq. 15: the difference of the sums, min-max scaled to [0, 1]."""
        return _minmax(self.meta_sum - self.non_sum)[0]

    @property
    def neutral(self) -> float:
        """Risk_Meta where no nodule of either class landed (a difference of 0)."""
        return _minmax(self.meta_sum - self.non_sum)[1]


@dataclass
class LocationAtlas:
    maps: dict[str, OrientationMap] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {"orientations": np.array(sorted(self.maps))}
        for name, m in self.maps.items():
            arrays |= {f"{name}_template": m.template, f"{name}_meta_sum": m.meta_sum,
                       f"{name}_non_sum": m.non_sum, f"{name}_views": np.array(m.views)}
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> "LocationAtlas":
        """An atlas written by `save`; a file of the earlier pooled format (template, risk, coverage)
        loads as one "unknown" map that ranks locations as its stored risk did (retrain for Eq. 15)."""
        z = np.load(path)
        if "orientations" not in z.files:
            risk = z["risk"].astype(np.float32)
            return cls({UNKNOWN: OrientationMap(z["template"], risk, np.zeros_like(risk), 0)})
        return cls({str(name): OrientationMap(z[f"{name}_template"], z[f"{name}_meta_sum"], z[f"{name}_non_sum"],
                                              int(z[f"{name}_views"]))
                    for name in z["orientations"]})


def _minmax(diff: np.ndarray) -> tuple[np.ndarray, float]:
    lo, hi = float(diff.min()), float(diff.max())
    if hi <= lo:
        return np.zeros_like(diff, dtype=np.float32), 0.0
    return ((diff - lo) / (hi - lo)).astype(np.float32), (0.0 - lo) / (hi - lo)


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return float(rows[0]), float(cols[0]), float(rows[-1] + 1), float(cols[-1] + 1)


def normalise(gland: np.ndarray, nodule: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gland mask, nodule mask and CPDT x_l (computed at full resolution, so distances are not
    distorted by the box) resampled onto the gland's bounding box, size x size."""
    box = _box(gland)
    x_l = cpdt(gland, nodule).x_l
    g = crop_resize(gland.astype(np.float32), box, size, order=0) > 0.5
    n = crop_resize(nodule.astype(np.float32), box, size, order=0) > 0.5
    return g, n, crop_resize(x_l, box, size, order=1)


@contextmanager
def _ants_seeded(seed: int) -> Iterator[object]:
    """The ants module, seeded. antspyx 0.6 ignores registration's `random_seed`; the ANTs binary
    reads ANTS_RANDOM_SEED (0 there means "from the clock", hence seed + 1) and, when ants is first
    imported, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS (one thread keeps the metric's sums in a fixed
    order). So the same views give the same atlas."""
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    import ants

    saved = os.environ.get("ANTS_RANDOM_SEED")
    os.environ["ANTS_RANDOM_SEED"] = str(int(seed) + 1)
    try:
        yield ants
    finally:
        if saved is None:
            os.environ.pop("ANTS_RANDOM_SEED", None)
        else:
            os.environ["ANTS_RANDOM_SEED"] = saved


def register(template: np.ndarray, gland: np.ndarray, x_l: np.ndarray, nodule: np.ndarray,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x_l^R, registered nodule mask): the SyN warp of the gland onto the template (ANTs' default
    mutual-information metric) applied to x_l (linear, as in the paper) and to the nodule mask."""
    with _ants_seeded(seed) as ants:
        fixed = ants.from_numpy(template.astype(np.float32))
        reg = ants.registration(fixed=fixed, moving=ants.from_numpy(gland.astype(np.float32)),
                                type_of_transform="SyN")

    def warp(a: np.ndarray, interpolator: str) -> np.ndarray:
        return ants.apply_transforms(fixed=fixed, moving=ants.from_numpy(a.astype(np.float32)),
                                     transformlist=reg["fwdtransforms"], interpolator=interpolator).numpy()

    return warp(x_l, "linear").astype(np.float32), warp(nodule, "nearestNeighbor") > 0.5


def build_atlas(views: list[tuple[np.ndarray, np.ndarray, int, str | None]], size: int = 64,
                seed: int = 0) -> LocationAtlas:
    """views: (gland mask, nodule mask, LLNM label, orientation or None) per view; one map per
    orientation present."""
    groups: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]] = {}
    for gland, nodule, y, orientation in views:
        groups.setdefault(orientation or UNKNOWN, []).append((*normalise(gland, nodule, size), int(y)))
    maps = {}
    for name, group in groups.items():
        template = (np.mean([g for g, _, _, _ in group], axis=0) > 0.5).astype(np.float32)
        sums = {0: np.zeros((size, size), np.float64), 1: np.zeros((size, size), np.float64)}
        for g, n, x_l, y in group:
            sums[y] += register(template, g, x_l, n, seed)[0]
        maps[name] = OrientationMap(template, sums[1].astype(np.float32), sums[0].astype(np.float32), len(group))
    return LocationAtlas(maps)


def location_risk(atlas: LocationAtlas, gland: np.ndarray, nodule: np.ndarray, orientation: str | None = None,
                  seed: int = 0) -> float:
    """Mean Risk_Meta of the view's orientation over the registered nodule (the map's neutral value
    when it lands outside the template). Without a map for the orientation (none given, or a set
    without the `view` column): the mean over the atlas's maps."""
    name = orientation or UNKNOWN
    if name not in atlas.maps:
        return float(np.mean([location_risk(atlas, gland, nodule, o, seed) for o in sorted(atlas.maps)]))
    m = atlas.maps[name]
    g, n, x_l = normalise(gland, nodule, m.template.shape[0])
    _, warped = register(m.template, g, x_l, n, seed)
    return float(m.risk[warped].mean()) if warped.any() else m.neutral


def atlas_from_layout(data_dir: Path, max_views: int = 300, size: int = 64, seed: int = 0) -> LocationAtlas:
    """The atlas of `max_views` views of a folder in the training layout, shared equally between the
    orientations and spread evenly over the folder within each (a folder that holds several sources
    or several studies per patient in blocks is sampled across them)."""
    from llnm.model.data import read_layout, read_png

    groups: dict[str, list] = {}
    for study in read_layout(data_dir):
        for view in study.views:
            groups.setdefault(view.orientation or UNKNOWN, []).append((view, study.llnm))
    share = max(1, max_views // max(1, len(groups)))
    listed = []
    for group in groups.values():
        picks = np.linspace(0, len(group) - 1, share).astype(int) if len(group) > share else range(len(group))
        listed += [group[int(i)] for i in picks]
    views = []
    for view, llnm in listed:
        gland, nodule = read_png(view.gland_mask) > 127, read_png(view.nodule_mask) > 127
        if gland.any() and nodule.any():
            views.append((gland, nodule, llnm, view.orientation))
    return build_atlas(views, size=size, seed=seed)


def atlas_png(atlas: LocationAtlas, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(atlas.maps)
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        m = atlas.maps[name]
        im = ax.imshow(np.where(m.template > 0, m.risk, np.nan), cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"{name}: Risk_Meta (Eq. 15), {m.views} views", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
