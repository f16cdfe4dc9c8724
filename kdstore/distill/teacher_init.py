"""Start a student from weights it did not train: NeMo's own init keys, and kdstore's teacher initialisation.

Two ways, applied in this order before training (never when a run resumes from its own checkpoint):

1. NeMo's keys (``init_from_nemo_model``, ``init_from_pretrained_model``, ``init_from_ptl_ckpt`` at the
   top of the config, with ``include``/``exclude`` lists), run by NeMo's own
   ``ModelPT.maybe_init_from_pretrained_checkpoint`` exactly as NeMo's training scripts call it.
2. ``model.init_from_teacher``: copy every teacher tensor whose shape fits the student (preprocessor
   buffers, pre-encoder, the chosen encoder layers renumbered, prediction network, joint, CTC decoder),
   and report what was copied and what stays as initialised, and why. Depth pruning by layer selection
   follows Sanh et al. 2019 (DistilBERT: "initialize the student from the teacher by taking one layer
   out of two") and Fan et al. 2020 (LayerDrop: "every other" layer pruning keeps most of the accuracy).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdstore.errors import ConfigError

NEMO_INIT_KEYS = ("init_from_nemo_model", "init_from_pretrained_model", "init_from_ptl_ckpt")
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.*)$")


@dataclass(frozen=True)
class CopyRow:
    """One group of tensors in the report: a module prefix, where it came from, what happened."""

    student: str  # module prefix in the student, e.g. "encoder.layers.1"
    teacher: str  # module prefix it was copied from ("" when nothing was copied)
    tensors: int
    values: int  # number of scalar values (parameters and buffers)
    copied: bool
    reason: str  # why it stays as initialised ("" when copied)


@dataclass(frozen=True)
class TeacherInitReport:
    """What :func:`init_from_teacher` did, tensor by tensor (``copied``: student key -> teacher key;
    ``kept``: student key -> reason), plus the grouped rows of the logged table."""

    teacher: str
    layer_map: list[int]  # student encoder layer i <- teacher layer layer_map[i]
    copied: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    rows: list[CopyRow] = field(default_factory=list)

    @property
    def copied_values(self) -> int:
        return sum(r.values for r in self.rows if r.copied)

    @property
    def kept_values(self) -> int:
        return sum(r.values for r in self.rows if not r.copied)

    def table(self) -> str:
        """The report as a Markdown table (logged at the start of training, saved next to the model)."""
        lines = [(f"Teacher initialisation from {self.teacher} (student encoder layers <- teacher layers "
                 f"{self.layer_map}): {self.copied_values:,} values copied, {self.kept_values:,} as initialised."),
                 "", "| student | from teacher | tensors | values | copied | why not |", "|---|---|---:|---:|---|---|"]
        lines += [f"| {r.student} | {r.teacher or '-'} | {r.tensors} | {r.values:,} | {'yes' if r.copied else 'no'} "
                  f"| {r.reason} |" for r in self.rows]
        return "\n".join(lines)

    def write(self, folder: Path) -> Path:
        """``folder/init_from_teacher.md`` and ``.json``; returns the Markdown path."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "init_from_teacher.json").write_text(json.dumps(asdict(self), indent=1) + "\n")
        path = folder / "init_from_teacher.md"
        path.write_text(self.table() + "\n")
        return path


def choose_layers(rule: str | Sequence[int], teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher encoder layer for each student layer.

    ``rule`` is a list of indices (one per student layer, each < ``teacher_layers``) or ``"even"``
    (round(linspace(0, teacher_layers - 1, student_layers)): first and last kept, e.g. 2 of 4 -> [0, 3],
    8 of 17 -> [0, 2, 5, 7, 9, 11, 14, 16]), ``"first"`` or ``"last"``. Raises ConfigError when the list
    has the wrong length or an index out of range, or a rule asks for more layers than the teacher has.
    """
    if isinstance(rule, str):
        if student_layers > teacher_layers:
            raise ConfigError(f"model.init_from_teacher.encoder_layers={rule}: the student has {student_layers} "
                              f"encoder layers, the teacher only {teacher_layers}; give an explicit list")
        if rule == "first":
            return list(range(student_layers))
        if rule == "last":
            return list(range(teacher_layers - student_layers, teacher_layers))
        if student_layers == 1:
            return [0]
        step = (teacher_layers - 1) / (student_layers - 1)
        return [round(i * step) for i in range(student_layers)]
    chosen = [int(i) for i in rule]
    if len(chosen) != student_layers:
        raise ConfigError(f"model.init_from_teacher.encoder_layers has {len(chosen)} entries but the student has "
                          f"{student_layers} encoder layers (one teacher layer index per student layer)")
    bad = [i for i in chosen if not 0 <= i < teacher_layers]
    if bad:
        raise ConfigError(f"model.init_from_teacher.encoder_layers: {bad} out of range; the teacher has layers "
                          f"0..{teacher_layers - 1}")
    return chosen


def _count_layers(state: dict[str, torch.Tensor]) -> int:
    found = {int(m.group(1)) for m in map(_LAYER.match, state) if m}
    return max(found) + 1 if found else 0


def _group(key: str) -> str:
    """Module prefix a key is reported under: ``encoder.layers.N``, or the first two name parts."""
    match = _LAYER.match(key)
    if match:
        return f"encoder.layers.{match.group(1)}"
    parts = key.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


PRE_ENCODE_OUT = "encoder.pre_encode.out.weight"


def _copy_frequency_overlap(key: str, student: torch.Tensor, teacher: torch.Tensor) -> str:
    """The pre-encoder's output projection when the frequency bins after subsampling differ by one: the
    shared bins copied, the extra one zeroed; returns what was copied ("" when this rule does not apply).

    NeMo's ``dw_striding`` flattens (channels C, frequency bins F) into ``out``'s inputs (D, C x F). A causal
    subsampling stack (cache-aware students) keeps F = 11 of 80 mel bins where the symmetric one keeps 10
    (per stage f -> f // 2 + 1 instead of (f - 1) // 2 + 1), with bin j over nearly the same mel range in
    both; without this rule an offline teacher's projection (340k values in ``tiny-teacher``) would not
    fit and every copied layer above it would start from random inputs.
    """
    if key != PRE_ENCODE_OUT or student.ndim != 2 or teacher.ndim != 2 or student.shape[0] != teacher.shape[0]:
        return ""
    channels = abs(student.shape[1] - teacher.shape[1])
    if channels == 0 or student.shape[1] % channels or teacher.shape[1] % channels:
        return ""
    f_student, f_teacher = student.shape[1] // channels, teacher.shape[1] // channels
    shared = min(f_student, f_teacher)
    if abs(f_student - f_teacher) != 1 or shared < 2:
        return ""
    view = student.view(student.shape[0], channels, f_student)
    view.zero_()
    view[:, :, :shared] = teacher.view(teacher.shape[0], channels, f_teacher)[:, :, :shared].to(student.dtype)
    return f"frequency bins 0..{shared - 1} of {f_student}; {channels} channels"


JOINT_OUT = re.compile(r"^joint\.joint_net\.\d+\.(weight|bias)$")


def _copy_token_outputs(key: str, student: torch.Tensor, teacher: torch.Tensor, tokens: int) -> str:
    """The joint's output layer when one side is a TDT joint (V+1 token outputs, then D duration outputs) and
    the other an RNN-T joint (V+1) or a TDT joint with other durations: the ``tokens`` = V+1 token rows
    copied, the student's duration rows kept at their initial values; returns what was copied ("" when this
    rule does not apply). Token rows come first in both (NeMo's RNNTJoint with ``num_extra_outputs``);
    ``tokens`` is 0 unless both prediction nets embed the same V+1 tokens."""
    if (not tokens or not JOINT_OUT.match(key) or student.shape[1:] != teacher.shape[1:]
            or min(student.shape[0], teacher.shape[0]) < tokens or student.shape[0] == teacher.shape[0]):
        return ""
    student[:tokens] = teacher[:tokens].to(student.dtype)
    return f"output rows 0..{tokens - 1} (tokens and blank; no duration rows)"


def copy_matching(student: torch.nn.Module, teacher_state: dict[str, torch.Tensor], layer_map: list[int],
                  teacher_name: str) -> TeacherInitReport:
    """Copy into ``student`` every tensor of ``teacher_state`` (parameters and buffers) whose name (with
    student encoder layer i read from teacher layer ``layer_map[i]``) and shape match; the rest keep
    their initial values. Returns the tensor-by-tensor report."""
    report = TeacherInitReport(teacher=teacher_name, layer_map=list(layer_map))
    target = student.state_dict()
    embed = "decoder.prediction.embed.weight"
    tokens = (int(target[embed].shape[0]) if embed in target and embed in teacher_state
              and tuple(target[embed].shape) == tuple(teacher_state[embed].shape) else 0)
    groups: dict[tuple[str, str, bool, str], list[int]] = {}
    with torch.no_grad():
        for key, value in target.items():
            match = _LAYER.match(key)
            source = f"encoder.layers.{layer_map[int(match.group(1))]}.{match.group(2)}" if match else key
            if source not in teacher_state:
                reason = "not in the teacher"
            elif tuple(teacher_state[source].shape) != tuple(value.shape):
                reason = f"shape {tuple(value.shape)} vs teacher {tuple(teacher_state[source].shape)}"
                bins = (_copy_frequency_overlap(key, value, teacher_state[source])
                        or _copy_token_outputs(key, value, teacher_state[source], tokens))
                if bins:
                    report.copied[key] = f"{source} ({bins})"
                    reason = ""
            else:
                value.copy_(teacher_state[source].to(value.dtype))
                report.copied[key] = source
                reason = ""
            if reason:
                report.kept[key] = reason
            teacher_group = _group(source) if not reason else ""
            # one row per module and outcome; shape reasons are summarised per module
            summary = reason if not reason.startswith("shape") else "different shapes (narrower or wider)"
            groups.setdefault((_group(key), teacher_group, not reason, summary), [0, 0])
            groups[(_group(key), teacher_group, not reason, summary)][0] += 1
            groups[(_group(key), teacher_group, not reason, summary)][1] += value.numel()
    report.rows.extend(CopyRow(s, t, n, v, c, r) for (s, t, c, r), (n, v) in groups.items())
    return report


def init_from_teacher(student: torch.nn.Module, teacher_path: str | Path, encoder_layers: str | Sequence[int] = "even",
                      ) -> TeacherInitReport:
    """Initialise ``student`` (a NeMo transducer) from the teacher .nemo at ``teacher_path``.

    The teacher is restored with kdstore's one restore path (exact front-end buffers), on CPU. Raises
    ConfigError for a layer choice that does not fit and KdstoreError subclasses for an unreadable teacher.
    """
    from kdstore.nemo.checkpoint import restore_model

    rng = torch.get_rng_state()  # restore_from draws random numbers: keep runs comparable by seed
    teacher = restore_model(teacher_path, map_location="cpu")
    torch.set_rng_state(rng)
    teacher_state = {k: v.detach() for k, v in teacher.state_dict().items()}
    student_layers = _count_layers(student.state_dict())
    layer_map = choose_layers(encoder_layers, _count_layers(teacher_state), student_layers)
    report = copy_matching(student, teacher_state, layer_map, str(teacher_path))
    del teacher
    return report


def nemo_init_config(cfg: Any) -> Any | None:
    """The one NeMo init key that is set, as a DictConfig NeMo's ``maybe_init_from_pretrained_checkpoint``
    accepts (it counts a key present with a null value as set), or None. Raises ConfigError when more
    than one is set."""
    from omegaconf import OmegaConf

    present = [key for key in NEMO_INIT_KEYS if cfg.get(key) is not None]
    if len(present) > 1:
        raise ConfigError(f"set at most one of {', '.join(NEMO_INIT_KEYS)} (found {', '.join(present)})")
    if not present:
        return None
    value = cfg.get(present[0])
    value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return OmegaConf.create({present[0]: value, "init_strict": bool(cfg.get("init_strict", True))})


def apply_nemo_init(student: Any, cfg: Any) -> str | None:
    """Run NeMo's own initialisation for the config's ``init_from_*`` key (if any); returns a one-line
    summary (the key, the source, how many tensors changed), or None when no key is set.

    Raises ConfigError when NeMo cannot apply it (a missing file, a tensor whose shape differs: narrow
    it with ``exclude``) or when it changed no tensor at all (an ``include`` that matches nothing),
    naming the key.
    """
    init_cfg = nemo_init_config(cfg)
    if init_cfg is None:
        return None
    key = next(iter(init_cfg))
    source = init_cfg[key]
    before = {name: value.detach().clone() for name, value in student.state_dict().items()}
    try:
        student.maybe_init_from_pretrained_checkpoint(init_cfg, map_location="cpu")
    except (RuntimeError, FileNotFoundError, OSError, ValueError, TypeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{key}: NeMo could not initialise the student ({first}); check the path, or leave "
                          "the mismatching tensors out with include/exclude lists") from None
    changed = sum(not torch.equal(value, before[name]) for name, value in student.state_dict().items())
    if changed == 0:
        raise ConfigError(f"{key}: NeMo copied no tensor from {source} into the student; check the include/exclude "
                          "lists against the model's parameter names (e.g. include: [encoder])")
    return f"{key}: {changed} of {len(before)} tensors initialised by NeMo from {source}"
