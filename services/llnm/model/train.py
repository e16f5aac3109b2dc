"""Training TMDL on a folder in the training layout (see data.py): seeded, early stopping on the
validation AUC (study level: views averaged as at run time, or fused before the head with
view_fusion="pooled"), JSON-lines log, tqdm progress.

Probability fusion trains on views (each view a sample with its study's label); pooled fusion trains
on studies (all usable views of a study in the same batch, one loss per study), with about as many
views per step as the probability mode (`batch_size` counts views in both).

The validation studies are a seeded share of the training folder, or a separate folder (`val_dir`):
when a folder holds several studies per patient (`llnm real-studies --studies-per-case`), a random
share would put the same patient's images on both sides, and early stopping and the threshold would
reward memorising them.

A model folder holds: model.pt (state dict), preset.json (the TMDLConfig), model.json (threshold,
validation AUC, epochs, seed, the command that made it, the training set's sha256, the code commit
and the data generator's record) and train_log.jsonl.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llnm.features.measures import MEASURES
from llnm.model.config import GROUPS, TMDLConfig
from llnm.model.data import FeatureCache, build_cache, generator_record, git_commit, layout_sha256
from llnm.model.metrics import auc, youden_threshold
from llnm.model.tmdl import TMDL
from llnm.observability.logs import get_logger

log = get_logger(__name__)


def onnx_text_encoder(model_repository: Path):
    """encode(list[str], tokens=50) through the exported ONNX text encoder (exported first if missing),
    so training sees exactly the token states the runtime computes (`tokens`: TMDLConfig.text_tokens)."""
    from llnm.inference.backend import TEXT_ENCODER
    from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
    from llnm.text.encoder import encode_reports, tokenizer_path
    from llnm.text.tokenize import MAX_TOKENS, ReportTokenizer

    model_repository = Path(model_repository)
    backend = OnnxRuntimeBackend(model_repository, threads=1)
    if not backend.has_model(TEXT_ENCODER):
        from llnm.text.export import export_text_encoder

        export_text_encoder(model_repository / TEXT_ENCODER / "1")
    tokenizer = ReportTokenizer(tokenizer_path(model_repository))
    return lambda texts, tokens=MAX_TOKENS: encode_reports(backend, tokenizer, texts, tokens)


def autocast(device: torch.device):
    """bfloat16 autocast on a GPU (the paper preset's 146 GFLOPs a view), nothing on the CPU: the CPU
    results stay bit-for-bit what they were."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batch(cache: FeatureCache, views: np.ndarray, variants: np.ndarray, device: torch.device):
    studies = cache.view_study[views]
    return (torch.from_numpy(cache.images[views, variants].astype(np.float32)).to(device),
            torch.from_numpy(cache.text_states[studies].astype(np.float32)).to(device),
            torch.from_numpy(cache.text_mask[studies]).to(device),
            torch.from_numpy(cache.clinical[views, variants]).to(device),
            studies)


def study_views(cache: FeatureCache, studies: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The usable views of `studies`: (the studies that have any, sorted; their views; each view's
    index into that sorted list), for one pooled forward over whole studies."""
    views = np.flatnonzero(np.isin(cache.view_study, studies))
    present = np.unique(cache.view_study[views])
    return present, views, np.searchsorted(present, cache.view_study[views])


@torch.no_grad()
def predict_studies(model: TMDL, cache: FeatureCache, studies: np.ndarray | None = None,
                    batch_size: int = 64, variant: int = 0,
                    group_keep: tuple[float, ...] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Study-level P(LLNM) and risk probabilities on one mask variant (0: the given masks), with the
    token groups of `group_keep` (GROUPS order; None: all) occluded in every view. Probability fusion:
    the mean of the per-view probabilities, as at run time; pooled fusion: the model's study output
    (`batch_size` / 2 studies a batch). Returns (study indices, probabilities (N,), risk probabilities (N, 3))."""
    model.eval()
    device = next(model.parameters()).device
    if studies is None:
        studies = np.arange(len(cache.llnm))
    if model.config.view_fusion == "pooled":
        return _predict_pooled(model, cache, studies, max(1, batch_size // 2), variant, group_keep, device)
    views = np.flatnonzero(np.isin(cache.view_study, studies))
    probs = np.zeros(len(views))
    risks = np.zeros((len(views), model.config.risk_levels))
    for start in range(0, len(views), batch_size):
        sel = views[start:start + batch_size]
        images, states, mask, clinical, _ = _batch(cache, sel, np.full(len(sel), variant, dtype=np.int64), device)
        keep = None if group_keep is None else torch.tensor(group_keep, dtype=images.dtype,
                                                                 device=device).expand(len(sel), -1)
        with autocast(device):
            logit, risk, _, _ = model(images, states, mask, clinical, keep)
        probs[start:start + len(sel)] = torch.sigmoid(logit.float()).cpu().numpy()
        risks[start:start + len(sel)] = risk.float().softmax(-1).cpu().numpy()
    owner = cache.view_study[views]
    present = np.unique(owner)
    p = np.array([probs[owner == s].mean() for s in present])
    r = np.stack([risks[owner == s].mean(axis=0) for s in present])
    return present, p, r


def _predict_pooled(model: TMDL, cache: FeatureCache, studies: np.ndarray, batch_studies: int, variant: int,
                    group_keep: tuple[float, ...] | None, device: torch.device):
    present, _, _ = study_views(cache, studies)
    probs = np.zeros(len(present))
    risks = np.zeros((len(present), model.config.risk_levels))
    for start in range(0, len(present), batch_studies):
        chunk, views, local = study_views(cache, present[start:start + batch_studies])
        images, states, mask, clinical, _ = _batch(cache, views, np.full(len(views), variant, dtype=np.int64), device)
        keep = None if group_keep is None else torch.tensor(group_keep, dtype=images.dtype,
                                                                 device=device).expand(len(views), -1)
        with autocast(device):
            logit, risk = model.forward_studies(images, states, mask, clinical, keep,
                                                torch.from_numpy(cache.view_orientation[views]).to(device),
                                                torch.from_numpy(local).to(device), len(chunk))
        probs[start:start + len(chunk)] = torch.sigmoid(logit.float()).cpu().numpy()
        risks[start:start + len(chunk)] = risk.float().softmax(-1).cpu().numpy()
    return present, probs, risks


def save_model(model: TMDL, out_dir: Path, meta: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / "model.pt")
    (out_dir / "preset.json").write_text(model.config.to_json() + "\n")
    (out_dir / "model.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_model(model_dir: Path, device: str = "cpu") -> tuple[TMDL, dict]:
    model_dir = Path(model_dir)
    config = TMDLConfig.load(model_dir / "preset.json")
    model = TMDL(config)
    model.load_state_dict(torch.load(model_dir / "model.pt", map_location=device, weights_only=True))
    meta_path = model_dir / "model.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return model.to(device).eval(), meta


def group_dropout_keep(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    """(n, 4) group_keep rows (GROUPS order): each row, with probability `p`, has one group occluded,
    chosen uniformly; never more than one, so every view keeps most of its evidence."""
    keep = np.ones((n, len(GROUPS)), dtype=np.float32)
    dropped = np.flatnonzero(rng.random(n) < p)
    keep[dropped, rng.integers(0, len(GROUPS), len(dropped))] = 0.0
    return keep


def token_dropout_keep(rng: np.random.Generator, n: int, tokens: int, p: float) -> np.ndarray:
    """(n, tokens) report-token keep rows: each token hidden with probability `p`, on its own (word
    dropout; a hidden token is one the report mask leaves out, as padding is)."""
    return (rng.random((n, tokens)) >= p).astype(np.float32)


#: the token groups of each stream (GROUPS order): image (location, morphology), text side (report, demographics)
MODALITIES = ((1.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 1.0))


def modality_dropout_keep(rng: np.random.Generator, keep: np.ndarray, p: float) -> np.ndarray:
    """`keep` with, on a share `p` of its rows, one whole stream occluded (half of them the image
    groups, half the report and demographics): those views must be scored from the other stream alone,
    so neither stream can leave the work to the other (the report would otherwise carry the model)."""
    keep = keep.copy()
    chosen = np.flatnonzero(rng.random(len(keep)) < p)
    keep[chosen] = np.asarray(MODALITIES, dtype=np.float32)[rng.integers(0, 2, len(chosen))]
    return keep


#: the feature-image channels `mirror_images` may mirror (IMAGE_FEATURES order: x_l, x_t, x_m): texture and
#: margin, whose left and right mean nothing; x_l's left and right are medial / lateral (transverse) or
#: cranial / caudal (longitudinal), which the location factors read
MIRRORED_CHANNELS = (1, 2)


def mirror_images(images: torch.Tensor, rng: np.random.Generator, p: float) -> torch.Tensor:
    """`images` (B, 3, S, S) with, on a share `p` of its rows, x_t and x_m mirrored left-right: the same
    nodule seen from the other side, so the image stream learns textures and outlines rather than where
    in its pixels a speckle grain or a spicule fell (the compact model fits its training studies in a
    few epochs)."""
    chosen = torch.from_numpy(np.flatnonzero(rng.random(len(images)) < p)).to(images.device)
    if len(chosen) == 0:
        return images
    images = images.clone()
    channels = list(MIRRORED_CHANNELS)
    images[chosen[:, None], channels] = images[chosen[:, None], channels].flip(-1)
    return images


class MeasureHead(torch.nn.Module):
    """The auxiliary loss (training only): a linear read-out of the image stream's mean output token,
    asked to predict the view's measurements (`llnm.features.measures`, standardised on the training
    views), so that on few studies the image stream still learns what the pixels show. Not part of the
    saved model: the exported graph and the runtime are the same with or without it."""

    def __init__(self, hidden: int, measures: np.ndarray) -> None:
        super().__init__()
        flat = measures.reshape(-1, measures.shape[-1]).astype(np.float64)
        self.register_buffer("mean", torch.from_numpy(flat.mean(axis=0)).float())
        self.register_buffer("scale", torch.from_numpy(np.maximum(flat.std(axis=0), 1e-6)).float())
        self.read = torch.nn.Linear(hidden, measures.shape[-1])

    def loss(self, x: torch.Tensor, mask: torch.Tensor, image_tokens: int, target: torch.Tensor) -> torch.Tensor:
        """Mean squared error in standard units over the views whose image tokens are all kept (a view
        with an occluded image group cannot be asked what it was not shown); 0 when there are none."""
        image_mask = mask[:, :image_tokens]
        summary = (x[:, :image_tokens] * image_mask[:, :, None]).sum(dim=1) / image_mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        error = ((self.read(summary) - (target - self.mean) / self.scale) ** 2).mean(dim=1)
        whole = (image_mask.min(dim=1).values > 0).to(error.dtype)
        return (error * whole).sum() / whole.sum().clamp(min=1.0)


def _teacher(data_dir: Path, study_uids: list[str], train_studies: np.ndarray, sources, seed: int,
             workers: int) -> np.ndarray:
    """The structured baseline's cross-fitted estimate for each training study (`--distill`), fitted on
    the training studies alone: a validation study's label never reaches a training target (NaN there)."""
    from llnm.model.baseline import SOURCES, cross_fitted
    from llnm.model.data import read_layout

    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise ValueError(f"distill sources {unknown}: choose from {sorted(SOURCES)}")
    by_uid = {s.study_uid: s for s in read_layout(data_dir)}
    teacher = np.full(len(study_uids), np.nan, dtype=np.float32)
    teacher[train_studies] = cross_fitted([by_uid[study_uids[i]] for i in train_studies], tuple(sources),
                                          seed=seed, workers=workers)
    return teacher


def train(data_dir: Path, out_dir: Path, config: TMDLConfig, *, encode_text, epochs: int = 40,
          batch_size: int = 64, lr: float = 5e-4, weight_decay: float = 0.05, patience: int = 8,
          val_fraction: float = 0.15, jitters: int = 2, seed: int = 0, threads: int = 1,
          progress: bool = True, command: str = "", val_dir: Path | None = None, group_dropout: float = 0.0,
          workers: int = 1, modality_dropout: float = 0.0, aux_measures: float = 0.0,
          mirror_augment: float = 0.0, distill: float = 0.0,
          distill_sources: tuple[str, ...] = ("report", "image", "demographics"), device: str = "cpu",
          max_minutes: float | None = None, init: Path | None = None, token_dropout: float = 0.0) -> dict:
    """Train, keep the best validation-AUC weights in out_dir, return the summary (model.json).

    `val_dir`: a separate folder for early stopping and the threshold (then every study of data_dir
    is trained on); else a seeded `val_fraction` of data_dir's studies. `group_dropout`: the share of
    training views with one token group occluded (`group_dropout_keep`), so that the occlusions behind
    the contribution shares and the ablations are inputs the model has seen (0: none, as before).
    `modality_dropout`: the share of training views scored from one stream alone
    (`modality_dropout_keep`; 0: none, as before). `aux_measures`: the weight of the auxiliary
    measurement loss (`MeasureHead`; 0: none, as before; probability fusion only). `mirror_augment`:
    the share of training views with x_t and x_m mirrored (`mirror_images`; 0: none, as before).
    `distill`: the weight of the structured baseline's cross-fitted probabilities as soft targets
    beside the labels (`baseline.cross_fitted`: a label drawn from a probability is noisy, the
    baseline's estimate of that probability less so; 0: the labels alone, as before), fitted on
    `distill_sources` (`baseline.SOURCES`; with "pixels" the teacher is the hand-made pixel reader).
    `workers`: processes for the feature cache. `device`: "cpu" or a CUDA device ("cuda", "cuda:1"),
    where the forward and backward passes run in bfloat16 autocast (the paper preset is a GPU model;
    the weights, the optimiser and every saved tensor stay float32). `max_minutes`: no epoch starts
    after this much training time (the cosine schedule still spans `epochs`; None: no budget), so a
    lent machine's fixed time ends with a chosen model rather than none. `init`: a state dict of the
    same configuration to start from instead of random weights (e.g. an image stream first trained on
    the measurements, `bench/tmdl_stream_measures.py --save`; None: random, as before).
    `token_dropout`: the share of report tokens hidden at random from each training study, drawn
    anew at every step (word dropout: 150 frozen token states are a per-study signature the model can
    learn the label from; 0: none, as before).

    config.view_fusion="pooled" batches by study: each view keeps its own random mask variant, while
    the simulated missing report / demographics and the group dropout are drawn once per study and
    apply to all its views (the report and demographics are the study's; an ablation occludes a group
    in every view, so that is the occlusion to train on). The probability mode's random stream is
    unchanged."""
    from tqdm import tqdm

    if not 0.0 <= distill <= 1.0:
        raise ValueError(f"distill {distill}: a weight between 0 and 1")
    if not 0.0 <= token_dropout < 1.0:
        raise ValueError(f"token_dropout {token_dropout}: a share from 0 up to, not including, 1")
    if aux_measures > 0 and config.view_fusion != "probability":
        raise ValueError("the auxiliary measurement loss reads each view's own tokens: view_fusion='probability' only")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    device = torch.device(device)
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = build_cache(data_dir, config, encode_text, jitters=jitters, seed=seed, progress=progress,
                        workers=workers)
    n_studies = len(cache.llnm)
    order = rng.permutation(n_studies)
    if val_dir is not None:
        val_cache = build_cache(val_dir, config, encode_text, jitters=0, seed=seed, progress=progress,
                                workers=workers)
        val_studies, train_studies = np.arange(len(val_cache.llnm)), np.arange(n_studies)
    else:
        val_cache = cache
        n_val = max(2, int(round(val_fraction * n_studies)))
        val_studies, train_studies = np.sort(order[:n_val]), np.sort(order[n_val:])
    train_views = np.flatnonzero(np.isin(cache.view_study, train_studies))
    teacher = (_teacher(data_dir, cache.study_uids, train_studies, distill_sources, seed, workers)
               if distill > 0 else None)
    pooled = config.view_fusion == "pooled"
    # what one permutation orders: views, or (pooled) the studies with a usable view, about as many views a step
    units = np.unique(cache.view_study[train_views]) if pooled else train_views
    unit_batch = max(1, round(batch_size * len(units) / len(train_views))) if pooled else batch_size
    model = TMDL(config)
    if init is not None:
        model.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
    model = model.to(device)
    parameters = list(model.parameters())
    measure_head = None
    if aux_measures > 0:  # created after the model: its initial weights are the same with or without
        measure_head = MeasureHead(config.hidden, cache.measures[train_views]).to(device)
        parameters += list(measure_head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    steps_per_epoch = math.ceil(len(units) / unit_batch)
    total, warmup = epochs * steps_per_epoch, 3 * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    best_auc, best_epoch, step, stale = -1.0, -1, 0, 0
    log_path = out_dir / "train_log.jsonl"
    started = time.time()
    commit = git_commit()  # the code that trains, read before a long run in which the checkout may move on
    with log_path.open("w", encoding="utf-8") as log_file:
        bar = tqdm(range(epochs), desc=f"train {config.name}", unit="epoch", disable=not progress)
        for epoch in bar:
            model.train()
            perm = rng.permutation(units)
            losses, aux_losses = [], []
            for start in range(0, len(perm), unit_batch):
                if pooled:
                    batch_studies, views, local = study_views(cache, perm[start:start + unit_batch])
                    per = len(batch_studies)  # draws per study, spread over its views by `local`
                else:
                    views = perm[start:start + unit_batch]
                    per, local = len(views), np.arange(len(views))
                variants = rng.integers(0, cache.images.shape[1], len(views))
                images, states, mask, clinical, studies = _batch(cache, views, variants, device)
                if mirror_augment > 0:  # no draw at 0: the random stream unchanged
                    images = mirror_images(images, rng, mirror_augment)
                # simulate missing inputs at run time: no report (10 %), unknown sex and age (5 %)
                mask = mask * torch.from_numpy((rng.random(per) >= 0.1).astype(np.float32)[local])[:, None].to(device)
                if token_dropout > 0:  # no draw at 0: the random stream unchanged
                    kept = token_dropout_keep(rng, per, mask.shape[1], token_dropout)[local]
                    mask = mask * torch.from_numpy(kept).to(device)
                unknown = torch.from_numpy((rng.random(per) < 0.05).astype(np.float32)[local]).to(device)
                clinical = clinical.clone()
                clinical[:, :2] *= (1.0 - unknown)[:, None]
                targets = batch_studies if pooled else studies
                y = torch.from_numpy(cache.llnm[targets].astype(np.float32)).to(device)
                level = torch.from_numpy(cache.risk_level[targets] - 1).to(device)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step)
                keep = None
                if group_dropout > 0 or modality_dropout > 0:  # no draw at 0: the random stream unchanged
                    rows = (group_dropout_keep(rng, per, group_dropout) if group_dropout > 0
                            else np.ones((per, len(GROUPS)), dtype=np.float32))
                    if modality_dropout > 0:
                        rows = modality_dropout_keep(rng, rows, modality_dropout)
                    keep = torch.from_numpy(rows[local]).to(device)
                with autocast(device):
                    if pooled:
                        logit, risk = model.forward_studies(images, states, mask, clinical, keep,
                                                            torch.from_numpy(cache.view_orientation[views]).to(device),
                                                            torch.from_numpy(local).to(device), per)
                    elif measure_head is not None:
                        x, _, token_mask = model.tokens(images, states, mask, clinical, keep)
                        out = model.head(model.pool(x, token_mask))
                        logit, risk = out[:, 0], out[:, 1:]
                        target = torch.from_numpy(cache.measures[views, variants]).to(device)
                        aux = measure_head.loss(x, token_mask, config.image_tokens, target)
                        aux_losses.append(aux.item())
                    else:
                        logit, risk, _, _ = model(images, states, mask, clinical, keep)
                bce = F.binary_cross_entropy_with_logits(logit.float(), y)
                if teacher is not None:
                    soft = torch.from_numpy(teacher[targets]).to(device)
                    bce = (1 - distill) * bce + distill * F.binary_cross_entropy_with_logits(logit.float(), soft)
                loss = bce + 0.5 * F.cross_entropy(risk.float(), level)
                if measure_head is not None:
                    loss = loss + aux_measures * aux.float()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                losses.append(loss.item())
                step += 1
            present, p, _ = predict_studies(model, val_cache, val_studies)
            val_auc = auc(p, val_cache.llnm[present])
            train_loss = float(np.mean(losses))
            entry = {"epoch": epoch, "train_loss": round(train_loss, 5), "val_auc": round(val_auc, 5),
                     "lr": lr_at(step - 1), "seconds": round(time.time() - started, 1)}
            if aux_losses:
                entry["aux_loss"] = round(float(np.mean(aux_losses)), 5)
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()
            bar.set_postfix(loss=f"{train_loss:.3f}", val_auc=f"{val_auc:.3f}", best=f"{best_auc:.3f}")
            if val_auc > best_auc:
                best_auc, best_epoch, stale = val_auc, epoch, 0
                torch.save(model.state_dict(), out_dir / "model.pt")
            else:
                stale += 1
                if stale >= patience:
                    break
            if max_minutes is not None and time.time() - started >= 60 * max_minutes:
                log.info("training time budget reached", minutes=max_minutes, epoch=epoch)
                break
    model.load_state_dict(torch.load(out_dir / "model.pt", weights_only=True))
    present, p, _ = predict_studies(model, val_cache, val_studies)
    meta = {
        "preset": config.name, "config": asdict(config), "threshold": youden_threshold(p, val_cache.llnm[present]),
        "val_auc": best_auc, "best_epoch": best_epoch, "epochs_run": epoch + 1, "seed": seed,
        "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
        "train_studies": int(len(train_studies)), "val_studies": int(len(val_studies)),
        "jitters": jitters, "group_dropout": group_dropout, "modality_dropout": modality_dropout,
        "aux_measures": aux_measures, "aux_measure_names": list(MEASURES) if aux_measures > 0 else None,
        "mirror_augment": mirror_augment, "distill": distill, "token_dropout": token_dropout,
        "distill_sources": list(distill_sources) if distill > 0 else None,
        "device": str(device), "max_minutes": max_minutes, "init": str(init) if init is not None else None,
        "data": str(data_dir), "val_data": str(val_dir) if val_dir is not None else None,
        "command": command, "seconds": round(time.time() - started, 1),
        "code_commit": commit, "data_sha256": layout_sha256(data_dir),
        "val_data_sha256": layout_sha256(val_dir) if val_dir is not None else None,
        "data_generator": generator_record(data_dir),
        "val_data_generator": generator_record(val_dir) if val_dir is not None else None,
    }
    save_model(model.cpu(), out_dir, meta)
    log.info("training finished", preset=config.name, value=best_auc, epoch=best_epoch)
    return meta
