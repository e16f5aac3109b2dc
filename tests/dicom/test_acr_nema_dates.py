"""Dates and times in the ACR-NEMA forms "yyyy.mm.dd" and "hh:mm:ss" (PS3.5 6.2, DA and TM: readers
should accept them for backward compatibility): read as what they are and written in the DICOM form,
not emptied as malformed."""

from pydicom.dataset import Dataset

from llnm.dicom.patient import CONVERTED_ACR_NEMA, acr_nema_date, patient_age_years, writer_header


def _header(**values: str) -> Dataset:
    ds = Dataset()
    ds.PatientID, ds.PatientName, ds.PatientSex, ds.AccessionNumber, ds.StudyID = "P1", "Doe^J", "F", "A1", "1"
    ds.StudyTime = "101500"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_an_acr_nema_date_is_written_as_the_same_date_and_said_so():
    source = _header(StudyDate="1994.11.05", PatientBirthDate="1950.02.30")  # February 30th: no date
    out, repaired = writer_header(source)
    assert str(out.StudyDate) == "19941105" and out["StudyDate"].VR == "DA"
    assert str(out.PatientBirthDate) == ""  # malformed still means unknown, never a guess
    assert repaired == {"StudyDate": CONVERTED_ACR_NEMA, "PatientBirthDate": "malformed"}
    assert source.StudyDate == "1994.11.05"  # the source header is not changed


def test_a_dicom_date_is_left_as_it_is():
    out, repaired = writer_header(_header(StudyDate="19941105", PatientBirthDate="19500101"))
    assert repaired == {} and str(out.StudyDate) == "19941105"


def test_the_age_is_computed_from_acr_nema_dates():
    age, source = patient_age_years(_header(StudyDate="1994.11.05", PatientBirthDate="1950.11.05"))
    assert source == "PatientBirthDate" and abs(age - 44.0) < 0.01


def test_only_real_calendar_dates_convert():
    assert acr_nema_date("1994.11.05") == "19941105"
    for text in ("1994.13.01", "1994.02.30", "94.11.05", "1994-11-05", "19941105", ""):
        assert acr_nema_date(text) is None


def test_an_acr_nema_time_is_written_as_the_same_time():
    from llnm.dicom.patient import acr_nema_time

    out, repaired = writer_header(_header(StudyDate="19941105", PatientBirthDate="19500101", StudyTime="11:20:00"))
    assert str(out.StudyTime) == "112000" and repaired == {"StudyTime": CONVERTED_ACR_NEMA}
    assert acr_nema_time("11:20:00.25") == "112000.25" and acr_nema_time("11:20") == "1120"
    for text in ("25:00:00", "11:61:00", "112000", "11.20.00", ""):
        assert acr_nema_time(text) is None


def test_a_real_file_with_acr_nema_date_and_time_is_read_with_both_converted():
    """pydicom's color-pl.dcm carries StudyDate "1994.11.05" and StudyTime "11:20:00"."""
    from pydicom.data import get_testdata_file

    from llnm.dicom.loading import group_by_study, load_study

    studies, _ = group_by_study([get_testdata_file("color-pl.dcm", read=False)])
    (files,) = studies.values()
    study = load_study(files)
    assert files.repaired["StudyDate"] == files.repaired["StudyTime"] == CONVERTED_ACR_NEMA
    assert f"StudyDate {CONVERTED_ACR_NEMA}: written as the same value in the DICOM form" in study.warnings
