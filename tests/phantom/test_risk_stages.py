"""Risk levels: the paper's stages by number and size of metastatic nodes (fusion profile), the split of
positives by p kept for the standard profile."""

import json
from dataclasses import replace

import numpy as np
import pytest

from llnm.model.stages import node_stage, outcome_stage
from llnm.phantom import risk
from llnm.phantom.findings import draw_findings, draw_fusion_findings
from llnm.phantom.layout import write_phantom_set
from llnm.phantom.profiles import FUSION, STANDARD, PhantomProfile
from llnm.phantom.study import generate_study


@pytest.mark.parametrize(("nodes", "largest_mm", "stage"), [
    (0, None, 1),  # no LLNM
    (1, 1.5, 1),  # a micro-metastasis
    (5, 1.9, 1),  # five micro-metastases
    (5, 12.0, 1),  # the case the paper leaves open: <= 5 nodes, < 3 cm, not micro
    (6, 12.0, 2),  # more than five, all < 3 cm
    (40, 29.9, 2),
    (12, 30.0, 2),  # exactly 3 cm is not "> 3 cm"
    (1, 30.1, 3),  # any node > 3 cm, however few
    (20, 45.0, 3),
])
def test_the_papers_stage_rule(nodes, largest_mm, stage):
    assert node_stage(nodes, largest_mm) == stage


@pytest.mark.parametrize(("llnm", "nodes", "largest_mm", "stage"), [
    (False, None, None, 1), (False, 7, 40.0, 1),  # no LLNM: 1 whatever else was typed
    (True, None, None, 2),  # positive, nothing counted: the layout's default
    (True, None, 31.0, 3),  # a node > 3 cm needs no count
    (True, 3, None, 1), (True, 0, None, 1),  # five or fewer (0 with LLNM counts as one)
    (True, 6, None, 2), (True, 6, 25.0, 2),  # more than five, none known > 3 cm
    (True, 2, 35.0, 3),
])
def test_a_recorded_outcome_gets_the_papers_stage(llnm, nodes, largest_mm, stage):
    assert outcome_stage(llnm, nodes, largest_mm) == stage


def test_the_label_is_drawn_as_before_and_negatives_have_no_nodes():
    for k in range(200):
        p = k / 199
        old = risk.draw_outcome(p, np.random.default_rng(k))
        llnm, stage, nodes, largest = risk.draw_outcome_nodes(p, np.random.default_rng(k))
        assert llnm == old[0]
        if llnm:
            assert nodes >= 1 and largest > 0 and stage == node_stage(nodes, largest)
        else:
            assert (stage, nodes, largest) == (1, 0, None)


def test_node_burden_grows_with_the_true_probability():
    def draws(p, n=4000):
        rng = np.random.default_rng(3)
        return np.array([risk.draw_nodes(p, rng) for _ in range(n)])

    low, high = draws(0.2), draws(0.95)
    assert np.median(high[:, 0]) > np.median(low[:, 0]) and np.median(high[:, 1]) > np.median(low[:, 1])
    stages = [np.array([node_stage(int(c), s) for c, s in d]) for d in (low, high)]
    assert (stages[1] > 1).mean() > 5 * (stages[0] > 1).mean()


def test_fusion_positives_have_the_papers_node_counts():
    """Paper, Table 1, among LLNM-positive patients: 1-5 nodes 85 %, 6-10 10 %, > 10 5 %."""
    nodes, largest = [], []
    for index in range(3000):
        f = draw_fusion_findings(draw_findings(np.random.default_rng([9, index])),
                                 np.random.default_rng([9, index, 23]))
        llnm, _, count, size = risk.draw_outcome_nodes(risk.fusion_p_true(f), np.random.default_rng([9, index, 7]))
        if llnm:
            nodes.append(count)
            largest.append(size)
    nodes, largest = np.array(nodes), np.array(largest)
    assert len(nodes) > 500
    assert 0.78 < (nodes <= 5).mean() < 0.91
    assert 0.06 < ((nodes > 5) & (nodes <= 10)).mean() < 0.15
    assert 0.02 < (nodes > 10).mean() < 0.09
    assert 0.02 < (largest > 30).mean() < 0.10


def test_profiles_choose_the_stages_and_the_standard_keeps_its_split():
    assert STANDARD.risk_stages == "p_split" and FUSION.risk_stages == "nodes"
    with pytest.raises(ValueError, match="risk_stages"):
        PhantomProfile(name="x", risk_stages="by_size")
    study = generate_study(4, 0, rows=160, cols=200)
    assert study.metastatic_nodes is None and "metastatic_nodes" not in study.params()


def test_fusion_studies_carry_nodes_and_stage_without_changing_labels():
    split = replace(FUSION, risk_stages="p_split")
    seen = set()
    for index in range(12):
        study = generate_study(5, index, rows=160, cols=200, profile="fusion")
        same = generate_study(5, index, rows=160, cols=200, profile=split)
        assert (study.llnm, study.p_true) == (same.llnm, same.p_true)
        params = study.params()
        assert params["risk_stages"] == "nodes"
        assert params["metastatic_nodes"] == study.metastatic_nodes
        assert params["largest_node_mm"] == study.largest_node_mm
        assert params["risk_level"] == node_stage(study.metastatic_nodes, study.largest_node_mm)
        assert (study.metastatic_nodes > 0) == bool(study.llnm)
        seen.add(study.llnm)
    assert seen == {0, 1}


def test_a_written_fusion_set_records_nodes_in_params(tmp_path):
    out = write_phantom_set(tmp_path / "set", studies=3, seed=6, rows=160, cols=200, profile="fusion")
    rows = [json.loads(line) for line in (out / "truth" / "params.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert row["risk_level"] == node_stage(row["metastatic_nodes"], row["largest_node_mm"])
    assert json.loads((out / "truth" / "profile.json").read_text())["risk_stages"] == "nodes"
