"""Synthetic thyroid ultrasound studies with a KNOWN lateral-lymph-node-metastasis risk model.

`llnm phantom --out DIR --studies N --seed S` (or `write_phantom_set`) writes real DICOM studies
and their ground truth; `generate_study(seed, index)` gives the same study as arrays, in memory.
The same seed gives byte-identical output; study k depends only on (seed, k).

Layout of DIR (also the training layout `llnm train --data DIR` reads; a hospital cohort can
provide the same files, with `truth/params.jsonl` optional)::

    DIR/<study_uid>/US_1.dcm        US Image Storage, transverse view of the index nodule
    DIR/<study_uid>/US_2.dcm        US Image Storage, longitudinal view (cranial to the left)
                                    Both views share one image series (SeriesNumber 1).
    DIR/<study_uid>/SR_report.dcm   Basic Text SR (own series, SeriesNumber 2) holding the report:
                                    root CONTAINER -> CONTAINER "Findings" -> TEXT "Finding",
                                                      CONTAINER "Impressions" -> TEXT "Impression"
    DIR/truth/images/<sop_instance_uid>.png         uint8 greyscale B-mode tissue region of that
                                    frame = frame[y0:y1+1, x0:x1+1] with the region bounds below
    DIR/truth/masks/<sop_instance_uid>_gland.png    0/255 thyroid mask on that crop grid (lobe and
                                    the isthmus part in view, up to the capsule: it holds the nodule,
                                    except a part bulging through the capsule = extrathyroidal extension)
    DIR/truth/masks/<sop_instance_uid>_nodule.png   0/255 index-nodule mask on that crop grid
    DIR/labels.csv   study_uid,llnm,risk_level,p_true,age,sex,report
                     llnm 0/1; risk_level 1 (no LLNM), 2, 3 (the fusion profile: the paper's
                     stages by metastatic node count and size, risk.node_stage); p_true = the generator's true
                     probability (empty for a real cohort); age in years; sex M/F; report = the
                     report text, the SR's TEXT values in document order joined by "\\n"
    DIR/views.csv    study_uid,sop_instance_uid,image,gland_mask,nodule_mask,spacing_row_mm,
                     spacing_col_mm,region_x0,region_y0,region_x1,region_y1,view
                     paths relative to DIR; region = the B-mode region of the DICOM frame with
                     INCLUSIVE bounds as in SequenceOfUltrasoundRegions; view = transverse/longitudinal
    DIR/truth/params.jsonl   one JSON object per study: the latent and realised parameters
                     (capsule_distance_mm, size_mm, lobe_position, margin, echogenicity, ...)
    DIR/generator.json       (written by `llnm phantom`) the command, seed, profile, counts, Bayes-optimal
                     AUC and code commit; `llnm train` copies it into model.json

Views follow scanner conventions: transverse with the patient's right on the image left (so the
trachea is medial, the carotid lateral), longitudinal with cranial to the left; the lobe third
(upper/middle/lower) is read along the longitudinal view. The true risk model is in risk.py
(logistic over the REALISED findings: capsule distance < 2.5 mm, extrathyroidal extension, lobe
third, size, margin, echogenicity, calcifications, composition, sex, age, and two facts seen only in
the report: a suspicious central node and internal vascularity); labels are drawn from p_true.

Profiles (`profiles.PROFILES`, `llnm phantom --profile NAME`, `profile=` of generate_study and
write_phantom_set): `standard` (the default) is all of the above, byte-identical to the generator before
profiles existed. `fusion` is a benchmark that needs image AND report: pixel-only factors (spiculation
amplitude of the outline, density of punctate foci, internal heterogeneity) enter the true risk, reports
omit and contradict, and the risk reads the LATENT anatomy (`risk.fusion_p_true`), not the masks; its
labels.csv has a last column `profile`, params.jsonl lines carry "profile", and truth/profile.json holds
its settings. `information.information_aucs` measures what report and image each carry.

Only DICOM lies outside DIR/truth and the two CSV files, so `storescu +sd DIR +sp '*.dcm'` sends
exactly the studies. Capsule distance (params.jsonl) is measured on the masks as llnm.features does:
min over nodule pixels of the gland's Euclidean distance transform x spacing (one pixel when
touching, 0 when the nodule extends beyond the gland).
"""

from .layout import write_phantom_set
from .profiles import PROFILES, PhantomProfile
from .study import PhantomStudy, PhantomView, generate_study

__all__ = ["PROFILES", "PhantomProfile", "PhantomStudy", "PhantomView", "generate_study", "write_phantom_set"]
