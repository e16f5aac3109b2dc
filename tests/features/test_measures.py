"""The measurements the auxiliary loss asks TMDL's image stream to predict (llnm.features.measures):
each one moves with what it names, and with nothing else."""

import numpy as np
from scipy import ndimage

from llnm.features import extract_features
from llnm.features.measures import MEASURES, view_measures


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2


def star(shape, cy, cx, r, spikes=9, depth=0.35):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    theta = np.arctan2(yy - cy, xx - cx)
    return np.hypot(yy - cy, xx - cx) <= r * (1 + depth * np.cos(spikes * theta))


SHAPE = (160, 200)
GLAND = disc(SHAPE, 80, 100, 70)


def measure(image, nodule, spacing=(0.1, 0.1)):
    feats = extract_features(image, GLAND, nodule, spacing, size=32)
    return dict(zip(MEASURES, view_measures(image, nodule, feats, spacing)))


def speckle(seed=0):
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal(120, 12, SHAPE), 0, 255)
    return image


def test_size_and_capsule_distance_follow_the_mask():
    image = speckle().astype(np.uint8)
    small, large = disc(SHAPE, 80, 100, 10), disc(SHAPE, 80, 100, 25)
    near = disc(SHAPE, 80, 160, 8)
    a, b, c = measure(image, small), measure(image, large), measure(image, near)
    assert b["length"] > a["length"] + 0.8 and b["width"] > a["width"] + 0.8  # log mm, 2.5 x larger
    assert c["capsule"] < a["capsule"]
    assert np.isclose(measure(image, small, spacing=(0.2, 0.2))["length"], a["length"] + np.log(2), atol=0.05)


def test_an_irregular_outline_reads_as_irregular():
    image = speckle().astype(np.uint8)
    round_, spiky = measure(image, disc(SHAPE, 80, 100, 22)), measure(image, star(SHAPE, 80, 100, 22))
    assert spiky["irregularity"] > round_["irregularity"] + 0.2


def test_coarse_internal_texture_reads_as_heterogeneity_and_fine_speckle_does_not():
    nodule = disc(SHAPE, 80, 100, 25)
    fine = speckle(1)
    coarse = fine.copy()
    blobs = np.kron(np.random.default_rng(2).normal(0, 30, (20, 25)), np.ones((8, 8)))
    coarse[nodule] += blobs[nodule]
    fine_m = measure(np.clip(fine, 0, 255).astype(np.uint8), nodule)
    coarse_m = measure(np.clip(coarse, 0, 255).astype(np.uint8), nodule)
    assert coarse_m["heterogeneity"] > 3 * fine_m["heterogeneity"]
    assert abs(coarse_m["foci"] - fine_m["foci"]) < 0.5  # no bright foci either way


def test_bright_punctate_foci_read_as_foci():
    """Foci of 0.2 mm (2 x 2 pixels at 0.1 mm): a punctate echogenic focus is a point of tissue, and the
    measurement smooths away single-pixel noise (FOCUS_POINT_MM) before comparing a point with its
    surroundings."""
    nodule = disc(SHAPE, 80, 100, 25)
    plain = speckle(3)
    dotted = plain.copy()
    rng = np.random.default_rng(4)
    rr, cc = np.nonzero(nodule)
    pick = rng.choice(len(rr), 40, replace=False)
    for dr in (0, 1):
        for dc in (0, 1):
            dotted[rr[pick] + dr, cc[pick] + dc] = 250
    a = measure(np.clip(plain, 0, 255).astype(np.uint8), nodule)
    b = measure(np.clip(dotted, 0, 255).astype(np.uint8), nodule)
    assert b["foci"] > a["foci"] + 1.0
    assert abs(b["length"] - a["length"]) < 1e-6 and abs(b["irregularity"] - a["irregularity"]) < 1e-6


def test_a_coarse_bright_texture_is_not_read_as_foci():
    """The bright patches of a coarse texture (a heterogeneous nodule) are no punctate foci: each point
    is compared with the tissue around it, not with the nodule's median."""
    nodule = disc(SHAPE, 80, 100, 25)
    plain = speckle(5)
    mottled = plain.copy()
    field = ndimage.gaussian_filter(np.random.default_rng(6).normal(size=SHAPE), 6.0)  # patches of ~1 mm
    mottled[nodule] += (45.0 * field / field.std())[nodule]
    a = measure(np.clip(plain, 0, 255).astype(np.uint8), nodule)
    b = measure(np.clip(mottled, 0, 255).astype(np.uint8), nodule)
    assert b["heterogeneity"] > 3 * a["heterogeneity"]
    assert b["foci"] < a["foci"] + 0.3
