"""Where the ultrasound image lies in a frame that carries no SequenceOfUltrasoundRegions.

Scanners surround the B-mode image with their interface: a black background with presets, depth
ticks, a grey bar, side labels (DER/IZQ, RT/LT) and a probe pictogram. The segmentation models must
see the image, not the chrome, and nothing may be measured outside it. Without DICOM regions the
pixels decide: the image is the largest solid block of non-black pixels once thin strokes (text,
ticks, dotted scales) are opened away; its bounding box, without nearly empty edge rows and columns
(an interface marker that touches the image survives the opening with it), is the crop. A frame
whose block is implausibly small (a blank or nearly black frame, a frame that is all chrome) keeps
its whole extent, and the caller's quality gate judges what is in it.

A dual display (two images side by side: transverse and longitudinal, or both lobes) stays one image
here, since the nodule model reads it best whole; `dual_display_seam` finds where its second image
begins, for the models that must see each image alone (the gland: llnm.segmentation.gland).

Pure numpy/scipy on an (H, W) uint8 array; used by DICOM loading (frames without regions), by
`llnm evaluate-seg` on whole frames and by training, so the three crop alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from llnm.segmentation.marks import remove_marks
from llnm.segmentation.morphology import square_closing, square_opening

#: grey level above which a pixel is "not background" (interface backgrounds are 0-5 after JPEG)
CONTENT_LEVEL = 12
#: the block must cover at least this share of the frame, else the whole frame is kept
MIN_AREA_FRACTION = 0.12
#: opening removes strokes thinner than this share of the frame's shorter side (text, ticks)
STROKE_FRACTION = 0.02
#: a column of the block belongs to the image when this share of it holds content
RUN_FRACTION = 0.08
#: a dual display's seam (at most this share of the width) does not split the image
SEAM_FRACTION = 0.02
#: closing bridges dark tissue (cysts, shadows, the trachea's air) up to this share of the shorter side
GAP_FRACTION = 0.06
#: a dual display's seam lies in this share of the image's width (the two images are about alike in width)
DUAL_SEAM_WINDOW = (0.4, 0.6)
#: ... and, in every horizontal band, neighbouring columns there are this many times less alike than the
#: image's typical neighbours, and at least DUAL_SEAM_MIN_DECORRELATION unlike (1 - correlation). Chosen on
#: the DDTI train and select frames (never val), the frames also resized x 0.6 and x 1.6 (other matrices),
#: the DDTI crops and every tenth TG3K frame: no single image split (185 frames x 3 sizes, 420 crops, 287
#: TG3K frames); dual displays found 110 / 55 / 80 of 114 (x 1 / 0.6 / 1.6). A missed seam leaves the
#: image whole, as before; a false one would cut a gland in two, so the rule errs towards missing.
DUAL_SEAM_SCORE = 4.0
DUAL_SEAM_MIN_DECORRELATION = 0.15
DUAL_SEAM_BANDS = 4
#: an edge row or column of the box with content in under this share of its pixels is background that
#: a marker touching the image brought in (on small frames: a two-pixel black strip above the image)
EDGE_FRACTION = 0.05


@dataclass(frozen=True)
class ImageRegion:
    """The ultrasound image inside a frame: rows row0:row1, columns col0:col1 (end exclusive)."""

    row0: int
    col0: int
    row1: int
    col1: int
    found: bool  # False: no plausible block, the whole frame is used

    @property
    def offset(self) -> tuple[int, int]:
        return self.row0, self.col0

    @property
    def shape(self) -> tuple[int, int]:
        return self.row1 - self.row0, self.col1 - self.col0

    def crop(self, image: np.ndarray) -> np.ndarray:
        return image[self.row0:self.row1, self.col0:self.col1]

    def paste(self, mask: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
        """A mask on the crop's grid placed back on the whole frame (False outside the crop)."""
        out = np.zeros(frame_shape, dtype=mask.dtype)
        out[self.row0:self.row1, self.col0:self.col1] = mask
        return out


def find_image_region(grey: np.ndarray) -> ImageRegion:
    """The bounding box of the ultrasound image in an (H, W) uint8 frame (see the module docstring)."""
    grey = np.asarray(grey)
    h, w = grey.shape[:2]
    whole = ImageRegion(0, 0, h, w, found=False)
    if h < 16 or w < 16:
        return whole
    short = min(h, w)
    content = grey > CONTENT_LEVEL
    stroke = max(3, int(round(short * STROKE_FRACTION)) | 1)
    opened = square_opening(content, stroke)
    gap = max(3, int(round(short * GAP_FRACTION)))
    # pad so that the closing does not erode blocks that touch the frame's edge
    padded = np.pad(opened, gap, mode="constant")
    padded = square_closing(padded, gap)
    content = ndimage.binary_fill_holes(padded[gap:gap + h, gap:gap + w])
    labels, count = ndimage.label(content)
    if count == 0:
        return whole
    sizes = np.bincount(labels.ravel())[1:]
    biggest = int(np.argmax(sizes)) + 1
    if sizes[biggest - 1] < MIN_AREA_FRACTION * h * w:
        return whole
    rows = np.flatnonzero((labels == biggest).any(axis=1))
    cols = np.flatnonzero((labels == biggest).any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    # the closing may have bridged a grey bar or a column of labels beside the image: keep the longest
    # run of columns that hold content (interface strips stand apart by a wider empty gap than the
    # seam between the two halves of a dual display, which stays one image)
    flags = opened[r0:r1, c0:c1].mean(axis=0) > RUN_FRACTION
    c0, c1 = _longest_run(_bridge(flags, max(1, int(round(w * SEAM_FRACTION)))), c0)
    r0, c0, r1, c1 = _trim_empty_edges(grey > CONTENT_LEVEL, r0, c0, r1, c1, gap)
    if (r1 - r0) * (c1 - c0) < MIN_AREA_FRACTION * h * w:
        return whole
    return ImageRegion(r0, c0, r1, c1, found=True)


def dual_display_seam(grey: np.ndarray) -> int | None:
    """The first column of a dual display's second image in an ultrasound image (the crop of
    `find_image_region`, or one DICOM region), or None for a single image.

    Two images side by side meet at a seam across which the speckle does not continue: there the
    correlation of neighbouring columns drops far below its typical value, from top to bottom (a
    shadow's edge changes the grey level, not the pattern; burned-in calipers, which often stand one
    above the other, are filled in first: llnm.segmentation.marks). A dark gap between the images
    counts as a seam too (a column without variation)."""
    grey = np.asarray(grey)
    if grey.ndim != 2:
        raise ValueError(f"expected an (H, W) image, got shape {grey.shape}")
    return _seam(remove_marks(grey.astype(np.uint8)))


def image_panels(grey: np.ndarray, marks_filled: bool = False) -> list[tuple[int, int]]:
    """The column ranges (start, end) of the images in an (H, W) uint8 ultrasound image: two for a dual
    display (`dual_display_seam`). `marks_filled`: its burned-in marks are already filled in
    (llnm.segmentation.marks.remove_marks, as the models' inputs are), so they are not looked for again."""
    grey = np.asarray(grey)
    seam = _seam(grey) if marks_filled else dual_display_seam(grey)
    return [(0, grey.shape[1])] if seam is None else [(0, seam), (seam, grey.shape[1])]


def _seam(filled: np.ndarray) -> int | None:
    """`dual_display_seam` of an image whose marks are filled in."""
    h, w = filled.shape
    if h < 4 * DUAL_SEAM_BANDS or w < 32:
        return None
    pixels = filled.astype(np.float32)
    edges = np.linspace(0.05 * h, 0.95 * h, DUAL_SEAM_BANDS + 1).astype(int)
    unlike = np.stack([_column_decorrelation(pixels[a:b]) for a, b in zip(edges[:-1], edges[1:])])
    relative = unlike / np.maximum(np.median(unlike, axis=1, keepdims=True), 1e-3)
    score = relative.min(axis=0)  # a seam runs the image's whole height
    lo, hi = int(w * DUAL_SEAM_WINDOW[0]), int(w * DUAL_SEAM_WINDOW[1])
    k = lo + int(np.argmax(score[lo:hi]))
    if score[k] < DUAL_SEAM_SCORE or unlike[:, k].min() < DUAL_SEAM_MIN_DECORRELATION:
        return None
    return k + 1


def _column_decorrelation(rows: np.ndarray) -> np.ndarray:
    """1 - the correlation over rows of each column with the next (width - 1 values; 1 where a column
    does not vary)."""
    a = rows[:, :-1] - rows[:, :-1].mean(axis=0)
    b = rows[:, 1:] - rows[:, 1:].mean(axis=0)
    norm = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    corr = np.divide((a * b).sum(axis=0), norm, out=np.zeros(a.shape[1], dtype=np.float32), where=norm > 1e-6)
    return 1.0 - corr


def _trim_empty_edges(content: np.ndarray, r0: int, c0: int, r1: int, c1: int,
                      limit: int) -> tuple[int, int, int, int]:
    """The box without edge rows and columns that hold content in under EDGE_FRACTION of their pixels,
    at most `limit` from each side (background a touching marker brought in, not dark tissue deeper in)."""
    for _ in range(limit):
        if r1 - r0 > 2 and content[r0, c0:c1].mean() < EDGE_FRACTION:
            r0 += 1
        if r1 - r0 > 2 and content[r1 - 1, c0:c1].mean() < EDGE_FRACTION:
            r1 -= 1
        if c1 - c0 > 2 and content[r0:r1, c0].mean() < EDGE_FRACTION:
            c0 += 1
        if c1 - c0 > 2 and content[r0:r1, c1 - 1].mean() < EDGE_FRACTION:
            c1 -= 1
    return r0, c0, r1, c1


def _bridge(flags: np.ndarray, gap: int) -> np.ndarray:
    """flags with runs of False no longer than gap, between two True, set True."""
    out = flags.copy()
    true = np.flatnonzero(flags)
    for a, b in zip(true[:-1], true[1:]):
        if 1 < b - a <= gap + 1:
            out[a:b] = True
    return out


def _longest_run(flags: np.ndarray, start: int) -> tuple[int, int]:
    """(first, end) of the longest run of True in flags, shifted by start."""
    best, best_len, run_start = (0, len(flags)), 0, None
    for i, flag in enumerate(np.append(flags, False)):
        if flag and run_start is None:
            run_start = i
        elif not flag and run_start is not None:
            if i - run_start > best_len:
                best, best_len = (run_start, i), i - run_start
            run_start = None
    return start + best[0], start + best[1]
