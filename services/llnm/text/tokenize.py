"""Report tokenisation at run time with the `tokenizers` package only (no torch, no transformers).

The tokenizer.json is exported next to the text encoder's ONNX graph by `llnm export --text-encoder`.
Reports are truncated / padded to m = 50 tokens and the attention mask says which are real.
Because 50 tokens hold only the first two or three sentences of a typical report, the impression
(the last paragraph, where the radiologist sums up) is put first and the findings after it.

A model may read more than the paper's m = 50 (TMDLConfig.text_tokens a multiple of 50): the report is
then cut into consecutive windows of 50 tokens, each [CLS] + 48 word pieces + [SEP] like the first,
which the same 50-token text encoder encodes one by one; their token states are laid end to end. The
first window is exactly the truncated report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_TOKENS = 50  # m, the paper's report length in tokens


def has_text(text: str | None) -> bool:
    """Does the report hold anything to read? Whitespace, NUL and other invisible characters (zero-width
    spaces, control codes) alone are no report."""
    return any(ch.isprintable() and not ch.isspace() for ch in text or "")


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
        self._path = path
        self._untruncated = None  # loaded on first use by _whole

    def __call__(self, texts: list[str], windows: int = 1) -> dict[str, np.ndarray]:
        """-> input_ids, attention_mask: (B * windows, max_tokens) int64, window w of text b in row
        b * windows + w. An empty text, or a window beyond the end of its text, gets an all-zero mask."""
        if windows < 1:
            raise ValueError(f"windows must be >= 1, got {windows}")
        encodings = self._tok.encode_batch([impression_first(t) for t in texts])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        for row, text in enumerate(texts):
            if not has_text(text):
                mask[row] = 0
        if windows == 1:
            return {"input_ids": ids, "attention_mask": mask}
        return self._windows(texts, ids, mask, windows)

    def _whole(self):
        """The same tokenizer neither truncated nor padded, loaded only when a model reads more than
        one window (the shipped model never does)."""
        if self._untruncated is None:
            from tokenizers import Tokenizer

            self._untruncated = Tokenizer.from_file(str(self._path))
            self._untruncated.no_truncation()
            self._untruncated.no_padding()
        return self._untruncated

    def _windows(self, texts: list[str], first_ids: np.ndarray, first_mask: np.ndarray,
                 windows: int) -> dict[str, np.ndarray]:
        """Later windows: the word pieces after the first window's, 48 at a time, each framed by the
        first window's own [CLS] and [SEP] ids."""
        inner = self.max_tokens - 2
        ids = np.zeros((len(texts) * windows, self.max_tokens), dtype=np.int64)
        mask = np.zeros_like(ids)
        full = self._whole().encode_batch([impression_first(t) for t in texts])
        for b, encoding in enumerate(full):
            ids[b * windows] = first_ids[b]
            mask[b * windows] = first_mask[b]
            pieces = encoding.ids[1:-1]  # without [CLS] and [SEP]
            if not first_mask[b].any() or len(pieces) <= inner:
                continue
            cls, sep = encoding.ids[0], encoding.ids[-1]
            for w in range(1, windows):
                chunk = pieces[w * inner:(w + 1) * inner]
                if not chunk:
                    break
                row = b * windows + w
                ids[row, :len(chunk) + 2] = [cls, *chunk, sep]
                mask[row, :len(chunk) + 2] = 1
        return {"input_ids": ids, "attention_mask": mask}
