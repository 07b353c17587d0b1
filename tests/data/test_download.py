"""``seqtwins download`` against a local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import hashlib
import io
import shlex
import shutil
import socket
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.data import download as dl
from seqtwins.data.dataset import SequenceDataset
from seqtwins.data.download import download
from seqtwins.errors import SeqtwinsError

NAME = "ml-100k"


def _fake_ml100k(extra: dict[str, bytes] | None = None) -> bytes:
    """A tiny archive in the official ML-100K layout (top folder ml-100k/)."""
    rows = [
        (u, i, 1 + (u * i) % 5, 880_000_000 + 1000 * u + i) for u in (1, 2, 3) for i in range(1, 7)
    ]
    u_data = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
    flags = ["|".join("1" if g == i % 19 else "0" for g in range(19)) for i in range(1, 7)]
    u_item = "".join(
        f"{i}|Movie {i} (1995)|01-Jan-1995||http://example.org/{i}|{flags[i - 1]}\n"
        for i in range(1, 7)
    )
    u_user = "1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|32067\n"
    files = {"ml-100k/u.data": u_data, "ml-100k/u.item": u_item, "ml-100k/u.user": u_user}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
        for path, data in (extra or {}).items():
            zf.writestr(path, data)
    return buf.getvalue()


ARCHIVE = _fake_ml100k()
MD5 = hashlib.md5(ARCHIVE).hexdigest()


class _Server:
    """Serves ``files`` (URL path -> bytes); paths in ``truncate`` send half the body with
    the full Content-Length and then drop the connection."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in server.truncate:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/movielens"

    def serve(self, name: str = NAME, archive: bytes = ARCHIVE, md5: str | None = MD5) -> None:
        self.files[f"/movielens/{name}.zip"] = archive
        if md5 is not None:
            self.files[f"/movielens/{name}.zip.md5"] = f"MD5 ({name}.zip) = {md5}\n".encode()

    def zip_requests(self) -> int:
        return sum(p.endswith(".zip") for p in self.requests)


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    thread = threading.Thread(target=s.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake archive is not the real ml-100k, so tests start without pinned MD5s."""
    monkeypatch.setattr(dl, "KNOWN_MD5", {})
    monkeypatch.delenv(dl.BASE_URL_ENV, raising=False)


def _refused_url() -> str:
    """A 127.0.0.1 URL whose port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/movielens"


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("."))


def _one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0, result.output
    return str(result.output)


# --- success -------------------------------------------------------------------------------


def test_download_verify_unpack_and_prepare(server, tmp_path):  # type: ignore[no-untyped-def]
    server.serve()
    cache = tmp_path / "cache"
    runner = CliRunner()
    result = runner.invoke(app, ["download", NAME, "--dir", str(cache), "--base-url", server.base])
    assert result.exit_code == 0, result.output
    assert MD5 in result.output
    folder = cache / NAME
    assert (folder / "u.data").is_file() and (folder / "u.user").is_file()
    assert (cache / f"{NAME}.zip").read_bytes() == ARCHIVE
    assert _leftovers(cache) == []

    # the printed next step works as printed
    command = next(line for line in result.output.splitlines() if "seqtwins prepare" in line)
    argv = shlex.split(command.split("next:", 1)[1])
    assert argv[:2] == ["seqtwins", "prepare"] and "--format" in argv and "movielens" in argv
    argv[argv.index("--out") + 1] = str(tmp_path / "prepared")
    prepared = runner.invoke(app, argv[1:])
    assert prepared.exit_code == 0, prepared.output
    ds = SequenceDataset.open(tmp_path / "prepared")
    assert ds.num_users == 3 and ds.num_items == 6 and ds.sequences.num_interactions == 18

    # a second call needs no network at all
    again = runner.invoke(
        app, ["download", NAME, "--dir", str(cache), "--base-url", _refused_url()]
    )
    assert again.exit_code == 0, again.output
    assert "already present" in again.output


def test_base_url_from_environment(server, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    server.serve()
    monkeypatch.setenv(dl.BASE_URL_ENV, server.base)
    result = download(NAME, tmp_path)
    assert result.downloaded and result.md5 == MD5
    assert result.folder == tmp_path / NAME and (result.folder / "u.data").is_file()
    assert server.zip_requests() == 1


def test_verified_archive_is_reused_and_force_refetches(server, tmp_path):  # type: ignore[no-untyped-def]
    server.serve()
    first = download(NAME, tmp_path, server.base)
    assert first.downloaded and server.zip_requests() == 1
    shutil.rmtree(tmp_path / NAME)  # folder gone, archive kept: unpacked again, not fetched
    again = download(NAME, tmp_path, server.base)
    assert again.md5 == MD5 and (tmp_path / NAME / "u.data").is_file()
    assert not again.downloaded and server.zip_requests() == 1
    shutil.rmtree(tmp_path / NAME)
    (tmp_path / f"{NAME}.zip").write_bytes(b"garbage")  # a stale archive is fetched again
    third = download(NAME, tmp_path, server.base)
    assert third.downloaded and server.zip_requests() == 2
    assert (tmp_path / f"{NAME}.zip").read_bytes() == ARCHIVE
    (tmp_path / NAME / "u.data").unlink()  # --force fetches and unpacks again
    forced = download(NAME, tmp_path, server.base, force=True)
    assert forced.downloaded and server.zip_requests() == 3
    assert (tmp_path / NAME / "u.data").is_file() and _leftovers(tmp_path) == []


def test_pinned_checksum(server, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    server.serve(md5=None)  # no .md5 on the server: the pinned MD5 alone decides
    monkeypatch.setattr(dl, "KNOWN_MD5", {NAME: MD5})
    assert download(NAME, tmp_path / "a", server.base).md5 == MD5

    monkeypatch.setattr(dl, "KNOWN_MD5", {})
    with pytest.raises(SeqtwinsError, match="cannot be verified"):
        download(NAME, tmp_path / "b", server.base)
    assert not (tmp_path / "b" / f"{NAME}.zip").exists()

    server.serve()  # published and pinned disagree: not the official archive
    monkeypatch.setattr(dl, "KNOWN_MD5", {NAME: "0" * 32})
    with pytest.raises(SeqtwinsError, match="pinned to 0000"):
        download(NAME, tmp_path / "c", server.base)
    assert not (tmp_path / "c" / NAME).exists()


def test_pins_are_well_formed() -> None:
    assert set(dl.KNOWN_MD5) <= set(dl.DATASETS)
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in dl.KNOWN_MD5.values())


# --- failures: one line, exit 2, nothing partial left -----------------------------------------


def test_checksum_mismatch_leaves_no_archive(server, tmp_path):  # type: ignore[no-untyped-def]
    server.serve(md5="f" * 32)
    cache = tmp_path / "cache"
    result = CliRunner().invoke(
        app, ["download", NAME, "--dir", str(cache), "--base-url", server.base]
    )
    assert "checksum mismatch" in _one_line_error(result)
    assert list(cache.iterdir()) == []


def test_connection_refused_is_one_line(tmp_path):  # type: ignore[no-untyped-def]
    cache = tmp_path / "cache"
    result = CliRunner().invoke(
        app, ["download", NAME, "--dir", str(cache), "--base-url", _refused_url()]
    )
    out = _one_line_error(result)
    assert "cannot download" in out and "internet connection" in out
    assert list(cache.iterdir()) == []


def test_interrupted_transfer_leaves_no_partial_file(server, tmp_path):  # type: ignore[no-untyped-def]
    big = _fake_ml100k({"ml-100k/padding.bin": bytes(range(256)) * 4096})  # ~1 MiB
    server.serve(archive=big, md5=hashlib.md5(big).hexdigest())
    server.truncate.add(f"/movielens/{NAME}.zip")
    cache = tmp_path / "cache"
    result = CliRunner().invoke(
        app, ["download", NAME, "--dir", str(cache), "--base-url", server.base]
    )
    assert "interrupted" in _one_line_error(result)
    assert list(cache.iterdir()) == []


def test_http_404_and_unknown_name(server, tmp_path):  # type: ignore[no-untyped-def]
    server.files[f"/movielens/{NAME}.zip.md5"] = f"MD5 ({NAME}.zip) = {MD5}\n".encode()
    runner = CliRunner()
    missing = runner.invoke(
        app, ["download", NAME, "--dir", str(tmp_path), "--base-url", server.base]
    )
    assert "HTTP 404" in _one_line_error(missing)
    unknown = runner.invoke(app, ["download", "ml-5k", "--dir", str(tmp_path)])
    assert "unknown dataset 'ml-5k'" in _one_line_error(unknown)
    assert server.zip_requests() == 1  # the unknown name never reached the network


def test_unsafe_archive_is_not_unpacked(server, tmp_path):  # type: ignore[no-untyped-def]
    evil = _fake_ml100k({"../evil.txt": b"x"})
    server.serve(archive=evil, md5=hashlib.md5(evil).hexdigest())
    cache = tmp_path / "cache"
    with pytest.raises(SeqtwinsError, match="unsafe path"):
        download(NAME, cache, server.base)
    assert not (tmp_path / "evil.txt").exists() and not (cache / NAME).exists()
    assert _leftovers(cache) == []


def test_a_killed_downloads_partial_files_are_cleaned(server, tmp_path):  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)  # fmt: skip
    partial = tmp_path / f".{NAME}.zip.tmp-{dead}-abc"
    partial.write_bytes(b"\0" * 1000)
    unpacking = tmp_path / f".{NAME}.work-{dead}-xyz"
    (unpacking / NAME).mkdir(parents=True)
    server.serve()
    result = download(NAME, tmp_path, server.base)
    assert (result.folder / "u.data").is_file()
    assert not partial.exists() and not unpacking.exists()
    assert _leftovers(tmp_path) == []
