"""The paper's risk stages of lateral lymph node metastasis: the `risk_level` of the training layout.

Shen et al. 2025 (Results, "Predicting high-risk lymph node metastasis patients", after the ATA
guideline): 1 low risk, five or fewer micro-metastases (< 0.2 cm); 2 medium, more than five metastatic
nodes, all < 3 cm; 3 high, any metastatic node > 3 cm. Pure Python: the phantom draws labels with it
and the console's cohort export writes them, neither needs torch.
"""

from __future__ import annotations

STAGE_MAX_LOW_NODES = 5
STAGE_HIGH_NODE_MM = 30.0


def node_stage(metastatic_nodes: int, largest_node_mm: float | None) -> int:
    """The stage (1..3) from the number of metastatic lateral nodes and the largest one's size (mm,
    None when not recorded). No metastatic node (no LLNM) is stage 1. The paper's three stages leave
    one case open: five or fewer nodes of which one reaches 0.2 cm but none 3 cm; it goes to stage 1,
    as the paper counts nodes in the bins 1-5 / 6-10 / > 10 (its Table 1) and stage 2 begins at six."""
    if metastatic_nodes <= 0:
        return 1
    if largest_node_mm is not None and largest_node_mm > STAGE_HIGH_NODE_MM:
        return 3
    return 2 if metastatic_nodes > STAGE_MAX_LOW_NODES else 1


def outcome_stage(llnm: bool, metastatic_nodes: int | None, largest_node_mm: float | None) -> int:
    """The stage of a recorded pathology outcome, where the count or the size may be missing: no LLNM
    1; a node > 3 cm 3 whatever the count; a positive without a count 2 (the training layout's
    default for an empty risk_level, `llnm.model.data`); else `node_stage` (a positive recorded with
    0 nodes counts as one)."""
    if not llnm:
        return 1
    if largest_node_mm is not None and largest_node_mm > STAGE_HIGH_NODE_MM:
        return 3
    if metastatic_nodes is None:
        return 2
    return node_stage(max(metastatic_nodes, 1), largest_node_mm)
