"""One synthetic study as arrays: findings -> two views (anatomy + image) -> report -> true risk -> label.

`generate_study(seed, index)` is a pure function of its arguments: every random draw comes from
streams spawned from SeedSequence([seed, index]), so study k of a set does not depend on how many
studies the set has, and the model helper can generate any study in memory without files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from llnm.study import StudyInput, View

from . import anatomy, risk
from .findings import Findings, draw_findings, draw_fusion_findings
from .profiles import STANDARD, PhantomProfile, get_profile
from .report import Report, write_report
from .speckle import form_image
from .textures import apply_texture, load_textures

UID_ROOT = "llnm-phantom-v1"


def phantom_uid(seed: int, index: int, *parts: object) -> str:
    """A DICOM UID that depends only on (seed, index, parts): same seed, same UIDs."""
    return generate_uid(entropy_srcs=[UID_ROOT, str(seed), str(index), *map(str, parts)])


@dataclass
class PhantomView:
    """One B-mode view: the tissue-region crop and its ground truth on the same grid."""

    name: str  # "transverse" or "longitudinal"
    image: np.ndarray  # (H, W) uint8, exactly the crop a reader makes from the DICOM region
    gland: np.ndarray  # (H, W) bool, the lobe (+ isthmus part) up to the capsule; holds the nodule
    # except its part beyond the capsule when there is extrathyroidal extension
    nodule: np.ndarray  # (H, W) bool
    spacing_mm: tuple[float, float]  # (row, column) mm per pixel
    region: tuple[int, int, int, int]  # (x0, y0, x1, y1) INCLUSIVE bounds in the full frame (DICOM style)
    frame_shape: tuple[int, int]  # (rows, columns) of the full DICOM frame
    sop_instance_uid: str
    capsule_mm: float  # realised minimum nodule-to-capsule distance in this view
    position: str  # transverse: medial/lateral; longitudinal: upper/middle/lower third
    imaging: dict[str, Any] = field(default_factory=dict)


@dataclass
class PhantomStudy:
    seed: int
    index: int
    study_uid: str
    series_uid: str  # the image series (both views)
    sr_series_uid: str
    sr_sop_instance_uid: str
    age: int
    sex: str
    report: Report
    p_true: float
    llnm: int
    risk_level: int
    views: list[PhantomView]
    findings: Findings
    factors: risk.RiskFactors
    profile: PhantomProfile = STANDARD
    metastatic_nodes: int | None = None  # drawn with risk_stages="nodes": 0 without LLNM
    largest_node_mm: float | None = None  # the largest metastatic node; None without LLNM

    @property
    def patient_id(self) -> str:
        return f"PH{self.index + 1:04d}"

    def to_input(self) -> StudyInput:
        """What reading this study's DICOM gives the pipeline, without writing or reading files."""
        views = [View(image=v.image, spacing_mm=v.spacing_mm, source=v.sop_instance_uid,
                      crop_offset=(v.region[1], v.region[0])) for v in self.views]
        return StudyInput(study_uid=self.study_uid, views=views, report_text=self.report.text,
                          age_years=float(self.age), sex=self.sex)

    def params(self) -> dict[str, Any]:
        """The latent and realised parameters, one JSON line of truth/params.jsonl."""
        f = self.findings.to_dict()
        return {
            "study_uid": self.study_uid, "seed": self.seed, "index": self.index,
            "p_true": round(self.p_true, 6), "llnm": self.llnm, "risk_level": self.risk_level,
            "logit": round(risk.logit(self.factors), 6),
            "capsule_distance_mm": round(self.factors.capsule_mm, 3),
            "near_capsule": self.factors.capsule_mm < 2.5,
            "size_mm": round(self.factors.size_mm, 2),
            "lobe_position": self.factors.vertical,
            "horizontal_position": self.views[0].position,
            "margin": self.factors.margin, "echogenicity": self.factors.echogenicity,
            "calcification": self.factors.calcification, "composition": self.factors.composition,
            "ete": self.factors.ete, "central_node": self.factors.central_node,
            "vascularity": self.factors.vascularity, "age": self.age, "sex": self.sex,
            "views": [{"sop_instance_uid": v.sop_instance_uid, "name": v.name,
                       "capsule_distance_mm": round(v.capsule_mm, 3), "position": v.position,
                       "spacing_mm": v.spacing_mm[0], **v.imaging} for v in self.views],
            "reported": self.report.reported,
            "latent": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in f.items()},
        } | self._profile_params()

    def _profile_params(self) -> dict[str, Any]:
        """A non-standard profile names itself; with a latent risk its logit is the latent one (the
        realised values above are then what the images show, not what the risk reads)."""
        if self.profile == STANDARD:
            return {}
        out: dict[str, Any] = {"profile": self.profile.name}
        if self.profile.latent_risk:
            out.update(logit=round(risk.fusion_logit(self.findings), 6), risk_inputs="latent")
        if self.profile.risk_stages == "nodes":
            out.update(risk_stages="nodes", metastatic_nodes=self.metastatic_nodes,
                       largest_node_mm=self.largest_node_mm)
        return out


def frame_geometry(rows: int, cols: int, rng: np.random.Generator) -> tuple[tuple[int, int, int, int], float]:
    """Inclusive tissue-region bounds in the full frame, and the square pixel spacing in mm.
    Depth 35-45 mm over the region height: 0.07-0.09 mm/pixel at the default 600 x 800 frame."""
    y0 = int(round(rows * 0.09)) + int(rng.integers(0, max(1, rows // 60)))
    y1 = rows - int(round(rows * 0.05)) - 1
    x0 = int(round(cols * 0.12)) + int(rng.integers(0, max(1, cols // 40)))
    x1 = cols - int(round(cols * 0.10)) - 1 - int(rng.integers(0, max(1, cols // 40)))
    depth_mm = float(rng.uniform(35.0, 45.0))
    spacing = round(depth_mm / (y1 - y0 + 1), 5)
    return (x0, y0, x1, y1), spacing


def generate_study(seed: int, index: int, rows: int = 600, cols: int = 800,
                   textures: str | Path | None = None,
                   profile: str | PhantomProfile | None = None) -> PhantomStudy:
    """Study `index` of the set with this seed, in memory (no files). `textures`: an optional folder
    of real nodule crops (see textures.py) whose internal texture is added inside the nodule.
    `profile`: a name of profiles.PROFILES (default "standard", the generator as it always was)."""
    prof = get_profile(profile)

    def uid(*parts: object) -> str:  # another profile, other UIDs: sets of both can share a PACS
        return phantom_uid(seed, index, *parts) if prof == STANDARD else phantom_uid(seed, index, prof.name, *parts)

    streams = [np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), int(index)]).spawn(8)]
    f = draw_findings(streams[0])
    if prof.pixel_factors:  # own stream: the standard draws stay as they are
        f = draw_fusion_findings(f, np.random.default_rng([int(seed), int(index), 23]))
    region, sp = frame_geometry(rows, cols, streams[1])
    x0, y0, x1, y1 = region
    shape = (y1 - y0 + 1, x1 - x0 + 1)
    views: list[PhantomView] = []
    for k, (name, build) in enumerate((("transverse", anatomy.transverse), ("longitudinal", anatomy.longitudinal))):
        anat = build(shape, sp, f, streams[2 + k])
        image, imaging = form_image(anat, f, streams[4 + k])
        if textures:
            image = apply_texture(image, anat.nodule, load_textures(str(textures)),
                                  np.random.default_rng([int(seed), int(index), 11, k]))
        gland, nodule = anat.gland, anat.nodule
        if name == "transverse" and f.side == "left":  # built as a right lobe; mirror
            image, gland, nodule = image[:, ::-1].copy(), gland[:, ::-1].copy(), nodule[:, ::-1].copy()
        views.append(PhantomView(
            name=name, image=image, gland=gland, nodule=nodule, spacing_mm=(sp, sp), region=region,
            frame_shape=(rows, cols), sop_instance_uid=uid("image", k + 1),
            capsule_mm=anat.capsule_mm, position=anat.position, imaging=imaging))
    capsule = min(v.capsule_mm for v in views)
    ete = any(bool((v.nodule & ~v.gland).any()) for v in views)  # visible: nodule beyond the capsule
    vertical = views[1].position
    factors = risk.RiskFactors(
        capsule_mm=capsule, vertical=vertical, size_mm=f.size_mm, margin=f.margin,
        echogenicity=f.echogenicity, calcification=f.calcification, composition=f.composition,
        sex=f.sex, age=float(f.age), ete=ete, central_node=f.central_node, vascularity=f.vascularity)
    report = write_report(f, capsule, ete, vertical, views[0].position, streams[6], prof.report)
    p = risk.fusion_p_true(f) if prof.latent_risk else risk.p_true(factors)
    nodes: int | None = None
    largest: float | None = None
    if prof.risk_stages == "nodes":
        llnm, level, nodes, largest = risk.draw_outcome_nodes(p, streams[7])
    else:
        llnm, level = risk.draw_outcome(p, streams[7])
    return PhantomStudy(
        seed=seed, index=index, study_uid=uid("study"), series_uid=uid("series", "US"),
        sr_series_uid=uid("series", "SR"), sr_sop_instance_uid=uid("sr"), age=f.age, sex=f.sex, report=report,
        p_true=p, llnm=llnm, risk_level=level, views=views, findings=f, factors=factors, profile=prof,
        metastatic_nodes=nodes, largest_node_mm=largest)
