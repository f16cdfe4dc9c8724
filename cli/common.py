"""Shared CLI plumbing: one error policy and one way to pick the torch thread count.

Commands import torch and NeMo inside their bodies, so ``kdstore --help`` stays fast.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from kdstore.errors import KdstoreError

F = TypeVar("F", bound=Callable[..., Any])


def debug_option(func: F) -> F:
    """``--debug``: show the full traceback instead of a one-line error."""
    return click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")(func)


def friendly_errors(func: F) -> F:
    """Turn ``KdstoreError`` into a one-line ``ClickException`` unless ``--debug`` was given."""

    @functools.wraps(func)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KdstoreError as err:
            if debug or os.environ.get("KDSTORE_DEBUG"):
                raise
            raise click.ClickException(str(err)) from None

    return debug_option(wrapper)  # type: ignore[return-value]


def set_threads(num_threads: int | None) -> None:
    """Pin torch's intra-op threads; one thread per job is fastest on small CPUs (field notes)."""
    if num_threads:
        import torch

        torch.set_num_threads(num_threads)


def quiet_nemo() -> None:
    """Silence NeMo's INFO/WARNING chatter so progress bars and results stay readable."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    try:
        from nemo.utils import logging as nemo_logging

        nemo_logging.setLevel(logging.ERROR)
    except ImportError:  # pragma: no cover - NeMo is a hard dependency, but --help must never fail
        pass
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
