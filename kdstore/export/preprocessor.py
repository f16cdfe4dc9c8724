"""NeMo's preprocessor as TorchScript (``preprocessor.ts``): waveform -> the encoder's log-mel features.

``torch.jit.script`` is tried first. On NeMo 3.0 it fails (``FilterbankFeatures.forward`` is wrapped
in ``torch.no_grad()``, which TorchScript cannot compile), so the export falls back to
``torch.jit.trace`` of a thin wrapper around the model's own featurizer in eval mode with dither
set to 0; either way the saved module is checked against NeMo's preprocessor on batches of other
lengths than the tracing example before it is written. The interface is
``forward(waveform: float32 (B, N), length: int64 (B,)) -> (features (B, C, T), lengths (B,))``; the
front-end settings ride along as the extra file ``kdstore.json``.

Reading it back is :class:`kdstore.runtime.frontend.TorchScriptFrontEnd` (torch, CPU is enough, no
NeMo); :mod:`kdstore.runtime.decoder` uses it when the file is there and torch is installed, else the
numpy port.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

from kdstore.errors import ExportError
from kdstore.runtime.frontend import FrontEndConfig
from kdstore.runtime.layout import PREPROCESSOR_EXTRA_FILE

TS_TOLERANCE = 1e-4  # max |TorchScript - NeMo| on features, checked at export


def _wrapper(featurizer: Any) -> Any:
    import torch

    class Preprocessor(torch.nn.Module):
        """waveform (B, N) float32, length (B,) int64 -> features (B, C, T), lengths (B,)."""

        def __init__(self, featurizer: torch.nn.Module) -> None:
            super().__init__()
            self.featurizer = featurizer

        def forward(self, waveform: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.featurizer(waveform, length)

    return Preprocessor(featurizer)


def export_preprocessor(preprocessor: Any, path: Path, frontend: FrontEndConfig) -> tuple[str, str]:
    """Write ``path`` (TorchScript) from a NeMo preprocessor; returns how it was made (``"script"`` or
    ``"trace"``) and why. ``frontend`` is its settings (stored in the file). Raises ExportError, and
    writes nothing, when the compiled module's features differ from NeMo's."""
    import torch

    featurizer = copy.deepcopy(preprocessor.featurizer).eval()
    featurizer.dither = 0.0
    module = _wrapper(featurizer).eval()
    rate = frontend.sample_rate
    example = (0.1 * torch.randn(2, rate), torch.tensor([rate, rate * 3 // 4], dtype=torch.int64))
    try:
        compiled, method, why = torch.jit.script(module), "script", "torch.jit.script compiled it"
    except Exception as err:  # noqa: BLE001 - NeMo 3.0: its torch.no_grad-wrapped forward does not compile
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(":")
        why = f"traced a wrapper of NeMo's featurizer with dither 0 (torch.jit.script failed: {reason!r})"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about Python values; checked below instead
            compiled, method = torch.jit.trace(module, example, check_trace=False), "trace"
    _check_against(compiled, preprocessor, rate)
    extra = {"method": method, "frontend": frontend.to_metadata()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(compiled, str(path), _extra_files={PREPROCESSOR_EXTRA_FILE: json.dumps(extra)})
    return method, why


def _check_against(compiled: Any, preprocessor: Any, rate: int) -> None:
    """Compare with NeMo's preprocessor (eval mode) on batch sizes and lengths unlike the example."""
    import torch

    generator = torch.Generator().manual_seed(0)
    was_training = preprocessor.training
    preprocessor.eval()
    try:
        for lengths in ([int(rate * 1.37)], [rate // 3, int(rate * 2.11), rate]):
            audio = 0.1 * torch.randn(len(lengths), max(lengths), generator=generator)
            for i, n in enumerate(lengths):
                audio[i, n:] = 0.0
            length = torch.tensor(lengths, dtype=torch.int64)
            with torch.no_grad():
                ours, ours_len = compiled(audio, length)
                ref, ref_len = preprocessor(input_signal=audio, length=length)
            if ours.shape != ref.shape or not torch.equal(ours_len, ref_len):
                raise ExportError(f"preprocessor.ts gives features {tuple(ours.shape)}, NeMo {tuple(ref.shape)}; "
                                  "not written")
            diff = float((ours - ref).abs().max())
            if not diff < TS_TOLERANCE:
                raise ExportError(f"preprocessor.ts differs from NeMo's preprocessor by {diff:.2e}; not written")
    finally:
        preprocessor.train(was_training)
