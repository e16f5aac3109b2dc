"""What a radiologist sees in OHIF 3.13 when our results land in the PACS (Orthanc over DICOMweb).

Each test walks one study in chromium: the study list shows the study with its SR and SEG series, the
ultrasound image renders, the SR draws its outline on the nodule with the probability and the size,
the SEG opens as an overlay with its segments listed, the key image shows, and the console has no
errors. Screenshots and what the driver saw: artifacts/viewer/<test>-<step>.png / <test>.json.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pydicom.uid
import pytest
from pydicom.data import get_testdata_file

import viewer_contract as contract
import viewer_objects as objects
import viewer_results as results

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

#: console errors OHIF prints with any data (none seen with 3.13.2 so far); ours must add nothing
BENIGN_CONSOLE = ()


def _errors(seen: dict[str, Any], walk: str | None = None) -> list[str]:
    """Console errors, page errors and failed requests (of one walk of a several-study run, if named)."""
    mine = (lambda e: e.get("walk") == walk) if walk else (lambda e: True)
    msgs = [f"{c['step']}: {c['text'][:300]}" for c in seen["console"] if c["type"] == "error" and mine(c)]
    msgs += [f"{e['step']}: page error {e['text'][:300]}" for e in seen["pageErrors"] if mine(e)]
    msgs += [f"{r['step']}: HTTP {r.get('status', r.get('error'))} {r['url']}" for r in seen["failedRequests"]
             if mine(r)]
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


def _segment_rgb(seg: pydicom.Dataset) -> list[list[int]]:
    """Each segment's RecommendedDisplayCIELabValue as RGB (what OHIF paints it with)."""
    return [list(hd.color.CIELabColor.from_dicom_value(tuple(s.RecommendedDisplayCIELabValue)).to_rgb())
            for s in seg.SegmentSequence]


def walk_job(study: results.StudyOnDisk, **job: Any) -> dict[str, Any]:
    """What the driver must do with one study of ours: open its SR, its SEG (and find the segments'
    colours on the image), its key image."""
    objs = _by_modality(study.outputs)
    sr, segs = objs["SR"][0], objs["SEG"]
    expected_lines = contract.ohif_sr_lines(sr)
    return {
        "study": study.study_uid,
        "sr": str(sr.SeriesDescription), "srExpect": expected_lines[0][0].split(":")[0] or expected_lines[0][0],
        "seg": str(segs[0].SeriesDescription), "segExpect": str(segs[0].SegmentSequence[0].SegmentLabel),
        "segColours": _segment_rgb(segs[0]),
        "key": str(objs["SC"][0].SeriesDescription) if "SC" in objs else None,
        **job,
    }


def _images(study: results.StudyOnDisk) -> dict[str, pydicom.Dataset]:
    return {str(d.SOPInstanceUID): d for d in map(lambda p: pydicom.dcmread(p, stop_before_pixels=True),
                                                   study.inputs) if "Rows" in d}


def _best_overlap(study: results.StudyOnDisk, canvas: dict, boxes: dict[str, tuple[int, int, int, int]],
                  drawn: list[tuple[float, float, float, float]]) -> float:
    """Best IoU between a drawn screen box and where a nodule of the study lands on screen."""
    images = _images(study)
    best = 0.0
    for uid, box in boxes.items():
        image = images.get(uid)
        if image is None:
            continue
        want = _screen_box(canvas, int(image.Rows), int(image.Columns), box)
        for d in drawn:
            best = max(best, _overlap(want, d))
    return best


def check_study_in_ohif(walk, study: results.StudyOnDisk, name: str, extra: list[Path] | None = None,
                        nodule_boxes: dict[str, tuple[int, int, int, int]] | None = None,
                        **job: Any) -> dict[str, Any]:
    """Walk one study through OHIF and assert what a radiologist must see; returns what was seen."""
    spec = walk_job(study, **job)
    spec.pop("study")
    seen = walk(study.inputs + study.outputs + (extra or []), study.study_uid, name, **spec)
    assert not seen.get("aborted"), seen.get("aborted")
    assert_seen(study, seen, seen, nodule_boxes)
    return seen


def assert_seen(study: results.StudyOnDisk, seen: dict[str, Any], run: dict[str, Any],
                nodule_boxes: dict[str, tuple[int, int, int, int]] | None = None) -> None:
    """What a radiologist must see of one study (`seen`: its walk; `run`: the driver's whole answer)."""
    objs = _by_modality(study.outputs)
    sr, segs = objs["SR"][0], objs["SEG"]
    seg_labels = [str(s.SegmentLabel) for s in segs[0].SegmentSequence]
    expected_lines = contract.ohif_sr_lines(sr)
    steps = seen["steps"]
    boxes = nodule_boxes or study.nodule_boxes

    # 1. The study list shows the study with its SR and SEG series (walked once per browser session).
    if "list" in steps:
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
    summary = study.summary
    assert f"{100 * summary['probability']:.2f} %" in text
    risk = [line for line in expected_lines[0] if "risk" in line.lower()]
    assert risk and risk[0] in text, (risk, text)
    if summary.get("capsule_distance_mm"):
        assert f"{summary['capsule_distance_mm']:.2f} mm" in text
    elif summary.get("capsule_distance_mm") == 0:  # OHIF 3.13 draws a 0 value empty (viewer_contract)
        assert "Capsule distance" in text
    if summary.get("nodule_size_mm"):
        assert f"{summary['nodule_size_mm']['length']:.2f} mm" in text
    polylines = [s for s in steps["sr"]["shapes"] if s["tag"] == "polyline" and s["width"] > 5]
    assert polylines, steps["sr"]["shapes"]
    best = _best_overlap(study, steps["sr"]["canvases"][0], boxes,
                         [(p["x"], p["y"], p["x"] + p["width"], p["y"] + p["height"]) for p in polylines])
    assert best > 0.6, f"the SR outline is not on the nodule (best box overlap {best:.2f})"

    # 4. The SEG opens as an overlay, its segments are listed in the segmentation panel, and the
    #    nodule segment is painted on the nodule.
    assert steps["seg"]["ok"], steps["seg"].get("error")
    for label in seg_labels:
        assert label in steps["seg"]["text"], label
    assert steps["seg"]["canvases"][0]["lit"] > steps["image"]["canvases"][0]["lit"] * 0.5
    if "segmentBoxes" in steps["seg"]:
        nodule = steps["seg"]["segmentBoxes"][0]
        assert nodule["pixels"] > 0, f"the nodule segment is not drawn: {steps['seg']['segmentBoxes']}"
        best = _best_overlap(study, steps["seg"]["canvases"][0], boxes,
                             [(nodule["x0"], nodule["y0"], nodule["x1"], nodule["y1"])])
        assert best > 0.6, f"the SEG's nodule is not on the nodule (best box overlap {best:.2f})"

    # 5. The key image shows as an ordinary image.
    if "SC" in objs:
        assert steps["key"]["ok"], steps["key"].get("error")
        assert steps["key"]["canvases"][0]["lit"] > 0.01

    # 6. Nothing of ours made the viewer complain.
    assert _errors(run, seen.get("prefix")) == []


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
    tracked = next(i.TextValue for g in contract.measurement_groups(ohif) for i in g.ContentSequence
                   if contract._code(i)[:2] == contract.COMMENT)  # the first Comment: OHIF's label
    assert tracked in sr2["measurementPanel"], sr2["measurementPanel"]
    assert _errors(seen) == []


#: (rows, columns) of the frames walked in one session: the usual 600 x 800, then sizes whose Rows x Columns is
#: not a multiple of 8 (a BINARY SEG of those has 1-bit rows and frames that end mid-byte: Orthanc 1.10
#: answers 400 to every /frames/N of it and OHIF can stay at "Loading SEG...")
FRAME_SIZES = [(600, 800), (317, 441), (389, 563), (457, 601)]

#: what OHIF 3.13 asks for when it fetches a frame over WADO-RS (the SEG preview does)
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def _frame_bytes(base_url: str, seg: pydicom.Dataset, number: int) -> bytes:
    """Frame `number` of `seg` as OHIF gets it through the viewer's /dicom-web (multipart, one part)."""
    url = (f"{base_url}/dicom-web/studies/{seg.StudyInstanceUID}/series/{seg.SeriesInstanceUID}"
           f"/instances/{seg.SOPInstanceUID}/frames/{number}")
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": FRAME_ACCEPT}), timeout=30) as r:
        ctype, body = r.headers["Content-Type"], r.read()
    boundary = next(p.split("=", 1)[1].strip('"') for p in ctype.split(";") if p.strip().startswith("boundary="))
    part = body.split(b"--" + boundary.encode())[1]
    return part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]


def test_any_frame_size_in_ohif(stack, walk_many, tmp_path: Path) -> None:
    """Phantom studies at several frame sizes, one browser session: for each, every SEG frame comes back
    whole from /dicom-web/.../frames/N, the SEG loads and its nodule is painted on the true nodule, and
    the SR's outline is on it and shows the probability, risk and sizes."""
    studies, files, walks = [], [], []
    for seed, (rows, cols) in enumerate(FRAME_SIZES, start=7):  # a seed each: the phantom's UIDs follow it
        name = f"size-{rows}x{cols}"
        inputs, truth = results.phantom_study(tmp_path / name / "phantom", seed=seed, rows=rows, cols=cols)
        study = results.writer_output(inputs, tmp_path / name / "out", truth)
        assert {(int(d.Rows), int(d.Columns)) for d in _images(study).values()} == {(rows, cols)}
        for seg in _by_modality(study.outputs)["SEG"]:
            assert contract.seg_problems(seg) == [], name
        studies.append(study)
        files += study.inputs + study.outputs
        walks.append(walk_job(study, prefix=name))
    assert len({s.study_uid for s in studies}) == len(studies)
    for f in files:
        stack.orthanc.upload(f)
    for study in studies:
        for seg in _by_modality(study.outputs)["SEG"]:
            for number in range(1, int(seg.NumberOfFrames) + 1):
                frame = _frame_bytes(stack.viewer.url, seg, number)
                assert len(frame) == seg.Rows * seg.Columns * seg.BitsAllocated // 8, (seg.Rows, seg.Columns)
    seen = walk_many([], walks, "frame-sizes")
    assert not seen.get("aborted"), seen.get("aborted")
    for study, walk in zip(studies, seen["walks"]):
        assert_seen(study, walk, seen)


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


def _truth_boxes(truth: Path, summary: dict) -> dict[str, tuple[int, int, int, int]]:
    """The phantom's true nodule per source image, in source pixels (truth masks are in view pixels)."""
    import numpy as np
    from PIL import Image

    boxes = {}
    for view in summary["views"]:
        mask = truth / "masks" / f"{view['sop_instance_uid']}_nodule.png"
        if not mask.is_file():
            continue
        rows, cols = np.nonzero(np.asarray(Image.open(mask)) > 127)
        r0, c0 = view["crop_offset"]
        boxes[view["sop_instance_uid"]] = (r0 + rows.min(), c0 + cols.min(), r0 + rows.max() + 1, c0 + cols.max() + 1)
    return boxes


@pytest.mark.parametrize("source", ["phantom", "real"])
def test_llnm_predict_output_in_ohif(walk, tmp_path: Path, source: str) -> None:
    """The real command with the trained models: the same walk; on the phantom the outline must sit on
    the true nodule. A real file without a thyroid nodule gives a report that must still open cleanly."""
    reason = _models_present()
    if reason:
        pytest.skip(reason)
    truth = None
    if source == "phantom":
        # a study the shipped nodule model segments (it misses ~15% of phantom nodules: issue 3)
        # at the phantom's own frame size: TMDL abstains on resampled phantom frames (llnm.model.ood)
        files, truth = results.phantom_study(tmp_path / "phantom", seed=12, rows=600, cols=800)
    else:
        files = [Path(get_testdata_file(objects.REAL_US, download=False))]
    study = results.llnm_predict(files, tmp_path / "out")
    objs = _by_modality(study.outputs)
    for seg in objs.get("SEG", []):
        assert contract.seg_problems(seg) == []
    assert "SR" in objs and contract.sr_problems(objs["SR"][0]) == [], study.summary
    if study.summary.get("probability") is not None and study.nodule_boxes:
        boxes = _truth_boxes(truth, study.summary) if truth else None
        check_study_in_ohif(walk, study, f"predict-{source}", nodule_boxes=boxes)
        return
    assert source == "real", f"no nodule found in the phantom study: {study.summary.get('finding')}"
    lines = contract.ohif_sr_lines(objs["SR"][0])
    # no nodule and no gland: there is nothing to segment, so no SEG; the list shows the SR
    seen = walk(study.inputs + study.outputs, study.study_uid, f"predict-{source}",
                sr=str(objs["SR"][0].SeriesDescription), srExpect=lines[0][0] if lines else None,
                **({} if "SEG" in objs else {"expectListText": "SR"}))
    assert all(s["ok"] for s in seen["steps"].values()), {k: v.get("error") for k, v in seen["steps"].items()}
    assert _errors(seen) == []


def test_no_nodule_report_opens_and_a_seg_without_pixel_measures_breaks_ohif(walk, tmp_path: Path) -> None:
    """Edge cases on one real-file study: our report when no nodule was found opens cleanly; a SEG that
    lost PixelMeasuresSequence fails in the real viewer (why seg_problems exists; test_viewer_contract.py fails
    fast on it and on a missing PlaneOrientationSequence)."""
    source = Path(get_testdata_file(objects.REAL_US, download=False))
    study = results.writer_output([source], tmp_path / "out", nodule=False)
    objs = _by_modality(study.outputs)
    sr, seg = objs["SR"][0], objs["SEG"][0]
    assert contract.sr_problems(sr) == [] and contract.seg_problems(seg) == []
    broken = objects.without(seg, "PixelMeasuresSequence")
    assert any("PixelMeasures" in p for p in contract.seg_problems(broken))
    files = [source, *study.outputs, objects.write(broken, tmp_path / "broken.dcm")]
    first_line = contract.ohif_sr_lines(sr)[0][0] if contract.ohif_sr_lines(sr) else None
    seen = walk(files, study.study_uid, "edge-cases", sr=str(sr.SeriesDescription), srExpect=first_line,
                seg=str(broken.SeriesDescription), segExpect=str(broken.SegmentSequence[0].SegmentLabel),
                stepTimeoutMs=30000)
    steps = seen["steps"]
    assert steps["image"]["ok"] and steps["sr"]["ok"], (steps["image"].get("error"), steps["sr"].get("error"))
    assert [e for e in _errors(seen) if not e.startswith("seg:")] == []
    assert not steps["seg"]["ok"], "OHIF loaded a SEG without PixelMeasuresSequence"
    complaints = " ".join(_errors(seen))
    assert "PixelMeasures" in complaints, complaints


#: the research-use line of a notice key image (llnm.dicom.key_image._text_block), found on screen by its hue
NOTICE_RED = [255, 80, 80]


def _notice_walk(study: results.StudyOnDisk, prefix: str, **job: Any) -> dict[str, Any]:
    """What the driver must do with a notice: open its SR (the outline it draws, if any) and its key image."""
    objs = _by_modality(study.outputs)
    (sr,), (key,) = objs["SR"], objs["SC"]
    lines = contract.ohif_sr_lines(sr) if _outlined(sr) else []
    return {"prefix": prefix, "study": study.study_uid, "expectListText": "SR", "sr": str(sr.SeriesDescription),
            "srExpect": lines[0][0] if lines else None, "key": str(key.SeriesDescription),
            "keyColours": [NOTICE_RED], **job}


def _outlined(sr: pydicom.Dataset) -> bool:
    """Does the SR hold an outline (a SCOORD), the only thing OHIF draws of it?"""
    def walk(items: Any) -> bool:
        return any(i.ValueType == "SCOORD" or walk(i.get("ContentSequence")) for i in items or [])
    return walk(sr.get("ContentSequence"))


def _assert_notice_key_image(study: results.StudyOnDisk, seen: dict[str, Any]) -> None:
    """The notice key image is the one shown, whole: its red research-use line lies across the bottom of
    where the image lands on screen."""
    (key,) = _by_modality(study.outputs)["SC"]
    step = seen["steps"]["key"]
    assert step["ok"], step.get("error")
    red = step["colourBoxes"][0]
    assert red["pixels"] > 0, f"the notice key image is not drawn: {step['colourBoxes']}"
    rows, cols = int(key.Rows), int(key.Columns)
    image = _screen_box(step["canvases"][0], rows, cols, (0, 0, rows, cols))
    bottom = _screen_box(step["canvases"][0], rows, cols, (rows * 2 // 3, 0, rows, cols))
    assert image[0] - 2 <= red["x0"] < red["x1"] <= image[2] + 2, (red, image)
    assert bottom[1] - 2 <= red["y0"] < red["y1"] <= bottom[3] + 2, (red, bottom)


def test_notice_of_a_study_with_no_usable_image_in_ohif(walk_many, tmp_path: Path) -> None:
    """Issue 17: a radiologist sees that the AI looked. Written by the real no-usable-image path of
    predict_paths, two studies in one browser session: a real Doppler-only file, whose notice SR outlines the
    whole received image (OHIF draws the outline and its finding site), and a study holding only an unsupported
    SOP class (a real US frame as Enhanced US Volume), whose notice SR has no outline and opens with nothing
    to draw. In both the notice key image, which carries "not analysed: <reason>", shows whole, and the viewer
    logs no error. (OHIF 3.13 draws no TEXT item of an SR, so the reason is read from the key image.)"""
    doppler = [Path(get_testdata_file("examples_rgb_color.dcm", download=False))]
    strict = results.notice_output(doppler, tmp_path / "doppler")
    assert strict.summary["finding"] == "not analysed: no B-mode greyscale frame in the study (Doppler or colour only)"
    volume = [objects.relabelled(objects.REAL_US, objects.ENHANCED_US_VOLUME, tmp_path / "volume.dcm")]
    unsupported = results.notice_output(volume, tmp_path / "volume")
    assert unsupported.summary["finding"] == "not analysed: no ultrasound image in the study"
    for study in (strict, unsupported):
        (sc,) = _by_modality(study.outputs)["SC"]
        assert study.summary["finding"] in sc.ImageComments
    assert _outlined(sr := _by_modality(strict.outputs)["SR"][0]) and contract.sr_problems(sr) == []
    assert not _outlined(_by_modality(unsupported.outputs)["SR"][0])  # TID 1501: nothing to draw

    walks = [_notice_walk(strict, "notice-doppler"), _notice_walk(unsupported, "notice-unsupported")]
    seen = walk_many([*strict.inputs, *strict.outputs, *unsupported.inputs, *unsupported.outputs], walks, "notice")
    assert not seen.get("aborted"), seen.get("aborted")
    doppler_seen, unsupported_seen = seen["walks"]

    steps = doppler_seen["steps"]
    assert all(steps[s]["ok"] for s in ("list", "image", "sr")), {k: v.get("error") for k, v in steps.items()}
    assert [walks[0]["srExpect"]] in [a["lines"] for a in steps["sr"]["annotations"]], steps["sr"]["annotations"]
    _assert_notice_key_image(strict, doppler_seen)
    assert _errors(seen, "notice-doppler") == []

    steps = unsupported_seen["steps"]
    assert steps["image"]["ok"] and steps["sr"]["ok"], (steps["image"].get("error"), steps["sr"].get("error"))
    assert steps["sr"]["annotations"] == []
    _assert_notice_key_image(unsupported, unsupported_seen)
    assert _errors(seen, "notice-unsupported") == []
