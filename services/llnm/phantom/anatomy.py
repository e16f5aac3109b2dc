"""Neck anatomy of one view as a label map on the tissue-region pixel grid.

Geometry is drawn in millimetres (depth y down from the skin, lateral x from the image centre) and
rasterised at the view's spacing. The transverse view is built for a RIGHT lobe with the medial side
(trachea) towards +x, then mirrored for a left lobe by `study.py`; the longitudinal view puts cranial
to the left of the image, as scanners do. The index nodule is placed by `place_nodule` so that its
realised distance to the capsule, lobe third and side match the drawn findings as far as the gland allows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .findings import Findings

# Label values of the map. The echo and attenuation of each are in speckle.py.
DEEP, FAT, SKIN, STRAP, SCM, GLAND, NODULE, LUMEN, WALL, CARTILAGE, AIR, LONGUS, OESOPHAGUS, MUCOSA = range(14)
N_LABELS = 14


@dataclass
class Anatomy:
    """One view's label map plus what the image former and the truth writer need."""

    labels: np.ndarray  # (H, W) uint8 label values above
    gland: np.ndarray  # (H, W) bool, thyroid up to its capsule (isthmus part in view); holds the
    # nodule except where the nodule bulges through the capsule (extrathyroidal extension)
    nodule: np.ndarray  # (H, W) bool
    spacing_mm: float
    nodule_center: tuple[int, int]  # (row, col)
    capsule_mm: float  # realised minimum nodule-to-capsule distance in this view
    air_top: np.ndarray | None  # (W,) depth in px of the air interface per column, -1 where none
    position: str  # transverse: "medial"/"lateral"; longitudinal: "upper"/"middle"/"lower"


def _grid(shape: tuple[int, int], sp: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    y = ((np.arange(h, dtype=np.float32) + 0.5) * sp)[:, None]
    x = ((np.arange(w, dtype=np.float32) + 0.5) * sp - w * sp / 2.0)[None, :]
    return np.broadcast_to(y, shape), np.broadcast_to(x, shape)


def _wobble(theta: np.ndarray, rng: np.random.Generator, orders: range, amp: float) -> np.ndarray:
    r = np.ones_like(theta)
    for k in orders:
        r += amp * rng.uniform(-1.0, 1.0) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return r


def _blob(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float,
          rng: np.random.Generator, amp: float = 0.04) -> np.ndarray:
    """Wobbly ellipse; evaluated only inside its bounding box."""
    out = np.zeros(y.shape, dtype=bool)
    yv, xv = y[:, 0], x[0]
    reach = 1.0 + 3.5 * amp
    rows = np.flatnonzero(np.abs(yv - cy) <= ry * reach)
    cols = np.flatnonzero(np.abs(xv - cx) <= rx * reach)
    if len(rows) == 0 or len(cols) == 0:
        rng.uniform(size=6)  # keep the stream aligned whether or not the blob is in view
        return out
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    dy, dx = (y[box] - cy) / ry, (x[box] - cx) / rx
    rho = np.sqrt(dy**2 + dx**2)
    theta = np.arctan2(dy, dx)
    out[box] = rho < _wobble(theta, rng, range(2, 5), amp)
    return out


def nodule_template(f: Findings, horizontal_mm: float, sp: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean nodule shape (rows = AP) with the drawn margin; smooth, lobulated or spiculated outline."""
    ry, rx = f.ap_mm / 2.0 / sp, horizontal_mm / 2.0 / sp
    half = int(np.ceil(max(ry, rx) * (1.35 if f.spiculation is None else 1.7))) + 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    tilt = rng.uniform(-0.25, 0.25)
    c, s = np.cos(tilt), np.sin(tilt)
    u, v = c * xx + s * yy, -s * xx + c * yy
    rho = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    theta = np.arctan2(v / ry, u / rx)
    if f.margin == "lobulated":
        r = _wobble(theta, rng, range(3, 7), 0.07)
    elif f.margin == "irregular":
        r = _wobble(theta, rng, range(4, 12), 0.035)
        for _ in range(int(rng.integers(5, 11))):
            phi = rng.uniform(0, 2 * np.pi)
            r += rng.uniform(0.12, 0.3) * np.maximum(0.0, np.cos(theta - phi)) ** 40
    else:
        r = _wobble(theta, rng, range(2, 5), 0.03)
    if f.spiculation is not None:  # fusion profile: a continuous spiculation amplitude on any margin
        r = r + _wobble(theta, rng, range(8, 17), 0.04 * f.spiculation) - 1.0
        for _ in range(int(rng.integers(6, 13))):
            phi = rng.uniform(0, 2 * np.pi)
            r += f.spiculation * rng.uniform(0.2, 0.45) * np.maximum(0.0, np.cos(theta - phi)) ** 60
    mask = rho < r
    return mask if mask.any() else rho < 1.0


def _perimeter_offsets(template: np.ndarray, limit: int = 64) -> np.ndarray:
    edge = template & ~ndimage.binary_erosion(template)
    pts = np.argwhere(edge) - np.array(template.shape) // 2
    if len(pts) > limit:
        pts = pts[np.linspace(0, len(pts) - 1, limit).astype(int)]
    return pts


def place_nodule(gland: np.ndarray, allowed: np.ndarray, forbidden: np.ndarray,
                 template: np.ndarray, f: Findings, sp: float, prefer: np.ndarray,
                 rng: np.random.Generator) -> tuple[tuple[int, int], float]:
    """Choose the nodule centre: realised capsule distance closest to the target, inside `allowed`
    centres, never touching `forbidden` structures (trachea, vessels). `prefer` (bool map) holds the
    centres in the wanted lobe third/half; it is dropped only if nothing fits there. Distances come
    from a half-resolution distance transform: placement needs ~0.1 mm, not the exact value.
    Returns the centre and its approximate capsule distance in mm."""
    h, w = gland.shape
    k = 2 if min(h, w) >= 200 else 1
    dist = ndimage.distance_transform_edt(gland[::k, ::k]).astype(np.float32) * k
    step = max(1, int(round(0.35 / sp)))
    cy, cx = np.nonzero(allowed[::step, ::step])
    cy, cx = cy * step, cx * step
    if len(cy) == 0:
        cy, cx = np.nonzero(gland)
    offs = _perimeter_offsets(template)
    py = cy[:, None] + offs[None, :, 0]
    px = cx[:, None] + offs[None, :, 1]
    inside = (py >= 0) & (py < h) & (px >= 0) & (px < w)
    pyc, pxc = np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)
    d = np.where(inside & gland[pyc, pxc], dist[pyc // k, pxc // k], 0.0)
    hits_forbidden = (inside & forbidden[pyc, pxc]).any(axis=1) | ~inside.all(axis=1)
    outside_frac = (d == 0).mean(axis=1)
    front = offs[:, 0] < -0.5 * np.abs(offs[:, 1])  # perimeter points facing the skin
    outside_back = ((d == 0) & ~front[None, :]).mean(axis=1)  # ETE bulges anteriorly, into the straps
    realised = d.min(axis=1) * sp
    if f.ete:
        cost = np.abs(outside_frac - 0.2) * 50.0 + outside_back * 50.0
    elif f.capsule_target_mm == 0.0:
        cost = np.abs(realised) + outside_frac * 50.0
    else:
        cost = np.abs(realised - f.capsule_target_mm) + outside_frac * 50.0
    cost = cost + hits_forbidden * 100.0 + (~prefer[cy, cx]) * 4.0
    best = cost.min()
    pick = np.flatnonzero(cost <= best + 0.15)
    i = int(rng.choice(pick))
    return (int(cy[i]), int(cx[i])), float(realised[i])


def _stamp(shape: tuple[int, int], template: np.ndarray, center: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    th, tw = template.shape
    y0, x0 = center[0] - th // 2, center[1] - tw // 2
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(shape[0], y0 + th), min(shape[1], x0 + tw)
    out[ys:ye, xs:xe] = template[ys - y0:ye - y0, xs - x0:xe - x0]
    return out


def capsule_distance_mm(gland: np.ndarray, nodule: np.ndarray, sp: float, guess_mm: float = 10.0) -> float:
    """Minimum distance of the nodule to the gland boundary, as llnm.features measures it: the
    smallest Euclidean distance (pixel centre to the centre of the nearest non-gland pixel) over
    nodule pixels, x spacing; 0 when part of the nodule lies outside the gland (extrathyroidal).
    Computed on the nodule's box padded by a little more than `guess_mm`; exact whenever the
    distance is below the padding (else computed again on the whole view)."""
    if not nodule.any():
        return float("nan")
    pad = int(np.ceil((guess_mm + 1.0) / sp)) + 2
    rows, cols = np.flatnonzero(nodule.any(axis=1)), np.flatnonzero(nodule.any(axis=0))
    box = (slice(max(0, rows[0] - pad), rows[-1] + pad + 1), slice(max(0, cols[0] - pad), cols[-1] + pad + 1))
    d = float(ndimage.distance_transform_edt(gland[box])[nodule[box]].min())
    if d >= pad:
        d = float(ndimage.distance_transform_edt(gland)[nodule].min())
    return d * sp


def _finish(labels: np.ndarray, gland: np.ndarray, allowed: np.ndarray, forbidden: np.ndarray,
            template: np.ndarray, f: Findings, sp: float, prefer: np.ndarray, rng: np.random.Generator,
            air_top: np.ndarray | None, position_of: Callable[[tuple[int, int]], str]) -> Anatomy:
    center, guess = place_nodule(gland, allowed, forbidden, template, f, sp, prefer, rng)
    nodule = _stamp(labels.shape, template, center) & ~forbidden
    if not f.ete:  # without extrathyroidal extension the capsule holds the nodule (flattened if need be)
        nodule &= gland
    capsule = capsule_distance_mm(gland, nodule, sp, guess)
    labels[nodule] = NODULE
    return Anatomy(labels=labels, gland=gland, nodule=nodule, spacing_mm=sp, nodule_center=center,
                   capsule_mm=capsule, air_top=air_top, position=position_of(center))


def transverse(shape: tuple[int, int], sp: float, f: Findings, rng: np.random.Generator) -> Anatomy:
    """Right lobe in cross-section: skin, fat, strap muscles, SCM, lobe and isthmus beside the
    trachea (medial, +x), common carotid and jugular vein lateral, longus colli behind; for a left
    lobe (mirrored later) also the oesophagus behind the lobe, beside the trachea."""
    y, x = _grid(shape, sp)
    labels = np.full(shape, DEEP, dtype=np.uint8)
    skin = rng.uniform(0.4, 0.8)
    fat = skin + rng.uniform(1.5, 3.5)
    strap = rng.uniform(2.5, 4.5)
    a, b = f.lobe_width_mm / 2.0, f.lobe_ap_mm / 2.0
    ly = fat + strap + b + rng.uniform(0.3, 1.0)
    lx = rng.uniform(-3.0, 2.0)
    tr_r = rng.uniform(8.0, 10.5)
    isthmus_t = rng.uniform(2.0, 4.0)
    a += 2.5  # the ellipse before the trachea and carotid indent it
    tx = lx + a + tr_r * 0.45
    ty = ly - b + isthmus_t + 1.3 + tr_r
    ca_r = rng.uniform(3.0, 4.3)
    cax, cay = lx - a - ca_r * 0.2, ly + b * 0.55
    labels[y < fat] = FAT
    labels[y < skin] = SKIN
    labels[(y >= fat) & (y < fat + strap + 0.15 * (x - lx)) & (x > lx - a * 1.1)] = STRAP
    scm = _blob(y, x, fat + 3.5, cax - 3.0, rng.uniform(3.0, 4.5), rng.uniform(10.0, 14.0), rng)
    labels[scm] = SCM
    longus = _blob(y, x, ly + b + 4.0, lx + a * 0.5, rng.uniform(2.5, 4.0), rng.uniform(6.0, 8.0), rng)
    labels[longus] = LONGUS
    lobe = _blob(y, x, ly, lx, b, a, rng)
    r_tr = np.sqrt((y - ty) ** 2 + (x - tx) ** 2)
    isthmus = (r_tr > tr_r + 0.8) & (r_tr < tr_r + 0.8 + isthmus_t) & (y < ty - tr_r * 0.35)
    r_ca = np.sqrt((y - cay) ** 2 + (x - cax) ** 2)
    gland = (lobe | isthmus) & (r_tr > tr_r + 0.8) & (r_ca > ca_r + 0.9)
    if f.side == "left":  # the oesophagus lies behind the left lobe, beside the trachea
        oy, ox = ty + tr_r * 0.35, tx - tr_r * 0.95
        ory, orx = rng.uniform(2.5, 3.5), rng.uniform(4.0, 6.0)
        oesophagus = _blob(y, x, oy, ox, ory, orx, rng, 0.05)
        labels[oesophagus] = OESOPHAGUS
        labels[_blob(y, x, oy, ox, ory * 0.45, orx * 0.55, rng, 0.1)] = MUCOSA
        gland &= ~_blob(y, x, oy, ox, ory + 0.8, orx + 0.8, rng, 0.0)
    labels[gland] = GLAND
    labels[(r_ca <= ca_r + 0.6)] = WALL
    labels[(r_ca <= ca_r)] = LUMEN
    jr = rng.uniform(3.0, 5.0)
    jv = _blob(y, x, cay - ca_r * 0.7, cax - ca_r - jr - 0.8, rng.uniform(0.8, 2.5), jr, rng, 0.06)
    jv &= r_ca > ca_r + 0.8
    labels[jv] = LUMEN
    labels[(r_tr <= tr_r) & (r_tr > tr_r - 1.6) & (y < ty)] = CARTILAGE
    # Air: below the inner tracheal wall the beam is reflected; nothing deeper is seen.
    inner = tr_r - 1.6
    dx = x[0] - tx
    has_air = np.abs(dx) < inner * 0.97
    top_mm = np.where(has_air, ty - np.sqrt(np.maximum(inner**2 - dx**2, 0.0)), np.inf)
    air = y >= top_mm[None, :]
    labels[air] = AIR
    air_top = np.where(has_air, np.floor(top_mm / sp), -1).astype(np.int32)
    forbidden = np.isin(labels, (LUMEN, WALL, CARTILAGE, AIR, OESOPHAGUS, MUCOSA))
    template = nodule_template(f, f.width_mm, sp, rng)
    allowed = lobe & gland & (x < tx - tr_r * 0.6)
    medial = x >= lx
    prefer = (medial if f.horizontal == "medial" else ~medial) & np.broadcast_to(
        (y < ly) if f.anterior else (y >= ly - b * 0.2), shape)
    return _finish(labels, gland, allowed, forbidden, template, f, sp, prefer, rng, air_top,
                   lambda c: "medial" if x[0, c[1]] >= lx else "lateral")


def longitudinal(shape: tuple[int, int], sp: float, f: Findings, rng: np.random.Generator) -> Anatomy:
    """Sagittal lobe, cranial to the left: spindle-shaped gland under the strap muscles, longus colli
    and prevertebral tissue behind."""
    y, x = _grid(shape, sp)
    w_mm = shape[1] * sp
    labels = np.full(shape, DEEP, dtype=np.uint8)
    skin = rng.uniform(0.4, 0.8)
    fat = skin + rng.uniform(1.5, 3.5)
    strap = rng.uniform(2.5, 4.5)
    length = min(f.lobe_length_mm, 0.92 * w_mm)
    half = length / 2.0
    lc = rng.uniform(-0.04, 0.04) * w_mm
    ap = f.lobe_ap_mm
    top = fat + strap + rng.uniform(0.3, 1.0)
    u = np.clip((x - lc) / half, -1.5, 1.5)
    thick = ap * np.clip(1.0 - np.abs(u) ** rng.uniform(1.8, 2.4), 0.0, None) ** 0.6
    centre = top + ap / 2.0 + rng.uniform(-0.1, 0.1) * ap * u + rng.uniform(-0.05, 0.15) * ap * u**2
    wob = 1.0 + 0.03 * np.sin(rng.uniform(2, 5) * u + rng.uniform(0, 6.3))
    gland = (np.abs(y - centre) < thick * wob / 2.0) & (np.abs(u) < 1.0)
    labels[y < fat] = FAT
    labels[y < skin] = SKIN
    strap_top = fat
    labels[(y >= strap_top) & (y < np.minimum(centre - thick / 2.0, fat + strap + 1.0))] = STRAP
    back = centre + thick / 2.0
    labels[(y > np.maximum(back, top + ap * 0.6) + 0.8) & (y < top + ap + rng.uniform(4.0, 6.5))] = LONGUS
    labels[gland] = GLAND
    forbidden = np.zeros(shape, dtype=bool)
    template = nodule_template(f, f.length_mm, sp, rng)
    thirds = {"upper": u < -1.0 / 3.0, "middle": np.abs(u) <= 1.0 / 3.0, "lower": u > 1.0 / 3.0}
    mid = centre
    prefer = thirds[f.vertical] & ((y < mid) if f.anterior else (y >= mid - ap * 0.1))
    prefer = np.broadcast_to(prefer, shape)

    def third(c: tuple[int, int]) -> str:
        uc = float(u[0, c[1]])
        return "upper" if uc < -1.0 / 3.0 else ("lower" if uc > 1.0 / 3.0 else "middle")

    return _finish(labels, gland, gland, forbidden, template, f, sp, prefer, rng, None, third)
