"""`llnm train` and `llnm evaluate` end to end on a tiny folder in the training layout."""

import json

import numpy as np
import pytest

from .conftest import fake_text_encoder
from llnm.model.config import preset
from llnm.model.data import build_cache, read_layout
from llnm.model.evaluate import evaluate
from llnm.model.train import load_model, train


def test_layout_is_read_with_two_views_per_study(tiny_layout):
    studies = read_layout(tiny_layout)
    assert len(studies) == 40 and all(len(s.views) == 2 for s in studies)
    assert studies[0].views[0].spacing_mm == (0.4, 0.4)


def test_feature_cache_is_deterministic_and_reused(tiny_layout):
    a = build_cache(tiny_layout, preset("tiny"), fake_text_encoder, jitters=1, progress=False)
    b = build_cache(tiny_layout, preset("tiny"), fake_text_encoder, jitters=1, progress=False)
    assert a.images.shape == (80, 2, 3, 32, 32)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images[:, 0], a.images[:, 1])  # the jittered variant differs


def test_feature_cache_is_the_same_built_by_several_processes(tiny_layout, tmp_path):
    """`workers` only spreads the work: the same views, in the same order, with the same jitter draws."""
    import shutil

    one = build_cache(tiny_layout, preset("tiny"), fake_text_encoder, jitters=1, progress=False)
    copy = shutil.copytree(tiny_layout, tmp_path / "copy", ignore=shutil.ignore_patterns(".cache"))
    two = build_cache(copy, preset("tiny"), fake_text_encoder, jitters=1, progress=False, workers=2)
    for name in ("images", "clinical", "view_study", "view_orientation", "text_states", "llnm"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name), err_msg=name)


def test_train_then_evaluate(tiny_layout, tmp_path):
    out = tmp_path / "model"
    meta = train(tiny_layout, out, preset("tiny"), encode_text=fake_text_encoder, epochs=25, lr=3e-3,
                 patience=25, progress=False, seed=0)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == meta["epochs_run"] and {"epoch", "train_loss", "val_auc"} <= log[0].keys()
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    model, loaded = load_model(out)
    assert loaded["threshold"] == meta["threshold"] and model.config.name == "tiny"

    report = evaluate(out, tiny_layout, tmp_path / "eval", encode_text=fake_text_encoder, bootstrap=50,
                      progress=False)
    assert report["studies"] == 40
    assert report["metrics"]["auc"] > 0.7  # the near-capsule signal is easy
    assert report["bayes_auc"] is not None and 0 < report["bayes_auc"] <= 1
    lo, hi = report["ci95"]["auc"]
    assert lo <= report["metrics"]["auc"] <= hi
    for name in ("metrics.json", "report.html", "roc.png", "calibration.png", "decision_curve.png",
                 "explanations.png"):
        assert (tmp_path / "eval" / name).is_file()
    # the baseline beside it, fitted on the model's own training folder (recorded in model.json), on the
    # same studies, with the paired CI of the difference; and the model's ablations
    baseline = report["baseline"]
    assert baseline["train"] == str(tiny_layout) and baseline["train_studies"] == 40
    assert baseline["ci_low"] <= baseline["difference"] <= baseline["ci_high"]
    assert baseline["difference"] == pytest.approx(report["metrics"]["auc"] - baseline["baseline_auc"])
    assert baseline["image_only_auc"] > 0.7  # the layout's signal is the capsule distance (image)
    assert set(report["ablations"]) == {"report_only", "image_only", "without_report"}
    # the paper's operating point beside the model's own threshold
    lower, higher = sorted([report["metrics_at_0_5"], report["metrics"]],
                           key=lambda m: 0.5 if m is report["metrics_at_0_5"] else report["threshold"])
    assert lower["sensitivity"] >= higher["sensitivity"] and lower["specificity"] <= higher["specificity"]
    assert "auc" not in report["metrics_at_0_5"] and "specificity" in report["metrics_at_0_5"]
    assert report["ablations"]["image_only"] != report["metrics"]["auc"]  # the occlusion reached the model
    elsewhere = evaluate(out, tiny_layout, tmp_path / "eval2", encode_text=fake_text_encoder, bootstrap=20,
                         progress=False, examples=0, baseline_train=tmp_path / "nowhere")
    assert "skipped" in elsewhere["baseline"]


def test_cli_train_evaluate_model_info(tiny_layout, tmp_path, capsys):
    """The commands as documented, with the real (exported) text encoder."""
    from llnm.cli import main

    out = tmp_path / "cli-model"
    assert main(["train", "--data", str(tiny_layout), "--out", str(out), "--preset", "tiny", "--epochs", "2",
                 "--atlas-views", "4", "--nice", "0", "--no-progress"]) == 0
    assert {"model.pt", "preset.json", "model.json", "train_log.jsonl", "atlas.npz", "atlas.png"} <= {
        p.name for p in out.iterdir()}
    assert main(["evaluate", "--data", str(tiny_layout), "--model", str(out), "--out", str(tmp_path / "ev"),
                 "--bootstrap", "20", "--examples", "1", "--atlas-studies", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Bayes-optimal AUC" in printed and "atlas_location_auc" in printed
    assert '"baseline_auc"' in printed and '"ablations_auc"' in printed
    assert main(["model-info", "--preset", "tiny"]) == 0
    assert '"parameters": 48964' in capsys.readouterr().out



def test_cli_train_sets_the_feature_image_size_the_mirror_share_and_the_optimiser(tiny_layout, tmp_path):
    """--image-size and --dropout reach the saved configuration (so evaluation and the runtime extract
    features at the size the model was trained on); --mirror-augment, --lr and --weight-decay reach
    model.json (a training run is reproducible from its record, not only from its command line)."""
    from llnm.cli import main

    out = tmp_path / "sized"
    assert main(["train", "--data", str(tiny_layout), "--out", str(out), "--preset", "tiny", "--epochs", "1",
                 "--image-size", "16", "--mirror-augment", "0.5", "--lr", "2e-4", "--weight-decay", "0.3",
                 "--dropout", "0.25", "--atlas-views", "0", "--nice", "0", "--no-progress"]) == 0
    saved = json.loads((out / "preset.json").read_text())
    assert saved["image_size"] == 16 and saved["dropout"] == 0.25
    meta = json.loads((out / "model.json").read_text())
    assert meta["mirror_augment"] == 0.5 and meta["lr"] == 2e-4 and meta["weight_decay"] == 0.3

@pytest.mark.parametrize("options", [{}, {"shape_input": "length_width", "image_sampling": "area",
                                          "location_aspect": "keep", "text_tokens": 100}],
                         ids=["shipped-inputs", "paper-inputs-two-windows"])
def test_runtime_pipeline_scores_like_the_checkpoint(tiny_layout, tmp_path, options):
    """`llnm evaluate --runtime truth` (ONNX graphs through analyse_study) gives the checkpoint's
    probabilities: the exported model and the runtime feature path match training, for the shape
    input, image sampling and report windows the model was trained with."""
    from llnm.config import REPO_ROOT
    from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
    from llnm.model.export import export_tmdl
    from llnm.model.train import onnx_text_encoder

    repo = tmp_path / "repo"
    shipped = REPO_ROOT / "model_repository" / "text_encoder"
    if (shipped / "1" / "model.onnx").is_file():
        repo.mkdir()
        (repo / "text_encoder").symlink_to(shipped)
    encode = onnx_text_encoder(repo)  # exports the text encoder when it is not there
    out = tmp_path / "model"
    train(tiny_layout, out, preset("tiny", **options), encode_text=encode, epochs=2, progress=False)
    model, _ = load_model(out)
    assert (model.config.shape_input, model.config.image_sampling, model.config.location_aspect) == (
        options.get("shape_input", "ratio"), options.get("image_sampling", "point"),
        options.get("location_aspect", "stretch"))
    export_tmdl(model, repo / "tmdl" / "1" / "model.onnx")
    checkpoint = evaluate(out, tiny_layout, tmp_path / "a", encode_text=encode, bootstrap=10, progress=False,
                          examples=0)
    runtime = evaluate(out, tiny_layout, tmp_path / "b", encode_text=encode, bootstrap=10, progress=False,
                       examples=0, runtime="truth", backend=OnnxRuntimeBackend(repo, threads=1))
    a = json.loads((tmp_path / "a" / "predictions.json").read_text())
    b = json.loads((tmp_path / "b" / "predictions.json").read_text())
    assert [r["study_uid"] for r in a] == [r["study_uid"] for r in b]
    np.testing.assert_allclose([r["probability"] for r in a], [r["probability"] for r in b], atol=1e-4)
    assert runtime["no_finding"] == 0 and runtime["scored_by"].startswith("runtime")
    assert abs(runtime["metrics"]["auc"] - checkpoint["metrics"]["auc"]) < 1e-3


def test_model_json_names_the_commit_the_training_started_on(tiny_layout, tmp_path, monkeypatch):
    """A run of half an hour outlives commits made meanwhile: the commit recorded is the one the code
    was read from, at the start, not whatever HEAD is when the model is saved."""
    import llnm.model.train as train_module

    head = ["a" * 40]
    real_auc = train_module.auc

    def auc_while_a_commit_lands(*args, **kwargs):  # scored after every epoch: HEAD moves on meanwhile
        head[0] = "b" * 40
        return real_auc(*args, **kwargs)

    monkeypatch.setattr(train_module, "git_commit", lambda *paths: head[0])
    monkeypatch.setattr(train_module, "auc", auc_while_a_commit_lands)
    meta = train(tiny_layout, tmp_path / "m", preset("tiny"), encode_text=fake_text_encoder, epochs=1,
                 progress=False, seed=0)
    assert meta["code_commit"] == "a" * 40
    assert json.loads((tmp_path / "m" / "model.json").read_text())["code_commit"] == "a" * 40


def test_a_separate_validation_folder_and_the_provenance_in_model_json(tiny_layout, tmp_path):
    """--val-data: every training study is trained on, early stopping and the threshold come from the
    other folder (patients apart); model.json names the code commit, the generator's record and a
    sha256 of the training set that follows its content, not its place."""
    import shutil

    from PIL import Image

    from .conftest import write_layout
    from llnm.model.data import layout_sha256

    val = write_layout(tmp_path / "val", studies=12, seed=7)
    data = tmp_path / "data"
    shutil.copytree(tiny_layout, data, ignore=shutil.ignore_patterns(".cache"))
    (data / "generator.json").write_text(json.dumps({"seed": 1, "generator_commit": "abc"}))
    meta = train(data, tmp_path / "m", preset("tiny"), encode_text=fake_text_encoder, epochs=2, progress=False,
                 seed=0, val_dir=val, command="llnm train ...")
    assert meta["train_studies"] == 40 and meta["val_studies"] == 12 and meta["val_data"] == str(val)
    assert meta["data_sha256"] == layout_sha256(tiny_layout) == layout_sha256(data)
    assert meta["val_data_sha256"] == layout_sha256(val) != meta["data_sha256"]
    assert meta["data_generator"] == {"seed": 1, "generator_commit": "abc"} and meta["command"] == "llnm train ..."
    assert meta["code_commit"] is None or len(meta["code_commit"].split("+")[0]) == 40
    assert json.loads((tmp_path / "m" / "model.json").read_text())["data_sha256"] == meta["data_sha256"]
    first = read_layout(data)[0].views[0].image
    pixels = np.asarray(Image.open(first)).copy()
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(first)
    assert layout_sha256(data) != meta["data_sha256"]


def test_repeated_studies_of_a_patient_do_not_narrow_the_confidence_interval():
    """`llnm real-studies` writes several studies per patient; resampling patients (groups), not
    studies, keeps the CI as wide as the patients allow: 8 copies of 30 patients are 30 patients."""
    from llnm.model.evaluate import tirads_sanity
    from llnm.model.metrics import bootstrap_ci

    rng = np.random.default_rng(0)
    p, y = rng.random(30), (rng.random(30) < 0.4).astype(int)
    p8, y8, groups = np.repeat(p, 8), np.repeat(y, 8), np.repeat(np.arange(30), 8)
    by_study = bootstrap_ci(p8, y8, 0.5, n=300, seed=1)["auc"]
    by_patient = bootstrap_ci(p8, y8, 0.5, n=300, seed=1, groups=groups)["auc"]
    once = bootstrap_ci(p, y, 0.5, n=300, seed=1)["auc"]
    assert by_patient[1] - by_patient[0] > 2 * (by_study[1] - by_study[0])
    assert by_patient[1] - by_patient[0] == pytest.approx(once[1] - once[0], rel=0.35)
    grades = list(np.repeat(rng.choice(["2", "3", "4a", "5"], 30), 8))
    wide = tirads_sanity(p8, grades, 0.5, n=300, groups=[str(g) for g in groups])
    narrow = tirads_sanity(p8, grades, 0.5, n=300)
    assert wide["patients"] == 30 and narrow["patients"] is None
    assert np.ptp(wide["spearman_ci95"]) > 2 * np.ptp(narrow["spearman_ci95"])


def test_group_dropout_occludes_at_most_one_group_per_view_at_the_asked_rate():
    from llnm.model.train import group_dropout_keep

    keep = group_dropout_keep(np.random.default_rng(0), 20000, 0.3)
    dropped = (keep == 0).sum(axis=1)
    assert set(np.unique(dropped)) == {0, 1}
    assert abs(dropped.mean() - 0.3) < 0.02
    assert np.allclose((keep == 0).sum(axis=0) / (keep == 0).sum(), 0.25, atol=0.02)  # each group alike
    assert (group_dropout_keep(np.random.default_rng(0), 100, 0.0) == 1).all()


def test_token_dropout_hides_report_tokens_one_by_one_at_the_asked_rate():
    from llnm.model.train import token_dropout_keep

    keep = token_dropout_keep(np.random.default_rng(0), 400, 150, 0.3)
    assert keep.shape == (400, 150) and set(np.unique(keep)) == {0.0, 1.0}
    assert abs((keep == 0).mean() - 0.3) < 0.01
    assert np.abs((keep == 0).mean(axis=0) - 0.3).max() < 0.1  # every position alike, not a fixed window
    assert len({row.tobytes() for row in keep}) == len(keep)  # each study's own draw
    assert (token_dropout_keep(np.random.default_rng(0), 10, 150, 0.0) == 1).all()


def test_modality_dropout_leaves_one_whole_stream_on_the_asked_share_of_views():
    from llnm.model.train import MODALITIES, group_dropout_keep, modality_dropout_keep

    rng = np.random.default_rng(0)
    before = group_dropout_keep(rng, 20000, 0.2)
    keep = modality_dropout_keep(rng, before, 0.4)
    changed = (keep != before).any(axis=1)
    streams = [(keep == np.asarray(m, dtype=np.float32)).all(axis=1) for m in MODALITIES]
    assert abs((streams[0] | streams[1]).mean() - 0.4) < 0.02  # image only or text side only
    assert abs(streams[0].mean() - streams[1].mean()) < 0.02  # both streams alike
    assert not (changed & ~(streams[0] | streams[1])).any()  # the other rows keep their group dropout
    assert (modality_dropout_keep(rng, before, 0.0) == before).all()



def test_mirror_augment_mirrors_only_texture_and_margin_on_the_asked_share_of_views():
    """x_t and x_m mirrored left-right on about the asked share of rows, the same rows for both; x_l
    (whose left and right carry the location factors) never; 0 changes nothing."""
    import torch

    from llnm.model.train import mirror_images

    images = torch.rand(4000, 3, 6, 6)
    out = mirror_images(images, np.random.default_rng(0), 0.3)
    assert torch.equal(out[:, 0], images[:, 0])
    mirrored = [(out[:, k] == images[:, k].flip(-1)).flatten(1).all(dim=1) for k in (1, 2)]
    kept = [(out[:, k] == images[:, k]).flatten(1).all(dim=1) for k in (1, 2)]
    assert torch.equal(mirrored[0], mirrored[1]) and bool((mirrored[0] ^ kept[0]).all())
    assert abs(mirrored[0].float().mean().item() - 0.3) < 0.03
    assert torch.equal(mirror_images(images, np.random.default_rng(0), 0.0), images)

def trained_weights(layout, out, **options):
    """(model.json, state dict) of a 2-epoch tiny model trained with seed 0 and `options`."""
    import torch

    meta = train(layout, out, preset("tiny"), encode_text=fake_text_encoder, epochs=2, patience=5,
                 progress=False, seed=0, **options)
    return meta, torch.load(out / "model.pt", weights_only=True)


def test_group_dropout_changes_training_and_zero_keeps_it_as_before(tiny_layout, tmp_path):
    """A model trained without the option is the model trained with 0 (same random stream, same weights);
    with group dropout the training sees occluded views (other weights), and model.json says so."""
    import torch

    _, plain = trained_weights(tiny_layout, tmp_path / "plain")
    zero_meta, zero = trained_weights(tiny_layout, tmp_path / "zero", group_dropout=0.0)
    dropped_meta, dropped = trained_weights(tiny_layout, tmp_path / "dropped", group_dropout=0.5)
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    assert not all(torch.equal(plain[k], dropped[k]) for k in plain)
    assert zero_meta["group_dropout"] == 0.0 and dropped_meta["group_dropout"] == 0.5


def test_the_auxiliary_measurement_loss_trains_the_same_model_shape_and_is_recorded(tiny_layout, tmp_path):
    """With --aux-measures the saved model has exactly the plain model's weights' names (the read-out is
    training only, so export and runtime are unchanged), other values, a logged auxiliary loss, and
    model.json names the measurements; 0 trains the plain model."""
    import torch

    from llnm.features.measures import MEASURES

    _, plain = trained_weights(tiny_layout, tmp_path / "plain")
    zero_meta, zero = trained_weights(tiny_layout, tmp_path / "zero", aux_measures=0.0)
    aux_meta, aux = trained_weights(tiny_layout, tmp_path / "aux", aux_measures=1.0)
    assert all(torch.equal(plain[k], zero[k]) for k in plain) and zero_meta["aux_measure_names"] is None
    assert set(aux) == set(plain) and not all(torch.equal(plain[k], aux[k]) for k in plain)
    assert aux_meta["aux_measures"] == 1.0 and aux_meta["aux_measure_names"] == list(MEASURES)
    log = [json.loads(line) for line in (tmp_path / "aux" / "train_log.jsonl").read_text().splitlines()]
    assert all(0.0 < entry["aux_loss"] < 10.0 for entry in log)
    assert "aux_loss" not in (tmp_path / "plain" / "train_log.jsonl").read_text()
    with pytest.raises(ValueError, match="probability"):
        train(tiny_layout, tmp_path / "pooled", preset("tiny", view_fusion="pooled"), encode_text=fake_text_encoder,
              epochs=1, progress=False, aux_measures=1.0)


@pytest.mark.parametrize("option, value", [("mirror_augment", 0.5), ("token_dropout", 0.3)])
def test_a_training_augmentation_changes_training_is_recorded_and_zero_keeps_it_as_before(
        tiny_layout, tmp_path, option, value):
    import torch

    _, plain = trained_weights(tiny_layout, tmp_path / "plain")
    zero_meta, zero = trained_weights(tiny_layout, tmp_path / "zero", **{option: 0.0})
    meta, augmented = trained_weights(tiny_layout, tmp_path / "augmented", **{option: value})
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    assert not all(torch.equal(plain[k], augmented[k]) for k in plain)
    assert zero_meta[option] == 0.0 and meta[option] == value


def test_token_dropout_of_every_token_is_refused(tiny_layout, tmp_path):
    with pytest.raises(ValueError, match="token_dropout"):
        train(tiny_layout, tmp_path / "all", preset("tiny"), encode_text=fake_text_encoder, epochs=1,
              progress=False, token_dropout=1.0)


def test_distillation_trains_towards_the_baselines_held_out_estimates_and_zero_keeps_it_as_before(
        tiny_layout, tmp_path, monkeypatch):
    """With --distill the loss reads the baseline's cross-fitted probabilities beside the labels: with
    weight 1 and every soft target at 0.5 the model is pulled to 0.5 whatever the labels say; 0 trains the
    plain model (the baseline is not even fitted); the teacher is fitted on the training studies alone
    (not the validation share); model.json records the weight and the teacher's inputs."""
    import torch

    from llnm.model import baseline
    from llnm.model.train import predict_studies

    _, plain = trained_weights(tiny_layout, tmp_path / "plain")
    monkeypatch.setattr(baseline, "cross_fitted", lambda *a, **k: pytest.fail("fitted at weight 0"))
    zero_meta, zero = trained_weights(tiny_layout, tmp_path / "zero", distill=0.0)
    assert all(torch.equal(plain[k], zero[k]) for k in plain) and zero_meta["distill"] == 0.0
    taught = []
    monkeypatch.setattr(baseline, "cross_fitted",
                        lambda studies, *a, **k: taught.append(len(studies)) or np.full(len(studies), 0.5))
    meta = train(tiny_layout, tmp_path / "soft", preset("tiny"), encode_text=fake_text_encoder, epochs=6,
                 patience=6, progress=False, seed=0, lr=3e-3, distill=1.0)
    hard = train(tiny_layout, tmp_path / "hard", preset("tiny"), encode_text=fake_text_encoder, epochs=6,
                 patience=6, progress=False, seed=0, lr=3e-3)
    assert meta["distill"] == 1.0 and hard["distill"] == 0.0 and hard["distill_sources"] is None
    assert meta["distill_sources"] == ["report", "image", "demographics"]
    assert taught == [meta["train_studies"]] and meta["val_studies"] > 0  # the validation studies' labels: never
    with pytest.raises(ValueError, match="distill sources"):
        train(tiny_layout, tmp_path / "typo", preset("tiny"), encode_text=fake_text_encoder, epochs=1,
              progress=False, distill=0.5, distill_sources=("report", "imaging"))
    cache = build_cache(tiny_layout, preset("tiny"), fake_text_encoder, jitters=0, seed=0, progress=False)
    spread = {name: float(np.std(predict_studies(load_model(tmp_path / name)[0], cache)[1]))
              for name in ("soft", "hard")}
    assert spread["soft"] < 0.5 * spread["hard"]


def test_training_can_start_from_given_weights_and_records_them(tiny_layout, tmp_path):
    """--init starts from a state dict instead of random weights: with a learning rate of 0 the saved
    model is exactly the one it started from (and not the random start), and model.json names it."""
    import torch

    first_meta, first = trained_weights(tiny_layout, tmp_path / "first")
    assert first_meta["init"] is None
    meta, again = trained_weights(tiny_layout, tmp_path / "again", init=tmp_path / "first" / "model.pt", lr=0.0)
    _, random_start = trained_weights(tiny_layout, tmp_path / "random", lr=0.0)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], random_start[k]) for k in first)
    assert meta["init"] == str(tmp_path / "first" / "model.pt")


def test_the_measurement_loss_skips_views_whose_image_groups_were_occluded():
    """A view with an occluded image group is not asked to predict what it was not shown: its error does
    not enter the loss, whatever it is."""
    import torch

    from llnm.model.train import MeasureHead

    torch.manual_seed(0)
    head = MeasureHead(8, np.random.default_rng(0).normal(size=(30, 2, 3)))
    x = torch.randn(3, 6, 8)
    target = torch.randn(3, 3)
    mask = torch.ones(3, 6)
    only_first = head.loss(x[:1], mask[:1], 4, target[:1])
    mask[1:, 2] = 0.0  # rows 1 and 2: an image token occluded
    for wrong in (0.0, 100.0):
        target[1:] = wrong
        assert torch.isclose(head.loss(x, mask, 4, target), only_first)
    mask[0, 2] = 0.0
    assert head.loss(x, mask, 4, target) == 0.0


def test_a_time_budget_ends_training_with_a_chosen_model_and_is_recorded(tiny_layout, tmp_path):
    """`max_minutes`: no epoch starts once the budget is spent (a lent GPU's fixed time), yet the folder
    holds a model chosen on the validation set; without a budget the same seed trains all its epochs."""
    budget = train(tiny_layout, tmp_path / "budget", preset("tiny"), encode_text=fake_text_encoder, epochs=6,
                   patience=6, progress=False, seed=0, max_minutes=0.0)
    full = train(tiny_layout, tmp_path / "full", preset("tiny"), encode_text=fake_text_encoder, epochs=6,
                 patience=6, progress=False, seed=0)
    assert budget["epochs_run"] == 1 and full["epochs_run"] == 6
    assert budget["max_minutes"] == 0.0 and full["max_minutes"] is None and full["device"] == "cpu"
    model, _ = load_model(tmp_path / "budget")
    assert model.config.name == "tiny" and 0.0 <= budget["threshold"] <= 1.0


def test_training_and_scoring_hold_under_bfloat16_autocast(tiny_layout, tmp_path, monkeypatch):
    """On a GPU the passes run in bfloat16 autocast (`llnm.model.train.autocast`). The same autocast on
    the CPU, here, must leave every dtype consistent: finite losses, a saved float32 model, and study
    probabilities within bfloat16's precision of the float32 ones of the same weights."""
    import torch

    from llnm.model import train as training

    monkeypatch.setattr(training, "autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    meta = train(tiny_layout, tmp_path / "bf16", preset("tiny"), encode_text=fake_text_encoder, epochs=2,
                 patience=2, progress=False, seed=0, group_dropout=0.5, modality_dropout=0.3)
    log = [json.loads(line) for line in (tmp_path / "bf16" / "train_log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(entry["train_loss"]) for entry in log) and meta["epochs_run"] == 2
    model, _ = load_model(tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    cache = build_cache(tiny_layout, model.config, fake_text_encoder, jitters=0, progress=False)
    _, p_bf16, _ = training.predict_studies(model, cache)
    monkeypatch.setattr(training, "autocast", lambda device: torch.autocast("cpu", enabled=False))
    _, p_fp32, _ = training.predict_studies(model, cache)
    assert np.abs(p_bf16 - p_fp32).max() < 0.05
