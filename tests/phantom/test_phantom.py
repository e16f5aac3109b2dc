"""The phantom generator: layout, determinism, DICOM validity, truth on the crop grid, risk direction."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from llnm.phantom import generate_study, write_phantom_set
from llnm.phantom import risk
from llnm.phantom.layout import LABEL_COLUMNS, VIEW_COLUMNS

ROWS, COLS = 240, 320  # small frames keep the tests fast


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_set(tmp_path_factory.mktemp("ph") / "set", studies=3, seed=11, rows=ROWS, cols=COLS,
                             rgb_fraction=0.5)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_columns(phantom_set: Path) -> None:
    labels = _rows(phantom_set / "labels.csv")
    views = _rows(phantom_set / "views.csv")
    assert list(labels[0].keys()) == LABEL_COLUMNS
    assert list(views[0].keys()) == VIEW_COLUMNS
    assert len(labels) == 3 and len(views) == 6
    for row in labels:
        assert row["llnm"] in {"0", "1"}
        assert row["risk_level"] in ({"1"} if row["llnm"] == "0" else {"2", "3"})
        assert 0.0 < float(row["p_true"]) < 1.0
        assert row["sex"] in {"M", "F"} and 18 <= int(row["age"]) <= 90
        assert "nodule" in row["report"] and "\n" in row["report"]
        study_dir = phantom_set / row["study_uid"]
        assert sorted(p.name for p in study_dir.iterdir()) == ["SR_report.dcm", "US_1.dcm", "US_2.dcm"]
    params = [json.loads(line) for line in (phantom_set / "truth" / "params.jsonl").read_text().splitlines()]
    assert [p["study_uid"] for p in params] == [r["study_uid"] for r in labels]
    assert {"capsule_distance_mm", "size_mm", "margin", "echogenicity", "calcification",
            "lobe_position"} <= set(params[0])
    dicoms = {p.relative_to(phantom_set).parts[0] for p in phantom_set.rglob("*.dcm")}
    assert "truth" not in dicoms and len(dicoms) == 3


def test_same_seed_gives_identical_bytes(phantom_set: Path, tmp_path: Path) -> None:
    """Byte-identical, also when written by two processes."""
    again = write_phantom_set(tmp_path / "again", studies=3, seed=11, rows=ROWS, cols=COLS, rgb_fraction=0.5,
                              jobs=2)
    assert _digest(again) == _digest(phantom_set)
    other = write_phantom_set(tmp_path / "other", studies=1, seed=12, rows=ROWS, cols=COLS)
    assert _rows(other / "labels.csv")[0]["study_uid"] != _rows(phantom_set / "labels.csv")[0]["study_uid"]


def test_a_layout_only_set_is_the_same_layout_without_the_dicom_studies(phantom_set: Path, tmp_path: Path) -> None:
    """What training and evaluation read is written byte for byte as in the full set; no study folder
    and no DICOM file (a lent GPU machine writes its benchmark this way: scripts/device)."""
    layout = write_phantom_set(tmp_path / "layout", studies=3, seed=11, rows=ROWS, cols=COLS, rgb_fraction=0.5,
                               dicom=False)
    full = {k: v for k, v in _digest(phantom_set).items() if k.split("/")[0] in {"labels.csv", "views.csv", "truth"}}
    assert _digest(layout) == full
    assert not list(layout.rglob("*.dcm"))


def test_dicom_views_match_truth_crop_and_masks(phantom_set: Path) -> None:
    photometric = set()
    params = {p["study_uid"]: p for p in map(json.loads, (phantom_set / "truth" / "params.jsonl").read_text().splitlines())}
    for row in _rows(phantom_set / "views.csv"):
        uid = row["sop_instance_uid"]
        matches = [p for p in (phantom_set / row["study_uid"]).glob("US_*.dcm")
                   if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == uid]
        assert len(matches) == 1
        ds = pydicom.dcmread(matches[0])
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.6.1"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.StudyInstanceUID == row["study_uid"] and ds.Modality == "US"
        assert ds.BodyPartExamined == "THYROID" and ds.BurnedInAnnotation == "NO"
        assert ds.PatientAge.endswith("Y") and ds.PatientSex in {"M", "F"}
        (region,) = ds.SequenceOfUltrasoundRegions
        assert (region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags) == (1, 1, 0)
        assert (region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection) == (3, 3)
        bounds = (region.RegionLocationMinX0, region.RegionLocationMinY0, region.RegionLocationMaxX1,
                  region.RegionLocationMaxY1)
        assert bounds == tuple(int(row[k]) for k in ("region_x0", "region_y0", "region_x1", "region_y1"))
        assert region.PhysicalDeltaY * 10 == pytest.approx(float(row["spacing_row_mm"]), rel=1e-4)
        assert region.PhysicalDeltaX * 10 == pytest.approx(float(row["spacing_col_mm"]), rel=1e-4)
        pixels = ds.pixel_array
        photometric.add(ds.PhotometricInterpretation)
        if pixels.ndim == 3:
            assert (pixels[..., 0] == pixels[..., 1]).all()
            pixels = pixels[..., 0]
        x0, y0, x1, y1 = bounds
        crop = pixels[y0:y1 + 1, x0:x1 + 1]
        truth = np.asarray(Image.open(phantom_set / row["image"]))
        assert truth.dtype == np.uint8 and np.array_equal(crop, truth)
        for key in ("gland_mask", "nodule_mask"):
            mask = np.asarray(Image.open(phantom_set / row[key]))
            assert mask.shape == truth.shape and set(np.unique(mask)) == {0, 255}
        gland = np.asarray(Image.open(phantom_set / row["gland_mask"])) > 0
        nodule = np.asarray(Image.open(phantom_set / row["nodule_mask"])) > 0
        # the gland holds the nodule unless it bulges through the capsule (then params say ete)
        assert not (nodule & ~gland).any() or params[row["study_uid"]]["ete"]
        outside = np.ones(pixels.shape, bool)
        outside[y0:y1 + 1, x0:x1 + 1] = False
        assert pixels[outside].mean() < 20  # dark border with a few annotations
    assert photometric <= {"MONOCHROME2", "RGB"} and "MONOCHROME2" in photometric


def test_report_sr_holds_the_report_text(phantom_set: Path) -> None:
    for row in _rows(phantom_set / "labels.csv"):
        ds = pydicom.dcmread(phantom_set / row["study_uid"] / "SR_report.dcm")
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.11"
        assert ds.StudyInstanceUID == row["study_uid"] and ds.ValueType == "CONTAINER"
        texts = [item.TextValue for container in ds.ContentSequence for item in container.ContentSequence
                 if item.ValueType == "TEXT"]
        assert "\n".join(texts) == row["report"]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_dciodvfy_reports_no_errors(phantom_set: Path) -> None:
    for path in sorted(phantom_set.rglob("*.dcm"))[:3]:
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert not errors, (path.name, errors)


def test_generate_study_arrays() -> None:
    study = generate_study(5, 2, rows=ROWS, cols=COLS)
    assert [v.name for v in study.views] == ["transverse", "longitudinal"]
    for view in study.views:
        x0, y0, x1, y1 = view.region
        assert view.image.shape == (y1 - y0 + 1, x1 - x0 + 1) == view.gland.shape == view.nodule.shape
        assert view.nodule.any() and view.gland.sum() > view.nodule.sum()
        assert view.image[view.gland & ~view.nodule].std() > 5  # speckle, not a flat fill
    again = generate_study(5, 2, rows=ROWS, cols=COLS)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(study.views, again.views))
    given = study.to_input()
    assert given.study_uid == study.study_uid and given.report_text == study.report.text
    assert [v.crop_offset for v in given.views] == [(v.region[1], v.region[0]) for v in study.views]
    assert study.report.text == again.report.text and study.p_true == again.p_true


def test_risk_directions() -> None:
    base = risk.RiskFactors(capsule_mm=5.0, vertical="lower", size_mm=10.0, margin="smooth", echogenicity="iso",
                            calcification="none", composition="solid", sex="F", age=45.0, ete=False,
                            central_node=False, vascularity="none")
    p0 = risk.p_true(base)
    riskier = [replace(base, capsule_mm=2.0), replace(base, vertical="upper"), replace(base, size_mm=20.0),
               replace(base, margin="irregular"), replace(base, echogenicity="hypo"),
               replace(base, calcification="micro"), replace(base, sex="M"), replace(base, age=30.0),
               replace(base, central_node=True), replace(base, ete=True, capsule_mm=0.0)]
    for f in riskier:
        assert risk.p_true(f) > p0, f


def test_auc_and_bayes_auc(phantom_set: Path, tmp_path: Path) -> None:
    assert risk.auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert risk.auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    value = risk.bayes_auc(phantom_set / "labels.csv")
    assert np.isnan(value) or 0.0 <= value <= 1.0


@pytest.mark.slow
def test_prevalence_and_bayes_auc_in_range() -> None:
    """Over many studies (findings and risk only; no pixels) the set is realistic and learnable."""
    from llnm.phantom.findings import draw_findings

    p, y = [], []
    for i in range(4000):
        rng = np.random.default_rng([3, i])
        f = draw_findings(rng)
        factors = risk.RiskFactors(f.capsule_target_mm, f.vertical, f.size_mm, f.margin, f.echogenicity,
                                   f.calcification, f.composition, f.sex, f.age, f.ete, f.central_node,
                                   f.vascularity)
        p.append(risk.p_true(factors))
        y.append(risk.draw_outcome(p[-1], rng)[0])
    assert 0.3 <= np.mean(y) <= 0.45
    assert 0.83 <= risk.auc(np.array(p), np.array(y)) <= 0.92


def test_textures_change_only_the_nodule(tmp_path: Path) -> None:
    """Real-crop texture (DDTI layout) is added inside the nodule and nowhere else."""
    rng = np.random.default_rng(0)
    (tmp_path / "cropped").mkdir()
    (tmp_path / "mask").mkdir()
    for name in ("1_1", "2_1"):
        Image.fromarray(rng.integers(0, 255, (120, 120), dtype=np.uint8)).save(tmp_path / "cropped" / f"{name}.png")
        mask = np.zeros((120, 120), np.uint8)
        mask[30:90, 25:95] = 255
        Image.fromarray(mask).save(tmp_path / "mask" / f"{name}.gif")
    plain = generate_study(4, 1, rows=ROWS, cols=COLS)
    textured = generate_study(4, 1, rows=ROWS, cols=COLS, textures=tmp_path)
    for a, b in zip(plain.views, textured.views):
        changed = a.image != b.image
        assert changed.any()
        near = ndimage.binary_dilation(a.nodule, iterations=4)
        assert not (changed & ~near).any()
        assert np.array_equal(a.nodule, b.nodule)
    assert plain.p_true == textured.p_true and plain.report.text == textured.report.text


def test_capsule_distance_matches_the_feature_code() -> None:
    """params' realised capsule distance is what llnm.features measures on the truth masks."""
    cpdt = pytest.importorskip("llnm.features.cpdt")
    study = generate_study(9, 0, rows=ROWS, cols=COLS)
    for view in study.views:
        measured = cpdt.cpdt(view.gland, view.nodule, view.spacing_mm)
        assert measured.min_distance_mm == pytest.approx(view.capsule_mm, abs=1e-6)


def test_extrathyroidal_extension_is_visible_and_raises_risk() -> None:
    """A drawn ETE nodule bulges through the capsule in the masks and is counted by the risk model."""
    from llnm.phantom.findings import draw_findings

    index = next(i for i in range(200)
                 if draw_findings(np.random.default_rng(np.random.SeedSequence([6, i]).spawn(8)[0])).ete)
    study = generate_study(6, index, rows=ROWS, cols=COLS)
    assert any((v.nodule & ~v.gland).any() for v in study.views)
    assert study.factors.ete and study.factors.capsule_mm == 0.0
    assert risk.p_true(replace(study.factors, ete=False)) < study.p_true


def test_cli_prints_summary_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llnm.cli import main

    assert main(["phantom", "--out", str(tmp_path / "cli"), "--studies", "2", "--seed", "4",
                 "--rows", "160", "--cols", "200"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == 2 and 0.0 <= summary["prevalence"] <= 1.0
    expected = risk.bayes_auc(tmp_path / "cli" / "labels.csv")
    assert summary["bayes_auc"] is None if np.isnan(expected) else summary["bayes_auc"] == pytest.approx(expected, abs=1e-4)
    assert main(["phantom", "--out", str(tmp_path / "bad"), "--studies", "0"]) == 2
    assert main(["phantom", "--out", str(tmp_path / "layout"), "--studies", "1", "--seed", "4", "--rows", "160",
                 "--cols", "200", "--layout-only"]) == 0
    record = json.loads((tmp_path / "layout" / "generator.json").read_text())
    assert record["command"].endswith("--layout-only") and not list((tmp_path / "layout").rglob("*.dcm"))


def test_dicom_reader_sees_what_to_input_gives(phantom_set: Path) -> None:
    """Reading the written DICOM gives the same StudyInput as the in-memory study (images, spacing,
    report text, age, sex)."""
    loading = pytest.importorskip("llnm.dicom.loading")
    read, orphans = loading.read_studies([phantom_set])
    assert orphans == [] and len(read) == 3
    by_uid = {s.study_uid: s for s in read}
    for i in range(3):
        expected = generate_study(11, i, rows=ROWS, cols=COLS).to_input()
        got = by_uid[expected.study_uid]
        assert got.report_text == expected.report_text and got.sex == expected.sex
        assert got.age_years == pytest.approx(expected.age_years)
        assert len(got.views) == 2
        for g in got.views:
            (e,) = [v for v in expected.views if v.source == g.source.sop_instance_uid]
            assert np.array_equal(g.image, e.image) and g.crop_offset == e.crop_offset
            assert g.spacing_mm == pytest.approx(e.spacing_mm)
