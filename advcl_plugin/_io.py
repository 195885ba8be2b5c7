"""The package's file I/O in one place: every file is written atomically, records that are damaged
name themselves, and weights are read as data and checked before anything uses them.

* :func:`atomic_write` (and its ``_text`` / ``_json`` / ``torch_save`` / ``savez`` forms) writes to a
  temporary file beside the target and renames it over the target only when it is complete, so a
  process killed while writing (SIGKILL, OOM, power cut) or a full disk never leaves a half-written
  file: the previous version stays as it was.  A full disk becomes one :class:`DiskFullError` that
  names the path.
* :func:`read_json` reads a JSON record; a damaged one raises :class:`DamagedFileError` naming the
  file and what to do.
* :func:`read_weights` reads a checkpoint or state dict with ``torch.load(weights_only=True)`` and
  no fallback; :func:`check_weights` refuses tensors that are NaN or infinite, of a dtype no
  network holds, or a batch-norm variance below zero.

Examples:
    >>> import tempfile, pathlib
    >>> from advcl_plugin._io import atomic_write_json, read_json
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> path = atomic_write_json(folder / "run.json", {"epochs": 2})
    >>> read_json(path)
    {'epochs': 2}
    >>> _ = (folder / "run.json").write_text('{"epochs": ')      # what a killed plain write leaves
    >>> read_json(folder / "run.json", remedy="delete it to redo the stage")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    advcl_plugin._io.DamagedFileError: .../run.json is damaged: not valid JSON ...; delete it to redo the stage
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import secrets
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = [
    "DISK_FULL_ERRNOS",
    "WRITE_LOG_ENV",
    "DamagedFileError",
    "DiskFullError",
    "atomic_savez",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "check_weights",
    "disk_full_message",
    "is_disk_full",
    "read_json",
    "read_weights",
]

#: errno values of a full disk or an exhausted quota
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: floating dtypes a network's weights may have
_WEIGHT_DTYPES = ("float16", "bfloat16", "float32", "float64")


class DiskFullError(OSError):
    """No space was left on the device while writing ``filename``; nothing written before was changed."""


class DamagedFileError(ValueError):
    """A file of ours (a JSON record, a checkpoint) cannot be read: it was not written completely or was changed."""


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is an ``OSError`` of a full disk or quota (``ENOSPC``, ``EDQUOT``)."""
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def disk_full_message(path: str | os.PathLike | None) -> str:
    """The one message a full disk gets: the path, that nothing was damaged, and how to continue."""
    where = f" while writing {path}" if path else ""
    return (
        f"no space left on the device{where}. Nothing already written was changed (files are replaced only "
        "when complete): free some space and run the same command again to continue where it stopped"
    )


def _sync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every platform opens directories)."""
    with contextlib.suppress(OSError):
        handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], durable: bool = True) -> Path:
    """Write ``path`` through ``write(handle)`` into a temporary file beside it, then rename it over ``path``.

    Until the rename, readers see the previous version (or no file); a failure removes the temporary
    file and leaves ``path`` untouched.  ``durable`` also flushes the file and the directory to the disk
    (power-cut safe); without it the write is still atomic for other processes.

    Raises:
        DiskFullError: the device or quota is full (the message names ``path``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if is_disk_full(error):
            raise DiskFullError(getattr(error, "errno", None), disk_full_message(path), str(path)) from None
        raise
    if durable:
        _sync_directory(path.parent)
    _audit(path)
    return path


#: environment variable naming a file to which every write is appended as ``<pid> <path>`` (an audit trail:
#: which process wrote what, e.g. to check that a DDP run writes each file once)
WRITE_LOG_ENV = "ADVCL_WRITE_LOG"


def _audit(path: Path) -> None:
    log = os.environ.get(WRITE_LOG_ENV)
    if log:
        descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            os.write(descriptor, f"{os.getpid()} {os.path.abspath(path)}\n".encode())
        finally:
            os.close(descriptor)


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), durable)


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def atomic_torch_save(payload: Any, path: str | os.PathLike) -> Path:
    """``torch.save(payload)`` to ``path`` atomically."""
    import torch

    return atomic_write(path, lambda handle: torch.save(payload, handle))


def atomic_savez(path: str | os.PathLike, **arrays: Any) -> Path:
    """``numpy.savez`` of ``arrays`` to ``path`` atomically (the name is kept as given: no ``.npz`` appended)."""
    import numpy as np

    return atomic_write(path, lambda handle: np.savez(handle, **arrays))


def read_json(path: str | os.PathLike, remedy: str = "") -> Any:
    """A JSON record; a damaged one raises :class:`DamagedFileError` naming the file and ``remedy``."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DamagedFileError(
            f"{path} is damaged: not valid JSON ({error}). It was not written completely (a process killed while "
            f"writing it with an earlier version, a full disk) or was edited" + (f"; {remedy}" if remedy else "")
        ) from None


def read_weights(path: str | os.PathLike) -> Any:
    """Read a checkpoint or state dict as data (``weights_only=True``, no fallback), on the CPU.

    A missing, empty, truncated or pickle-bearing file gets one clear error naming it.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise DamagedFileError(f"{path} is empty (0 bytes): it was not written completely")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} holds Python objects that are not plain tensors and numbers, which advcl-plugin refuses to "
            f"load (a checkpoint can run code when unpickled): {str(error).splitlines()[0]}"
        ) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError) as error:
        raise DamagedFileError(f"{path} is not a readable PyTorch file (truncated or corrupt?): {error}") from None


def check_weights(state: Mapping[str, Any], source: str | os.PathLike) -> None:
    """Refuse weights no network should compute with: NaN or infinite values, a dtype that is not a float or
    integer type a network holds (complex, bool ...), or a negative batch-norm variance.

    ``source`` names the file (or object) in the message.
    """
    import torch

    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        if value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{source}: {key} is a {value.dtype} tensor; network weights are real numbers")
        if not value.is_floating_point():
            continue
        if str(value.dtype).removeprefix("torch.") not in _WEIGHT_DTYPES:
            raise ValueError(f"{source}: {key} has dtype {value.dtype}; weights are one of {list(_WEIGHT_DTYPES)}")
        finite = torch.isfinite(value)
        if not bool(finite.all()):
            raise ValueError(
                f"{source}: {key} holds {int((~finite).sum())} NaN or infinite value(s) of {value.numel()}: "
                "refusing weights that would compute NaN (or silently zero a channel)"
            )
        if key.endswith("running_var") and bool((value < 0).any()):
            raise ValueError(f"{source}: {key} holds negative variances: refusing a batch norm that would compute NaN")
