"""Request bodies of the service: bounded reading, JSON parsing, type and limit checks.

Every problem is an :class:`~seqtwins.serve.limits.ApiError` whose message names the
field (``sequences[3][7]``) and what is expected; nothing here lets a Python exception
reach the client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from seqtwins.serve.limits import ApiError, Limits, over_limit
from seqtwins.serve.model import ItemId


async def read_body(
    chunks: AsyncIterator[bytes], content_length: str | None, limits: Limits
) -> bytes:
    """The request body, refused (413) as soon as it passes ``limits.max_body_bytes``
    (a declared Content-Length over the limit is refused before reading)."""
    declared = content_length or ""
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise over_limit(limits, "max_body_bytes", int(declared), "the body size in bytes", 413)
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise over_limit(limits, "max_body_bytes", size, "the body size in bytes (so far)", 413)
        parts.append(chunk)
    return b"".join(parts)


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body`` (400 when it is not JSON)."""
    if not body.strip():
        raise ApiError(400, "the body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except ValueError as e:  # orjson.JSONDecodeError: bad syntax, bad UTF-8, too deep
        reason = getattr(e, "msg", None) or type(e).__name__
        raise ApiError(400, f"the body is not valid JSON ({reason})") from None


def _object(payload: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ApiError(422, f"the body must be a JSON object, not {_kind(payload)}")
    extra = sorted(set(payload) - allowed)
    if extra:
        raise ApiError(422, f"unknown field {extra[0]!r}; expected {', '.join(sorted(allowed))}")
    return payload


def _kind(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) >= 2**63:
        # orjson reads an integer past 64 bits as a number
        return "an integer past 64 bits (send such ids as strings)"
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def _item_ids(value: Any, where: str, limits: Limits) -> list[ItemId]:
    """A list of item ids (JSON strings or integers)."""
    if not isinstance(value, list):
        raise ApiError(422, f"{where} must be an array of item ids, not {_kind(value)}")
    if len(value) > limits.max_sequence_length:
        raise over_limit(limits, "max_sequence_length", len(value), f"the length of {where}")
    for j, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise ApiError(
                422, f"{where}[{j}] must be an item id (string or integer), not {_kind(item)}"
            )
    return value


def parse_embed(payload: Any, limits: Limits) -> list[list[ItemId]]:
    """``{"sequences": [[item id, ...], ...]}`` -> the sequences."""
    body = _object(payload, {"sequences"})
    if "sequences" not in body:
        raise ApiError(422, "missing field 'sequences' (an array of arrays of item ids)")
    seqs = body["sequences"]
    if not isinstance(seqs, list):
        raise ApiError(422, f"'sequences' must be an array of arrays, not {_kind(seqs)}")
    if len(seqs) > limits.max_batch:
        raise over_limit(limits, "max_batch", len(seqs), "the number of sequences")
    return [_item_ids(s, f"sequences[{i}]", limits) for i, s in enumerate(seqs)]


@dataclass
class NeighborQuery:
    """A ``/neighbors`` request: a dataset user or a fresh sequence of items."""

    k: int
    user: str | None = None
    items: list[ItemId] | None = None


def parse_neighbors(payload: Any, limits: Limits) -> NeighborQuery:
    """``{"user": id, "k": 20}`` or ``{"items": [item id, ...], "k": 20}``."""
    body = _object(payload, {"user", "items", "k"})
    k = body.get("k", 20)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ApiError(422, f"'k' must be a positive integer, not {json.dumps(k)[:40]}")
    if k > limits.max_k:
        raise over_limit(limits, "max_k", k, "'k'")
    if ("user" in body) == ("items" in body):
        raise ApiError(422, "give exactly one of 'user' (a dataset user id) or 'items'")
    if "user" in body:
        user = body["user"]
        if isinstance(user, bool) or not isinstance(user, str | int):
            raise ApiError(422, f"'user' must be a user id (string or integer), not {_kind(user)}")
        return NeighborQuery(k, user=str(user))
    return NeighborQuery(k, items=_item_ids(body["items"], "'items'", limits))
