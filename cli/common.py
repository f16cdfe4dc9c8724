"""Shared CLI plumbing: one error policy, one form for required paths, one way to pick the torch thread count.

Commands import torch and NeMo inside their bodies, so ``kdstore --help`` stays fast.
"""

from __future__ import annotations

import errno
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


# What the file system answers when a path cannot be written or read as asked: the user's to fix, so one line.
FILE_SYSTEM_ERRNOS = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                      errno.EPERM: "operation not permitted", errno.ENOSPC: "no space left on the device",
                      errno.EDQUOT: "disk quota exceeded", errno.ENOTDIR: "a part of the path is a file, not a folder",
                      errno.EISDIR: "it is a folder, not a file", errno.ENAMETOOLONG: "the name is too long"}


def file_system_message(err: OSError) -> str | None:
    """One line for an ``OSError`` the file system raised (read-only, permissions, full disk...), or None
    for any other error (a bug: it keeps its traceback)."""
    if err.errno not in FILE_SYSTEM_ERRNOS:
        return None
    where = f" {err.filename}" if err.filename else ""
    return (f"cannot write or read{where}: {FILE_SYSTEM_ERRNOS[err.errno]} ([Errno {err.errno}] {err.strerror}); "
            "choose a writable path with free space, or fix the permissions, and run again")


def friendly_errors(func: F) -> F:
    """Turn ``KdstoreError`` and file-system ``OSError`` (:func:`file_system_message`) into a one-line
    ``ClickException`` unless ``--debug`` was given."""

    @functools.wraps(func)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KdstoreError as err:
            if debug or os.environ.get("KDSTORE_DEBUG"):
                raise
            raise click.ClickException(str(err)) from None
        except OSError as err:
            message = file_system_message(err)
            if message is None or debug or os.environ.get("KDSTORE_DEBUG"):
                raise
            raise click.ClickException(message) from None

    return debug_option(wrapper)  # type: ignore[return-value]


def required_path(name: str, help: str, *, positional: bool = False, **path: Any) -> Callable[[F], F]:
    """``--NAME PATH``, required: the one form every verb gives its required inputs and outputs.

    ``path`` goes to ``click.Path`` (``exists=True``, ``dir_okay=False``, ...). ``positional=True``
    also accepts the path as a bare argument, for the verbs design.md section 7 shows positionally
    (``kdstore inspect S.zarr``, ``kdstore prepare-demo OUT``); giving both forms, differently, or
    neither is a usage error. See docs/decisions.md, "CLI".
    """
    flag = "--" + name.replace("_", "-")
    path_type = click.Path(**path)
    if not positional:
        return click.option(flag, name, type=path_type, required=True, help=help)
    alias = f"{name}_positional"

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given, named = kwargs.pop(alias), kwargs[name]
            if given is not None and named is not None and given != named:
                raise click.UsageError(f"{name.upper()} given twice ({flag} {named} and {given}); give it once")
            if given is None and named is None:
                raise click.UsageError(f"Missing option '{flag}' (or {name.upper()} as an argument).")
            kwargs[name] = named if named is not None else given
            return func(*args, **kwargs)

        argument = click.argument(alias, metavar=f"[{name.upper()}]", required=False, type=path_type)
        option = click.option(flag, name, type=path_type, default=None,
                              help=f"{help} Required; may also be given as the argument {name.upper()}.")
        return option(argument(wrapper))  # type: ignore[return-value]

    return decorate


def progress_option(func: F) -> F:
    """``--progress/--no-progress``: whether the library draws progress bars (on stderr)."""
    return click.option("--progress/--no-progress", default=True, show_default=True,
                        help="Progress bars on stderr.")(func)


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
