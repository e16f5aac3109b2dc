"""Hostile and broken DICOM files fed to the readers the worker uses (llnm.dicom.loading.read_studies).

Real ultrasound files (pydicom's examples and a phantom study) are mutated at the byte level and at the
element level; whatever comes out, reading must end within a bound time, with either views or warnings,
never an exception, and without patient data in the warnings or log lines."""

from __future__ import annotations

import copy
import io
import logging
import threading
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pydicom.data import get_testdata_file

from llnm.dicom.loading import read_studies
from llnm.observability.logs import JsonFormatter

SECRET_NAME, SECRET_ID, SECRET_BIRTH = "SECRET^PATIENT", "ID-987654", "19450101"
SECRETS = (SECRET_NAME, "SECRET", SECRET_ID, SECRET_BIRTH)
#: One file may take this long to read, mutated or not (the real ones take well under a second).
PER_FILE_LIMIT_S = 20
FUZZ = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def within(seconds: float, fn, *args):
    """fn(*args) in a daemon thread: a hang fails the example instead of the suite (no signals, so
    pytest-timeout's own alarm is left alone)."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the test's thread
            result["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"reading took more than {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def _with_secrets(ds: pydicom.Dataset) -> bytes:
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = SECRET_NAME, SECRET_ID, SECRET_BIRTH
    ds.StudyDate = "20250101"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    """Real files to mutate, each carrying known patient data."""
    out = {}
    for name in ("examples_ybr_color.dcm", "examples_palette.dcm", "examples_rgb_color.dcm"):
        path = get_testdata_file(name, download=False)
        if path:
            out[name] = _with_secrets(pydicom.dcmread(path))
    try:
        from llnm.phantom.layout import write_phantom_set
    except ImportError:
        write_phantom_set = None
    if write_phantom_set is not None:
        folder = write_phantom_set(tmp_path_factory.mktemp("phantom"), 1, seed=7, rows=96, cols=128)
        for path in sorted(folder.rglob("US_1.dcm"))[:1] + sorted(folder.rglob("SR_report.dcm"))[:1]:
            out["phantom_" + path.name] = _with_secrets(pydicom.dcmread(path))
    assert out, "no seed files"
    return out


def _read(path: Path, caplog) -> None:
    """The contract: read_studies returns (no exception, no hang), and says nothing about the patient."""
    caplog.clear()
    studies, orphans = within(PER_FILE_LIMIT_S, read_studies, [path])
    said = [*orphans, *(w for s in studies for w in s.warnings)]
    said += [JsonFormatter().format(r) for r in caplog.records]
    text = "\n".join(said)
    for secret in SECRETS:
        assert secret not in text
    for study in studies:
        assert study.views or study.warnings, "a study without views must say why"


def test_unmutated_seeds_are_read(seeds, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="llnm")
    for name, data in seeds.items():
        path = tmp_path / name
        path.write_bytes(data)
        _read(path, caplog)


@st.composite
def byte_mutations(draw, names: list[str]):
    """A seed name and a list of edits: overwrite bytes, delete a run, insert junk, or truncate."""
    name = draw(st.sampled_from(names))
    edits = draw(st.lists(st.tuples(st.sampled_from(["set", "delete", "insert", "truncate"]),
                                    st.floats(0, 1), st.binary(min_size=1, max_size=16)),
                          min_size=1, max_size=6))
    return name, edits


def _apply(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for kind, where, junk in edits:
        i = int(where * max(len(buf) - 1, 0))
        if kind == "set":
            buf[i:i + len(junk)] = junk
        elif kind == "delete":
            del buf[i:i + len(junk) * 8]
        elif kind == "insert":
            buf[i:i] = junk
        else:
            del buf[i:]
    return bytes(buf)


def test_byte_mutated_files_never_crash_or_hang(seeds, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="llnm")
    names = sorted(seeds)

    @FUZZ
    @given(byte_mutations(names))
    def check(case):
        name, edits = case
        path = tmp_path / "fuzz.dcm"
        path.write_bytes(_apply(seeds[name], edits))
        _read(path, caplog)

    check()


#: Elements whose values steer decoding; set to hostile values below.
HOSTILE_VALUES = {
    "Rows": [0, 1, 65535], "Columns": [0, 1, 65535], "BitsAllocated": [0, 1, 7, 12, 64],
    "BitsStored": [0, 17, 64], "HighBit": [0, 63], "SamplesPerPixel": [0, 2, 4, 65535],
    "PixelRepresentation": [1, 7], "PlanarConfiguration": [1, 5],
    "PhotometricInterpretation": ["", "PALETTE COLOR", "YBR_FULL_422", "MONOCHROME1", "RGB", "HSV", "x" * 64],
    "NumberOfFrames": ["0", "-3", "100000", "abc"], "SOPClassUID": ["1.2.840.10008.5.1.4.1.1.3.1", "", "1.2"],
    "PatientAge": ["", "999Y", "abc", "-1Y"], "PatientSex": ["", "Q"], "StudyDate": ["", "99999999", "abc"],
    "PatientBirthDate": ["", "00000000", "20991231"], "PixelSpacing": [[0, 0], [-1, 1e308]],
    "StudyInstanceUID": ["", "../../x", "1." * 40], "SOPInstanceUID": ["", "../../x", "9" * 4096],
    "Modality": ["", "CT", "US"],
}


def _region(**values):
    region = pydicom.Dataset()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = values.get("x0", 0), values.get("y0", 0)
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = values.get("x1", 10), values.get("y1", 10)
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = region.PhysicalDeltaY = values.get("delta", 0.01)
    return region


REGIONS = [
    [], [_region(x0=50, y0=50, x1=10, y1=10)], [_region(x0=0, y0=0, x1=100000, y1=100000)],
    [_region(delta=0.0)], [_region(delta=-1.0)], [_region(x0=5, y0=5, x1=5, y1=5)],
    [_region(), _region(x0=3, y0=3, x1=8, y1=8)],
]


def test_element_mutated_files_never_crash_or_hang(seeds, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="llnm")
    names = sorted(n for n in seeds if "SR_" not in n)
    parsed = {n: pydicom.dcmread(io.BytesIO(seeds[n])) for n in names}
    keywords = sorted(HOSTILE_VALUES)

    @FUZZ
    @given(st.sampled_from(names),
           st.lists(st.sampled_from(keywords).flatmap(
               lambda k: st.tuples(st.just(k), st.sampled_from(HOSTILE_VALUES[k]))), max_size=4),
           st.one_of(st.none(), st.sampled_from(range(len(REGIONS)))),
           st.sampled_from(["keep", "drop_pixels", "short_pixels"]))
    def check(name, changes, regions, pixels):
        ds = copy.deepcopy(parsed[name])
        path = tmp_path / "fuzz.dcm"
        try:
            for keyword, value in changes:
                setattr(ds, keyword, value)
            if regions is not None:
                ds.SequenceOfUltrasoundRegions = REGIONS[regions]
            if pixels == "drop_pixels":
                del ds.PixelData
            elif pixels == "short_pixels" and not ds.file_meta.TransferSyntaxUID.is_encapsulated:
                ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
            ds.save_as(path, enforce_file_format=False)
        except Exception:
            return  # pydicom refuses to make this file; the byte-level fuzz covers unparsable values
        _read(path, caplog)

    check()
