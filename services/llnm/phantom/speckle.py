"""B-mode image formation from a label map: echo levels, speckle, attenuation, artefacts.

A simple physical model, fully vectorised: tissue reflectivity (dB relative to normal thyroid)
times complex Gaussian scatterers, blurred by an anisotropic point-spread function, enveloped,
attenuated along each beam line (so calcifications shadow and fluid enhances behind), with point
reflectors for calcifications and comet tails, reverberation below the tracheal air, log-compressed
to 8 bits. Two speckle realisations are averaged, as spatial compounding does on modern scanners.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .anatomy import (AIR, CARTILAGE, DEEP, FAT, GLAND, LONGUS, LUMEN, NODULE, SCM, SKIN, STRAP, WALL,
                      Anatomy)
from .findings import Findings

#: Mean echo level of each label, dB relative to normal thyroid parenchyma.
ECHO_DB = np.zeros(12, dtype=np.float32)
ECHO_DB[[DEEP, FAT, SKIN, STRAP, SCM, GLAND, NODULE, LUMEN, WALL, CARTILAGE, AIR, LONGUS]] = (
    -10.0, -8.0, 6.0, -12.0, -12.0, 0.0, 0.0, -42.0, 5.0, -16.0, -45.0, -12.5)
NODULE_DB = {"hyper": (3.5, 6.0), "iso": (-1.5, 1.5), "hypo": (-11.0, -7.0), "marked-hypo": (-16.0, -12.5)}
BASE_ATTENUATION = 0.5  # dB per mm, round trip, compensated by the time-gain control


def _field(shape: tuple[int, int], sigma: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Smooth zero-mean unit-variance random field with the given (row, col) correlation in px.
    Drawn on a coarser grid and interpolated up, so wide correlations stay cheap."""
    step = [max(1, int(s / 2.0)) for s in sigma]
    small = [-(-n // k) + 2 for n, k in zip(shape, step)]
    n = rng.standard_normal(small, dtype=np.float32)
    f = ndimage.gaussian_filter(n, [s / k for s, k in zip(sigma, step)], mode="reflect")
    f = _upsample(f, 0, step[0], shape[0])
    f = _upsample(f, 1, step[1], shape[1])
    return f / (f.std() + 1e-6)


def _upsample(a: np.ndarray, axis: int, step: int, n: int) -> np.ndarray:
    """Linear interpolation by an integer factor along one axis, cropped to n samples."""
    if step == 1:
        return a[:n] if axis == 0 else a[:, :n]
    pos = (np.arange(n, dtype=np.float32) + 0.5) / step + 0.5
    i0 = np.clip(pos.astype(int), 0, a.shape[axis] - 2)
    t = (pos - i0).astype(np.float32)
    if axis == 0:
        return a[i0] * (1 - t)[:, None] + a[i0 + 1] * t[:, None]
    return a[:, i0] * (1 - t)[None, :] + a[:, i0 + 1] * t[None, :]


def _edge(mask: np.ndarray, width_px: int) -> np.ndarray:
    """The band of `mask` within width_px of its outside."""
    return mask & ~ndimage.minimum_filter(mask, size=2 * max(1, width_px) + 1, mode="nearest")


def _blobs(shape: tuple[int, int], points: np.ndarray, sigma_px: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Sum of small Gaussian spots, each drawn in its own small window."""
    out = np.zeros(shape, dtype=np.float32)
    for (py, px), s, a in zip(points, sigma_px, peak):
        r = int(np.ceil(3 * s))
        y0, y1 = max(0, py - r), min(shape[0], py + r + 1)
        x0, x1 = max(0, px - r), min(shape[1], px + r + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        out[y0:y1, x0:x1] += a * np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * s * s))
    return out


def form_image(anat: Anatomy, f: Findings, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Return the uint8 B-mode image of the view and a few realised imaging facts (for params.jsonl)."""
    labels, sp = anat.labels, anat.spacing_mm
    shape = labels.shape
    h, w = shape
    px = 1.0 / sp  # pixels per mm
    db = ECHO_DB[labels].copy()
    db += 1.2 * _field(shape, (1.5 * px, 1.5 * px), rng)
    muscle = np.isin(labels, (STRAP, SCM, LONGUS))
    db[muscle] += 2.5 * _field(shape, (0.12 * px, 1.5 * px), rng)[muscle]
    fatty = np.isin(labels, (FAT, DEEP))
    septa = _field(shape, (0.1 * px, 1.2 * px), rng)
    db[fatty] += np.where(septa > 1.2, 7.0, 0.0).astype(np.float32)[fatty]
    gland_only = labels == GLAND
    db[_edge(anat.gland, int(round(0.3 * px)))] += 6.0
    for lab in (STRAP, SCM, LONGUS):
        db[_edge(labels == lab, int(round(0.2 * px)))] += 4.0

    # Nodule interior: echo level, heterogeneity, cystic spaces, halo; soft edge when ill-defined.
    nod = anat.nodule
    lo, hi = NODULE_DB[f.echogenicity]
    nodule_db = np.float32(rng.uniform(lo, hi)) + 1.8 * _field(shape, (0.8 * px, 0.8 * px), rng)
    alpha = np.full(shape, BASE_ATTENUATION, dtype=np.float32)
    cyst = np.zeros(shape, dtype=bool)
    if f.composition != "solid":
        frac = 0.45 if f.composition == "mixed" else 0.15
        g = _field(shape, (1.0 * px, 1.0 * px), rng)
        inner = ndimage.minimum_filter(nod, size=2 * max(1, int(0.8 * px)) + 1)
        if inner.any():
            cyst = inner & (g > np.quantile(g[inner], 1.0 - frac))
        nodule_db = np.where(cyst, -40.0, nodule_db)
    if f.halo:
        nodule_db = np.where(_edge(nod, int(round(0.7 * px))), -11.0, nodule_db)
    sigma_edge = (0.8 if f.margin == "ill-defined" else 0.12) * px
    weight = np.zeros(shape, dtype=np.float32)
    if nod.any():
        rows, cols = np.flatnonzero(nod.any(axis=1)), np.flatnonzero(nod.any(axis=0))
        pad = int(4 * sigma_edge) + 1
        box = (slice(max(0, rows[0] - pad), rows[-1] + pad + 1), slice(max(0, cols[0] - pad), cols[-1] + pad + 1))
        weight[box] = ndimage.gaussian_filter(nod[box].astype(np.float32), sigma_edge)
    db = db * (1.0 - weight) + nodule_db * weight
    alpha[np.isin(labels, (LUMEN,)) | cyst] = 0.03

    # Calcifications: bright points (micro) or bright shadowing arcs (macro, rim).
    points, sig, peak = [], [], []
    ys, xs = np.nonzero(ndimage.minimum_filter(nod, size=2 * max(1, int(0.5 * px)) + 1) & ~cyst)
    n_calc = 0
    if f.calcification == "micro" and len(ys):
        n_calc = int(rng.integers(4, 16))
        idx = rng.choice(len(ys), n_calc)
        points += list(zip(ys[idx], xs[idx]))
        sig += list(rng.uniform(0.1, 0.22, n_calc) * px)
        peak += list(rng.uniform(6.0, 10.0, n_calc))
    shadow = np.zeros(shape, dtype=bool)
    if f.calcification in ("macro", "rim") and len(ys):
        if f.calcification == "macro":
            n_calc = int(rng.integers(1, 3))
            for i in rng.choice(len(ys), n_calc):
                r = rng.uniform(0.8, 2.0)
                yy, xx = np.ogrid[:h, :w]
                d = np.sqrt(((yy - ys[i]) * sp) ** 2 + ((xx - xs[i]) * sp) ** 2)
                arc = (np.abs(d - r) < 0.25) & (yy < ys[i])
                db[arc] = 22.0
                shadow |= d < r
        else:
            n_calc = 1
            rim = _edge(nod, max(1, int(round(0.35 * px))))
            yy = np.arange(h)[:, None]
            top = rim & (yy < anat.nodule_center[0])
            db[top] = 18.0
            shadow |= top
    alpha[shadow] = 9.0
    if f.comet_tail and cyst.any():
        cy, cx = np.nonzero(cyst)
        for i in rng.choice(len(cy), int(rng.integers(1, 4))):
            tail = np.arange(int(rng.uniform(0.8, 2.0) * px))
            points += [(cy[i] + t, cx[i]) for t in tail[:: max(1, int(0.15 * px))]]
            k = len(tail[:: max(1, int(0.15 * px))])
            sig += [0.12 * px] * k
            peak += list(8.0 * np.exp(-np.arange(k) / (0.4 * k + 1)))

    # Attenuation along each beam (columns), compensated on average by the TGC.
    excess = ndimage.gaussian_filter1d((alpha - BASE_ATTENUATION) * sp, 0.25 * px, axis=1)
    db -= np.cumsum(excess, axis=0)
    depth_gain = np.interp(np.arange(h), np.linspace(0, h, 5), rng.uniform(-2.0, 2.0, 5)).astype(np.float32)
    db += depth_gain[:, None]

    # Speckle: scatterers x reflectivity, PSF blur, envelope; two looks averaged (compounding).
    amp = np.power(10.0, db / 20.0).astype(np.float32)
    psf = (rng.uniform(0.1, 0.14) * px, rng.uniform(0.25, 0.35) * px)
    env = np.zeros(shape, dtype=np.float32)
    for _ in range(2):
        re = ndimage.gaussian_filter(amp * rng.standard_normal(shape, dtype=np.float32), psf)
        im = ndimage.gaussian_filter(amp * rng.standard_normal(shape, dtype=np.float32), psf)
        env += np.sqrt(re * re + im * im)
    ref = float(np.median(env[gland_only])) if gland_only.any() else float(np.median(env))
    env /= ref + 1e-9
    if points:
        env += _blobs(shape, np.array(points, dtype=int), np.array(sig), np.array(peak))
    if anat.air_top is not None:
        cols = np.flatnonzero(anat.air_top >= 0)
        if len(cols):
            top = anat.air_top[cols].astype(np.float32)
            yy = np.arange(h, dtype=np.float32)[:, None]
            rev = np.zeros((h, len(cols)), dtype=np.float32)
            for k in (1, 2, 3):
                rev += 0.35 * 0.5 ** (k - 1) * np.exp(-((yy - (k + 1) * top - 0.3 * px) ** 2) / (2 * (0.35 * px) ** 2))
            rev += 1.6 * np.exp(-((yy - top) ** 2) / (2 * (0.25 * px) ** 2))
            rev *= 0.6 + 0.4 * np.abs(rng.standard_normal(rev.shape, dtype=np.float32))
            env[:, cols] += ndimage.gaussian_filter(rev, (0.5, 1.5 * px))

    level = 20.0 * np.log10(env + 1e-4)
    g0, dyn = rng.uniform(108.0, 138.0), rng.uniform(48.0, 58.0)
    img = g0 + level * (255.0 / dyn)
    img = ndimage.gaussian_filter(img, 0.6)
    return np.clip(img, 0, 255).astype(np.uint8), {"calcification_count": n_calc, "gain": round(g0, 2),
                                                    "dynamic_range_db": round(dyn, 2)}
