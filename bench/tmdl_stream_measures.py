"""Can TMDL's image stream learn the measurements when they are its only target?

`bench/tmdl_inputs_probe.py` shows the feature images carry the capsule distance for one non-linear step
and the texture hardly at all for a linear read-out, and that TMDL's image groups read about what a
linear reader reads. This bench asks whether the architecture can do better when it is told what to
read: a fresh TMDL of the given preset is trained with the measurement read-out alone
(`llnm.model.train.MeasureHead`: the ten measurements of the full-resolution view, standard units; no
label, no report, no demographics), and each measurement's R^2 on the held-out views is printed beside
a linear read-out of the same feature images (ridge on PCA, the baseline). A logistic regression on
the stream's predicted measurements (fitted on the training views) then scores the held-out studies.

    .venv/bin/python bench/tmdl_stream_measures.py --train /tmp/fusion/train --test /tmp/fusion/test --epochs 15

A model figure, not a speed. Prints Markdown tables and the figures as JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--preset", default="compact")
    parser.add_argument("--text-tokens", type=int, default=150, help="only keys the feature cache")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--save", type=Path, default=None,
                        help="write the trained model's weights here (a starting point: `llnm train --init`)")
    args = parser.parse_args()

    import torch
    from tmdl_inputs_probe import linear_r2, load_caches, print_auc_table, reader_auc

    from llnm.features.measures import MEASURES
    from llnm.model.tmdl import TMDL
    from llnm.model.train import MeasureHead

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    config, train, test = load_caches(args.train, args.test, args.preset, args.text_tokens, args.workers)
    model, head = TMDL(config), MeasureHead(config.hidden, train.measures[:, :1])
    optimiser = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=args.lr, weight_decay=0.05)

    def stream(cache, views: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The image stream's mean output token of `views` (variant 0), the report and demographics absent."""
        images = torch.from_numpy(cache.images[views, 0].astype(np.float32))
        states = torch.zeros(len(views), *cache.text_states.shape[1:])
        mask = torch.zeros(len(views), cache.text_mask.shape[1])
        clinical = torch.zeros(len(views), cache.clinical.shape[-1])
        x, _, token_mask = model.tokens(images, states, mask, clinical, None)
        image_mask = token_mask[:, :config.image_tokens]
        summary = (x[:, :config.image_tokens] * image_mask[:, :, None]).sum(1) / image_mask.sum(1, keepdim=True)
        return x, token_mask, summary

    started, views = time.time(), np.arange(len(train.view_study))
    for epoch in range(args.epochs):
        model.train()
        losses, order = [], rng.permutation(views)
        for start in range(0, len(views), 64):
            batch = order[start:start + 64]
            x, token_mask, _ = stream(train, batch)
            loss = head.loss(x, token_mask, config.image_tokens, torch.from_numpy(train.measures[batch, 0]))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            losses.append(loss.item())
        print(f"epoch {epoch}: loss {np.mean(losses):.3f} ({time.time() - started:.0f} s)", flush=True)

    def predicted(cache) -> np.ndarray:
        model.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(cache.view_study), 256):
                _, _, summary = stream(cache, np.arange(start, min(start + 256, len(cache.view_study))))
                out.append((head.read(summary) * head.scale + head.mean).numpy())
        return np.concatenate(out)

    if args.save:
        torch.save(model.state_dict(), args.save)
    p_train, p_test = predicted(train), predicted(test)
    m_train, m_test = train.measures[:, 0], test.measures[:, 0]

    r2_stream = 1 - ((p_test - m_test) ** 2).mean(axis=0) / m_test.var(axis=0)
    r2_linear = linear_r2(train, test, 100)
    rows = {name: {"r2_stream": float(r2_stream[j]), "r2_linear": float(r2_linear[j])}
            for j, name in enumerate(MEASURES)}

    aucs = {"stream's predicted measurements": reader_auc(p_train, p_test, train, test),
            "the measurements themselves": reader_auc(m_train, m_test, train, test)}
    print(f"\n{args.preset} image stream, {args.epochs} epochs on {len(views)} training views "
          f"({time.time() - started:.0f} s); held-out views: {len(test.view_study)}")
    print("\n| measurement | R^2, TMDL's image stream trained on it | R^2, linear read-out of the images |\n|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {values['r2_stream']:+.2f} | {values['r2_linear']:+.2f} |")
    print_auc_table("logistic regression on", aucs)
    if args.json:
        args.json.write_text(json.dumps({"measures": rows, "auc": aucs, "epochs": args.epochs}, indent=1))


if __name__ == "__main__":
    main()
