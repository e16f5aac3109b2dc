"""`llnm cohort export` writes the layout `llnm train` reads, from the studies with outcomes, with the
radiologist's corrected outline in place of the segmented nodule."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom

from llnm import audit as A
from llnm.console import cohort
from llnm.model.data import read_layout, read_png
from llnm.phantom import write_phantom_set


def spool_phantom(settings, folder: Path) -> list[str]:
    """The phantom studies' DICOM files in the spool, as the listener stores them."""
    uids = []
    for path in sorted(folder.glob("*/*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        target = settings.spool_dir / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
        uids.append(str(ds.StudyInstanceUID))
    return sorted(set(uids))


def box_segmenter(backend, image: np.ndarray):
    """Stand-in for the segmentation models: a gland box and a nodule box inside it."""
    h, w = image.shape
    gland = np.zeros((h, w), bool)
    gland[h // 6: 5 * h // 6, w // 6: 5 * w // 6] = True
    nodule = np.zeros((h, w), bool)
    nodule[h // 3: h // 2, w // 3: w // 2] = True
    return SimpleNamespace(mask=nodule, score=0.9), gland


def test_export_is_the_training_layout(seeded, tmp_path):
    uids = spool_phantom(seeded.settings, write_phantom_set(tmp_path / "phantom", 3, seed=3, rows=200, cols=260))
    audit = seeded.audit
    for uid in uids:
        audit.set_state(uid, A.DONE, probability=0.5, risk_level=2)
    audit.set_outcome(uids[0], "path1", True, 8, 35.0)  # a node > 3 cm: the paper's stage 3
    audit.set_outcome(uids[1], "path1", False, 0)
    audit.set_outcome(seeded.uids["ignored"], "path1", True, None)  # nothing spooled: left out, said why
    first_view = sorted((seeded.settings.spool_dir / uids[1]).glob("*/*.dcm"))[0]
    sop = str(pydicom.dcmread(first_view, stop_before_pixels=True).SOPInstanceUID)
    audit.add_feedback(uids[1], "rad1", False, outline={"sop_instance_uid": sop, "frame": 1,
                                                        "points": [[0, 0], [0, 4000], [4000, 4000], [4000, 0]]})
    out = tmp_path / "cohort"
    report = cohort.export(seeded.settings, audit, out, backend=object(), segmenter=box_segmenter)
    assert report["studies"] == 2 and report["positives"] == 1 and seeded.uids["ignored"] in report["skipped"]
    with (out / "labels.csv").open() as fh:
        labels = {r["study_uid"]: r for r in csv.DictReader(fh)}
    assert list(next(csv.reader((out / "labels.csv").open()))) == cohort.LABEL_COLUMNS
    assert list(next(csv.reader((out / "views.csv").open()))) == cohort.VIEW_COLUMNS
    assert labels[uids[0]]["llnm"] == "1" and labels[uids[0]]["risk_level"] == "3"
    assert labels[uids[1]]["llnm"] == "0" and labels[uids[1]]["risk_level"] == "1"
    assert labels[uids[0]]["sex"] in ("M", "F") and labels[uids[0]]["report"]
    studies = {s.study_uid: s for s in read_layout(out)}
    assert set(studies) == {uids[0], uids[1]} and all(len(s.views) == 2 for s in studies.values())
    view = studies[uids[0]].views[0]
    image, nodule = read_png(view.image), read_png(view.nodule_mask)
    assert image.shape == nodule.shape and set(np.unique(nodule)) == {0, 255}
    corrected = read_png(studies[uids[1]].views[0].nodule_mask) > 127
    assert corrected.all()  # the outline covered the whole crop: it replaced the segmented box
    assert not (read_png(studies[uids[1]].views[1].nodule_mask) > 127).all()


def test_an_audit_trail_from_before_the_node_size_gains_the_column(tmp_path):
    """Outcomes recorded before largest_node_mm existed stay readable and new ones can carry it."""
    import sqlite3

    from llnm.audit import AuditTrail

    path = tmp_path / "audit.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE outcomes (study_uid TEXT PRIMARY KEY, ts REAL NOT NULL, user TEXT NOT NULL,"
                " llnm INTEGER NOT NULL, metastatic_nodes INTEGER)")
    old.execute("INSERT INTO outcomes VALUES ('1.2.3', 1.0, 'path1', 1, 7)")
    old.commit()
    old.close()
    audit = AuditTrail(path)
    assert audit.outcome("1.2.3")["largest_node_mm"] is None and audit.outcome("1.2.3")["metastatic_nodes"] == 7
    audit.set_outcome("1.2.4", "path1", True, 2, 31.5)
    assert audit.outcome("1.2.4")["largest_node_mm"] == 31.5
    audit.close()
