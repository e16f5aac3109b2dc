"""View fusion: "probability" (each view scored alone, the study = the mean of the view probabilities;
pinned to the outputs it gave before "pooled" existed) and "pooled" (the views' pooled representations
averaged before the one head, as in the paper)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llnm.model.config import ORIENTATIONS, TMDLConfig, preset
from llnm.model.data import build_cache, read_layout
from llnm.model.tmdl import TMDL, TMDLForExport, dummy_inputs
from llnm.model.train import load_model, predict_studies, train

from .conftest import fake_text_encoder, write_layout


def with_view_column(root: Path) -> Path:
    """views.csv with the phantom's `view` column: each study's first view transverse, second longitudinal."""
    with (root / "views.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    seen: dict[str, int] = {}
    for row in rows:
        k = seen.get(row["study_uid"], 0)
        seen[row["study_uid"]] = k + 1
        row["view"] = ORIENTATIONS[k]
    with (root / "views.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def pooled_model(seed: int = 0) -> TMDL:
    """A tiny pooled model whose head has O(1) weights, so its non-linearity is visible."""
    torch.manual_seed(seed)
    model = TMDL(preset("tiny", view_fusion="pooled")).eval()
    for layer in model.head:
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    return model


def two_views(seed: int = 0) -> dict[str, torch.Tensor]:
    """One study's two views (different images, the same report and demographics)."""
    x = dummy_inputs(preset("tiny"), batch=2, seed=seed)
    for key in ("text_states", "text_mask"):
        x[key] = x[key][:1].expand_as(x[key]).clone()
    x["clinical"][:, :2] = x["clinical"][:1, :2]
    return x


def study_output(model: TMDL, x: dict[str, torch.Tensor], orientation=(0, 1)) -> torch.Tensor:
    logit, _ = model.forward_studies(x["images"], x["text_states"], x["text_mask"], x["clinical"],
                                     x["group_keep"], torch.tensor(orientation), torch.zeros(2, dtype=torch.long), 1)
    return logit


def test_a_preset_json_without_view_fusion_loads_as_probability_fusion():
    older = {k: v for k, v in json.loads(preset("compact").to_json()).items()  # a preset.json written before
             if k not in ("view_fusion", "shape_input", "image_sampling", "location_aspect")}  # these fields
    config = TMDLConfig.from_json(json.dumps(older))
    assert config.view_fusion == "probability" and config == preset("compact")
    assert TMDLConfig.from_json(preset("tiny", view_fusion="pooled").to_json()).view_fusion == "pooled"
    with pytest.raises(ValueError, match="view_fusion"):
        preset("tiny", view_fusion="logits")
    assert not any("orientation" in k for k in TMDL(preset("tiny")).state_dict())  # shipped weights still load


def test_probability_fusion_is_as_before():
    """Outputs computed before view_fusion existed (same seed, same data): weights, random stream and
    study averaging unchanged, with and without group dropout."""
    torch.manual_seed(0)
    with torch.no_grad():
        logit, risk, _, _ = TMDL(preset("tiny")).eval()(**dummy_inputs(preset("tiny"), batch=2, seed=3))
    np.testing.assert_allclose(logit.numpy(), [0.0008689117385074496, 0.001062544877640903], atol=1e-7)
    np.testing.assert_allclose(risk[0].numpy(), [0.004683708772063255, -0.0024705477990210056,
                                                 0.0028649417217820883], atol=1e-7)


@pytest.mark.parametrize("group_dropout, expected, losses", [
    (0.0, [0.50796315, 0.50799873, 0.50810176, 0.50806823, 0.50804546, 0.50802138], [1.24187, 1.23702, 1.22818]),
    (0.5, [0.50778115, 0.50778484, 0.50785229, 0.50786588, 0.50783229, 0.50781789], [1.24217, 1.23721, 1.22921]),
])
def test_probability_fusion_training_is_as_before(tmp_path, group_dropout, expected, losses):
    layout = write_layout(tmp_path / "layout", studies=30, seed=3)
    train(layout, tmp_path / "m", preset("tiny"), encode_text=fake_text_encoder, epochs=3, lr=5e-3, patience=5,
          progress=False, seed=0, group_dropout=group_dropout)
    model, meta = load_model(tmp_path / "m")
    _, p, _ = predict_studies(model, build_cache(layout, model.config, fake_text_encoder, jitters=0, progress=False))
    np.testing.assert_allclose(p[:6], expected, atol=2e-6)
    log = [json.loads(line)["train_loss"] for line in (tmp_path / "m" / "train_log.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(log, losses, atol=2e-5)
    assert meta["config"]["view_fusion"] == "probability"


def test_pooled_study_output_depends_on_both_views_and_their_orientation():
    model = pooled_model()
    x = two_views()
    with torch.no_grad():
        base = study_output(model, x)
        for k in range(2):
            y = {key: v.clone() for key, v in x.items()}
            y["images"][k] = torch.rand_like(y["images"][k])
            assert abs(float(study_output(model, y) - base)) > 1e-4, f"view {k} ignored"
        assert abs(float(study_output(model, x, orientation=(1, 0)) - base)) > 1e-4  # orientation is read
        pooled, _, _ = model.encode(x["images"], x["text_states"], x["text_mask"], x["clinical"],
                                    orientation=torch.tensor([0, 1]))
        views, _, _, _ = model(**x, orientation=torch.tensor([0, 1]))  # each view alone
    # fused before the head: the head of the mean representation, not the mean of the view outputs
    torch.testing.assert_close(base, model.head(pooled.mean(dim=0, keepdim=True))[:, 0])
    assert abs(float(torch.sigmoid(base) - torch.sigmoid(views).mean())) > 1e-5
    assert abs(float(base - views.mean())) > 1e-5


def test_pooled_study_of_one_view_and_batches_of_studies():
    """A study with one usable view is that view alone; a study's output does not depend on the other
    studies in its batch (two-view and one-view studies mixed)."""
    model = pooled_model(1)
    x = dummy_inputs(preset("tiny"), batch=3, seed=5)
    orientation = torch.tensor([1, 0, 1])
    with torch.no_grad():
        alone, risk_alone, _, _ = model(**x, orientation=orientation)
        joint, risk_joint = model.forward_studies(x["images"], x["text_states"], x["text_mask"], x["clinical"],
                                                  x["group_keep"], orientation, torch.tensor([0, 1, 1]), 2)
        pair, _ = model.forward_studies(x["images"][1:], x["text_states"][1:], x["text_mask"][1:],
                                        x["clinical"][1:], x["group_keep"][1:], orientation[1:],
                                        torch.tensor([0, 0]), 1)
    torch.testing.assert_close(joint[0], alone[0])
    torch.testing.assert_close(risk_joint[0], risk_alone[0])
    torch.testing.assert_close(joint[1], pair[0])


def test_pooled_predictions_keep_a_study_with_one_usable_view(tmp_path):
    layout = with_view_column(write_layout(tmp_path / "layout", studies=6, seed=4))
    blank = read_layout(layout)[0].views[1].nodule_mask  # study 0 loses its longitudinal view
    from PIL import Image

    Image.fromarray(np.zeros_like(np.asarray(Image.open(blank)))).save(blank)
    cache = build_cache(layout, preset("tiny"), fake_text_encoder, jitters=1, progress=False)
    assert list(cache.view_orientation) == [0] + [0, 1] * 5
    reloaded = build_cache(layout, preset("tiny"), fake_text_encoder, jitters=1, progress=False)  # from disk
    np.testing.assert_array_equal(reloaded.view_orientation, cache.view_orientation)
    model = pooled_model(2)
    studies, p, risk = predict_studies(model, cache)
    assert list(studies) == list(range(6)) and risk.shape == (6, 3)
    _, p_small, _ = predict_studies(model, cache, batch_size=2)  # one study a batch
    np.testing.assert_allclose(p_small, p, atol=1e-6)
    _, p_jit, _ = predict_studies(model, cache, variant=1)
    assert not np.allclose(p_jit, p)
    _, p_noloc, _ = predict_studies(model, cache, group_keep=(0.0, 1.0, 1.0, 1.0))
    assert not np.allclose(p_noloc, p)


def test_pooled_training_learns_what_only_the_longitudinal_view_shows():
    """A toy: the label is the brightness of the longitudinal view; the transverse view is noise. A few
    steps on whole studies bring the loss down, and the study output is not the mean of the views'."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = preset("tiny", view_fusion="pooled", dropout=0.0)
    model = TMDL(config)
    g = torch.Generator().manual_seed(0)
    n = 16
    y = (torch.arange(n) % 2).float()
    images = torch.rand(2 * n, 3, config.image_size, config.image_size, generator=g) * 0.5
    images[1::2] += 0.5 * y[:, None, None, None]  # view 2k + 1 (longitudinal) of study k
    study_index = torch.arange(2 * n) // 2
    orientation = torch.arange(2 * n) % 2
    states = torch.zeros(2 * n, config.text_tokens, config.text_dim)
    text_mask = torch.zeros(2 * n, config.text_tokens)
    clinical = torch.zeros(2 * n, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        logit, _ = model.forward_studies(images, states, text_mask, clinical, None, orientation, study_index, n)
        loss = F.binary_cross_entropy_with_logits(logit, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        logit, _ = model.forward_studies(images, states, text_mask, clinical, None, orientation, study_index, n)
        views, _, _, _ = model(images, states, text_mask, clinical, orientation=orientation)
    mean_of_views = torch.sigmoid(views).view(n, 2).mean(dim=1)
    torch.set_num_threads(threads)
    assert losses[0] > 0.6 and losses[-1] < 0.25 * losses[0], losses
    assert float((torch.sigmoid(logit) - mean_of_views).abs().mean()) > 0.05


def test_pooled_train_evaluate_and_no_export(tiny_layout, tmp_path):
    """Training on studies records the fusion in model.json; evaluation (ablations, baseline, thresholds)
    runs on the pooled model; export and the runtime path refuse it."""
    from llnm.model.evaluate import evaluate

    out = tmp_path / "pooled"
    meta = train(tiny_layout, out, preset("tiny", view_fusion="pooled"), encode_text=fake_text_encoder, epochs=3,
                 patience=5, progress=False, seed=0, group_dropout=0.3)
    assert meta["config"]["view_fusion"] == "pooled"
    assert json.loads((out / "model.json").read_text())["config"]["view_fusion"] == "pooled"
    model, _ = load_model(out)
    assert model.config.view_fusion == "pooled" and "orientation_embed" in model.state_dict()
    report = evaluate(out, tiny_layout, tmp_path / "eval", encode_text=fake_text_encoder, bootstrap=20,
                      progress=False, examples=1, atlas_studies=0)
    assert report["view_fusion"] == "pooled" and report["studies"] == 40
    assert set(report["ablations"]) == {"report_only", "image_only", "without_report"}
    assert "difference" in report["baseline"] and "specificity" in report["metrics_at_0_5"]
    with pytest.raises(ValueError, match="view_fusion=pooled has no ONNX export yet"):
        TMDLForExport(model)
    with pytest.raises(ValueError, match="no ONNX export yet"):
        evaluate(out, tiny_layout, tmp_path / "eval-rt", encode_text=fake_text_encoder, bootstrap=20,
                 progress=False, examples=0, runtime="truth", backend=None)


def test_cli_train_passes_view_fusion(tiny_layout, tmp_path, monkeypatch, capsys):
    import llnm.model.train as train_module
    from llnm.cli import main

    seen = {}

    def fake_train(data, out, config, **kwargs):
        seen["config"] = config
        return {"preset": config.name, "val_auc": 0.5, "best_epoch": 0, "epochs_run": 1, "threshold": 0.5}

    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setattr(train_module, "onnx_text_encoder", lambda repository: fake_text_encoder)
    args = ["train", "--data", str(tiny_layout), "--out", str(tmp_path / "m"), "--preset", "tiny",
            "--atlas-views", "0", "--nice", "0", "--no-progress"]
    assert main(args + ["--view-fusion", "pooled"]) == 0
    assert seen["config"] == preset("tiny", view_fusion="pooled")
    assert '"view_fusion": "pooled"' in capsys.readouterr().out
    assert main(args) == 0
    assert seen["config"] == preset("tiny")
