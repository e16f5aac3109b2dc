"""Does TMDL fuse what its streams read? Each stream of a trained TMDL scored alone (the other token
groups occluded, as `llnm evaluate`'s ablations), then a logistic regression on the streams' logits,
fitted on the selection set, scores the held-out set beside the model's own fused answer (paired
bootstrap CI of the difference, the same studies resampled for both).

    .venv/bin/python bench/tmdl_streams.py --model /tmp/fus/m-ref --select /tmp/fus/select --test /tmp/fus/test

If the stacked streams clear the fused model, the fusion loses what the streams read (a head or
pooling problem); if they do not, what limits the model is what each stream reads. Beside them, the
model's report stream stacked with the structured baseline's geometry (and demographics), each
baseline part fitted on the model's training folder: what the model would reach if its image stream
read the masks' geometry as well as the baseline does, against the whole baseline (paired CI). A model
figure, not a speed (model card, issue 15). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from llnm.config import Settings
from llnm.model.baseline import paired_bootstrap
from llnm.model import baseline
from llnm.model.data import build_cache, read_layout
from llnm.model.metrics import auc
from llnm.model.train import load_model, onnx_text_encoder, predict_studies

#: token groups kept (GROUPS order: location, morphology, report, demographics); None: all
STREAMS = {"fused": None, "report": (0.0, 0.0, 1.0, 0.0), "image": (1.0, 1.0, 0.0, 0.0),
           "demographics": (0.0, 0.0, 0.0, 1.0)}
#: the stacks fitted on the selection set ("geometry", "baseline demographics": the baseline's parts)
STACKS = (("report", "image"), ("report", "image", "demographics"), ("fused", "image"),
          ("report", "geometry"), ("report", "geometry", "baseline demographics"))


def stream_probabilities(model, folder: Path, encode_text, parts: dict[str, baseline.Baseline]
                         ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """P(LLNM) per study with each stream alone and from each baseline part, and the labels (given
    masks, no jitter; the studies with a usable view, in labels.csv order)."""
    cache = build_cache(folder, model.config, encode_text, jitters=0, seed=0, progress=False)
    out = {}
    for name, keep in STREAMS.items():
        present, p, _ = predict_studies(model, cache, None, group_keep=keep)
        out[name] = p
    studies = read_layout(folder)
    memo: baseline.Memo = {}
    for name, part in parts.items():
        out[name] = part.predict(studies, memo)[present]
    return {k: np.clip(v, 1e-6, 1 - 1e-6) for k, v in out.items()}, cache.llnm[present]


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True,
                        help="a trained TMDL folder (llnm train --out); its model.json names the training folder")
    parser.add_argument("--select", type=Path, required=True, help="the selection set: the stacks are fitted here")
    parser.add_argument("--test", type=Path, required=True, help="the held-out set: everything is scored here")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model, meta = load_model(args.model)
    encode_text = onnx_text_encoder(Settings.from_env().model_repository)
    train = read_layout(Path(meta["data"]))
    memo: baseline.Memo = {}
    parts = {name: baseline.fit(train, inputs, memo=memo) for name, inputs in
             (("baseline", ("report", "image", "demographics")), ("geometry", ("image",)),
              ("baseline demographics", ("demographics",)))}
    select, y_select = stream_probabilities(model, args.select, encode_text, parts)
    test, y_test = stream_probabilities(model, args.test, encode_text, parts)
    report = {"model": str(args.model), "select_studies": int(len(y_select)), "test_studies": int(len(y_test)),
              "test_auc": {name: auc(p, y_test) for name, p in test.items()}, "stacks": []}
    for names in STACKS:
        fit = LogisticRegression(C=1.0).fit(np.stack([logit(select[n]) for n in names], 1), y_select)
        stacked = fit.predict_proba(np.stack([logit(test[n]) for n in names], 1))[:, 1]
        report["stacks"].append({"streams": list(names), "coefficients": fit.coef_[0].round(3).tolist(),
                                 "test_auc": auc(stacked, y_test),
                                 "minus_fused": paired_bootstrap(stacked, test["fused"], y_test, n=args.bootstrap),
                                 "minus_baseline": paired_bootstrap(stacked, test["baseline"], y_test,
                                                                    n=args.bootstrap)})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
