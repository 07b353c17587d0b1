"""``seqtwins serve``: run the service (:mod:`seqtwins.serve.app`) under uvicorn.

With one worker the run is loaded here, once, and its app served. With ``workers > 1``
uvicorn starts that many processes; each loads the run itself (the parent checks it first,
so a bad run is one line before any process starts) from the settings this module passes
in the environment variable :data:`ENV` (JSON, no pickle).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from seqtwins.data.dataset import SequenceDataset
from seqtwins.embed import read_user_embeddings
from seqtwins.errors import SeqtwinsError
from seqtwins.run import Run, check_checkpoint
from seqtwins.serve import import_extra
from seqtwins.serve.limits import Limits

ENV = "SEQTWINS_SERVE"
"""The settings the worker processes of ``serve --workers N`` load the run from."""


def _check_port(host: str, port: int) -> None:
    """One line when ``host:port`` cannot be bound (in use, or no such address)."""
    if not 0 <= port <= 65535:
        raise SeqtwinsError(f"--port {port} must be in 0..65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise SeqtwinsError(f"--host {host!r} is not an address of this machine ({e})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise SeqtwinsError(
                f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or --host"
            ) from None


def set_threads(torch_threads: int, faiss_threads: int) -> tuple[int, int]:
    """Set the torch and FAISS (OpenMP) thread counts; returns the previous ones. For entry
    points only (the server process, each worker process)."""
    faiss = import_extra("faiss")
    previous = (torch.get_num_threads(), int(faiss.omp_get_max_threads()))
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)
    return previous


def serve(
    run_dir: Path | str,
    data_dir: Path | str,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    which: str = "best",
    verify: bool = True,
    limits: Limits | None = None,
    access_log: bool = True,
    threads: int = 1,
    embeddings: Path | str | None = None,
) -> None:
    """Serve run ``run_dir`` (trained on ``data_dir``) until interrupted.

    ``threads`` is the number of torch and FAISS threads of each server process while it
    serves (loading uses the process's default): one thread per worker leaves the other
    cores to HTTP and to the other workers, and keeps OpenMP from spinning on a busy
    machine (benchmarks/results/serve.md)."""
    import_extra("fastapi")
    import_extra("orjson")
    uvicorn = import_extra("uvicorn")
    import_extra("faiss")
    if workers < 1:
        raise SeqtwinsError(f"--workers {workers} must be at least 1")
    if threads < 1:
        raise SeqtwinsError(f"--threads {threads} must be at least 1")
    limits = limits or Limits()
    _check_port(host, port)
    options: dict[str, Any] = {"host": host, "port": port, "access_log": access_log}
    if workers == 1:
        from seqtwins.serve.app import create_app
        from seqtwins.serve.model import LoadedModel

        model = LoadedModel.load(run_dir, data_dir, which, verify, embeddings=embeddings)
        previous = set_threads(threads, threads)
        try:
            uvicorn.run(create_app(model, limits), **options)
        finally:
            set_threads(*previous)
        return
    check_checkpoint(which)
    run, ds = Run.open(run_dir), SequenceDataset.open(data_dir, verify=verify)
    run.encoder(which, ds)
    if embeddings is not None:  # a wrong file is one line here, not one per worker
        read_user_embeddings(embeddings, run, which, ds)
    # the workers skip the hash: checked here, once
    os.environ[ENV] = worker_settings(run_dir, data_dir, which, limits, threads, embeddings)
    try:
        uvicorn.run("seqtwins.serve.server:app_from_env", factory=True, workers=workers,
                    **options)  # fmt: skip
    finally:
        os.environ.pop(ENV, None)


def worker_settings(
    run_dir: Path | str,
    data_dir: Path | str,
    which: str,
    limits: Limits,
    threads: int,
    embeddings: Path | str | None = None,
) -> str:
    """The JSON that :func:`app_from_env` reads in each worker process (a checked run: the
    workers do not recompute the dataset hash)."""
    return json.dumps(
        {"run": str(Path(run_dir).resolve()), "data": str(Path(data_dir).resolve()),
         "which": which, "verify": False, "limits": asdict(limits), "threads": threads,
         "embeddings": None if embeddings is None else str(Path(embeddings).resolve())}
    )  # fmt: skip


def app_from_env() -> Any:
    """The app of one worker process of ``serve --workers N`` (uvicorn's factory)."""
    from seqtwins.serve.app import create_app
    from seqtwins.serve.model import LoadedModel

    settings = json.loads(os.environ[ENV])
    model = LoadedModel.load(settings["run"], settings["data"], settings["which"],
                             settings["verify"], embeddings=settings.get("embeddings"))  # fmt: skip
    set_threads(settings["threads"], settings["threads"])  # this worker process's own setting
    return create_app(model, Limits(**settings["limits"]))
