"""Serving a trained encoder where other systems live (docs/serve.md).

- :mod:`seqtwins.serve.app`: ``seqtwins serve``, an HTTP JSON service (FastAPI + uvicorn)
  over one loaded run: ``/embed``, ``/users/{id}/embedding``, ``/users/{id}/explain``,
  ``/neighbors``, ``/health``, ``/info``.
- :mod:`seqtwins.serve.model`: the run loaded once (encoder, item and user id maps, the
  dataset users' embeddings) and the parsing of item id sequences.
- :mod:`seqtwins.serve.batching`: concurrent requests coalesced into one encoder call.
- :mod:`seqtwins.serve.limits`: the request limits and the JSON errors that name them.
- :mod:`seqtwins.serve.neighbors`: nearest users with FAISS (``seqtwins neighbors``, and
  ``/neighbors``).
- :mod:`seqtwins.serve.export`: ``seqtwins export --format onnx``.

FastAPI, uvicorn, orjson, ONNX and FAISS come with the ``serve`` extra and are imported only
here, when used: ``import seqtwins`` and the other commands do not need them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from seqtwins.errors import SeqtwinsError

EXTRA = 'pip install "seqtwins[serve]"'


def import_extra(module: str) -> ModuleType:
    """``importlib.import_module(module)``, or one line naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise SeqtwinsError(
            f"{module} is not installed ({e.name or module} missing); this command needs the "
            f"serve extra: {EXTRA}"
        ) from None
