"""``seqtwins download``: fetch an official MovieLens archive, verify it, unpack it.

The archives come from GroupLens (``https://files.grouplens.org/datasets/movielens/
<name>.zip``), which publishes an MD5 next to each one (``<name>.zip.md5``, a line like
``MD5 (ml-1m.zip) = c4d9...``). The archive must match that published checksum and, for
the frozen releases, the MD5 pinned in :data:`KNOWN_MD5` as well. The base URL can point
to a mirror (``--base-url`` or ``$SEQTWINS_DOWNLOAD_BASE``).

The archive is streamed to a temporary file in the cache folder (``.NAME.tmp-PID-...``;
the next run removes those of a killed one) and renamed only once its
size and checksum are right, so an interrupted or corrupted download never leaves a
partial archive; unpacking goes through a temporary folder renamed at the end as well.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shlex
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from seqtwins.errors import SeqtwinsError
from seqtwins.files import atomic_file, clean_stale, temp_dir

DATASETS = ("ml-100k", "ml-1m", "ml-20m", "ml-latest-small")
"""Archives ``seqtwins download`` knows (their names on files.grouplens.org)."""
DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
"""Where GroupLens serves ``<name>.zip`` and ``<name>.zip.md5``."""
BASE_URL_ENV = "SEQTWINS_DOWNLOAD_BASE"
"""Environment variable that overrides :data:`DEFAULT_BASE_URL` (e.g. a mirror)."""
KNOWN_MD5 = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
}
"""MD5s GroupLens publishes for its frozen releases (``<name>.zip.md5``). ml-latest-small
is re-released from time to time, so it is checked against the fetched ``.md5`` only."""
CHUNK = 1 << 20
"""Bytes read per network read."""

_MD5_RE = re.compile(r"\b([0-9a-fA-F]{32})\b")


@dataclass(frozen=True)
class DownloadResult:
    """Where a downloaded dataset lies."""

    name: str
    """The dataset (``ml-1m``, ...)."""
    folder: Path
    """The unpacked MovieLens folder: the input of ``seqtwins prepare --format movielens``."""
    archive: Path
    """The verified ``.zip`` (kept so the folder can be re-created without the network)."""
    md5: str | None
    """The archive's verified MD5 (``None`` when the folder was already there)."""
    downloaded: bool
    """False when the folder already existed and nothing was fetched."""

    def prepare_command(self, out: Path | str | None = None) -> str:
        """The ``seqtwins prepare`` command line that turns :attr:`folder` into a dataset."""
        target = str(out) if out is not None else f"data/{self.name}"
        return (
            f"seqtwins prepare {shlex.quote(str(self.folder))} --format movielens "
            f"--out {shlex.quote(target)}"
        )


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/seqtwins`` (``~/.cache/seqtwins`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "seqtwins"


def _base_url(base_url: str | None) -> str:
    base = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    if not re.match(r"^(https?|file)://", base):
        raise SeqtwinsError(
            f"download base URL {base!r} must start with http://, https:// or file:// "
            f"(--base-url / ${BASE_URL_ENV})"
        )
    return base.rstrip("/")


def _network_error(url: str, e: BaseException) -> SeqtwinsError:
    """One line for a failed request: HTTP status, or the reason the host is unreachable."""
    if isinstance(e, urllib.error.HTTPError):
        return SeqtwinsError(f"{url}: HTTP {e.code} {e.reason}; check the dataset name and URL")
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    return SeqtwinsError(
        f"cannot download {url} ({reason}); check your internet connection, or point "
        f"--base-url / ${BASE_URL_ENV} at a reachable mirror"
    )


def _open(url: str, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": "seqtwins"})
    return urllib.request.urlopen(request, timeout=timeout)


def _fetch_published_md5(url: str, timeout: float) -> str | None:
    """The MD5 in the ``.md5`` file at ``url``; ``None`` when the server has none (404)."""
    try:
        with _open(url, timeout) as response:
            text = response.read(4096).decode("ascii", errors="replace")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise _network_error(url, e) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _network_error(url, e) from None
    match = _MD5_RE.search(text)
    if match is None:
        raise SeqtwinsError(f"{url} holds no MD5 checksum (got {text[:60]!r})")
    return match.group(1).lower()


def _expected_md5(name: str, md5_url: str, timeout: float) -> str:
    published = _fetch_published_md5(md5_url, timeout)
    known = KNOWN_MD5.get(name)
    if published is not None and known is not None and published != known:
        raise SeqtwinsError(
            f"{md5_url} publishes MD5 {published} but {name} is pinned to {known}; this "
            "server does not serve the official archive"
        )
    expected = published or known
    if expected is None:
        raise SeqtwinsError(
            f"{md5_url} does not exist and no checksum is pinned for {name}; refusing to "
            "use an archive that cannot be verified"
        )
    return expected


def _file_md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _progress(console: Any, description: str) -> Any:
    """A rich progress bar for a transfer (a no-op context without a console)."""
    if console is None:
        return nullcontext(None)
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn(description),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def _fetch_archive(
    url: str, dest: Path, expected_md5: str, timeout: float, console: Any = None
) -> str:
    """Stream ``url`` into ``dest`` via a temporary sibling; rename once size and MD5 match."""
    with atomic_file(dest) as tmp:  # PID-tagged: clean_stale removes it if we are killed
        return _stream(url, tmp, dest.name, expected_md5, timeout, console)


def _stream(
    url: str, tmp: Path, shown: str, expected_md5: str, timeout: float, console: Any
) -> str:
    """Write ``url`` to ``tmp``; raise unless its size and MD5 are as published."""
    h = hashlib.md5(usedforsecurity=False)
    received = 0
    total: int | None = None
    with tmp.open("wb") as out, _progress(console, shown) as bar:
        try:
            response = _open(url, timeout)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise _network_error(url, e) from None
        with response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            task: Callable[[int], None] | None = None
            if bar is not None:
                task_id = bar.add_task("download", total=total)

                def task(n: int) -> None:
                    bar.update(task_id, advance=n)

            while True:
                try:
                    block = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise SeqtwinsError(
                        f"download of {url} was interrupted after {received:,} bytes "
                        f"({e.__class__.__name__}); run the command again"
                    ) from None
                if not block:
                    break
                out.write(block)
                h.update(block)
                received += len(block)
                if task is not None:
                    task(len(block))
    if total is not None and received != total:
        raise SeqtwinsError(
            f"download of {url} was interrupted after {received:,} of {total:,} bytes; "
            "run the command again"
        )
    got = h.hexdigest()
    if got != expected_md5:
        raise SeqtwinsError(
            f"{url}: checksum mismatch (MD5 {got}, published {expected_md5}); the download "
            "is corrupt or the archive changed, so it was discarded; try again"
        )
    return got


def _unpack(archive: Path, folder: Path) -> None:
    """Extract ``archive`` into ``folder`` (atomically; its single top-level folder, if it
    has one, becomes ``folder``)."""
    work = temp_dir(folder, "work")  # PID-tagged: clean_stale removes it if we are killed
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    parts = PurePosixPath(info.filename).parts
                    if (
                        info.filename.startswith(("/", "\\"))
                        or ".." in parts
                        or (parts and ":" in parts[0])
                    ):
                        raise SeqtwinsError(
                            f"{archive} contains the unsafe path {info.filename!r}; "
                            "not unpacking it"
                        )
                zf.extractall(work)
        except zipfile.BadZipFile as e:
            raise SeqtwinsError(f"{archive} is not a valid zip archive ({e}); delete it and "
                                "run the command again") from None  # fmt: skip
        entries = [p for p in work.iterdir() if p.name != "__MACOSX"]
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else work
        if folder.exists():
            trash = temp_dir(folder, "old")
            os.replace(folder, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(root, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def download(
    name: str,
    cache_dir: Path | str | None = None,
    base_url: str | None = None,
    *,
    force: bool = False,
    timeout: float = 60.0,
    console: Any = None,
) -> DownloadResult:
    """Fetch, verify and unpack the MovieLens archive ``name`` into ``cache_dir``.

    ``cache_dir`` defaults to :func:`default_cache_dir`; ``base_url`` to
    ``$SEQTWINS_DOWNLOAD_BASE``, then :data:`DEFAULT_BASE_URL`. An existing unpacked
    folder is reused unless ``force``; an existing archive is reused when it still
    matches the published checksum. ``console`` (a rich Console) shows a progress bar.
    Raises :class:`~seqtwins.errors.SeqtwinsError` (one line) on any failure, leaving
    neither a partial archive nor a partial folder.
    """
    if name not in DATASETS:
        raise SeqtwinsError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SeqtwinsError(f"cannot create the download folder {cache} ({e.strerror})") from e
    folder, archive = cache / name, cache / f"{name}.zip"
    for path in (folder, archive):  # what a killed download left (partial archive, unpack)
        clean_stale(path)
    if folder.is_dir() and not force:
        return DownloadResult(name, folder, archive, None, downloaded=False)

    url = f"{_base_url(base_url)}/{name}.zip"
    expected = _expected_md5(name, f"{url}.md5", timeout)
    if archive.is_file() and not force and _file_md5(archive) == expected:
        md5, fetched = expected, False
    else:
        md5, fetched = _fetch_archive(url, archive, expected, timeout, console), True
    _unpack(archive, folder)
    return DownloadResult(name, folder, archive, md5, downloaded=fetched)
