"""What one request may ask of the service, and the JSON errors that name a broken limit.

Every error the service answers is ``{"error": "<one line>"}`` with a 4xx status; a broken
limit adds ``"limit": "<name>"`` and ``"value"`` (the limit's value), so a client can
split its batch or trim its sequences without reading the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limits:
    """Request limits of ``seqtwins serve`` (a request over one is answered 413 or 422)."""

    max_body_bytes: int = 4 << 20
    """Largest request body in bytes (413): 4 MiB holds 256 sequences of 1,000 long ids."""
    max_batch: int = 256
    """Most sequences in one ``/embed`` request (422). Bigger batches belong to the
    offline ``seqtwins embed``."""
    max_sequence_length: int = 1000
    """Most item ids in one sequence (422). Only the most recent ``encoder.max_len`` known
    items are encoded; the rest of a long sequence is parsed and dropped."""
    max_k: int = 1000
    """Most neighbours one ``/neighbors`` request may ask for (422)."""
    batch_rows: int = 0
    """Most sequences the server coalesces into one encoder call (a speed setting); 0 (the
    default): ``max(512, max_batch)``, so one largest request always fits one call."""

    def __post_init__(self) -> None:
        if self.batch_rows == 0 and isinstance(self.max_batch, int):
            object.__setattr__(self, "batch_rows", max(512, self.max_batch))
        for name in ("max_body_bytes", "max_batch", "max_sequence_length", "max_k", "batch_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.batch_rows < self.max_batch:
            raise ValueError(f"batch_rows={self.batch_rows} must be >= max_batch={self.max_batch}")

    def as_dict(self) -> dict[str, int]:
        return {
            "max_body_bytes": self.max_body_bytes,
            "max_batch": self.max_batch,
            "max_sequence_length": self.max_sequence_length,
            "max_k": self.max_k,
        }


class ApiError(Exception):
    """A bad request: answered ``status`` with ``{"error": message[, "limit", "value"]}``."""

    def __init__(
        self, status: int, message: str, limit: str | None = None, value: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.limit = limit
        self.value = value

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message}
        if self.limit is not None:
            out["limit"] = self.limit
            out["value"] = self.value
        return out


def over_limit(limits: Limits, name: str, got: int, what: str, status: int = 422) -> ApiError:
    """The error for ``got`` over limit ``name`` of ``limits``."""
    value = int(getattr(limits, name))
    return ApiError(
        status, f"{what} is {got}, over the limit {name}={value}; split or trim the request",
        limit=name, value=value,
    )  # fmt: skip
