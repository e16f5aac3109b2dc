"""What a radiologist sees in OHIF 3.13 when our results land in the PACS (Orthanc over DICOMweb).

Each test walks one study in chromium: the study list shows the study with its SR and SEG series, the
ultrasound image renders, the SR draws its outline on the nodule with the probability and the size,
the SEG opens as an overlay with its segments listed, the key image shows, and the console has no
errors. Screenshots and what the driver saw: artifacts/viewer/<test>-<step>.png / <test>.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pydicom.uid
import pytest
from pydicom.data import get_testdata_file

import contract
import objects
import results

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

#: console errors OHIF prints with any data (none seen with 3.13.2 so far); ours must add nothing
BENIGN_CONSOLE = ()


def _errors(seen: dict[str, Any]) -> list[str]:
    msgs = [f"{c['step']}: {c['text'][:300]}" for c in seen["console"] if c["type"] == "error"]
    msgs += [f"{e['step']}: page error {e['text'][:300]}" for e in seen["pageErrors"]]
    msgs += [f"{r['step']}: HTTP {r.get('status', r.get('error'))} {r['url']}" for r in seen["failedRequests"]]
    return [m for m in msgs if not any(b in m for b in BENIGN_CONSOLE)]


def _by_modality(paths: list[Path]) -> dict[str, list[pydicom.Dataset]]:
    out: dict[str, list[pydicom.Dataset]] = {}
    for p in paths:
        ds = pydicom.dcmread(p)
        kind = "SC" if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" else str(ds.Modality)
        out.setdefault(kind, []).append(ds)
    return out


def _screen_box(canvas: dict, rows: int, cols: int, box: tuple[int, int, int, int]) -> tuple[float, ...]:
    """Where an image box (row0, col0, row1, col1) lands on screen when OHIF fits the image to the canvas."""
    scale = min(canvas["width"] / cols, canvas["height"] / rows)
    x0 = canvas["x"] + (canvas["width"] - cols * scale) / 2
    y0 = canvas["y"] + (canvas["height"] - rows * scale) / 2
    r0, c0, r1, c1 = box
    return (x0 + c0 * scale, y0 + r0 * scale, x0 + c1 * scale, y0 + r1 * scale)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def check_study_in_ohif(walk, study: results.StudyOnDisk, name: str, extra: list[Path] | None = None,
                        **job: Any) -> dict[str, Any]:
    """Walk one study through OHIF and assert what a radiologist must see; returns what was seen."""
    objs = _by_modality(study.outputs)
    sr, segs = objs["SR"][0], objs["SEG"]
    seg_labels = [str(s.SegmentLabel) for s in segs[0].SegmentSequence]
    expected_lines = contract.ohif_sr_lines(sr)
    seen = walk(
        study.inputs + study.outputs + (extra or []), study.study_uid, name, **job,
        sr=str(sr.SeriesDescription), srExpect=expected_lines[0][0].split(":")[0] or expected_lines[0][0],
        seg=str(segs[0].SeriesDescription), segExpect=seg_labels[0],
        key=str(objs["SC"][0].SeriesDescription) if "SC" in objs else None,
    )
    steps = seen["steps"]
    assert not seen.get("aborted"), seen.get("aborted")

    # 1. The study list shows the study with its SR and SEG series.
    assert steps["list"]["ok"], steps["list"].get("error")
    modalities = next(line for line in steps["list"]["text"].splitlines() if "SR" in line and "\\" in line)
    assert {"SR", "SEG"} <= set(modalities.strip().split("\\")), modalities

    # 2. The ultrasound image renders.
    assert steps["image"]["ok"], steps["image"].get("error")
    assert steps["image"]["canvases"][0]["lit"] > 0.01, steps["image"]["canvases"]

    # 3. The SR: outline with the lines OHIF draws from our NUM items, on the nodule.
    assert steps["sr"]["ok"], steps["sr"].get("error")
    drawn = [a["lines"] for a in steps["sr"]["annotations"]]
    assert expected_lines[0] in drawn, (drawn, expected_lines)
    text = steps["sr"]["text"]
    assert f"{100 * results.PROBABILITY:.2f} %" in text
    if study.summary.get("nodule_size_mm") or sr_has_size(sr):
        assert "11.50 mm" in text and "7.75 mm" in text
    polylines = [s for s in steps["sr"]["shapes"] if s["tag"] == "polyline" and s["width"] > 5]
    assert polylines, steps["sr"]["shapes"]
    canvas = steps["sr"]["canvases"][0]
    images = {str(d.SOPInstanceUID): d for d in map(pydicom.dcmread, study.inputs) if "Rows" in d}
    best = 0.0
    for uid, box in study.nodule_boxes.items():
        image = images.get(uid)
        if image is None:
            continue
        want = _screen_box(canvas, int(image.Rows), int(image.Columns), box)
        for p in polylines:
            best = max(best, _overlap(want, (p["x"], p["y"], p["x"] + p["width"], p["y"] + p["height"])))
    assert best > 0.6, f"the SR outline is not on the nodule (best box overlap {best:.2f})"

    # 4. The SEG opens as an overlay and its segments are listed in the segmentation panel.
    assert steps["seg"]["ok"], steps["seg"].get("error")
    for label in seg_labels:
        assert label in steps["seg"]["text"], label
    assert steps["seg"]["canvases"][0]["lit"] > steps["image"]["canvases"][0]["lit"] * 0.5

    # 5. The key image shows as an ordinary image.
    if "SC" in objs:
        assert steps["key"]["ok"], steps["key"].get("error")
        assert steps["key"]["canvases"][0]["lit"] > 0.01

    # 6. Nothing of ours made the viewer complain.
    assert _errors(seen) == []
    return seen


def sr_has_size(sr: pydicom.Dataset) -> bool:
    return any(line.endswith(" mm") and "distance" not in line.lower() for g in contract.ohif_sr_lines(sr) for line in g)


def test_phantom_study_writer_output_in_ohif(walk, tmp_path: Path) -> None:
    """Both SR profiles of one phantom study: the strict one (checked by check_study_in_ohif), then the
    "ohif" one: its readable label is drawn, OHIF offers to track it and lists it in its measurement
    panel (the strict profile stays read-only there)."""
    from llnm.dicom import sr_ohif

    files, truth = results.phantom_study(tmp_path / "phantom")
    study = results.writer_output(files, tmp_path / "out", truth)
    strict = _by_modality(study.outputs)["SR"][0]
    ohif = sr_ohif.apply(strict)
    ohif.SeriesInstanceUID, ohif.SOPInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ohif.file_meta.MediaStorageSOPInstanceUID = ohif.SOPInstanceUID
    ohif.SeriesDescription, ohif.SeriesNumber = "OHIF profile: LLNM-Net report", 9712
    assert contract.sr_problems(ohif) == []
    label = contract.ohif_sr_lines(ohif)[0][0].rstrip(": ")
    seen = check_study_in_ohif(walk, study, "phantom-writer", extra=[objects.write(ohif, tmp_path / "sr_ohif.dcm")],
                               sr2={"label": str(ohif.SeriesDescription), "expect": label, "track": True})
    assert seen["steps"]["sr"]["trackingPrompt"] is False and "No tracked measurements" in seen["steps"]["sr"]["measurementPanel"]
    sr2 = seen["steps"]["sr2"]
    assert sr2["ok"], sr2.get("error")
    assert any(label in a["text"] for a in sr2["annotations"]), sr2["annotations"]
    assert sr2["trackingPrompt"], "OHIF did not offer to track the ohif-profile SR"
    assert label in sr2["measurementPanel"], sr2["measurementPanel"]
    assert _errors(seen) == []


def test_real_file_study_writer_output_in_ohif(walk, tmp_path: Path) -> None:
    path = get_testdata_file(objects.REAL_US, download=False)
    assert path
    study = results.writer_output([Path(path)], tmp_path / "out")
    check_study_in_ohif(walk, study, "real-writer")


def _models_present() -> str | None:
    from llnm.config import Settings

    repo = Settings.from_env().model_repository
    missing = [m for m in ("tmdl", "nodule_seg", "thyroid_seg") if not any((repo / m).glob("*/model.onnx"))]
    return f"trained models missing in {repo}: {', '.join(missing)}" if missing else None


@pytest.mark.parametrize("source", ["phantom", "real"])
def test_llnm_predict_output_in_ohif(walk, tmp_path: Path, source: str) -> None:
    reason = _models_present()
    if reason:
        pytest.skip(reason)
    if source == "phantom":
        files, _ = results.phantom_study(tmp_path / "phantom", seed=11)
    else:
        files = [Path(get_testdata_file(objects.REAL_US, download=False))]
    study = results.llnm_predict(files, tmp_path / "out")
    objs = _by_modality(study.outputs)
    assert "SR" in objs and "SEG" in objs, study.summary
    seen = walk(study.inputs + study.outputs, study.study_uid, f"predict-{source}",
                sr=str(objs["SR"][0].SeriesDescription), srExpect="%",
                seg=str(objs["SEG"][0].SeriesDescription), segExpect=str(objs["SEG"][0].SegmentSequence[0].SegmentLabel))
    assert all(s["ok"] for s in seen["steps"].values()), {k: v.get("error") for k, v in seen["steps"].items()}
    probability = study.summary.get("probability")
    if probability is not None:
        assert f"{100 * probability:.2f} %" in seen["steps"]["sr"]["text"]
    assert _errors(seen) == []


def test_seg_without_pixel_measures_breaks_ohif(walk, tmp_path: Path) -> None:
    """Why the contract exists: the same SEG minus PixelMeasuresSequence fails in the real viewer
    (test_contract.py fails fast on it, and on a missing PlaneOrientationSequence)."""
    image = objects.real_us()
    shape = (int(image.Rows), int(image.Columns))
    seg = objects.make_seg(image, objects.ellipse_mask(shape, 180, 420, 30, 45),
                           objects.ellipse_mask(shape, 180, 440, 90, 200))
    broken = objects.without(seg, "PixelMeasuresSequence")
    assert contract.seg_problems(seg) == [] and contract.seg_problems(broken)
    files = [objects.write(image, tmp_path / "us.dcm"), objects.write(broken, tmp_path / "seg.dcm")]
    seen = walk(files, str(image.StudyInstanceUID), "broken-seg", seg=str(broken.SeriesDescription),
                segExpect=str(broken.SegmentSequence[0].SegmentLabel), stepTimeoutMs=30000)
    assert seen["steps"]["image"]["ok"], seen["steps"]["image"].get("error")
    assert not seen["steps"]["seg"]["ok"], "OHIF loaded a SEG without PixelMeasuresSequence"
    complaints = " ".join(_errors(seen))
    assert "PixelMeasures" in complaints, complaints
