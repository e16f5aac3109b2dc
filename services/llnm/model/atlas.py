"""The location risk atlas of the paper's Eq. 15, by deformable registration of gland masks.

Every gland mask is first normalised to its bounding box on a size x size grid, then registered to a
template (the mean normalised gland) with ANTs SyN; the same warp moves the nodule mask. At each
template pixel p

    R(p) = (sum_i y_i [p in N_i] + prior * r0) / (sum_i [p in N_i] + prior)

where N_i is the warped nodule of view i, y_i its study's LLNM label and r0 the cohort's LLNM rate
(the prior keeps rarely covered pixels near r0). A nodule's location risk is the mean of R over its
warped mask. This is a training/evaluation tool (antspyx, part of the `train` extra); the runtime
sees location through x_l instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llnm.features import crop_resize


@dataclass
class LocationAtlas:
    template: np.ndarray  # (size, size) float32 mean normalised gland, thresholded at 0.5
    risk: np.ndarray  # (size, size) float32 R(p)
    coverage: np.ndarray  # (size, size) float32 number of warped nodules covering p
    prior_rate: float

    def save(self, path: Path) -> None:
        np.savez_compressed(path, template=self.template, risk=self.risk, coverage=self.coverage,
                            prior_rate=self.prior_rate)

    @classmethod
    def load(cls, path: Path) -> "LocationAtlas":
        z = np.load(path)
        return cls(z["template"], z["risk"], z["coverage"], float(z["prior_rate"]))


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return float(rows[0]), float(cols[0]), float(rows[-1] + 1), float(cols[-1] + 1)


def normalise(gland: np.ndarray, nodule: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Gland and nodule resampled onto the gland's bounding box, size x size."""
    box = _box(gland)
    g = crop_resize(gland.astype(np.float32), box, size, order=0) > 0.5
    n = crop_resize(nodule.astype(np.float32), box, size, order=0) > 0.5
    return g, n


def register_nodule(template: np.ndarray, gland: np.ndarray, nodule: np.ndarray, seed: int = 0) -> np.ndarray:
    """Warp the (normalised) nodule mask by the SyN registration of its gland onto the template."""
    import ants

    fixed = ants.from_numpy(template.astype(np.float32))
    moving = ants.from_numpy(gland.astype(np.float32))
    reg = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyN", random_seed=seed)
    warped = ants.apply_transforms(fixed=fixed, moving=ants.from_numpy(nodule.astype(np.float32)),
                                   transformlist=reg["fwdtransforms"], interpolator="nearestNeighbor")
    return warped.numpy() > 0.5


def build_atlas(views: list[tuple[np.ndarray, np.ndarray, int]], size: int = 64, prior: float = 2.0,
                seed: int = 0) -> LocationAtlas:
    """views: (gland mask, nodule mask, LLNM label) per view."""
    normalised = [(*normalise(g, n, size), y) for g, n, y in views]
    template = (np.mean([g for g, _, _ in normalised], axis=0) > 0.5).astype(np.float32)
    positives = np.zeros((size, size), np.float64)
    coverage = np.zeros((size, size), np.float64)
    for g, n, y in normalised:
        warped = register_nodule(template, g, n, seed)
        coverage += warped
        positives += warped * y
    rate = float(np.mean([y for _, _, y in views]))
    risk = (positives + prior * rate) / (coverage + prior)
    return LocationAtlas(template, risk.astype(np.float32), coverage.astype(np.float32), rate)


def location_risk(atlas: LocationAtlas, gland: np.ndarray, nodule: np.ndarray, seed: int = 0) -> float:
    """Mean atlas risk over the registered nodule (the cohort rate when it lands outside the template)."""
    g, n = normalise(gland, nodule, atlas.template.shape[0])
    warped = register_nodule(atlas.template, g, n, seed)
    return float(atlas.risk[warped].mean()) if warped.any() else atlas.prior_rate


def atlas_from_layout(data_dir: Path, max_views: int = 300, size: int = 64, seed: int = 0) -> LocationAtlas:
    """The atlas of `max_views` views spread evenly over a folder in the training layout (a folder
    that holds several sources or several studies per patient in blocks is sampled across them)."""
    from llnm.model.data import read_layout, read_png

    listed = [(view, study.llnm) for study in read_layout(data_dir) for view in study.views]
    if len(listed) > max_views:
        listed = [listed[int(i)] for i in np.linspace(0, len(listed) - 1, max_views)]
    views = []
    for view, llnm in listed:
        gland, nodule = read_png(view.gland_mask) > 127, read_png(view.nodule_mask) > 127
        if gland.any() and nodule.any():
            views.append((gland, nodule, llnm))
    return build_atlas(views, size=size, seed=seed)


def atlas_png(atlas: LocationAtlas, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    shown = np.where(atlas.template > 0, atlas.risk, np.nan)
    im = axes[0].imshow(shown, cmap="magma", vmin=0, vmax=max(0.5, float(np.nanmax(shown))))
    axes[0].set_title("LLNM rate by location (Eq. 15)")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    im = axes[1].imshow(np.where(atlas.template > 0, atlas.coverage, np.nan), cmap="viridis")
    axes[1].set_title("nodules covering each pixel")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
