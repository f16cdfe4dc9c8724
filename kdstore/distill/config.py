"""The training config: one dataclass schema for every key kdstore reads, and how a config is loaded.

A config is the schema (:class:`TrainConfig`), then the YAML files (a file's ``defaults: [...]`` list
names the files merged under it: the model configs in ``kdstore/configs/`` extend ``_base.yaml``), then
the ``key=value`` overrides, merged by OmegaConf in struct mode. A key the schema does not know, or a
value of the wrong type, fails with a :class:`ConfigError` naming the key's full path (``model.kd.los``)
and how to fix it. The sections kdstore reads (``run``, the KD keys, ``train_ds``/``validation_ds``,
``tokenizer``) are typed dataclasses; NeMo's model sections (preprocessor, encoder, decoder, joint,
optim, ...), Lightning's ``trainer`` and NeMo's ``exp_manager`` are passed on as they are and checked by
their owners. The loaded config is a plain DictConfig (NeMo builds the model from ``cfg.model`` and
saves it in the .nemo); library code reads the typed view, :func:`read_train_config`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, get_args

from kdstore.distill.losses import KDLossName, NodeWeightKind
from kdstore.errors import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

RNNT_LOSSES = ("auto", "nemo", "kdstore")
LAYER_RULES = ("even", "first", "last")
T = TypeVar("T")


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")


# -- the schema ------------------------------------------------------------------------------------
@dataclass
class KDSection:
    """``model.kd``: KD from a store (docs/training.md)."""

    store: str | None = None  # the teacher's store; --store sets it
    loss: str = "topk_rest"  # kdstore.distill.losses.KDLossName
    weights: str = "uniform"  # node weights: kdstore.distill.losses.NodeWeightKind
    top_k: int | None = None  # use only the first top_k stored entries (rows are sorted); None: all
    ctc: bool = True  # KD on a hybrid student's CTC head when the store has CTC rows
    # kd_alpha for utterances whose label is the teacher's own (pseudo-labels); null: model.kd_alpha.
    # 1.0: those utterances learn from the teacher's lattice only, no RNN-T/CTC term on the hard label.
    pseudo_label_alpha: float | None = None
    # Streaming students: the teacher's targets move this many encoder frames later for the student
    # (student node (t, u) learns teacher node (t - d, u); kdstore.distill.delay, docs/training.md).
    delay_frames: int = 0
    # TDT students of a TDT teacher's store: weight of the duration KD term next to the token KD term
    # (kdstore.distill.kd_term.duration_kd_loss); 0 turns it off. RNN-T students ignore it.
    duration_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.duration_weight < 0:
            raise ConfigError(f"model.kd.duration_weight: expected 0 or more, got {self.duration_weight}")
        if self.delay_frames < 0:
            raise ConfigError(f"model.kd.delay_frames: expected 0 or more encoder frames, got {self.delay_frames}")
        if self.pseudo_label_alpha is not None and not 0.0 <= self.pseudo_label_alpha <= 1.0:
            raise ConfigError(f"model.kd.pseudo_label_alpha: expected a value in [0, 1] or null, got "
                              f"{self.pseudo_label_alpha}")
        _one_of("model.kd.loss", self.loss, get_args(KDLossName))
        _one_of("model.kd.weights", self.weights, get_args(NodeWeightKind))
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"model.kd.top_k: expected a positive integer or null, got {self.top_k}")


@dataclass
class TeacherInitSection:
    """``model.init_from_teacher``: start the student from the teacher's weights (kdstore.distill.teacher_init)."""

    path: str | None = None  # the teacher's .nemo; None: no teacher initialisation
    # Which teacher encoder layer each student layer starts from: a list (one index per student layer)
    # or a rule: "even" (evenly spaced, first and last kept), "first" (the first n), "last" (the last n).
    encoder_layers: Any = "even"

    def __post_init__(self) -> None:
        rule = self.encoder_layers
        if (isinstance(rule, str) and rule not in LAYER_RULES) or (not isinstance(rule, str) and (
                not isinstance(rule, list | tuple) or not all(isinstance(i, int) and i >= 0 for i in rule))):
            raise ConfigError("model.init_from_teacher.encoder_layers: expected a list of teacher layer indices "
                              f"(e.g. [0, 3]) or one of {', '.join(LAYER_RULES)}, got {rule!r}")


@dataclass
class StepKeys:
    """The ``model.*`` keys the training step reads: the KD weights (the original project's names keep
    their meaning) and the RNN-T reduction (NeMo's key; kdstore's CPU loss reduces the same way)."""

    enable_kd: bool = True  # false: plain RNN-T training, even with a store
    kd_alpha: float = 0.5  # loss = (1 - kd_alpha) * rnnt + kd_alpha * tau^2 * kd
    kd_temperature: float = 1.0  # tau
    teacher_model_path: str | None = None  # online KD (teacher in the loop)
    kd: KDSection = field(default_factory=KDSection)
    rnnt_reduction: str = "mean_batch"

    def __post_init__(self) -> None:
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ConfigError(f"model.kd_alpha: expected a value in [0, 1], got {self.kd_alpha}")
        if self.kd_temperature <= 0:
            raise ConfigError(f"model.kd_temperature: expected a positive value, got {self.kd_temperature}")


@dataclass
class DataSection:
    """``model.validation_ds`` (and the base of ``train_ds``): read by kdstore's loader, not NeMo's."""

    manifest_filepath: str | None = None
    # Validation runs in manifest order; the key stays because a plain NeMo model built from this config
    # (no kdstore) writes shuffle=false into it when it sets up its own validation loader.
    shuffle: bool = False
    sample_rate: int = 16000
    batch_size: int = 16
    num_workers: int = 0
    pin_memory: bool = False
    max_duration: float | None = None  # seconds; longer utterances are left out (counted, listed in skipped_file)
    min_duration: float | None = None  # seconds; shorter utterances are left out (counted, listed in skipped_file)
    skip_bad: bool = False  # skip unusable manifest lines (listed in skipped_file) instead of stopping
    skipped_file: str | None = None


@dataclass
class TrainDataSection(DataSection):
    """``model.train_ds``: shuffled by default, and NeMo's waveform augmentor (training audio only)."""

    shuffle: bool = True  # duration buckets (store order with a store); false: manifest order
    augmentor: dict[str, Any] | None = None  # NeMo's AudioAugmentor config (kdstore.distill.augment)


@dataclass
class TokenizerSection:
    dir: str | None = None  # SentencePiece folder; None: the teacher's tokenizer from the store
    type: str = "bpe"


@dataclass
class ModelSection(StepKeys):
    """``model``: NeMo's model config with kdstore's keys. Saved in the student's .nemo as it is."""

    sample_rate: int = 16000
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    train_ds: TrainDataSection = field(default_factory=TrainDataSection)
    validation_ds: DataSection = field(default_factory=DataSection)
    # NeMo's own keys and sections: passed to NeMo as they are (NeMo checks them when it builds the model).
    log_prediction: bool = False
    compute_eval_loss: bool = False
    model_defaults: dict[str, Any] = field(default_factory=dict)
    preprocessor: dict[str, Any] = field(default_factory=dict)
    spec_augment: dict[str, Any] | None = None
    encoder: dict[str, Any] = field(default_factory=dict)
    decoder: dict[str, Any] = field(default_factory=dict)
    joint: dict[str, Any] = field(default_factory=dict)
    decoding: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] = field(default_factory=dict)
    aux_ctc: dict[str, Any] | None = None  # set: a hybrid RNNT-CTC model (EncDecHybridRNNTCTCBPEModel)
    init_from_teacher: TeacherInitSection = field(default_factory=TeacherInitSection)


@dataclass
class RunSection:
    """``run``: what kdstore does around NeMo's training."""

    output: str | None = None  # required: the trained .nemo (plain NeMo class)
    seed: int = 0
    num_threads: int = 1  # torch threads
    log_csv: str | None = None  # per-step losses as CSV; None: <output>.log.csv
    rnnt_loss: str = "auto"  # auto: kdstore's vectorised loss on CPU, NeMo's on GPU | nemo | kdstore

    def __post_init__(self) -> None:
        _one_of("run.rnnt_loss", self.rnnt_loss, RNNT_LOSSES)
        if self.num_threads < 1:
            raise ConfigError(f"run.num_threads: expected a positive integer, got {self.num_threads}")


@dataclass
class TrainConfig:
    """A whole training config."""

    name: str = "student"  # exp_manager's run name and the best model's file name
    # NeMo's own initialisation keys, as in NeMo's training scripts (ModelPT.maybe_init_from_pretrained_checkpoint):
    # a path/name, or {any_name: {path|name: ..., include: [...], exclude: [...]}}. At most one is set.
    init_from_nemo_model: Any = None
    init_from_pretrained_model: Any = None
    init_from_ptl_ckpt: Any = None
    init_strict: bool = True  # NeMo's: restore the source model strictly
    model: ModelSection = field(default_factory=ModelSection)
    trainer: dict[str, Any] = field(default_factory=dict)  # lightning.pytorch.Trainer arguments
    exp_manager: dict[str, Any] | None = None  # nemo.utils.exp_manager's config; None: no exp_manager
    run: RunSection = field(default_factory=RunSection)


@dataclass(frozen=True, kw_only=True)
class KDSettings:
    """The KD term's settings, flat (``model.enable_kd``, ``model.kd_alpha``, ``model.kd.*``...)."""

    enabled: bool
    alpha: float
    temperature: float
    store: str | None
    loss: str
    weights: str = "uniform"
    top_k: int | None = None
    ctc: bool = True
    teacher_model_path: str | None = None
    pseudo_label_alpha: float | None = None  # model.kd.pseudo_label_alpha
    delay_frames: int = 0  # model.kd.delay_frames
    duration_weight: float = 1.0  # model.kd.duration_weight

    @property
    def active(self) -> bool:
        return self.enabled and (self.store is not None or self.teacher_model_path is not None)

    @classmethod
    def of(cls, keys: StepKeys) -> KDSettings:
        return cls(enabled=keys.enable_kd, alpha=keys.kd_alpha, temperature=keys.kd_temperature,
                   store=keys.kd.store or None, loss=keys.kd.loss, weights=keys.kd.weights, top_k=keys.kd.top_k,
                   ctc=keys.kd.ctc, teacher_model_path=keys.teacher_model_path or None,
                   pseudo_label_alpha=keys.kd.pseudo_label_alpha, delay_frames=keys.kd.delay_frames,
                   duration_weight=keys.kd.duration_weight)


# -- typed views -----------------------------------------------------------------------------------
def typed(schema: type[T], node: Any, where: str = "", source: str = "config") -> T:
    """``node`` (DictConfig or dict) checked against the dataclass ``schema`` and built as one.

    ``where`` prefixes key paths in errors (``model.train_ds``), ``source`` names the config. Raises
    ConfigError naming the key for an unknown key, a wrong type, a missing mandatory value or a value out
    of range.
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))
    except OmegaConfBaseException as err:
        raise ConfigError(explain(err, source, prefix=where)) from None


def read_train_config(cfg: Any, source: str = "config") -> TrainConfig:
    """The typed view of a loaded (possibly edited) config; raises ConfigError like :func:`typed`."""
    return typed(TrainConfig, cfg, source=source)


def step_keys(model_cfg: Any) -> StepKeys:
    """The training step's keys from a model config (NeMo's ``model._cfg``, which NeMo extends)."""
    from omegaconf import OmegaConf

    names = [f.name for f in fields(StepKeys) if f.name in model_cfg]
    return typed(StepKeys, OmegaConf.masked_copy(model_cfg, names), "model")


def required(value: T | None, key: str, hint: str) -> T:
    """``value``, or a ConfigError saying that ``key`` must be set and how."""
    if value is None:
        raise ConfigError(f"config value {key} is required: {hint}")
    return value


# -- errors ----------------------------------------------------------------------------------------
def explain(err: Exception, source: str, prefix: str = "") -> str:
    """One line for an OmegaConf error: the file or override, the key's full path, what to do."""
    from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

    key = ".".join(part for part in (prefix, str(getattr(err, "full_key", "") or "")) if part)
    message = str(getattr(err, "msg", err)).splitlines()[0]
    if isinstance(err, ConfigKeyError) and key:
        return f"{source}: {unknown_key(key)}"
    if isinstance(err, MissingMandatoryValue) and key:
        return f"{source}: {key} has no value (???): set {key}=..."
    if isinstance(err, ValidationError) and key:
        return f"{source}: {key}: {message}; give a value of the key's type"
    return f"{source}: {key + ': ' if key else ''}{message}"


def unknown_key(key: str) -> str:
    """``key`` is not in the config: the closest key of the typed section it names, or how to add one."""
    from dataclasses import is_dataclass
    from typing import get_type_hints

    schema: Any = TrainConfig
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not is_dataclass(schema):  # one of NeMo's sections (or Lightning's trainer): open to + keys
            break
        known = [f.name for f in fields(schema)]
        if part not in known:
            parent = ".".join(parts[:depth])
            close = difflib.get_close_matches(part, known, n=1)
            suggestion = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
            return (f"{'.'.join(parts[:depth + 1])} is not a config key; {suggestion}"
                    f"({parent or 'the config'} has: {', '.join(known)})")
        schema = get_type_hints(schema)[part]
    return f"{key} is not a key of this config (check the spelling, or write +{key}=... to add it)"


# -- files -----------------------------------------------------------------------------------------
def config_dir() -> Traversable:
    """The model configs shipped with kdstore (package data, so a wheel install has them)."""
    return files("kdstore.configs")


def config_names() -> list[str]:
    """Names ``--config`` accepts besides paths (files starting with ``_`` are shared parts)."""
    return sorted(p.name.removesuffix(".yaml") for p in config_dir().iterdir()
                  if p.name.endswith(".yaml") and not p.name.startswith("_"))


def resolve_config_path(config: str | Path, near: Path | None = None) -> Path | Traversable:
    """A config file from a path (relative to ``near`` if given) or a name in ``kdstore/configs/``."""
    for candidate in ([near / str(config), near / f"{config}.yaml"] if near else []) + [Path(config)]:
        if candidate.is_file():
            return candidate
    named = config_dir().joinpath(f"{config}.yaml")
    if named.is_file():
        return named
    raise ConfigError(f"config {config!r} is neither a file nor a config name (known names: "
                      f"{', '.join(config_names()) or 'none found'})")


def _yaml_layers(source: Path | Traversable, chain: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """``[(file name, DictConfig)]``: the files a ``defaults: [...]`` list names (recursively), then
    ``source`` itself without its ``defaults`` key. Later layers win."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    name = str(source)
    if name in chain:
        raise ConfigError(f"{name}: `defaults` includes itself ({' -> '.join([*chain, name])})")
    try:
        cfg = OmegaConf.create(source.read_text(encoding="utf-8"))
    except (OSError, OmegaConfBaseException) as err:
        raise ConfigError(f"cannot read config {name}: {err}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{name}: a config is a YAML mapping (name:, model:, trainer:, run: ...)")
    defaults = cfg.pop("defaults", [])
    if not isinstance(defaults, ListConfig | list) or not all(isinstance(d, str) for d in defaults):
        raise ConfigError(f"{name}: `defaults` is a list of config names or paths, e.g. defaults: [_base]")
    near = source.parent if isinstance(source, Path) else None
    layers = []
    for base in defaults:
        layers += _yaml_layers(resolve_config_path(base, near), (*chain, name))
    return [*layers, (name, cfg)]


def load_train_config(config: str | Path, overrides: list[str] | tuple[str, ...] = (),
                      store: str | None = None) -> DictConfig:
    """Load a training config (path or name), apply ``key=value`` overrides and ``--store`` (which wins).

    ``+key=value`` adds a key to NeMo's sections (``+model.train_ds.augmentor.shift.prob=1``). Returns
    a plain, struct-mode DictConfig whose values have been checked (:func:`read_train_config` gives its
    typed view). Raises ConfigError naming the file or override and the key's full path.
    """
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    cfg = OmegaConf.structured(TrainConfig)
    for name, layer in _yaml_layers(resolve_config_path(config)):
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as err:
            raise ConfigError(explain(err, name)) from None
    OmegaConf.set_struct(cfg, True)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (use +key=value to add a new key)")
        key, value = item.split("=", 1)
        add, key = key.startswith("+"), key.lstrip("+")
        if not add and not _has_key(cfg, key):
            raise ConfigError(f"override {item!r}: {unknown_key(key)}")
        try:
            parsed = OmegaConf.from_dotlist([f"{key}={value}"])
            if add:
                with open_dict(cfg):
                    cfg.merge_with(parsed)
            else:
                cfg.merge_with(parsed)
        except OmegaConfBaseException as err:
            raise ConfigError(explain(err, f"override {item!r}")) from None
    if store is not None:
        cfg.model.kd.store = str(store)
    read_train_config(cfg, f"config {config}")  # value checks (__post_init__), ??? left in the files
    plain = OmegaConf.create(OmegaConf.to_container(cfg))  # NeMo adds keys to it (target, vocab sizes...)
    OmegaConf.set_struct(plain, True)
    return plain


def _has_key(cfg: Any, dotted: str) -> bool:
    from omegaconf import DictConfig, OmegaConf

    parent_key, _, leaf = dotted.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    return isinstance(parent, DictConfig) and leaf in parent.keys()  # noqa: SIM118 (`in` skips ??? values)
