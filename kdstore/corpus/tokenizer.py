"""The demo corpus's tokenizer: SentencePiece BPE written in NeMo's ``tokenizer.type: bpe`` layout.

Trained from the train split's texts (``prepare_demo``); the folder it writes is what a NeMo
transducer's ``model.tokenizer.dir`` points at. No NeMo import: sentencepiece directly.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TokenizerInfo:
    vocab_size: int
    warning: str | None


def train_tokenizer(train_texts: list[str], out_dir: Path, vocab_size: int) -> TokenizerInfo:
    """SentencePiece BPE in NeMo's ``tokenizer.type: bpe`` layout, with NeMo's trainer flags.

    Same files as NeMo's ``create_spt_model`` (``tokenizer.model``, ``tokenizer.vocab``,
    ``vocab.txt``), trained with sentencepiece directly: NeMo's helper silently keeps a stale
    ``tokenizer.model``, and it records temporary paths in the model, whereas training from an
    iterator into memory makes ``tokenizer.model`` byte-identical for identical texts (the store
    fingerprints it). A ``vocab_size`` the texts cannot support is clamped (up to the character
    count + ``<unk>``, down to what BPE can merge) with a warning.
    """
    import io

    import sentencepiece as spm

    chars = {"\u2581"} | {"\u2581" if c == " " else c for text in train_texts for c in text}
    minimum = len(chars) + 1  # every character must be a piece, plus <unk>
    warning = None
    requested = max(vocab_size, minimum)
    if requested != vocab_size:
        warning = (
            f"vocab_size {vocab_size} is below the {len(chars)} characters + <unk> of the train texts; "
            f"using {requested}"
        )
    model = io.BytesIO()
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(train_texts),
        model_writer=model,
        vocab_size=requested,
        model_type="bpe",
        bos_id=-1,
        eos_id=-1,
        hard_vocab_limit=False,
        character_coverage=1.0,
        remove_extra_whitespaces=False,
        shuffle_input_sentence=True,
        num_threads=1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    actual = sp.get_piece_size()
    if actual < requested:
        warning = (
            f"vocab_size {vocab_size} is more than the train texts support; the tokenizer has {actual} pieces"
        )
    pieces = [sp.id_to_piece(i) for i in range(actual)]
    scores = "".join(f"{piece}\t{sp.get_score(i):g}\n" for i, piece in enumerate(pieces))
    vocab = [
        p[1:] or p if p.startswith("\u2581") else f"##{p}"
        for p in pieces
        if p not in ("<s>", "</s>", "<pad>", "<unk>")
    ]

    part = out_dir.with_name(out_dir.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    (part / "tokenizer.model").write_bytes(model.getvalue())
    (part / "tokenizer.vocab").write_text(scores, encoding="utf-8")
    (part / "vocab.txt").write_text("".join(token + "\n" for token in vocab), encoding="utf-8")
    shutil.rmtree(out_dir, ignore_errors=True)
    part.replace(out_dir)
    return TokenizerInfo(vocab_size=actual, warning=warning)
