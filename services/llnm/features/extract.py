"""The TMDL inputs of one view, from the image, the gland mask and the nodule mask (numpy/scipy only).

Image features (each rendered as a size x size float32 image in [0, 1]):
- x_l location: the CPDT map (see cpdt.py) over the box of gland and nodule, so the nodule's place
  in the lobe and its distance to the capsule are both visible;
- x_t texture: the nodule crop (a square box, 1.4 x the nodule's larger extent, so shape is kept);
- x_m margin: a 4 x 4 mosaic of patches centred on 16 points of the nodule boundary, taken at evenly
  spaced angles around the centroid with a seeded jitter (deterministic for a given seed).
Scalar features:
- x_e echogenicity: mean grey inside the nodule minus mean grey in a ring just outside it (within the
  gland where the ring meets it), divided by 255; negative = hypoechoic;
- x_s shape: anteroposterior (rows) / transverse (columns) extent in mm (pixels when uncalibrated):
  the paper's length/width, i.e. the TI-RADS "taller-than-wide" ratio.
Measurements: minimum capsule distance (px, mm), nodule length (long axis) and width (perpendicular
extent) in mm, and the nodule's position in the lobe.

Position in the lobe: (u, v) is the nodule centroid in the gland's bounding box, u along columns
(0 left, 1 right), v along rows (0 anterior/top, 1 posterior/bottom). "vertical" (upper/middle/lower
pole) is the third of u, reading the view as longitudinal with the cranial pole on the left of the
screen (the usual convention); "horizontal" (medial/lateral) is the half of u, reading the view as
transverse with the midline on the left. Which reading applies depends on the view's orientation,
which the image alone does not say; both are reported and the model sees the full map anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from llnm.features.cpdt import cpdt

MOSAIC_GRID = 4  # 4 x 4 boundary patches in x_m


@dataclass
class NoduleFeatures:
    x_l: np.ndarray  # (S, S) float32 CPDT map over the gland box
    x_t: np.ndarray  # (S, S) float32 nodule crop
    x_m: np.ndarray  # (S, S) float32 margin mosaic
    echogenicity: float  # x_e
    aspect_ratio: float  # x_s
    capsule_distance_px: float
    capsule_distance_mm: float | None
    extrathyroidal: bool
    length_px: float
    width_px: float
    length_mm: float | None
    width_mm: float | None
    position_uv: tuple[float, float]  # nodule centroid in the gland box, (u columns, v rows) in [0, 1]
    location: dict[str, str] = field(default_factory=dict)
    # where each image feature came from, for mapping token importance back onto the view
    location_box: tuple[float, float, float, float] = (0, 0, 0, 0)  # (r0, c0, r1, c1) of x_l
    texture_box: tuple[float, float, float, float] = (0, 0, 0, 0)  # of x_t
    margin_points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (16, 2) row, col
    margin_patch_px: float = 0.0

    def images(self) -> np.ndarray:
        """(3, S, S) float32 in the model's channel order: x_l, x_t, x_m."""
        return np.stack([self.x_l, self.x_t, self.x_m]).astype(np.float32)


def crop_resize(arr: np.ndarray, box: tuple[float, float, float, float], size: int,
                order: int = 1, antialias: bool = False) -> np.ndarray:
    """Resample the box (r0, c0, r1, c1) of a 2D array onto size x size pixel centres (0 outside).

    antialias: low-pass the box's neighbourhood to the output pixel size first (Gaussian, sigma
    (zoom - 1) / 2 per axis, as skimage's resize does), so detail finer than an output pixel
    averages out instead of aliasing into it."""
    r0, c0, r1, c1 = box
    rows = r0 + (np.arange(size) + 0.5) * (r1 - r0) / size - 0.5
    cols = c0 + (np.arange(size) + 0.5) * (c1 - c0) / size - 0.5
    sigma = (max(0.0, ((r1 - r0) / size - 1) / 2), max(0.0, ((c1 - c0) / size - 1) / 2))
    if antialias and max(sigma) > 0:
        # filter only the part of the array around the box (4 sigma beyond it), then sample there
        lo_r = max(int(np.floor(r0 - 4 * sigma[0])) - 1, 0)
        lo_c = max(int(np.floor(c0 - 4 * sigma[1])) - 1, 0)
        hi_r = min(int(np.ceil(r1 + 4 * sigma[0])) + 2, arr.shape[0])
        hi_c = min(int(np.ceil(c1 + 4 * sigma[1])) + 2, arr.shape[1])
        if lo_r < hi_r and lo_c < hi_c:
            part = ndimage.gaussian_filter(arr[lo_r:hi_r, lo_c:hi_c].astype(np.float32), sigma, mode="nearest")
            rr, cc = np.meshgrid(rows - lo_r, cols - lo_c, indexing="ij")
            out = ndimage.map_coordinates(part, [rr, cc], order=order, mode="constant", cval=0.0)
            return out.astype(np.float32)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    out = ndimage.map_coordinates(arr.astype(np.float32), [rr, cc], order=order, mode="constant", cval=0.0)
    return out.astype(np.float32)


#: the band of `texture_energy` (Gaussian sigmas, mm; pixels when uncalibrated): finer than the
#: coarse internal texture of a heterogeneous nodule, coarser than speckle, below the nodule's size
ENERGY_FINE_MM, ENERGY_COARSE_MM = 0.4, 1.2
ENERGY_FINE_PX, ENERGY_COARSE_PX = 4.0, 12.0


def texture_energy(grey: np.ndarray, box: tuple[float, float, float, float],
                   spacing_mm: tuple[float, float] | None) -> np.ndarray:
    """|G_fine * grey - G_coarse * grey| on the box's neighbourhood (zero elsewhere): the local contrast
    of the texture between speckle and the nodule's size. Its mean over a patch is how heterogeneous the
    tissue there is, which a linear patch projection can read and the grey itself does not give it."""
    if spacing_mm is None:
        fine, coarse = (ENERGY_FINE_PX,) * 2, (ENERGY_COARSE_PX,) * 2
    else:
        fine = tuple(ENERGY_FINE_MM / float(s) for s in spacing_mm)
        coarse = tuple(ENERGY_COARSE_MM / float(s) for s in spacing_mm)
    pad = int(np.ceil(3 * max(coarse))) + 1
    r0, c0 = max(int(np.floor(box[0])) - pad, 0), max(int(np.floor(box[1])) - pad, 0)
    r1, c1 = min(int(np.ceil(box[2])) + pad, grey.shape[0]), min(int(np.ceil(box[3])) + pad, grey.shape[1])
    out = np.zeros(grey.shape, dtype=np.float32)
    if r0 < r1 and c0 < c1:
        part = grey[r0:r1, c0:c1].astype(np.float32)
        band = ndimage.gaussian_filter(part, fine, mode="nearest") - ndimage.gaussian_filter(part, coarse, mode="nearest")
        out[r0:r1, c0:c1] = np.abs(band)
    return out


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def axes_extent(nodule: np.ndarray, spacing: tuple[float, float]) -> tuple[float, float]:
    """Extent along the principal (long) axis and perpendicular to it, in the units of `spacing`.

    Pixel-centre extents plus one pixel, so a single pixel measures one spacing."""
    rr, cc = np.nonzero(nodule)
    pts = np.stack([rr * spacing[0], cc * spacing[1]], axis=1).astype(np.float64)
    if len(pts) < 3:
        return float(max(spacing)), float(min(spacing))
    centred = pts - pts.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov(centred.T))
    major, minor = vecs[:, 1], vecs[:, 0]
    pad_major = abs(major[0]) * spacing[0] + abs(major[1]) * spacing[1]
    pad_minor = abs(minor[0]) * spacing[0] + abs(minor[1]) * spacing[1]
    along = centred @ major
    across = centred @ minor
    return float(np.ptp(along) + pad_major), float(np.ptp(across) + pad_minor)


def lobe_position(u: float, v: float) -> dict[str, str]:
    vertical = "upper" if u < 1 / 3 else ("middle" if u < 2 / 3 else "lower")
    horizontal = "medial" if u < 0.5 else "lateral"
    depth = "anterior" if v < 0.5 else "posterior"
    return {"vertical": vertical, "horizontal": horizontal, "depth": depth}


def margin_points(nodule: np.ndarray, seed: int, count: int = MOSAIC_GRID * MOSAIC_GRID,
                  box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """`count` boundary pixels at evenly spaced angles around the centroid, with a seeded jitter.
    `box`: the nodule's bounding box, if known (only that part is searched)."""
    r0, c0, r1, c1 = box if box is not None else _bbox(nodule)
    r0, c0 = max(r0 - 1, 0), max(c0 - 1, 0)
    local = nodule[r0:r1 + 1, c0:c1 + 1]
    boundary = local & ~ndimage.binary_erosion(local)
    rr, cc = np.nonzero(boundary)
    rr, cc = rr + r0, cc + c0
    cy, cx = rr.mean(), cc.mean()
    angles = np.arctan2(rr - cy, cc - cx)
    rng = np.random.default_rng(seed)
    wanted = (np.arange(count) + rng.uniform(0.0, 1.0, count)) * (2 * np.pi / count) - np.pi
    diff = np.abs(np.angle(np.exp(1j * (angles[None, :] - wanted[:, None]))))
    idx = diff.argmin(axis=1)
    return np.stack([rr[idx], cc[idx]], axis=1).astype(np.float64)


def extract_features(image: np.ndarray, gland: np.ndarray, nodule: np.ndarray,
                     spacing_mm: tuple[float, float] | None, size: int = 64,
                     seed: int = 0, sampling: str = "point", location_aspect: str = "stretch") -> NoduleFeatures:
    """All TMDL inputs and the reported measurements of one view.

    image: (H, W) uint8 greyscale; gland, nodule: (H, W) bool (non-empty); spacing_mm: (row, col)
    mm per pixel or None. `seed` fixes the margin sampling jitter. `sampling`: "point" or "area"
    (x_t and x_m low-passed to their pixel size first) or "energy" (as area, x_t from `texture_energy`);
    TMDLConfig.image_sampling. `location_aspect`:
    "stretch" (x_l: the box of gland and nodule onto the square) or "keep" (a square box around it).
    """
    if sampling not in ("point", "area", "energy"):
        raise ValueError(f"sampling {sampling!r}: choose point, area or energy")
    if location_aspect not in ("stretch", "keep"):
        raise ValueError(f"location_aspect {location_aspect!r}: choose stretch or keep")
    antialias = sampling in ("area", "energy")
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a (H, W) greyscale image, got shape {image.shape}")
    gland = np.asarray(gland, dtype=bool)
    nodule = np.asarray(nodule, dtype=bool)
    grey = image.astype(np.float32) / 255.0
    loc = cpdt(gland, nodule, spacing_mm)

    # x_l over the box of gland and nodule, padded by 5 % (squared around its centre: aspect kept)
    r0, c0, r1, c1 = _bbox(gland | nodule)
    pr, pc = 0.05 * (r1 - r0), 0.05 * (c1 - c0)
    location_box = (r0 - pr, c0 - pc, r1 + pr, c1 + pc)
    if location_aspect == "keep":
        half = 0.55 * max(r1 - r0, c1 - c0)
        cy, cx = (r0 + r1) / 2, (c0 + c1) / 2
        location_box = (cy - half, cx - half, cy + half, cx + half)
    x_l = crop_resize(loc.x_l, location_box, size)

    # x_t: a square crop 1.4 x the nodule's larger extent, centred on its box
    nr0, nc0, nr1, nc1 = _bbox(nodule)
    half = 0.7 * max(nr1 - nr0, nc1 - nc0, 4)
    ncy, ncx = (nr0 + nr1) / 2, (nc0 + nc1) / 2
    texture_box = (ncy - half, ncx - half, ncy + half, ncx + half)
    x_t = crop_resize(texture_energy(grey, texture_box, spacing_mm) if sampling == "energy" else grey,
                      texture_box, size, antialias=antialias)

    # x_m: mosaic of boundary patches
    points = margin_points(nodule, seed, box=(nr0, nc0, nr1, nc1))
    area = float(nodule.sum())
    patch = max(8.0, 0.35 * 2 * np.sqrt(area / np.pi))
    cell = size // MOSAIC_GRID
    x_m = np.zeros((size, size), dtype=np.float32)
    for k, (pr_, pc_) in enumerate(points):
        tile = crop_resize(grey, (pr_ - patch / 2, pc_ - patch / 2, pr_ + patch / 2, pc_ + patch / 2), cell,
                           antialias=antialias)
        i, j = divmod(k, MOSAIC_GRID)
        x_m[i * cell:(i + 1) * cell, j * cell:(j + 1) * cell] = tile

    # x_e: inside minus a ring just outside (within the gland where possible), on a local crop
    ring_width = max(2, int(round(0.1 * np.sqrt(area / np.pi) * 2)))
    pad = ring_width + 1
    lr0, lc0 = max(nr0 - pad, 0), max(nc0 - pad, 0)
    lr1, lc1 = min(nr1 + pad, nodule.shape[0]), min(nc1 + pad, nodule.shape[1])
    local_nodule, local_gland = nodule[lr0:lr1, lc0:lc1], gland[lr0:lr1, lc0:lc1]
    local_grey = grey[lr0:lr1, lc0:lc1]
    ring = ndimage.binary_dilation(local_nodule, iterations=ring_width) & ~local_nodule
    if (ring & local_gland).sum() >= 4:
        ring &= local_gland
    inside = float(local_grey[local_nodule].mean())
    x_e = inside - (float(local_grey[ring].mean()) if ring.any() else inside)

    # x_s and measurements
    px_spacing = (1.0, 1.0)
    height_px, width_px_ext = (nr1 - nr0), (nc1 - nc0)
    length_px, width_px = axes_extent(nodule, px_spacing)
    if spacing_mm is not None:
        sp = (float(spacing_mm[0]), float(spacing_mm[1]))
        length_mm, width_mm = axes_extent(nodule, sp)
        x_s = (height_px * sp[0]) / (width_px_ext * sp[1])
    else:
        length_mm = width_mm = None
        x_s = height_px / width_px_ext

    rr, cc = np.nonzero(nodule)
    gr0, gc0, gr1, gc1 = _bbox(gland)
    u = float(np.clip((cc.mean() + 0.5 - gc0) / max(gc1 - gc0, 1), 0.0, 1.0))
    v = float(np.clip((rr.mean() + 0.5 - gr0) / max(gr1 - gr0, 1), 0.0, 1.0))
    return NoduleFeatures(
        x_l=x_l, x_t=x_t, x_m=x_m, echogenicity=x_e, aspect_ratio=float(x_s),
        capsule_distance_px=loc.min_distance_px, capsule_distance_mm=loc.min_distance_mm,
        extrathyroidal=loc.extrathyroidal, length_px=length_px, width_px=width_px,
        length_mm=length_mm, width_mm=width_mm, position_uv=(u, v), location=lobe_position(u, v),
        location_box=location_box, texture_box=texture_box, margin_points=points,
        margin_patch_px=patch,
    )


def clinical_vector(sex: str | None, age_years: float | None, features: NoduleFeatures,
                    shape_input: str = "ratio", location_input: str = "map") -> np.ndarray:
    """The scalar tokens' inputs, scaled to about unit range: (sex, age, x_e, x_s) with x_s the
    log aspect ratio, or with shape_input "length_width" (sex, age, x_e, length, width), the log of
    the nodule's length and width in mm centred on 10 mm; with location_input "map_and_position"
    three more for x_p: log(1 + capsule distance in mm) - 1 and the centroid's place in the gland box,
    vertical then horizontal, from -1 to 1 (TMDLConfig.clinical_inputs).

    Neutral values for missing inputs: sex unknown -> 0 (M = +1, F = -1); age unknown -> 0 (the
    scale centres age 45 at 0); length, width and capsule distance of an uncalibrated view -> 0 (10 mm,
    1.7 mm: nothing in mm is known without a spacing). The pipeline adds a warning when it uses them."""
    if shape_input not in ("ratio", "length_width"):
        raise ValueError(f"shape_input {shape_input!r}: choose ratio or length_width")
    if location_input not in ("map", "map_and_position"):
        raise ValueError(f"location_input {location_input!r}: choose map or map_and_position")
    sex_value = {"M": 1.0, "F": -1.0}.get((sex or "").upper()[:1], 0.0)
    age_value = 0.0 if age_years is None else (float(age_years) - 45.0) / 15.0
    values = [sex_value, age_value, features.echogenicity * 5.0]
    if shape_input == "ratio":
        values.append(np.log(max(features.aspect_ratio, 1e-3)) * 2.0)
    elif features.length_mm is None or features.width_mm is None:
        values += [0.0, 0.0]
    else:
        values += [np.log(max(features.length_mm, 0.1) / 10.0) * 2.0, np.log(max(features.width_mm, 0.1) / 10.0) * 2.0]
    if location_input == "map_and_position":
        distance = features.capsule_distance_mm
        u, v = features.position_uv
        values += [0.0 if distance is None else float(np.log1p(max(distance, 0.0))) - 1.0,
                   (float(v) - 0.5) * 2.0, (float(u) - 0.5) * 2.0]
    return np.array(values, dtype=np.float32)
