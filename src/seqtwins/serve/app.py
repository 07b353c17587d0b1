"""The HTTP JSON service (FastAPI), built from a :class:`~seqtwins.serve.model.LoadedModel`.

Endpoints (request and response examples: docs/serve.md)::

    POST /embed                  {"sequences": [[item id, ...], ...]} -> embeddings
    GET  /users/{id}/embedding   a dataset user's embedding (as `seqtwins embed` writes it)
    GET  /users/{id}/explain     why: what `seqtwins explain --json` prints (?task=&k=&items=)
    POST /neighbors              {"user": id, "k": 20} or {"items": [...], "k": 20}
    GET  /health                 {"status": "ok"}
    GET  /info                   run, checkpoint, data hash, dim, objective, item count, ...

Every error is a JSON object ``{"error": "..."}`` with a 4xx status (a broken limit also
names it: ``"limit"``, ``"value"``); an unexpected failure is a 500 whose body says only
that, while the traceback goes to the server log, never to the client.

This module imports FastAPI: import it only after
:func:`seqtwins.serve.import_extra` (``seqtwins.serve.server`` does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from seqtwins.errors import SeqtwinsError
from seqtwins.serve.batching import MicroBatcher
from seqtwins.serve.limits import ApiError, Limits, over_limit
from seqtwins.serve.model import LoadedModel
from seqtwins.serve.neighbors import neighbors_of_row
from seqtwins.serve.requests import parse_embed, parse_json, parse_neighbors, read_body

log = logging.getLogger("seqtwins.serve")


class JSONResponse(Response):
    """A JSON response encoded by orjson: NumPy arrays (embeddings) are written straight
    from their buffers, float32 as the shortest text that reads back to the same float32.
    Half of an ``/embed`` request's time went to the standard library's encoder."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def create_app(model: LoadedModel, limits: Limits | None = None) -> FastAPI:
    """The service over ``model``; the encoder's batching worker runs while it is served."""
    limits = limits or Limits()
    batcher = MicroBatcher(model.embed, limits.batch_rows)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="seqtwins", summary="User embeddings and nearest users of a trained run",
        lifespan=lifespan,
    )  # fmt: skip
    app.state.model, app.state.limits, app.state.batcher = model, limits, batcher
    app.state.explain_lock = asyncio.Lock()
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)
    app.add_api_route("/embed", embed, methods=["POST"])
    app.add_api_route("/users/{user_id:path}/embedding", user_embedding, methods=["GET"])
    app.add_api_route("/users/{user_id:path}/explain", user_explanation, methods=["GET"])
    app.add_api_route("/neighbors", neighbors, methods=["POST"])
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/info", info, methods=["GET"])
    return app


# --- errors -----------------------------------------------------------------------------


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(x) for x in first.get("loc", ()))
    return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"}, status_code=422)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal server error; see the server log"}, status_code=500)


# --- endpoints ------------------------------------------------------------------------------


def _state(request: Request) -> tuple[LoadedModel, Limits, MicroBatcher]:
    s = request.app.state
    return s.model, s.limits, s.batcher


async def _payload(request: Request, limits: Limits) -> Any:
    body = await read_body(request.stream(), request.headers.get("content-length"), limits)
    return parse_json(body)


async def embed(request: Request) -> JSONResponse:
    """``{"sequences": [[...], ...]}`` -> ``{"dim", "embeddings", "unknown_items",
    "skipped"}``: row i's embedding (null for a row without any known item), the ids of
    row i the dataset does not know, and the rows that got no embedding."""
    model, limits, batcher = _state(request)
    payload = await _payload(request, limits)
    # validating and mapping a large body is CPU work: off the event loop
    sequences = await run_in_threadpool(parse_embed, payload, limits)
    mapped = await run_in_threadpool(model.map_sequences, sequences)
    skipped = set(mapped.empty)
    rows = [i for i in range(len(sequences)) if i not in skipped]
    embeddings: list[np.ndarray | None] = [None] * len(sequences)
    if rows:
        vectors = await batcher.submit([mapped.sequences[i] for i in rows])  # (R, D)
        for i, v in zip(rows, vectors, strict=True):
            embeddings[i] = v
    return JSONResponse(
        {
            "dim": model.dim,
            "embeddings": embeddings,
            "unknown_items": mapped.unknown,
            "skipped": mapped.empty,
        }  # fmt: skip
    )


def _user_row(model: LoadedModel, user: str) -> int:
    row = model.user_row(user)
    if row is None:
        raise ApiError(404, f"user {user!r} is not in the dataset ({len(model.user_ids)} users)")
    return row


async def user_embedding(request: Request, user_id: str) -> JSONResponse:
    """A dataset user's embedding: ``{"user", "split", "embedding"}``."""
    model, _, _ = _state(request)
    row = _user_row(model, user_id)
    return JSONResponse(
        {
            "user": user_id,
            "split": model.splits[row],
            "embedding": model.user_vectors[row],
        }  # fmt: skip
    )


async def user_explanation(
    request: Request, user_id: str, task: str | None = None, k: int = 10,
    items: bool | None = None,
) -> JSONResponse:  # fmt: skip
    """Why a dataset user's embedding is what it is: the JSON of ``seqtwins explain --json``
    (schema ``seqtwins.explain/1``; ``run`` and ``dataset`` are names, not server paths).
    Query: ``task`` (also explain that task's probe), ``k`` (nearest users / items, 10),
    ``items`` (true: nearest items required, false: left out; default: where the run has
    an item tower)."""
    model, limits, _ = _state(request)
    _user_row(model, user_id)
    if k < 1:
        raise ApiError(422, f"'k' must be a positive integer, not {k}")
    if k > limits.max_k:
        raise over_limit(limits, "max_k", k, "'k'")
    # one explanation at a time (the explainer's encoder is hooked while it runs): the others
    # wait here, on the event loop, not in the worker threads /embed and /neighbors need
    async with request.app.state.explain_lock:
        body = await run_in_threadpool(_explain, model, user_id, task, k, items)
    return JSONResponse(body)


def _explain(
    model: LoadedModel, user: str, task: str | None, k: int, items: bool | None
) -> dict[str, Any]:
    """The explanation's JSON (in a worker thread: loading the explainer on the first
    request, the attributions, a task's probe on its first request are CPU work)."""
    from seqtwins.evaluate.tasks import available_tasks
    from seqtwins.explain.attribution import captum

    if task is not None and task not in (tasks := available_tasks(model.ds)):
        raise ApiError(422, f"unknown task {task!r}; this dataset's tasks are: {', '.join(tasks)}")
    objective = model.run.config.objective
    try:
        captum()
    except SeqtwinsError as e:
        raise ApiError(501, str(e)) from None
    try:
        explainer = model.explainer()
    except SeqtwinsError as e:  # the checkpoint or dataset went away since the start
        raise ApiError(503, f"cannot load the explainer: {_no_paths(model, str(e))}") from None
    if items and explainer.tower is None:
        raise ApiError(
            422, f"the run (objective {objective}) has no item vectors, so it has no nearest "
            "items; drop items=true",
        )  # fmt: skip
    try:
        ex = explainer.explain(user, task, k, items, threads=None)  # the server's threads
    except SeqtwinsError as e:
        raise ApiError(422, _no_paths(model, str(e))) from None
    return {**ex.to_dict(), "run": model.run.path.resolve().name, "dataset": _data_name(model)}


def _data_name(model: LoadedModel) -> str:
    return model.ds.path.resolve().name


def _no_paths(model: LoadedModel, message: str) -> str:
    """``message`` with the server's run and dataset paths replaced by their names."""
    for path, name in ((model.ds.path, _data_name(model)),
                       (model.run.path, model.run.path.resolve().name)):  # fmt: skip
        for form in sorted({str(path.resolve()), str(path)}, key=len, reverse=True):
            message = message.replace(form, name)
    return message


async def neighbors(request: Request) -> JSONResponse:
    """The ``k`` dataset users nearest (cosine) to a dataset user (itself excluded) or to
    a fresh sequence of items: ``{"neighbors": [{"user", "score"}, ...], "index"}``."""
    model, limits, batcher = _state(request)
    query = parse_neighbors(await _payload(request, limits), limits)
    extra: dict[str, Any] = {}
    if query.user is not None:
        row = _user_row(model, query.user)
        found = await run_in_threadpool(
            neighbors_of_row, model.index, model.user_vectors, row, query.k
        )
    else:
        mapped = await run_in_threadpool(model.map_sequences, [query.items or []])
        extra["unknown_items"] = mapped.unknown[0]
        if mapped.empty:
            raise ApiError(422, "'items' holds no item known to the dataset")
        vector = await batcher.submit(mapped.sequences)  # (1, D)
        scores, rows = await run_in_threadpool(model.index.search, vector, query.k)
        found = [(int(r), float(s)) for r, s in zip(rows[0], scores[0], strict=True) if r >= 0]
    out = [{"user": model.user_ids[r], "score": s} for r, s in found]
    return JSONResponse({"neighbors": out, "index": model.index.kind, **extra})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def info(request: Request) -> JSONResponse:
    """The run, its dataset, the index, the limits and the batching counters."""
    model, limits, batcher = _state(request)
    stats = batcher.stats
    batching = {"requests": stats.requests, "encoder_calls": stats.calls, "rows": stats.rows,
                "largest_call": stats.largest, "queued": batcher.queued}  # fmt: skip
    return JSONResponse({**model.info(), "limits": limits.as_dict(), "batching": batching})
