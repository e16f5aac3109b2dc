"""Phantom profiles: `standard` writes what the generator always wrote; `fusion` is a benchmark that
needs image and report (pixel-only factors, noisy reports, risk on the latent anatomy)."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from llnm.phantom import anatomy, generate_study, risk, write_phantom_set
from llnm.phantom.findings import draw_findings, draw_fusion_findings
from llnm.phantom.information import information_aucs, latent_draw
from llnm.phantom.profiles import FUSION, PROFILES, STANDARD, get_profile
from llnm.phantom.report import _tirads
from llnm.phantom.speckle import form_image

ROWS, COLS = 240, 320

#: Content digest (labels.csv, views.csv, params.jsonl, decoded PNG pixels) of the standard set below,
#: captured with the generator BEFORE profiles existed (commit 34210da).
STANDARD_SEED11_DIGEST = "780c497c9dba0d8ae82b1abc8f1528052a244562c42e675f433d28d9777e2580"


def _content_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix == ".dcm":
            continue
        h.update(str(path.relative_to(root)).encode())
        h.update(np.asarray(Image.open(path)).tobytes() if path.suffix == ".png" else path.read_bytes())
    return h.hexdigest()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_profiles_by_name() -> None:
    assert set(PROFILES) == {"standard", "fusion"}
    assert get_profile(None) is STANDARD and get_profile("fusion") is FUSION and get_profile(FUSION) is FUSION
    with pytest.raises(ValueError):
        get_profile("nope")
    with pytest.raises(Exception):
        FUSION.name = "x"  # type: ignore[misc]  # frozen


def test_standard_profile_writes_what_it_always_wrote(tmp_path: Path) -> None:
    default = write_phantom_set(tmp_path / "default", studies=3, seed=11, rows=ROWS, cols=COLS, rgb_fraction=0.5)
    named = write_phantom_set(tmp_path / "named", studies=3, seed=11, rows=ROWS, cols=COLS, rgb_fraction=0.5,
                              profile="standard")
    assert _content_digest(default) == _content_digest(named) == STANDARD_SEED11_DIGEST
    assert not (default / "truth" / "profile.json").exists()
    assert "profile" not in _rows(default / "labels.csv")[0]


def test_fusion_bayes_auc_prevalence_and_information() -> None:
    """Over 2000 latent draws: Bayes AUC in the paper's regime, and neither the report nor the image
    alone (best logistic model, cross-fitted) comes near what both give."""
    r = information_aucs("fusion", n=2000, seed=0)
    assert 0.85 <= r["bayes_auc"] <= 0.95
    assert 0.2 <= r["prevalence"] <= 0.35
    assert r["all_auc"] >= r["bayes_auc"] - 0.05  # both inputs together get close to the truth
    assert r["all_auc"] - r["report_only_auc"] >= 0.035
    assert r["all_auc"] - r["image_only_auc"] >= 0.035
    with pytest.raises(ValueError):
        information_aucs("standard", n=10)


def test_fusion_risk_reads_the_latent_anatomy_not_the_masks() -> None:
    """The rendered study's p_true and label are those of its latent draw: nothing measured on the
    generated masks enters; the realised capsule distance is still recorded."""
    for index in range(2):
        study = generate_study(8, index, rows=160, cols=200, profile="fusion")
        f, _, p, y = latent_draw(8, index, FUSION)
        assert study.findings == f
        assert study.p_true == pytest.approx(p) == pytest.approx(risk.fusion_p_true(study.findings))
        assert study.llnm == y
        standard = generate_study(8, index, rows=160, cols=200)
        assert study.study_uid != standard.study_uid  # both kinds of set can share one PACS
        assert not {v.sop_instance_uid for v in study.views} & {v.sop_instance_uid for v in standard.views}
        near = replace(study.findings, capsule_target_mm=1.0, ete=False)
        assert risk.fusion_p_true(near) > risk.fusion_p_true(replace(near, capsule_target_mm=5.0))
        params = study.params()
        assert params["profile"] == "fusion" and params["risk_inputs"] == "latent"
        assert params["logit"] == pytest.approx(risk.fusion_logit(study.findings), abs=1e-5)
        assert {"spiculation", "foci_per_cm2", "heterogeneity"} <= set(params["latent"])


def _render(f, seed: int = 1) -> tuple[np.ndarray, np.ndarray, dict]:
    """One transverse view of findings `f` with fixed random streams."""
    anat = anatomy.transverse((220, 260), 0.19, f, np.random.default_rng(seed))
    image, imaging = form_image(anat, f, np.random.default_rng(seed + 100))
    return image, anat.nodule, imaging


def _fusion_findings(**changes) -> object:
    rng = np.random.default_rng(5)
    f = draw_fusion_findings(draw_findings(rng), rng)
    base = dict(margin="smooth", echogenicity="hypo", composition="solid", calcification="none", halo=False,
                comet_tail=False, ete=False, capsule_target_mm=4.0, length_mm=14.0, width_mm=13.0, ap_mm=11.0,
                spiculation=0.5, heterogeneity=0.5, foci_per_cm2=0.0, parenchyma="homogeneous")
    return replace(f, **(base | changes))


def _compactness(mask: np.ndarray) -> float:
    edge = mask & ~ndimage.binary_erosion(mask)
    return float(edge.sum() ** 2 / mask.sum())


def test_pixel_factors_change_the_pixels() -> None:
    """Each pixel-only factor, low vs high, changes what is drawn: internal texture, outline, foci."""
    lo, nod_lo, _ = _render(_fusion_findings(heterogeneity=0.0))
    hi, nod_hi, _ = _render(_fusion_findings(heterogeneity=1.0))
    assert np.array_equal(nod_lo, nod_hi)
    inner = ndimage.binary_erosion(nod_lo, iterations=3)
    smooth_lo = ndimage.gaussian_filter(lo.astype(float), 3.0)[inner]
    smooth_hi = ndimage.gaussian_filter(hi.astype(float), 3.0)[inner]
    assert smooth_hi.std() > 3.0 * smooth_lo.std()

    _, nod_round, _ = _render(_fusion_findings(spiculation=0.0))
    _, nod_spiky, _ = _render(_fusion_findings(spiculation=1.0))
    assert _compactness(nod_spiky) > 1.4 * _compactness(nod_round)

    micro = dict(calcification="micro")
    _, _, few = _render(_fusion_findings(foci_per_cm2=2.0, **micro))
    _, _, many = _render(_fusion_findings(foci_per_cm2=40.0, **micro))
    assert many["calcification_count"] >= 4 * max(1, few["calcification_count"])


def test_fusion_reports_omit_contradict_and_keep_report_only_facts() -> None:
    """Rates over latent draws within the profile's stated bounds; TI-RADS from what is REPORTED."""
    draws = [latent_draw(21, i, FUSION) for i in range(800)]
    omitted = {k: np.mean([k in rep.reported["omitted"] for _, rep, _, _ in draws])
               for k in ("calcification", "vascularity", "impression")}
    assert 0.22 <= omitted["calcification"] <= 0.38
    assert 0.13 <= omitted["vascularity"] <= 0.27
    assert 0.09 <= omitted["impression"] <= 0.21
    irregular = [rep for f, rep, _, _ in draws if f.margin != "smooth"]
    called_smooth = np.mean([rep.reported["margin"] == "smooth" for rep in irregular])
    assert 0.3 <= called_smooth <= 0.5  # "smooth margins" written for a non-smooth nodule
    assert all("mooth" in rep.findings for rep in irregular if rep.reported["margin"] == "smooth")
    for f, rep, _, _ in draws:
        r = rep.reported
        if "impression" in r["omitted"]:
            assert rep.text == rep.findings and "TI-RADS" not in rep.text
        else:
            assert f"TI-RADS {r['tirads']}" in rep.impression
        if "calcification" in r["omitted"]:
            assert r["foci"] == "none" and not r["microcalcification"]
        taller = r["taller_than_wide"]
        assert _tirads(f.composition, r["echogenicity"], taller, r["margin"], r["ete"], r["foci"])[1] == r["tirads"]
    central = [rep for f, rep, _, _ in draws if f.central_node]
    assert np.mean(["central" in rep.text for rep in central]) >= 0.75  # report-only fact still stated
    internal = [rep for f, rep, _, _ in draws if f.vascularity == "internal"]
    assert np.mean(["internal vascularity" in rep.text for rep in internal]) >= 0.6


def test_cli_writes_a_fusion_set_that_records_its_profile(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import pydicom

    from llnm.cli import main

    out = tmp_path / "fusion"
    assert main(["phantom", "--out", str(out), "--studies", "2", "--seed", "4", "--rows", "160", "--cols", "200",
                 "--profile", "fusion"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["profile"] == "fusion" and summary["n"] == 2
    labels = _rows(out / "labels.csv")
    assert [r["profile"] for r in labels] == ["fusion", "fusion"]
    params = [json.loads(line) for line in (out / "truth" / "params.jsonl").read_text().splitlines()]
    assert [p["profile"] for p in params] == ["fusion", "fusion"]
    assert json.loads((out / "truth" / "profile.json").read_text()) == FUSION.to_dict()
    record = json.loads((out / "generator.json").read_text())  # what llnm train copies into model.json
    assert record["command"].startswith("llnm phantom --out") and "--profile fusion" in record["command"]
    assert (record["seed"], record["studies"], record["profile"]) == (4, 2, "fusion")
    assert record["bayes_auc"] == summary["bayes_auc"]
    commit = record["generator_commit"]
    assert commit is None or len(commit.split("+")[0]) == 40
    for row, p in zip(labels, params):
        study = generate_study(4, p["index"], rows=160, cols=200, profile="fusion")
        assert float(row["p_true"]) == pytest.approx(study.p_true, abs=1e-6)
        ds = pydicom.dcmread(out / row["study_uid"] / "SR_report.dcm")
        texts = [item.TextValue for c in ds.ContentSequence for item in c.ContentSequence]
        assert "\n".join(texts) == row["report"]
    with pytest.raises(SystemExit):
        main(["phantom", "--out", str(tmp_path / "bad"), "--profile", "nope"])


def test_a_report_without_impression_is_written_without_one() -> None:
    """The SR of a fusion study whose reader left out the impression holds the findings only."""
    from llnm.phantom.dicom import report_sr_dataset

    study = next(s for s in (generate_study(2, i, rows=128, cols=160, profile="fusion") for i in range(60))
                 if not s.report.impression)
    ds = report_sr_dataset(study)
    assert len(ds.ContentSequence) == 1
    assert ds.ContentSequence[0].ContentSequence[0].TextValue == study.report.text == study.report.findings


def test_the_pixel_only_factors_are_legible_to_a_simple_measurement() -> None:
    """A benchmark's pixel-only factor is only a test of image reading if the pixels show it: over 150
    studies, the measurements of `llnm.features.measures` on the true masks (mean of both views) rank
    with the latent heterogeneity and spiculation (Spearman; at full size on 1,000 studies:
    heterogeneity 0.51, irregularity 0.79; the rendering before 2026-12-07 gave heterogeneity 0.33)."""
    from scipy.stats import spearmanr

    from llnm.features import extract_features
    from llnm.features.measures import MEASURES, view_measures

    latent, measured = [], []
    for index in range(150):
        study = generate_study(31, index, rows=300, cols=400, profile="fusion")
        rows = [view_measures(v.image, v.nodule, extract_features(v.image, v.gland, v.nodule, v.spacing_mm, size=16),
                              v.spacing_mm) for v in study.views if v.nodule.any()]
        latent.append((study.findings.heterogeneity, study.findings.spiculation))
        measured.append(np.mean(rows, axis=0))
    latent_a, measured_a = np.array(latent), np.array(measured)
    heterogeneity = spearmanr(latent_a[:, 0], measured_a[:, MEASURES.index("heterogeneity")]).correlation
    irregularity = spearmanr(latent_a[:, 1], measured_a[:, MEASURES.index("irregularity")]).correlation
    assert heterogeneity >= 0.38, heterogeneity  # 0.44 here; 0.29 with the rendering before
    assert irregularity >= 0.6, irregularity
