"""Pseudonymous user ids: keyed hashes (HMAC-SHA256) whose key lives in a salt file.

The same key and raw id always give the same pseudonym, so datasets prepared with one salt
file can be joined on user id; without the key a pseudonym cannot be linked back to a raw id
by hashing guessed ids (which a plain, unkeyed hash would allow for small integer ids).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from seqtwins.errors import SeqtwinsError

KEY_BYTES = 32
"""Length of a generated key (256 bits, the HMAC-SHA256 block-size guidance of RFC 2104)."""


def load_or_create_key(salt_file: Path) -> bytes:
    """The key stored in ``salt_file``; a new random key is written (mode 0600) if absent.

    The file holds the key as hex text; any non-empty content is accepted as the key.
    """
    salt_file = Path(salt_file)
    if not salt_file.exists():
        salt_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(salt_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise SeqtwinsError(f"cannot create --salt-file {salt_file} ({e.strerror})") from e
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(KEY_BYTES) + "\n")
    if not salt_file.is_file():
        raise SeqtwinsError(f"--salt-file {salt_file} is not a file")
    try:
        key = salt_file.read_bytes().strip()
    except OSError as e:
        raise SeqtwinsError(f"cannot read --salt-file {salt_file} ({e.strerror})") from e
    if not key:
        raise SeqtwinsError(
            f"--salt-file {salt_file} is empty; delete it to have a new key created"
        )
    return key


def pseudonym(raw_id: str, key: bytes) -> str:
    """HMAC-SHA256 of ``raw_id`` (UTF-8) under ``key``, as 64 hex characters."""
    return hmac.new(key, raw_id.encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonymize(raw_ids: Iterable[str], key: bytes) -> list[str]:
    """Pseudonyms of ``raw_ids`` in order (one HMAC per distinct user, not per interaction)."""
    return [pseudonym(r, key) for r in raw_ids]
