"""``kdstore eval``: transcribe with NeMo, score (WER/CER with jiwer), compare two models, write reports."""
