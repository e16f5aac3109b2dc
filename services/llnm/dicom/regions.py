"""Physical calibration of ultrasound images and the crop to the B-mode tissue region.

Ultrasound rarely has PixelSpacing. Its geometry is in SequenceOfUltrasoundRegions (0018,6011): each
region has inclusive pixel bounds RegionLocationMinX0..MaxX1 / MinY0..MaxY1, a RegionSpatialFormat
(1 = 2D), a RegionDataType (1 = tissue, 2 = colour flow, 3/4 = spectral Doppler ...), physical units
(3 = cm) and PhysicalDeltaX/Y (units per pixel). A frame may hold several regions (dual display, a
Doppler strip under the B-mode image, a colour bar); every 2D tissue region is one candidate view and
nothing is ever measured across regions.

Order of trust: calibrated 2D tissue regions; else PixelSpacing (or ImagerPixelSpacing) of the whole
frame; else the frame is analysed in pixels and every output says "uncalibrated".
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

SPATIAL_FORMAT_2D = 1
DATA_TYPE_TISSUE = 1
#: RegionDataType values that mean the frame shows Doppler (colour flow, spectral, traces of them).
DOPPLER_DATA_TYPES = frozenset({2, 3, 4, 5, 6, 7})
UNITS_CM = 3
#: How far a region may run past the image edge and still be clipped rather than distrusted (pixels).
#: Vendors write MaxX1 = Columns now and then; a larger overshoot means the image was resized after
#: the regions were written, so their calibration no longer holds.
EDGE_TOLERANCE_PX = 2


@dataclass(frozen=True)
class UsRegion:
    """One ultrasound region, bounds inclusive as DICOM defines them."""

    x0: int
    y0: int
    x1: int
    y1: int
    spatial_format: int
    data_type: int
    units_x: int
    units_y: int
    delta_x: float  # physical units per pixel
    delta_y: float

    @property
    def is_tissue_2d(self) -> bool:
        return self.spatial_format == SPATIAL_FORMAT_2D and self.data_type == DATA_TYPE_TISSUE

    @property
    def is_calibrated(self) -> bool:
        return (self.units_x == UNITS_CM and self.units_y == UNITS_CM
                and self.delta_x > 0 and self.delta_y > 0)

    @property
    def spacing_mm(self) -> tuple[float, float] | None:
        """(row, column) mm per pixel, or None without cm calibration."""
        if not self.is_calibrated:
            return None
        return (self.delta_y * 10.0, self.delta_x * 10.0)

    @property
    def area(self) -> int:
        return (self.x1 - self.x0 + 1) * (self.y1 - self.y0 + 1)


@dataclass(frozen=True)
class Crop:
    """A rectangle of the frame to analyse, with its spacing and where the spacing came from."""

    row0: int
    col0: int
    row1: int  # exclusive
    col1: int  # exclusive
    spacing_mm: tuple[float, float] | None
    calibration: str  # "ultrasound region", "pixel spacing" or "uncalibrated"
    region_index: int | None = None  # index into SequenceOfUltrasoundRegions

    @property
    def offset(self) -> tuple[int, int]:
        return (self.row0, self.col0)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.row1 - self.row0, self.col1 - self.col0)


def parse_regions(ds: Dataset) -> list[UsRegion]:
    out = []
    for item in ds.get("SequenceOfUltrasoundRegions", []) or []:
        try:
            out.append(UsRegion(
                x0=int(item.RegionLocationMinX0), y0=int(item.RegionLocationMinY0),
                x1=int(item.RegionLocationMaxX1), y1=int(item.RegionLocationMaxY1),
                spatial_format=int(item.get("RegionSpatialFormat", 0) or 0),
                data_type=int(item.get("RegionDataType", 0) or 0),
                units_x=int(item.get("PhysicalUnitsXDirection", 0) or 0),
                units_y=int(item.get("PhysicalUnitsYDirection", 0) or 0),
                delta_x=abs(float(item.get("PhysicalDeltaX", 0.0) or 0.0)),
                delta_y=abs(float(item.get("PhysicalDeltaY", 0.0) or 0.0)),
            ))
        except (AttributeError, TypeError, ValueError):
            continue  # a region without bounds cannot be used; the others still can
    return out


def has_doppler_region(ds: Dataset) -> bool:
    return any(r.data_type in DOPPLER_DATA_TYPES for r in parse_regions(ds))


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            try:
                row, col = float(value[0]), float(value[1])
            except (TypeError, ValueError):
                continue
            if row > 0 and col > 0:
                return (row, col)
    return None


def tissue_crops(ds: Dataset, warnings: list[str] | None = None) -> list[Crop]:
    """Every 2D tissue region as a crop (largest first), else the whole frame with the best spacing.

    `warnings` receives a sentence when regions exist but cannot be trusted.
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    regions = parse_regions(ds)
    crops: list[Crop] = []
    distrusted = False
    for index, r in enumerate(regions):
        if not r.is_tissue_2d:
            continue
        if (r.x0 < 0 or r.y0 < 0 or r.x1 >= cols + EDGE_TOLERANCE_PX or r.y1 >= rows + EDGE_TOLERANCE_PX
                or r.x1 <= r.x0 or r.y1 <= r.y0):
            distrusted = True
            continue
        x1, y1 = min(r.x1, cols - 1), min(r.y1, rows - 1)
        if r.x0 > x1 or r.y0 > y1:  # within the tolerance yet wholly past the edge: nothing left to crop
            distrusted = True
            continue
        spacing = r.spacing_mm
        crops.append(Crop(
            row0=r.y0, col0=r.x0, row1=y1 + 1, col1=x1 + 1, spacing_mm=spacing,
            calibration="ultrasound region" if spacing else "uncalibrated", region_index=index,
        ))
    if distrusted and warnings is not None:
        warnings.append("ultrasound region bounds lie outside the image (resized after acquisition?): "
                        "regions ignored")
    if crops:
        # Largest first: on a dual display both halves are views; the bigger one is the main image.
        crops.sort(key=lambda c: (-(c.shape[0] * c.shape[1]), c.col0, c.row0))
        return crops
    spacing = _pixel_spacing(ds)
    return [Crop(0, 0, rows, cols, spacing, "pixel spacing" if spacing else "uncalibrated")]
