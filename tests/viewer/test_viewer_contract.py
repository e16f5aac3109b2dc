"""The viewer contract without a browser: fast checks on what our writers produce, so that an output
that would crash or blank OHIF fails here first (test_viewer_ohif.py proves each rule in the real viewer)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

import viewer_contract as contract
import viewer_objects as objects
import viewer_results as results
from llnm.dicom import sr_ohif


@pytest.fixture(scope="module")
def phantom_output(tmp_path_factory: pytest.TempPathFactory) -> results.StudyOnDisk:
    root = tmp_path_factory.mktemp("viewer-contract")
    files, truth = results.phantom_study(root / "phantom")
    return results.writer_output(files, root / "out", truth)


def _objects(study: results.StudyOnDisk, modality: str) -> list[pydicom.Dataset]:
    return [ds for ds in map(pydicom.dcmread, study.outputs) if ds.Modality == modality]


def _dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (scripts/test-services.sh installs dicom3tools)")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def test_our_segs_meet_the_viewer_contract(phantom_output: results.StudyOnDisk) -> None:
    segs = _objects(phantom_output, "SEG")
    assert segs
    for seg in segs:
        assert contract.seg_problems(seg) == []


@pytest.mark.parametrize("dropped", ["PixelMeasuresSequence", "PlaneOrientationSequence"])
def test_a_seg_that_drops_a_functional_group_breaks_the_contract(phantom_output: results.StudyOnDisk,
                                                                 dropped: str) -> None:
    """OHIF crashes without PixelMeasures and cannot place the SEG without PlaneOrientation."""
    seg = _objects(phantom_output, "SEG")[0]
    problems = contract.seg_problems(objects.without(seg, dropped))
    assert any(dropped in p for p in problems), problems


@pytest.mark.parametrize("columns,broken", [(441, True), (440, False)])
def test_a_binary_seg_of_a_width_not_a_multiple_of_8_breaks_the_contract(columns: int, broken: bool) -> None:
    """Orthanc 1.10 refuses /frames/N of a BINARY SEG whose 1-bit rows end mid-byte (test_viewer_ohif.py
    shows OHIF then stuck at "Loading SEG..."): 441 columns break it, 440 do not."""
    image = objects.real_us()
    image.PixelData = image.pixel_array[:, :columns].tobytes()
    image.Columns = columns
    nodule = objects.ellipse_mask((image.Rows, columns), 150, 200, 30, 40)
    gland = objects.ellipse_mask((image.Rows, columns), 150, 220, 90, 150)
    problems = contract.seg_problems(objects.make_seg(image, nodule, gland))
    assert any("multiple of 8" in p for p in problems) == broken, problems


def test_our_seg_of_an_odd_sized_frame_meets_the_contract(tmp_path: Path) -> None:
    files, truth = results.phantom_study(tmp_path / "phantom", rows=317, cols=441)
    study = results.writer_output(files, tmp_path / "out", truth)
    segs = _objects(study, "SEG")
    assert segs and {(s.Rows, s.Columns) for s in segs} == {(317, 441)}
    for seg in segs:
        assert seg.SegmentationType == "FRACTIONAL"
        assert contract.seg_problems(seg) == []


def test_our_sr_meets_the_viewer_contract_and_shows_the_numbers(phantom_output: results.StudyOnDisk) -> None:
    sr = _objects(phantom_output, "SR")[0]
    assert contract.sr_problems(sr) == []
    lines = contract.ohif_sr_lines(sr)[0]
    text = "\n".join(lines)
    assert f"{100 * results.PROBABILITY:.2f} %" in text, lines
    assert "1.25 mm" in text, lines  # minimum capsule distance
    assert "11.50 mm" in text, lines  # nodule size (long axis)


def test_what_ohif_draws_beside_the_outline_reads_at_a_glance(phantom_output: results.StudyOnDisk) -> None:
    """OHIF draws only NUM items (five lines at most), so the risk level must be a NUM too, and each line
    short enough to stay inside the viewport beside the outline."""
    sr = _objects(phantom_output, "SR")[0]
    lines = contract.ohif_sr_lines(sr)[0]
    assert any("high" in line.lower() for line in lines), lines
    assert all(len(line) <= 40 for line in lines), lines


def test_ohif_profile_keeps_tid1500_and_lays_out_for_tracking(phantom_output: results.StudyOnDisk,
                                                              tmp_path: Path) -> None:
    strict = _objects(phantom_output, "SR")[0]
    before = strict.to_json_dict()
    ohif = sr_ohif.apply(strict)
    assert strict.to_json_dict() == before, "apply must not change its input"
    assert contract.sr_problems(ohif) == []
    assert _dciodvfy_errors(objects.write(ohif, tmp_path / "sr_ohif.dcm")) == []
    strict_groups, groups = contract.measurement_groups(strict), contract.measurement_groups(ohif)
    assert len(groups) == len(strict_groups)
    uids, last = set(), None
    for old, new in zip(strict_groups, groups):
        items = list(new.ContentSequence)
        by_code = {contract._code(i)[1]: i for i in items}
        scoords = [i for i in items if i.ValueType == "SCOORD"]
        if not scoords:  # the link to the SEG segment (IMAGE 121214): merged into the outline before it
            assert "121214" in by_code and str(by_code["112040"].UID) == last
            continue
        assert by_code["112039"].TextValue == sr_ohif.OHIF_POLYLINE_TRACKING_ID
        last = str(by_code["112040"].UID)
        uids.add(last)
        old_label = next(i.TextValue for i in old.ContentSequence if contract._code(i)[1] == "112039")
        comments = [i for i in items if contract._code(i)[:2] == contract.COMMENT]
        # the first Comment is OHIF's label: the tracking identifier (it names the finding) and what the
        # report says about it (OHIF shows neither the identifier nor the CODE items)
        assert comments[0].TextValue.startswith(f"{old_label}: "), "the readable label is the first Comment"
        assert "LLNM risk high" in comments[0].TextValue
        # TID 1410: the outline stays the group's ROI; OHIF's importer reads it from the first NUM, which
        # is one measured on the outline (INFERRED FROM it); the probability, risk and shares are not
        nums = [i for i in items if i.ValueType == "NUM"]
        inferred = [contract._code(n)[2] for n in nums
                    if any(c.ValueType == "SCOORD" and c.RelationshipType == "INFERRED FROM"
                           for c in n.get("ContentSequence", []) or [])]
        if nums:
            assert inferred and contract._code(nums[0])[2] == inferred[0]
            assert set(inferred) <= {"Capsule distance", "Long axis", "Short axis"}
    assert len(uids) == len([g for g in groups if any(i.ValueType == "SCOORD" for i in g.ContentSequence)]), \
        "each outline needs its own tracking UID in OHIF"
    lines = contract.ohif_sr_lines(ohif)[0]  # geometric groups: OHIF draws the NUM lines
    assert any("LLNM probability" in line for line in lines) and any("high" in line for line in lines)


def test_the_writer_ohif_profile_is_the_layout_ohif_imports(tmp_path: Path) -> None:
    """LLNM_SR_PROFILE=ohif end to end through our writer (llnm.dicom.sr.build_sr calls sr_ohif.apply)."""
    from llnm.config import Settings

    files, truth = results.phantom_study(tmp_path / "phantom")
    settings = Settings.from_env({}, data_dir=tmp_path / "var", sr_profile="ohif")
    study = results.writer_output(files, tmp_path / "out", truth, settings=settings)
    sr = _objects(study, "SR")[0]
    assert contract.sr_problems(sr) == []
    first = contract.measurement_groups(sr)[0]
    assert any(getattr(i, "TextValue", None) == sr_ohif.OHIF_POLYLINE_TRACKING_ID for i in first.ContentSequence)
    assert any("high" in line.lower() for line in contract.ohif_sr_lines(sr)[0])
    path = next(p for p in study.outputs if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SR")
    assert _dciodvfy_errors(path) == []
