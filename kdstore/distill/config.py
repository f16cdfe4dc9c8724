"""Training configs: YAML + ``key=value`` overrides, merged in struct mode so typos fail loudly.

``--config`` takes a path or the name of a file in ``configs/models/`` (``tiny``, ``small``...).
Overrides use OmegaConf dot-list syntax; ``+key=value`` adds a key that the YAML does not have.
"""

from __future__ import annotations

from pathlib import Path

from kdstore.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "models"


def resolve_config_path(config: str | Path) -> Path:
    path = Path(config)
    if path.is_file():
        return path
    named = CONFIG_DIR / f"{config}.yaml"
    if named.is_file():
        return named
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))) if CONFIG_DIR.is_dir() else "none found"
    raise ConfigError(f"config {config!r} is neither a file nor a config name (known names: {known})")


def load_train_config(config: str | Path, overrides: list[str] | tuple[str, ...] = (), store: str | None = None):
    """Load a training config, apply overrides (unknown keys fail) and ``--store`` (which wins)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = resolve_config_path(config)
    try:
        cfg = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from None
    OmegaConf.set_struct(cfg, True)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (use +key=value to add a new key)")
        key, value = item.split("=", 1)
        add = key.startswith("+")
        key = key.lstrip("+")
        try:
            parsed = OmegaConf.from_dotlist([f"{key}={value}"])
            if add:
                with _open(cfg):
                    cfg.merge_with(parsed)
            else:
                if not _has_key(cfg, key):
                    raise ConfigError(f"override {item!r}: {key!r} is not a key of {path.name} "
                                      f"(check the spelling, or write +{key}=... to add it)")
                cfg.merge_with(parsed)
        except OmegaConfBaseException as err:
            raise ConfigError(f"override {item!r}: {err}") from None
    if store is not None:
        cfg.model.kd.store = str(store)
    return cfg


def _open(cfg):
    from omegaconf import open_dict

    return open_dict(cfg)


def require(cfg, key: str, hint: str) -> None:
    """Fail early with a clear message when a mandatory (``???``) value is still missing."""
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg, key) if "." not in key else _missing(cfg, key):
        raise ConfigError(f"config value {key} is required: {hint}")


def _missing(cfg, dotted: str) -> bool:
    from omegaconf import OmegaConf

    parent_key, _, leaf = dotted.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key)
    return parent is None or OmegaConf.is_missing(parent, leaf)


def _has_key(cfg, dotted: str) -> bool:
    from omegaconf import DictConfig, OmegaConf

    parent_key, _, leaf = dotted.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    return isinstance(parent, DictConfig) and leaf in parent.keys()  # noqa: SIM118 (`in` skips ??? values)
