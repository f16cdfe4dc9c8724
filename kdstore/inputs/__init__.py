"""What every stage reads: NeMo JSON-lines manifests, audio files, the bad-input policy, batches.

No NeMo here, and no torch at import except :mod:`kdstore.inputs.batches` (the one torch Dataset that
dump, training and eval share, so the tokens a student sees are exactly those the teacher was forced on).
"""
