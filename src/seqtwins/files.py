"""Everything seqtwins writes goes through here: atomic writes, ownership, locks.

- :func:`atomic_file` / :func:`atomic_write` / :func:`atomic_dir`: an output appears whole
  or not at all (a temporary sibling, then ``os.replace``). Temporary names carry the
  writer's pid and a tag of its host (``.NAME.tmp-PID.HOST-xxxx``), so two writers never
  share one, and :func:`clean_stale` removes those whose process is gone (a killed
  ``prepare`` or ``embed``) -- only its own host's: on a shared filesystem another host's
  pid means nothing here.
- Ownership: seqtwins never replaces or deletes a file or folder it did not write.
  A folder it wrote holds a marker file :data:`MARKER` (``{"kind": ...}``); callers pass
  an ``owned`` predicate for outputs identified by their content instead (a dataset's
  ``meta.json``, an embeddings file's Parquet metadata). :func:`check_replaceable` is
  the one gate before any overwrite.
- :class:`Lock`: an exclusive, non-blocking ``flock`` per run folder or output file; the
  kernel releases it when the process dies (``kill -9`` leaves no stale lock).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from seqtwins.errors import SeqtwinsError

MARKER = ".seqtwins.json"
"""Marker file inside every folder seqtwins writes: ``{"kind": "dataset" | "run" | ...}``."""
_TEMP_TAGS = ("tmp", "old", "work")
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
"""Tag of this host in temporary names."""


# --- ownership ------------------------------------------------------------------------------


def write_marker(folder: Path, kind: str) -> None:
    """Mark ``folder`` as a seqtwins output of ``kind`` (call inside an atomic folder)."""
    (Path(folder) / MARKER).write_text(json.dumps({"kind": kind}) + "\n")


def marker_kind(folder: Path) -> str | None:
    """The kind recorded by :func:`write_marker` in ``folder``, or None."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def check_replaceable(
    path: Path, what: str, owned: Callable[[Path], bool] | None = None, kinds: tuple[str, ...] = ()
) -> None:
    """Raise unless ``path`` is absent, an empty folder, or a seqtwins output we may replace.

    A folder is ours when its marker names one of ``kinds`` or ``owned(path)`` is true; a
    file when ``owned(path)`` is true. ``what`` names the option in the message
    (``--out``)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        if not any(path.iterdir()):
            return
        if (marker_kind(path) in kinds) or (owned is not None and owned(path)):
            return
        raise SeqtwinsError(
            f"{what} {path} is a folder that seqtwins did not write; it is left untouched. "
            "Choose another path or remove it yourself"
        )
    if owned is not None and owned(path):
        return
    raise SeqtwinsError(
        f"{what} {path} exists and was not written by seqtwins; it is left untouched. "
        "Choose another path or remove it yourself"
    )


# --- temporary names ------------------------------------------------------------------------


def _temp_prefix(path: Path, tag: str) -> str:
    return f".{path.name}.{tag}-{os.getpid()}.{_HOST}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's live process
        return True
    return True


def clean_stale(path: Path) -> list[Path]:
    """Remove the temporary siblings of ``path`` (``.NAME.tmp-PID-*``, ``.old-``,
    ``.work-``) left by a seqtwins process that no longer runs; return what was removed."""
    path = Path(path)
    removed: list[Path] = []
    parent = path.parent
    if not parent.is_dir():
        return removed
    for tag in _TEMP_TAGS:
        start = f".{path.name}.{tag}-"
        for entry in parent.glob(glob.escape(start) + "*"):
            # PID.HOST (PID alone: a name from before host tags, taken as this host's)
            pid_text, _, host = entry.name[len(start) :].split("-", 1)[0].partition(".")
            if (host and host != _HOST) or not pid_text.isdigit() or _pid_alive(int(pid_text)):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def temp_dir(path: Path, tag: str = "work", base: Path | None = None) -> Path:
    """A new hidden scratch folder named after ``path`` (in ``base`` or beside ``path``),
    recognisable by :func:`clean_stale` once its process is gone."""
    path = Path(path)
    parent = Path(base) if base is not None else path.parent
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=_temp_prefix(path, tag), dir=parent))


# --- atomic writes --------------------------------------------------------------------------


@contextmanager
def atomic_file(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it replaces ``path``.

    On any exception the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(path, "tmp"), dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp makes it owner-only; give it a normal file's mode
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path | str, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    path = Path(path)
    with atomic_file(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return path


def write_json(path: Path | str, data: Any, indent: int | None = 2) -> Path:
    """``data`` as JSON (NaN and infinities refused), written atomically."""
    return atomic_write(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")


@contextmanager
def atomic_dir(out: Path | str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``out``; on success it replaces ``out``.

    On any exception the temporary folder is removed and ``out`` is untouched. Callers
    check with :func:`check_replaceable` that an existing ``out`` is theirs to replace."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise SeqtwinsError(f"{out} already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out, "tmp")
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it owner-only; give it a normal dir's mode
    try:
        yield tmp
        if out.exists():
            trash = temp_dir(out, "old")
            os.replace(out, trash / "old")
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- locks ----------------------------------------------------------------------------------


class Lock:
    """An exclusive, non-blocking lock on ``file`` (created if needed), held until
    :meth:`release` or process exit. ``what`` names the locked thing in the error.

    With ``remove=True`` the lock file is deleted on release (for sibling lock files of an
    output file); acquiring re-checks that the locked file is still the one on disk.
    Folders made to hold the lock file are removed again on release when they are empty
    (the locked work failed before writing anything: nothing is left behind)."""

    def __init__(self, file: Path | str, what: str, remove: bool = False) -> None:
        self.file, self.what, self.remove = Path(file), what, remove
        self._fh: IO[str] | None = None
        self._made: list[Path] = []

    def acquire(self) -> Lock:
        parent = self.file.absolute().parent
        self._made = [p for p in (parent, *parent.parents) if not p.exists()]  # deepest first
        while True:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fh = self.file.open("a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                fh.close()
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    raise SeqtwinsError(
                        f"{self.what} is in use by another seqtwins process; wait for it to "
                        "finish or choose another path"
                    ) from None
                raise
            try:  # the file may have been removed by its previous holder meanwhile
                same = os.fstat(fh.fileno()).st_ino == os.stat(self.file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fh = fh
                return self
            fh.close()

    def release(self) -> None:
        if self._fh is None:
            return
        if self.remove:
            self.file.unlink(missing_ok=True)
        self._fh.close()  # closing the file releases the flock
        self._fh = None
        for folder in self._made:
            try:
                folder.rmdir()  # only an empty one: the work filled the folders it used
            except OSError:
                break

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def file_lock(path: Path | str) -> Lock:
    """The lock that guards writing the output file ``path`` (a hidden sibling)."""
    path = Path(path)
    return Lock(path.parent / f".{path.name}.lock", f"output {path}", remove=True)
