"""Reading: every real ultrasound file decodes; calibration, crop, frame choice and patient inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from llnm.dicom import frames, patient, regions
from llnm.dicom.loading import group_by_study, load_study, read_studies
from llnm.dicom.reading import decode_frame, number_of_frames, read_full, to_rgb8
from tests.dicom.conftest import ALL_REAL, BMODE_FILES, real_file


@pytest.mark.parametrize("name", ALL_REAL)
def test_every_real_ultrasound_file_decodes_to_rgb8(name):
    ds = read_full(real_file(name))
    for index in {0, number_of_frames(ds) - 1}:
        rgb = decode_frame(ds, index)
        assert rgb.dtype == np.uint8 and rgb.shape == (ds.Rows, ds.Columns, 3)
        assert rgb.max() > 0


@pytest.mark.parametrize("name", ALL_REAL)
def test_real_files_give_views_only_where_there_is_bmode(name):
    (study,), orphans = read_studies([real_file(name)])
    assert orphans == []
    if name in BMODE_FILES:
        assert study.views, study.warnings
        for view in study.views:
            assert view.image.dtype == np.uint8 and view.image.ndim == 2
            assert frames.is_bmode(np.repeat(view.image[..., None], 3, axis=2))
    else:  # colour/power Doppler: dropped, and the summary will say why
        assert study.views == []
        assert any("colour" in w for w in study.warnings)


def test_dual_display_gives_two_calibrated_views_from_the_regions():
    (study,), _ = read_studies([real_file("gdcm-US-ALOKA-16.dcm")])
    assert [v.crop_offset for v in study.views] == [(24, 32), (24, 336)]
    for view in study.views:
        assert view.image.shape == (415 - 24 + 1, 335 - 32 + 1)
        assert view.spacing_mm == pytest.approx((0.3826530650258064, 0.3826530650258064))


def test_regions_that_do_not_fit_the_image_are_not_trusted():
    """examples_ybr_color.dcm was downsized after its regions were written (320 wide, region to 595)."""
    (study,), _ = read_studies([real_file("examples_ybr_color.dcm")])
    (view,) = study.views
    assert view.spacing_mm is None
    # without trusted regions the ultrasound image is found in the pixels: the sector, not the
    # interface around it (labels at the top left, the toolbar at the bottom)
    (r0, c0), (h, w) = view.crop_offset, view.image.shape
    assert r0 > 10 and c0 > 60 and r0 + h < 225 and c0 + w < 300 and h * w > 0.2 * 240 * 320
    assert any("outside the image" in w for w in study.warnings)
    assert any("uncalibrated" in w for w in study.warnings)


@pytest.mark.parametrize("past_the_edge", [
    {"x0": 0, "y0": 120, "x1": 159, "y1": 121},  # starts at Rows: within the edge tolerance, yet no row of it
    {"x0": 160, "y0": 0, "x1": 161, "y1": 119},  # starts at Columns
])
def test_a_region_wholly_past_the_edge_is_not_trusted_and_gives_no_empty_view(us_factory, tmp_path, past_the_edge):
    us_factory("a.dcm", regions=[{"x0": 0, "y0": 0, "x1": 159, "y1": 119}, past_the_edge])
    (study,), _ = read_studies([tmp_path])
    (view,) = study.views
    assert view.crop_offset == (0, 0) and view.image.shape == (120, 160)
    assert any("outside the image" in w for w in study.warnings)
    assert all(c.shape[0] > 0 and c.shape[1] > 0 for c in regions.tissue_crops(read_full(tmp_path / "a.dcm")))


def test_region_bounds_are_inclusive_and_spacing_is_cm_to_mm(us_factory, tmp_path):
    pixel = np.zeros((120, 160), np.uint8)
    pixel[10:101, 20:141] = 100  # the region 20..140 x 10..100 inclusive
    us_factory("a.dcm", pixel=pixel, regions=[
        {"x0": 20, "y0": 10, "x1": 140, "y1": 100, "dx": 0.0125, "dy": 0.01},
        {"x0": 0, "y0": 105, "x1": 159, "y1": 119, "type": 3, "format": 3},  # spectral strip: not a view
    ])
    (study,), _ = read_studies([tmp_path])
    # a Doppler region makes the whole instance a Doppler image
    assert study.views == []
    us_factory("a.dcm", pixel=pixel, regions=[{"x0": 20, "y0": 10, "x1": 140, "y1": 100, "dx": 0.0125, "dy": 0.01}])
    (study,), _ = read_studies([tmp_path])
    (view,) = study.views
    assert view.crop_offset == (10, 20)
    assert view.image.shape == (91, 121)
    assert (view.image == 100).all()
    assert view.spacing_mm == pytest.approx((0.1, 0.125))


def test_pixel_spacing_is_the_fallback_and_nothing_means_uncalibrated(us_factory, tmp_path):
    us_factory("a.dcm", PixelSpacing=[0.2, 0.3])
    (study,), _ = read_studies([tmp_path])
    assert study.views[0].spacing_mm == pytest.approx((0.2, 0.3))
    assert study.views[0].source.calibration == "pixel spacing"
    us_factory("a.dcm")
    (study,), _ = read_studies([tmp_path])
    assert study.views[0].spacing_mm is None
    assert study.views[0].source.calibration == "uncalibrated"


def test_uncalibrated_region_units_give_no_spacing(us_factory, tmp_path):
    us_factory("a.dcm", regions=[{"x0": 0, "y0": 0, "x1": 159, "y1": 119, "units": 0}])
    (study,), _ = read_studies([tmp_path])
    assert study.views[0].spacing_mm is None


def test_cine_picks_the_sharpest_greyscale_frame_and_skips_colour_frames(us_factory, tmp_path):
    rng = np.random.default_rng(0)
    cine = np.full((7, 60, 80), 90, np.uint8)
    cine[3] = rng.integers(0, 255, (60, 80), dtype=np.uint8)  # the sharp frame
    ds = us_factory("cine.dcm", pixel=cine)
    (study,), _ = read_studies([tmp_path])
    (view,) = study.views
    assert view.source.frame_number == 4 and view.source.number_of_frames == 7
    assert view.source.sop_class_uid == ds.SOPClassUID
    assert np.array_equal(view.image, cine[3])


def test_cine_of_uniform_frames_picks_the_middle_one():
    scores = {i: 1.0 for i in range(5)}
    assert frames.pick_representative(scores, 5) == 2
    assert frames.pick_representative({}, 5) is None
    assert frames.candidate_frame_indices(120)[:2] == [0, 4] and len(frames.candidate_frame_indices(120)) == 32


def test_colour_doppler_crop_is_not_bmode():
    grey = np.full((50, 50, 3), 100, np.uint8)
    assert frames.is_bmode(grey)
    colour = grey.copy()
    colour[10:20, 10:20] = (220, 40, 20)  # 4 % red flow
    assert not frames.is_bmode(colour)
    # on a whole frame the coloured chrome at the edges does not count
    chrome = grey.copy()
    chrome[:5] = (0, 0, 255)
    assert frames.is_bmode(chrome, whole_frame=True) and not frames.is_bmode(chrome)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless, DeflatedExplicitVRLittleEndian])
def test_compressed_syntaxes_decode_losslessly(us_factory, tmp_path, syntax):
    ds = us_factory("a.dcm")
    original = ds.pixel_array.copy()
    if syntax == DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        ds.compress(syntax)
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    (study,), _ = read_studies([tmp_path])
    assert np.array_equal(study.views[0].image, original)


def test_photometric_variants():
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsStored = 8
    assert to_rgb8(np.array([[0, 255]], np.uint8), ds)[0, :, 0].tolist() == [255, 0]
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored = 12
    out = to_rgb8(np.array([[0, 2000, 4000]], np.uint16), ds)
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_ybr_full_is_converted_once(us_factory, tmp_path):
    from pydicom.pixels import convert_color_space

    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[...] = (200, 50, 30)
    ds = us_factory("ybr.dcm", pixel=np.zeros((8, 8), np.uint8))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL", 0
    ds.PixelData = convert_color_space(rgb, "RGB", "YBR_FULL").tobytes()
    ds.save_as(tmp_path / "ybr.dcm", enforce_file_format=True)
    out = decode_frame(read_full(tmp_path / "ybr.dcm"), 0)
    assert np.abs(out.astype(int) - rgb).max() <= 2


def test_jpeg_ybr_mislabelled_rgb_decodes_the_same():
    path = real_file("examples_ybr_color.dcm")
    right = decode_frame(read_full(path), 5)
    wrong = read_full(path)
    wrong.PhotometricInterpretation = "RGB"
    with pytest.warns(UserWarning):
        assert np.array_equal(decode_frame(wrong, 5), right)


def test_palette_colour_file_becomes_grey_tissue():
    (study,), _ = read_studies([real_file("OBXXXX1A.dcm")])
    (view,) = study.views
    assert view.crop_offset == (60, 120)
    # MaxX1 = 800 on an 800-wide image: a one-pixel vendor overshoot is clipped, not distrusted
    assert view.image.shape == (518 - 60 + 1, 800 - 120)
    assert view.spacing_mm == pytest.approx((0.2622878766, 0.2622878766))


def test_age_sex_and_their_fallbacks():
    ds = Dataset()
    ds.PatientSex = "F"
    ds.PatientAge = "045Y"
    assert patient.patient_sex(ds) == "F"
    assert patient.patient_age_years(ds) == (45.0, "PatientAge")
    ds.PatientAge = "006M"
    assert patient.patient_age_years(ds)[0] == 0.5
    del ds.PatientAge
    ds.PatientBirthDate, ds.StudyDate = "19800615", "20250615"
    assert patient.patient_age_years(ds) == (pytest.approx(45.0, abs=0.01), "PatientBirthDate")
    ds.PatientSex = "O"
    assert patient.patient_sex(ds) is None
    assert patient.patient_age_years(Dataset()) == (None, "missing")
    assert patient.parse_age_string("45Y") is None


def _text_sr(path: Path, study_uid: str, text: str) -> None:
    from pydicom.dataset import FileMetaDataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    item = Dataset()
    item.ValueType = "TEXT"
    item.RelationshipType = "CONTAINS"
    item.TextValue = text
    ds.ContentSequence = [item]
    ds.save_as(path, enforce_file_format=True)


def test_report_from_sr_else_sidecar_else_warning(us_factory, tmp_path):
    study_uid = generate_uid()
    us_factory("img.dcm", study_uid=study_uid)
    groups, _ = group_by_study([tmp_path])
    study = load_study(groups[study_uid])
    assert study.report_text is None and any("no radiology report" in w for w in study.warnings)
    sidecars = tmp_path / "reports"
    sidecars.mkdir()
    (sidecars / f"{study_uid}.txt").write_text("hypoechoic nodule, irregular margin\n")
    assert load_study(groups[study_uid], sidecars).report_text == "hypoechoic nodule, irregular margin"
    _text_sr(tmp_path / "sr.dcm", study_uid, "Solid nodule near the capsule.")
    groups, _ = group_by_study([tmp_path / "img.dcm", tmp_path / "sr.dcm"])
    study = load_study(groups[study_uid], sidecars)
    assert study.report_text == "Solid nodule near the capsule."
    assert study.sex == "F" and study.age_years == pytest.approx(55.0, abs=0.01)


def test_region_parser_skips_items_without_bounds():
    ds = Dataset()
    ds.Rows, ds.Columns = 10, 10
    broken = Dataset()
    broken.RegionSpatialFormat = 1
    ds.SequenceOfUltrasoundRegions = [broken]
    assert regions.parse_regions(ds) == []
    (crop,) = regions.tissue_crops(ds)
    assert (crop.row0, crop.col0, crop.row1, crop.col1) == (0, 0, 10, 10)


def test_cine_skips_colour_doppler_frames(us_factory, tmp_path):
    rng = np.random.default_rng(2)
    cine = np.repeat(np.full((6, 40, 50), 90, np.uint8)[..., None], 3, axis=3)
    cine[1] = rng.integers(0, 255, (40, 50, 1), dtype=np.uint8)  # sharp grey frame
    cine[4] = rng.integers(0, 255, (40, 50, 1), dtype=np.uint8)
    cine[4, 10:30, 10:30] = (230, 30, 30)  # sharper still, but with colour flow
    cine[4, :, ::2] = 0
    ds = us_factory("rgbcine.dcm", pixel=np.zeros((6, 40, 50), np.uint8))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = cine.tobytes()
    ds.save_as(tmp_path / "rgbcine.dcm", enforce_file_format=True)
    (study,), _ = read_studies([tmp_path])
    (view,) = study.views
    assert view.source.frame_number == 2


def test_secondary_capture_of_ultrasound_is_read_and_our_own_outputs_are_not(us_factory, tmp_path):
    from llnm import MANUFACTURER

    us_factory("sc.dcm", sop_class="1.2.840.10008.5.1.4.1.1.7", PixelSpacing=[0.1, 0.1])
    us_factory("ours.dcm", sop_class="1.2.840.10008.5.1.4.1.1.7", Manufacturer=MANUFACTURER,
               study_uid=pydicom.dcmread(tmp_path / "sc.dcm").StudyInstanceUID)
    (study,), _ = read_studies([tmp_path])
    (view,) = study.views
    assert view.source.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7" and view.spacing_mm == (0.1, 0.1)


def test_coloured_calipers_are_filled_in_from_the_grey_tissue(us_factory, tmp_path):
    from scipy import ndimage

    rng = np.random.default_rng(3)
    grey = rng.integers(80, 100, (120, 160), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    cross = np.zeros((120, 160), bool)
    cross[55:66, 80] = cross[60, 75:86] = True
    rgb[cross] = (0, 255, 0)  # a green "+" (luma 150), as some devices draw calipers
    ds = us_factory("calipers.dcm", pixel=np.zeros((120, 160), np.uint8))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = rgb.tobytes()
    ds.save_as(tmp_path / "calipers.dcm", enforce_file_format=True)
    (study,), _ = read_studies([tmp_path])
    (view,) = study.views
    (r0, c0), (h, w) = view.crop_offset, view.image.shape
    window = (slice(r0, r0 + h), slice(c0, c0 + w))
    on_cross, near_cross = cross[window], ndimage.binary_dilation(cross, np.ones((3, 3), bool))[window]
    assert on_cross.any()
    assert 75 <= view.image[on_cross].min() and view.image[on_cross].max() <= 105  # tissue grey, not 150
    assert np.array_equal(view.image[~near_cross], grey[window][~near_cross])  # the rest as it came


def test_views_past_the_limit_are_named_in_a_warning_even_within_one_instance(tmp_path, monkeypatch):
    """Two dual displays (two regions each) with room for three views: the fourth region is not analysed,
    and the warning says so, naming its instance."""
    from llnm.dicom import loading
    from tests.dicom.conftest import make_us

    monkeypatch.setattr(loading, "MAX_VIEWS", 3)
    study_uid = generate_uid()
    dual = [{"x0": 0, "y0": 0, "x1": 79, "y1": 119}, {"x0": 80, "y0": 0, "x1": 159, "y1": 119}]
    for name in ("a.dcm", "b.dcm"):
        make_us(tmp_path / name, study_uid=study_uid, regions=dual)
    groups, _ = group_by_study([tmp_path])
    study = load_study(groups[study_uid])
    assert len(study.views) == 3
    read = [v.source.sop_instance_uid for v in study.views]
    (cut,) = [uid for uid in set(read) if read.count(uid) == 1]  # the instance read last lost one region
    assert f"more than 3 views: 1 region(s) of instance {cut} not analysed" in study.warnings
