"""Decode any ultrasound instance a PACS may route into 8-bit RGB frames.

Ultrasound arrives as MONOCHROME1/2, RGB, YBR_FULL(_422), YBR_ICT/RCT (JPEG 2000) or PALETTE COLOR, 8 or
16 bits, single frame or cine, in any transfer syntax pydicom 3 can decode with the installed plug-ins
(pylibjpeg-libjpeg, -openjpeg, -rle, pyjpegls, Pillow). Everything is brought to (H, W, 3) uint8 RGB so
that frame selection can tell grey tissue from colour Doppler, and so the key image can be drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

#: SOP classes whose pixels we analyse. Secondary Capture counts only when its Modality is US.
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
US_RETIRED_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6"
US_RETIRED_MULTIFRAME_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.3"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_SC_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.7.1",  # single bit
    "1.2.840.10008.5.1.4.1.1.7.2",  # grayscale byte
    "1.2.840.10008.5.1.4.1.1.7.3",  # grayscale word
    "1.2.840.10008.5.1.4.1.1.7.4",  # true colour
)
US_SOP_CLASSES = frozenset({
    US_IMAGE_STORAGE, US_MULTIFRAME_IMAGE_STORAGE, US_RETIRED_IMAGE_STORAGE,
    US_RETIRED_MULTIFRAME_IMAGE_STORAGE,
})
SC_SOP_CLASSES = frozenset({SECONDARY_CAPTURE_STORAGE, *MULTIFRAME_SC_STORAGE})
#: Retired ultrasound SOP classes (PS3.4) and their current equivalents. highdicom knows only current IODs:
#: what it builds from such an instance (SEG source, SR evidence and image regions) uses the current class,
#: and every reference written then names the instance's real class again.
CURRENT_CLASS = {US_RETIRED_IMAGE_STORAGE: US_IMAGE_STORAGE,
                 US_RETIRED_MULTIFRAME_IMAGE_STORAGE: US_MULTIFRAME_IMAGE_STORAGE}
#: Classes whose frames can be referenced one by one (ReferencedFrameNumber).
MULTIFRAME_SOP_CLASSES = frozenset({
    US_MULTIFRAME_IMAGE_STORAGE, US_RETIRED_MULTIFRAME_IMAGE_STORAGE, *MULTIFRAME_SC_STORAGE,
})

#: Transfer syntaxes we decode (and the listener should accept for images).
SUPPORTED_TRANSFER_SYNTAXES: dict[str, str] = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian (retired)",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 and 4)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1 (Process 14, Selection Value 1)",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "HTJ2K Lossless",
    "1.2.840.10008.1.2.4.202": "HTJ2K Lossless RPCL",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}


class UnreadableInstance(ValueError):
    """This one file cannot be used; the message says why in words fit for summary.json."""


def read_header(path: Path) -> Dataset:
    """The dataset without pixel data (cheap: used to group files and classify them)."""
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for broken files
        raise UnreadableInstance(f"not a readable DICOM file ({type(exc).__name__})") from exc


def read_full(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:
        raise UnreadableInstance(f"not a readable DICOM file ({type(exc).__name__})") from exc
    if "PixelData" not in ds:
        raise UnreadableInstance("no pixel data")
    return ds


def transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(uid)) if uid else UID("1.2.840.10008.1.2")


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def decode_frame(ds: Dataset, index: int) -> np.ndarray:
    """Frame `index` (0-based) as (Rows, Columns, 3) uint8 RGB."""
    from pydicom.pixels import pixel_array

    ts = transfer_syntax(ds)
    if str(ts) not in SUPPORTED_TRANSFER_SYNTAXES:
        raise UnreadableInstance(f"unsupported transfer syntax {ts} ({ts.name})")
    try:
        if number_of_frames(ds) > 1:
            arr = pixel_array(ds, index=index)
        else:
            arr = ds.pixel_array
    except Exception as exc:
        raise UnreadableInstance(
            f"pixel data cannot be decoded ({type(exc).__name__}: {str(exc)[:120]})"
        ) from exc
    return to_rgb8(arr, ds)


def to_rgb8(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """One decoded frame, whatever its photometric interpretation, as RGB uint8."""
    from pydicom.pixels import apply_color_lut

    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if pi == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return _scale_to_uint8(rgb, bits=16 if rgb.dtype != np.uint8 else 8)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        # pydicom 3 returns YBR_FULL/_422/ICT/RCT already converted to RGB (as_rgb), compressed or not,
        # and trusts the JPEG codestream over a mislabelled Photometric Interpretation.
        bits = int(ds.get("BitsStored") or 8)
        return _scale_to_uint8(arr, bits=bits)
    if arr.ndim != 2:
        raise UnreadableInstance(f"unexpected pixel array shape {arr.shape}")
    grey = _grey_to_uint8(arr, ds)
    if pi == "MONOCHROME1":
        grey = 255 - grey
    return np.repeat(grey[:, :, None], 3, axis=2)


def _scale_to_uint8(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    top = float(2 ** bits - 1) if bits <= 16 else float(arr.max() or 1)
    return np.clip(np.rint(arr.astype(np.float32) * (255.0 / top)), 0, 255).astype(np.uint8)


def _grey_to_uint8(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Greyscale to 8 bits: 8-bit data as is; deeper data through its window if stated, else min-max."""
    if arr.dtype == np.uint8:
        return arr
    data = arr.astype(np.float32)
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        lo, hi = c - w / 2.0, c + w / 2.0
    else:
        lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip(np.rint((data - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, the grey level a B-mode display shows."""
    grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
