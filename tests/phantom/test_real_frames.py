"""Studies from real whole frames (llnm.phantom.real_frames): the layout, the splits, the label model."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from llnm.model.data import read_layout
from llnm.phantom import real_frames as rf
from llnm.segmentation.data import case_split
from tests.segmentation.conftest import FakeBackend, ultrasound_like

SHAPE = (160, 220)
YY, XX = np.mgrid[:SHAPE[0], :SHAPE[1]]
NODULE = ((YY - 80) / 20) ** 2 + ((XX - 100) / 25) ** 2 <= 1
GLAND = ((YY - 80) / 50) ** 2 + ((XX - 110) / 90) ** 2 <= 1

FIELDS = ["name", "case", "image", "nodules", "age", "sex", "composition", "echogenicity", "margins",
          "calcifications", "tirads"]


def frames_dir(tmp_path, cases: dict[str, str]):
    """One frame per case id; `cases`: case id -> TI-RADS grade."""
    root = tmp_path / "frames"
    (root / "image").mkdir(parents=True)
    (root / "mask").mkdir()
    rows = []
    for case, grade in cases.items():
        name = f"{case}_1"
        frame = np.maximum(ultrasound_like(SHAPE, seed=int(case)), 20)
        Image.fromarray(frame).convert("RGB").save(root / "image" / f"{name}.jpg", quality=95)
        Image.fromarray((NODULE * 255).astype(np.uint8)).save(root / "mask" / f"{name}.png")
        rows.append({"name": name, "case": case, "image": 1, "nodules": 1, "age": 50, "sex": "F",
                     "composition": "solid", "echogenicity": "hypoechogenicity", "margins": "spiculated",
                     "calcifications": "microcalcifications", "tirads": grade})
    with open(root / "frames.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return root


def cases_in(split: str, count: int) -> list[str]:
    out, k = [], 1
    while len(out) < count:
        if case_split(f"{k}_1") == split:
            out.append(str(k))
        k += 1
    return out


def test_the_layout_is_what_llnm_train_reads_and_keeps_to_its_split(tmp_path):
    train = cases_in("train", 4)
    val = cases_in("val", 2)
    root = frames_dir(tmp_path, {c: g for c, g in zip(train + val, ["2", "5", "4b", "3", "5", "5"])})
    summary = rf.generate(root, tmp_path / "out", ("train",), FakeBackend(gland_mask=GLAND), studies_per_case=2,
                          seed=1, image_size=32)
    studies = read_layout(tmp_path / "out")
    assert summary["studies"] == len(studies) == 8 and summary["cases"] == 4
    assert all(len(s.views) == 2 for s in studies)
    with open(tmp_path / "out" / "labels.csv", newline="") as fh:
        labels = list(csv.DictReader(fh))
    assert {r["case"] for r in labels} == set(train)
    for row in labels:
        assert "lymph" not in row["report"].lower() and "llnm" not in row["report"].lower()
        p = float(row["p_true"])
        assert 0.0 <= p <= 1.0
        if row["tirads"] in ("2", "3"):
            assert p < 0.05
    assert all(s.views[0].spacing_mm == rf.NOMINAL_SPACING_MM for s in studies)


def test_a_frame_whose_gland_misses_the_nodule_is_dropped(tmp_path):
    train = cases_in("train", 2)
    root = frames_dir(tmp_path, {c: "4b" for c in train})
    elsewhere = np.zeros(SHAPE, bool)
    elsewhere[:30, :] = True
    summary = rf.generate(root, tmp_path / "out", ("train",), FakeBackend(gland_mask=elsewhere), seed=0,
                          image_size=32)
    assert summary["studies"] == 0 and summary["dropped_frames"]["no_gland_cover"] == 2


def test_the_label_model_rises_with_the_grade_and_with_the_papers_factors():
    d = rf.normalise({"composition": "solid", "echogenicity": "hypoechogenicity", "margins": "well defined",
                      "calcifications": "non", "sex": "F", "age": "45"})
    grades = ["2", "3", "4a", "4b", "4c", "5"]
    ps = [rf.p_llnm({**d, "tirads": g}, capsule_mm=5.0, size_mm=10.0, vertical="lower") for g in grades]
    assert ps == sorted(ps) and ps[0] < 0.01 and ps[-1] > 0.2
    far = rf.p_llnm({**d, "tirads": "5"}, capsule_mm=5.0, size_mm=10.0, vertical="lower")
    near = rf.p_llnm({**d, "tirads": "5"}, capsule_mm=1.0, size_mm=10.0, vertical="lower")
    upper = rf.p_llnm({**d, "tirads": "5"}, capsule_mm=5.0, size_mm=10.0, vertical="upper")
    assert near > far and upper > far


@pytest.mark.parametrize("raw, expected", [
    ({"margins": "well defined smooth"}, "smooth"), ({"margins": "ill- defined"}, "ill-defined"),
    ({"margins": "microlobulated"}, "lobulated"), ({"margins": "spiculated"}, "irregular"),
])
def test_ddti_margin_words_map_onto_the_models_vocabulary(raw, expected):
    assert rf.normalise(raw)["margin"] == expected


def test_the_command_records_what_made_the_folder(tmp_path):
    """generator.json names the command and the code commit (`git rev-parse HEAD`, "+dirty" when the
    generator's code differs from it), so model.json can say which data a model was trained on."""
    from llnm.cli import main

    root = frames_dir(tmp_path, {c: "4b" for c in cases_in("train", 1)})
    assert main(["real-studies", "--frames", str(root), "--out", str(tmp_path / "out"), "--split", "train",
                 "--studies-per-case", "1", "--seed", "4"]) == 0
    record = json.loads((tmp_path / "out" / "generator.json").read_text())
    assert record["command"].startswith("llnm real-studies --frames") and record["seed"] == 4
    commit = record["generator_commit"]
    assert commit is None or len(commit.split("+")[0]) == 40
