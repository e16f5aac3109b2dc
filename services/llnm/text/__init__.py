"""Report text: tokenisation (runtime, `tokenizers` only), encoding through the exported ONNX text
encoder, and the export itself (torch + transformers, set-up time only)."""
