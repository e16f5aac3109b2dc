"""Report tokenisation at run time with the `tokenizers` package only (no torch, no transformers).

The tokenizer.json is exported next to the text encoder's ONNX graph by `llnm export --text-encoder`.
Reports are truncated / padded to m = 50 tokens and the attention mask says which are real.
Because 50 tokens hold only the first two or three sentences of a typical report, the impression
(the last paragraph, where the radiologist sums up) is put first and the findings after it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_TOKENS = 50  # m, the paper's report length in tokens


def impression_first(text: str | None) -> str:
    """The last non-empty paragraph first, then the others in order (one paragraph: unchanged)."""
    paragraphs = [p.strip() for p in (text or "").split("\n") if p.strip()]
    if len(paragraphs) < 2:
        return " ".join(paragraphs)
    return " ".join([paragraphs[-1], *paragraphs[:-1]])


class ReportTokenizer:
    def __init__(self, tokenizer_json: Path, max_tokens: int = MAX_TOKENS) -> None:
        from tokenizers import Tokenizer

        path = Path(tokenizer_json)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; run `llnm export --text-encoder` (part of the set-up)")
        self.max_tokens = max_tokens
        self._tok = Tokenizer.from_file(str(path))
        self._tok.enable_truncation(max_length=max_tokens)
        pad_id = self._tok.token_to_id("[PAD]")
        self._tok.enable_padding(length=max_tokens, pad_id=0 if pad_id is None else pad_id)

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        """-> input_ids, attention_mask: (B, max_tokens) int64. An empty text gives an all-zero mask."""
        encodings = self._tok.encode_batch([impression_first(t) for t in texts])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        for row, text in enumerate(texts):
            if not (text or "").strip():
                mask[row] = 0
        return {"input_ids": ids, "attention_mask": mask}
