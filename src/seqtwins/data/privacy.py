"""Pseudonymous user ids: keyed hashes (HMAC-SHA256) under a secret key.

The same key and raw id always give the same pseudonym, so datasets prepared with one key
can be joined on user id (and a dataset can be updated incrementally); without the key a
pseudonym cannot be linked back to a raw id by hashing guessed ids (which a plain, unkeyed
hash would allow for small integer ids).

Where the key comes from (:func:`pseudonym_key`), first match wins:

1. ``key_file`` (``--key-file F``): the file's content, stripped; the file must exist;
2. ``salt_file`` (``--salt-file F``, the older option): the same, but a random key is
   written there (mode 0600) when the file does not exist;
3. the environment variable :data:`KEY_ENV` (``SEQTWINS_PSEUDONYM_KEY``).

The key is never written to any output. A dataset records only :func:`key_id`, a short
keyed digest of the key (not the key; but anyone can test a guessed key against it,
hence keys of at least :data:`MIN_KEY_BYTES` bytes), so that a later step
that needs the key (an incremental update, a lookup by raw id) can tell a wrong key from
the right one (:func:`dataset_key`). Rotation: docs/privacy.md.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from seqtwins.errors import SeqtwinsError

KEY_BYTES = 32
"""Length of a generated key (256 bits, the HMAC-SHA256 block-size guidance of RFC 2104)."""
KEY_ENV = "SEQTWINS_PSEUDONYM_KEY"
"""The environment variable that holds the key when no key file is given."""
MIN_KEY_BYTES = 16
"""The shortest key accepted (128 bits). ``meta.json`` records :func:`key_id`, so anyone
holding a dataset can test guessed keys offline: a short or memorable key would fall."""
HOW_TO_MAKE = (
    'make one with: python -c "import secrets; print(secrets.token_hex(32))" > FILE '
    "(docs/privacy.md)"
)
_KEY_ID_MESSAGE = b"seqtwins pseudonym key id v1"


def missing_key(what: str = "--pseudonymize") -> SeqtwinsError:
    """The one-line error when a key is needed and none is given."""
    return SeqtwinsError(
        f"{what} needs the pseudonymisation key: set {KEY_ENV} or pass --key-file FILE "
        f"(or the older --salt-file FILE, created if absent); {HOW_TO_MAKE}"
    )


def load_or_create_key(salt_file: Path) -> bytes:
    """The key stored in ``salt_file``; a new random key is written (mode 0600) if absent.

    The file holds the key as hex text (a created one: 64 hex characters of
    :data:`KEY_BYTES` random bytes); content shorter than :data:`MIN_KEY_BYTES` is refused.
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
    return read_key_file(salt_file, "--salt-file")


def read_key_file(path: Path, what: str = "--key-file") -> bytes:
    """The key in ``path`` (its content, surrounding whitespace stripped)."""
    path = Path(path)
    if not path.exists():
        raise SeqtwinsError(f"{what} {path} does not exist; {HOW_TO_MAKE}")
    if not path.is_file():
        raise SeqtwinsError(f"{what} {path} is not a file")
    try:
        key = path.read_bytes().strip()
    except OSError as e:
        raise SeqtwinsError(f"cannot read {what} {path} ({e.strerror})") from e
    if not key:
        raise SeqtwinsError(f"{what} {path} is empty; put a key in it ({HOW_TO_MAKE})")
    return strong(key, f"{what} {path}")


def strong(key: bytes, where: str) -> bytes:
    """``key``, or the one-line error when it is shorter than :data:`MIN_KEY_BYTES`."""
    if len(key) < MIN_KEY_BYTES:
        raise SeqtwinsError(
            f"the key in {where} is {len(key)} bytes, shorter than {MIN_KEY_BYTES}: a short "
            f"key can be guessed from a dataset's key id; {HOW_TO_MAKE}"
        )
    return key


def env_key(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The key in :data:`KEY_ENV` (stripped), ``None`` when unset or blank."""
    value = (os.environ if environ is None else environ).get(KEY_ENV, "").strip()
    return strong(value.encode("utf-8"), KEY_ENV) if value else None


def check_key_source(
    key_file: Path | None, salt_file: Path | None, environ: Mapping[str, str] | None = None
) -> None:
    """Raise the one-line error now, before any work, when no key can be had (no file
    option and no :data:`KEY_ENV`, a ``key_file`` that is not there, a ``salt_file`` that
    is there but holds no key). Creates nothing."""
    if key_file is not None:
        read_key_file(Path(key_file))
    elif salt_file is not None:
        if Path(salt_file).exists():
            read_key_file(Path(salt_file), "--salt-file")
    elif env_key(environ) is None:
        raise missing_key()


def pseudonym_key(
    key_file: Path | None, salt_file: Path | None, environ: Mapping[str, str] | None = None
) -> bytes:
    """The pseudonymisation key: ``key_file``, else ``salt_file`` (created if absent),
    else :data:`KEY_ENV` (module docstring); the one-line error when there is none."""
    if key_file is not None:
        return read_key_file(Path(key_file))
    if salt_file is not None:
        return load_or_create_key(Path(salt_file))
    key = env_key(environ)
    if key is None:
        raise missing_key()
    return key


def key_id(key: bytes) -> str:
    """A short public name of ``key`` (16 hex characters of an HMAC under it): equal for
    equal keys, so a dataset can record which key made its pseudonyms without the key."""
    return hmac.new(key, _KEY_ID_MESSAGE, hashlib.sha256).hexdigest()[:16]


def dataset_key(
    meta: Mapping[str, Any],
    where: str,
    key_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> bytes:
    """The key of a pseudonymised dataset (``meta``: its ``meta.json``; ``where`` names it in
    messages) for a step that must make the same pseudonyms again (an incremental update,
    a lookup by raw id): from ``key_file`` or :data:`KEY_ENV`. One-line errors when the
    dataset is not pseudonymised, the key is missing, or it is not the dataset's key."""
    prep = meta.get("prepare") or {}
    if not prep.get("pseudonymized"):
        raise SeqtwinsError(f"{where} is not pseudonymised; it needs no key")
    if key_file is not None:
        key = read_key_file(Path(key_file))
    else:
        found = env_key(environ)
        if found is None:
            raise missing_key(f"the pseudonymised dataset {where}")
        key = found
    want = prep.get("pseudonym_key_id")
    if want is not None and key_id(key) != want:
        raise SeqtwinsError(
            f"the key given is not the one {where} was pseudonymised with (key id "
            f"{key_id(key)}, the dataset's {want}); use that key (docs/privacy.md, rotation)"
        )
    return key


def pseudonym(raw_id: str, key: bytes) -> str:
    """HMAC-SHA256 of ``raw_id`` (UTF-8) under ``key``, as 64 hex characters."""
    return hmac.new(key, raw_id.encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonymize(raw_ids: Iterable[str], key: bytes) -> list[str]:
    """Pseudonyms of ``raw_ids`` in order (one HMAC per distinct user, not per interaction)."""
    return [pseudonym(r, key) for r in raw_ids]
