"""Letterboxing: fit a frame of any shape into the models' fixed square input, and map back.

Both segmentation models take a fixed square input. The frame is scaled to fit (aspect ratio kept)
and centred on a constant background; `unletterbox` crops the padding off a model-grid map and
resizes it to the frame's own grid, so masks line up with the pixels they describe. Pillow only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class Letterbox:
    """Where the frame sits inside the square model input."""

    size: int  # side of the model input
    scale: float  # model pixels per frame pixel
    pad_x: int  # left padding in model pixels
    pad_y: int  # top padding in model pixels
    width: int  # scaled frame width in model pixels
    height: int  # scaled frame height in model pixels
    frame_shape: tuple[int, int]  # (H, W) of the original frame


def to_grey(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8 from greyscale, RGB(A) or float input; RGB is averaged (US frames are grey content)."""
    array = np.asarray(image)
    if array.ndim == 3:
        array = array[..., :3].astype(np.float32).mean(axis=2)
    if array.ndim != 2:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return array


def regrade(image: np.ndarray, gamma: float) -> np.ndarray:
    """(H, W) uint8 with its grey levels mapped by 255 (g / 255)^gamma: the frame as another device's
    display curve would show it (gamma > 1 darker mid-tones, < 1 brighter). For training augmentation
    and the device-robustness benchmark; the runtime never regrades."""
    lut = np.clip(np.round(255.0 * (np.arange(256) / 255.0) ** gamma), 0, 255).astype(np.uint8)
    return lut[np.asarray(image, dtype=np.uint8)]


def soften(image: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W) uint8 blurred by a Gaussian of `sigma` pixels (Pillow's): the frame as a lower-frequency
    transducer or a softer vendor filter would show it. For training augmentation and the
    device-robustness benchmark; the runtime never blurs."""
    image = np.asarray(image, dtype=np.uint8)
    if sigma <= 0:
        return image.copy()
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)))


def letterbox(image: np.ndarray, size: int, pad_value: int, fill: float = 1.0) -> tuple[np.ndarray, Letterbox]:
    """Scale a (H, W) uint8 frame to fit `size` x `size` and centre it on `pad_value`; with `fill` < 1
    the frame fits a centred square of that share of the side instead (a smaller view of the same
    frame, for test-time augmentation)."""
    if not 0.0 < fill <= 1.0:
        raise ValueError(f"fill must lie in (0, 1], got {fill}")
    grey = to_grey(image)
    h, w = grey.shape
    if h == 0 or w == 0:
        raise ValueError("empty image")
    scale = min(size / h, size / w) * fill
    new_w, new_h = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    resized = np.asarray(Image.fromarray(grey).resize((new_w, new_h), Image.BILINEAR))
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    out = np.full((size, size), pad_value, dtype=np.uint8)
    out[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = resized
    return out, Letterbox(size, scale, pad_x, pad_y, new_w, new_h, (h, w))


def unletterbox(grid: np.ndarray, box: Letterbox) -> np.ndarray:
    """Map a float map on the model grid (size x size) back onto the frame grid (H, W), bilinearly."""
    if grid.shape != (box.size, box.size):
        raise ValueError(f"expected a {box.size}x{box.size} map, got {grid.shape}")
    inner = np.ascontiguousarray(grid[box.pad_y:box.pad_y + box.height, box.pad_x:box.pad_x + box.width],
                                 dtype=np.float32)
    h, w = box.frame_shape
    return np.asarray(Image.fromarray(inner).resize((w, h), Image.BILINEAR))


def rebox(grid: np.ndarray, source: Letterbox, target: Letterbox) -> np.ndarray:
    """A float map on `source`'s model grid moved onto `target`'s, both letterboxes of the same frame
    (one resize of the frame's part, bilinear): to compare and average what the model saw at two fills."""
    if source.frame_shape != target.frame_shape:
        raise ValueError("the two letterboxes hold different frames")
    inner = np.ascontiguousarray(grid[source.pad_y:source.pad_y + source.height,
                                      source.pad_x:source.pad_x + source.width], dtype=np.float32)
    out = np.zeros((target.size, target.size), dtype=np.float32)
    out[target.pad_y:target.pad_y + target.height, target.pad_x:target.pad_x + target.width] = np.asarray(
        Image.fromarray(inner).resize((target.width, target.height), Image.BILINEAR))
    return out


def box_to_frame(xyxy: np.ndarray, box: Letterbox) -> tuple[int, int, int, int]:
    """A model-grid box (x0, y0, x1, y1) as integer frame pixels, clipped to the frame."""
    h, w = box.frame_shape
    x0 = (float(xyxy[0]) - box.pad_x) / box.scale
    y0 = (float(xyxy[1]) - box.pad_y) / box.scale
    x1 = (float(xyxy[2]) - box.pad_x) / box.scale
    y1 = (float(xyxy[3]) - box.pad_y) / box.scale
    return (int(np.clip(np.floor(x0), 0, w)), int(np.clip(np.floor(y0), 0, h)),
            int(np.clip(np.ceil(x1), 0, w)), int(np.clip(np.ceil(y1), 0, h)))
