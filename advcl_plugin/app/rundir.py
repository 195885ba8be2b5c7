"""Run directories: a run's name is one path component inside ``output_dir``, and a run directory is
owned by one process at a time.

* :func:`check_run_name` refuses names that are not a single file name (separators, ``..``, ``.``,
  absolute paths, control characters), so a recipe can never write outside ``output_dir``.
* :func:`run_directory_lock` holds ``<run dir>/.advcl.lock`` (a POSIX record lock, ``lockf``, on a file
  recording the owner's pid, host, start time and command) while a command writes into the run directory.
  The lock belongs to the process, not to the processes it forks (data-loader workers of a killed run
  cannot keep it).  A second
  process is refused with a message naming the owner; a lock left by a killed process is free again
  (the operating system releases it with the process) and is taken over.  Under distributed training
  only the process of global rank 0 takes it and writes (:func:`is_global_zero_process`).

Examples:
    >>> from advcl_plugin.app.rundir import check_run_name
    >>> check_run_name("advcl-cifar10")
    'advcl-cifar10'
    >>> check_run_name("../elsewhere")
    Traceback (most recent call last):
    ...
    ValueError: name must be a single folder name inside output_dir (no '/', '\\\\', '..' or '.'), got '../elsewhere'
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from advcl_plugin.app.processes import is_global_zero_process

__all__ = [
    "LOCK_NAME",
    "RunDirectoryInUse",
    "check_run_name",
    "is_global_zero_process",
    "protocol_tag",
    "run_directory_lock",
]

LOCK_NAME = ".advcl.lock"
#: the most bytes a name may take (a file name on common file systems)
_MAX_NAME_BYTES = 255


class RunDirectoryInUse(ValueError):
    """Another process writes into this run directory."""


def check_run_name(name: Any, what: str = "name") -> str:
    """``name`` if it is one folder name (what ``<output_dir>/<name>`` may be), else a ``ValueError``.

    Refused: empty, ``.``, ``..``, anything with ``/`` or ``\\``, absolute paths, NUL and other control
    characters, and names longer than 255 bytes.
    """
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string, got {name!r}")
    if name in ("", ".", "..") or "/" in name or "\\" in name or os.sep in name or (os.altsep or "/") in name:
        raise ValueError(
            f"{what} must be a single folder name inside output_dir (no '/', '\\\\', '..' or '.'), got {name!r}"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"{what} must not hold control characters, got {name!r}")
    if len(name.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES:
        raise ValueError(f"{what} must be at most {_MAX_NAME_BYTES} bytes long, got {len(name.encode())}")
    if Path(name).is_absolute() or Path(name).name != name:
        raise ValueError(f"{what} must be a single folder name inside output_dir, got {name!r}")
    return name


def protocol_tag(protocol: str) -> str:
    """The part of a run's file names that says its protocol: ``""`` for the authors', ``"robustssl-"``..."""
    return "" if protocol == "authors" else f"{protocol}-"


#: locks this process holds: run directory -> [open lock file, depth]
_HELD: dict[Path, list[Any]] = {}


def _owner() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join(sys.argv)[:500],
    }


def _describe_owner(path: Path) -> str:
    try:
        owner = json.loads(path.read_text())
        return f"process {owner['pid']} on host {owner['host']} (since {owner['started']}: {owner['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def run_directory_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold ``<run_dir>/.advcl.lock`` for the block: refused with :class:`RunDirectoryInUse` while another
    process holds it.  Re-entrant within a process (a study holds an arm's directory while its stages
    take it again).  Processes other than global rank 0 neither take it nor wait for it.
    """
    run_dir = Path(run_dir)
    key = Path(os.path.abspath(run_dir))
    if not is_global_zero_process():
        yield run_dir
        return
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield run_dir
        finally:
            _HELD[key][1] -= 1
        return
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): the run directory is not guarded
        yield run_dir
        return
    created = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]  # innermost first
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    while True:
        handle = open(path, "a+")
        try:
            fcntl.lockf(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise RunDirectoryInUse(
                f"{run_dir} is in use by {_describe_owner(path)}. Wait for it to finish or pick another name=...; "
                f"if that process no longer runs (on another machine), delete {path}"
            ) from None
        try:
            same_file = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        handle.close()  # the previous owner removed the file as it was opened here: take the new one
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(_owner()))
    handle.flush()
    _HELD[key] = [handle, 1]
    try:
        yield run_dir
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            path.unlink()
        handle.close()
        for folder in created:  # nothing was written there: leave no empty folder behind
            try:
                folder.rmdir()
            except OSError:
                break
