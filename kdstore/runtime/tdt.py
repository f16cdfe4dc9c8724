"""Greedy search of a Token-and-Duration Transducer (TDT), as NeMo 3.0 decodes one: numpy only.

A TDT joint emits V+1 token logits (blank last) followed by D duration logits, one per entry of the
model's durations (frames). NeMo's greedy TDT search (``GreedyBatchedTDTInfer``, the default
``greedy_batch`` strategy, label looping: ``GreedyBatchedTDTLabelLoopingComputer.torch_impl`` in
``nemo/collections/asr/parts/submodules/transducer_decoding/tdt_label_looping.py``) does, per utterance
of T encoder frames, starting at frame 0 with the prediction net fed blank:

1. at frame t, token k = argmax of the token logits and duration d = ``durations[argmax]`` of the
   duration logits, taken *separately* (a shared log-softmax would not change either argmax);
2. a blank with d = 0 gets d = 1 (else the search would stand still); t += d;
3. while k is blank and t < T, repeat 1-2 at the new frame (the prediction net does not move);
4. a token k found at frame t_k (even if t + d has passed the end) is emitted and the prediction net
   advances on it;
5. ``max_symbols``: when the last ``max_symbols`` (or more) tokens were all emitted at frame t_k and the
   search still stands there (d = 0), t += 1.

The older frame-looping ``GreedyTDTInfer`` (strategy ``greedy``) differs only in how it counts
``max_symbols`` (it also counts blanks of duration 0 and adds a frame after a full count even when the
last duration was > 0); kdstore follows the default. sherpa-onnx's ``DecodeOneTDT``
(offline-transducer-greedy-search-nemo-decoder.cc) is the same search with durations ``0..D-1`` and
``max_symbols`` fixed at 5.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def tdt_greedy(num_frames: int, joint: Callable[[int], np.ndarray], emit: Callable[[int], None], *,
               blank_id: int, durations: Sequence[int], max_symbols: int | None) -> tuple[list[int], list[int]]:
    """NeMo's greedy TDT search over ``num_frames`` encoder frames; returns (token ids, frame of each).

    ``joint(t)`` returns the joint's output (V+1+D values: token logits with blank at ``blank_id`` = V, then
    one logit per entry of ``durations``) at frame ``t`` for the prediction net's current state;
    ``emit(token)`` advances the prediction net on an emitted token. ``max_symbols`` None: no limit (a
    model that keeps emitting at one frame then never stops, as in NeMo).
    """
    num_tokens = blank_id + 1
    frames: list[int] = []
    hyp: list[int] = []
    t = 0
    run = 0  # tokens emitted in a row at frame frames[-1]
    while t < num_frames:
        while True:
            t_label = t
            logits = np.asarray(joint(t)).reshape(-1)
            token = int(np.argmax(logits[:num_tokens]))
            duration = int(durations[int(np.argmax(logits[num_tokens:]))])
            if token == blank_id and duration == 0:
                duration = 1
            t += duration
            if token != blank_id or t >= num_frames:
                break
        if token == blank_id:
            break  # blanks ran past the last frame
        run = run + 1 if frames and frames[-1] == t_label else 1
        hyp.append(token)
        frames.append(t_label)
        emit(token)
        if max_symbols is not None and run >= max_symbols and t == t_label:
            t += 1
    return hyp, frames
