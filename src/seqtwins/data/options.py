"""The settings of ``seqtwins prepare`` and what it reports (:class:`PrepareSummary`).

Both paths of :mod:`seqtwins.data.prepare` (whole log and out of core,
:mod:`seqtwins.data.outofcore`) read these; settings are validated when built and every
error names the setting by its field name, which is also its ``--set`` key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from seqtwins.data.dataset import SPLITS
from seqtwins.data.formats import ReaderOptions
from seqtwins.data.memory import MIN_BUDGET, format_size, parse_size
from seqtwins.errors import SeqtwinsError
from seqtwins.settings import build, deep_merge, nest, parse_override

RARE_ITEMS = ("drop", "token")
"""Values of ``rare_items`` (what ``min_item_users`` does with a rare item)."""


@dataclass(frozen=True)
class PrepareOptions:
    """Everything ``prepare`` does besides reading; defaults filter nothing."""

    reader: ReaderOptions = field(default_factory=ReaderOptions)
    """How to read the input (format, column names, item/user tables, bad rows)."""
    dedup: bool = False
    """Keep only the first (earliest) interaction of each repeated (user, item) pair."""
    min_rating: float | None = None
    """Keep interactions with ``rating >= min_rating``; ``None`` keeps all."""
    min_user_count: int = 1
    """k-core: every kept user has at least this many interactions (1 = no user k-core)."""
    min_item_count: int = 1
    """k-core: every kept item has at least this many interactions (1 = no item k-core)."""
    max_len: int | None = None
    """Keep each user's most recent ``max_len`` interactions; ``None`` keeps all."""
    holdout: int = 5
    """Size of the held-out future window (the last items of each user; 5 by default)."""
    min_history: int = 3
    """The future window is shortened so that at least this many items remain as history;
    users with fewer than ``min_history + 1`` interactions are dropped and counted."""
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Fractions of users in train / valid / test (sum 1)."""
    split_seed: int = 0
    """Seed of the user permutation that assigns splits."""
    min_item_users: int | None = None
    """Privacy by aggregation: an item seen by fewer than this many distinct users cannot
    single out a person, so it is dropped (``rare_items: drop``, part of the k-core) or
    mapped to one rare-item token (``rare_items: token``); ``None`` keeps every item."""
    rare_items: str = "drop"
    """What ``min_item_users`` does with a rare item: ``drop`` its interactions, or
    ``token``: map it to the one item :data:`seqtwins.data.steps.RARE_TOKEN`."""
    pseudonymize: bool = False
    """Replace raw user ids by HMAC-SHA256 pseudonyms under a secret key: ``key_file``,
    ``salt_file``, else the environment variable ``SEQTWINS_PSEUDONYM_KEY``
    (:mod:`seqtwins.data.privacy`, docs/privacy.md)."""
    key_file: Path | None = None
    """File holding the pseudonymisation key (it must exist: see docs/privacy.md)."""
    salt_file: Path | None = None
    """The older key file option: like ``key_file``, but a random key is written there if
    the file does not exist."""
    overwrite: bool = False
    """Replace an existing output directory (atomically)."""
    memory_budget: int | None = None
    """Bytes of memory ``prepare`` may use (``--memory-budget 4GB``); ``None``: no bound.
    A CSV / TSV / Parquet log whose whole-log processing would need more (about
    :data:`BYTES_PER_ROW` per interaction) is prepared out of core, bucket by bucket on disk
    (:mod:`seqtwins.data.outofcore`), with the same result. Other formats are read whole."""
    work_dir: Path | None = None
    """Folder for the out-of-core buckets (default: a temporary folder beside ``out``, so
    that the finished arrays are moved into place, not copied)."""
    since: int | None = None
    """Time window: keep interactions at or after this time (epoch seconds, UTC; ``--since``
    and YAML also take an ISO date or date-time). ``None``: no lower bound. The window is
    half-open, ``[since, until)``, so consecutive windows never share an interaction; it
    applies before every other filter. A log without times is refused."""
    until: int | None = None
    """Time window: keep interactions before this time (see ``since``); ``None``: no bound."""
    update: Path | None = None
    """An earlier dataset this one updates (``--update OLD``): its items keep their
    ``item_idx`` (matched by original id; items absent from this log stay in the table) and
    new items are appended after them; its users keep their split, new users are split by
    ``split`` / ``split_seed``. ``meta.json`` records the parent's path and content hash."""

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming the first invalid setting by its field name (the key
        of ``--set`` and of ``data.prepare`` in an experiment)."""

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        for name in ("min_user_count", "min_item_count", "min_history"):
            need(getattr(self, name) >= 1, f"{name}={getattr(self, name)} must be >= 1")
        need(self.holdout >= 0, f"holdout={self.holdout} must be >= 0")
        need(self.split_seed >= 0, f"split_seed={self.split_seed} must be >= 0")
        if self.max_len is not None:
            need(
                self.max_len >= self.min_history + 1,
                f"max_len={self.max_len} must be >= min_history + 1 = "
                f"{self.min_history + 1} (shorter users are dropped)",
            )
        need(
            len(self.split) == 3
            and all(f >= 0 for f in self.split)
            and abs(sum(self.split) - 1) < 1e-6,
            f"split={','.join(map(str, self.split))} must be three fractions >= 0 "
            "(train,valid,test) that sum to 1",
        )
        if self.memory_budget is not None:
            need(
                self.memory_budget >= MIN_BUDGET,
                f"memory_budget={self.memory_budget} ({format_size(self.memory_budget)}) is below "
                f"the minimum of "
                f"{format_size(MIN_BUDGET)}",
            )
        if self.min_item_users is not None:
            need(self.min_item_users >= 1, f"min_item_users={self.min_item_users} must be >= 1")
        need(
            self.rare_items in RARE_ITEMS,
            f"rare_items={self.rare_items!r} must be one of {', '.join(RARE_ITEMS)}",
        )
        need(
            self.rare_items != "token" or self.min_item_users is not None,
            "rare_items=token does nothing without min_item_users: set min_item_users "
            "(--min-item-users N) too, or leave rare_items unset",
        )
        need(
            self.key_file is None or self.salt_file is None,
            "key_file and salt_file are both set; give one key file",
        )
        need(
            self.since is None or self.until is None or self.since < self.until,
            f"since={self.since} must be before until={self.until} (the window is [since, until))",
        )

    def to_params(self) -> dict[str, Any]:
        """JSON-able parameters for ``meta.json`` (paths as strings, no key material)."""
        out = asdict(self)
        reader = {k: (str(v) if isinstance(v, Path) else v) for k, v in out.pop("reader").items()}
        out.pop("salt_file")  # where the key is, and the key, never reach an output
        out.pop("key_file")
        if self.min_item_users is None:  # unset: meta.json as before the option existed
            out.pop("min_item_users")
            out.pop("rare_items")
        out.pop("overwrite")
        out.pop("memory_budget")  # resources, not data: the same dataset either way
        out.pop("work_dir")
        for name in ("since", "until", "update"):  # recorded only when set: meta.json of
            if out[name] is None:  # a dataset prepared without them is unchanged
                out.pop(name)
        if self.update is not None:
            out["update"] = str(self.update)
        out["split"] = list(self.split)
        return {**out, "reader": reader}


@dataclass(frozen=True)
class PrepareSummary:
    """What ``prepare`` wrote (counts as in ``meta.json``)."""

    out: Path
    format: str
    num_users: int
    num_items: int
    num_interactions: int
    splits: dict[str, int]
    fields: dict[str, Any]
    dropped: dict[str, int]
    rows_read: int
    bad_rows_skipped: int
    peak_rss: int = 0
    """The highest resident memory of the process up to the end of ``prepare`` (bytes)."""
    mode: str = "in memory"
    """``in memory`` or ``out of core (B buckets)``."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds per phase: ``read`` then ``build`` (order, filter, index) and ``write``;
    a log streamed in one pass reports ``read+order`` (read and ordered together), then
    ``build`` (filter, index) and ``write``."""
    rare_items: dict[str, Any] | None = None
    """With ``min_item_users``: what it did (``meta.json``, ``prepare.rare_items``)."""

    def lines(self) -> list[str]:
        """Human-readable report lines (what the CLI prints)."""
        splits = " / ".join(f"{self.splits[s]:,} {s}" for s in SPLITS)
        have = [k for k in ("times", "ratings", "categories") if self.fields.get(k)]
        attrs = self.fields.get("user_attributes") or []
        if attrs:
            have.append("user attributes " + ", ".join(attrs))
        lines = [
            f"prepared {self.out} ({self.format}): {self.num_users:,} users, "
            f"{self.num_items:,} items, {self.num_interactions:,} interactions",
            f"  users: {splits}; fields: {', '.join(have) or 'none beyond items'}",
        ]
        drops = [f"{k.replace('_', ' ')} {v:,}" for k, v in self.dropped.items() if v]
        if self.bad_rows_skipped:
            drops.insert(0, f"bad rows skipped {self.bad_rows_skipped:,}")
        lines.append("  dropped: " + ("; ".join(drops) if drops else "nothing"))
        if self.rare_items is not None:
            lines.append(rare_items_line(self.rare_items))
        took = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        lines.append(
            f"  {self.mode}; peak memory {format_size(self.peak_rss)}"
            + (f"; {took}" if took else "")
        )
        return lines


def rare_items_line(rare: Mapping[str, Any]) -> str:
    """The printed line of what ``min_item_users`` did."""
    what = f"{rare['items']:,} items, {rare['interactions']:,} interactions"
    if rare["action"] == "token":
        token = rare.get("token")
        where = (
            f"mapped to the rare-item token {token['item_id']!r} (item_idx {token['item_idx']})"
            if token
            else "mapped to the rare-item token (none needed)"
        )
    else:
        where = "dropped (then the k-core)"
    return f"  rare items (fewer than {rare['min_item_users']} users): {what} {where}"


READER_KEYS = tuple(f.name for f in fields(ReaderOptions))
"""Settings of :class:`~seqtwins.data.formats.ReaderOptions`, written beside the others in
a flat ``--set`` / ``data.prepare`` mapping."""


def options_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """A flat mapping of settings (``--set`` keys, ``data.prepare`` of an experiment) in
    the nested shape of :class:`PrepareOptions`: reader settings move under ``reader``,
    and a ``memory_budget`` written as text (``4GB``) becomes bytes."""
    out = {k: v for k, v in data.items() if k not in READER_KEYS}
    flat = {k: v for k, v in data.items() if k in READER_KEYS}
    nested = out.get("reader")
    if flat or isinstance(nested, Mapping):  # else build() names a bad `reader` value
        out["reader"] = {**(nested if isinstance(nested, Mapping) else {}), **flat}
    budget = out.get("memory_budget")
    if isinstance(budget, str):
        out["memory_budget"] = parse_size(budget, "memory_budget")
    for name in ("since", "until"):
        if isinstance(out.get(name), str | date):
            out[name] = parse_time(out[name], name)
    return out


def parse_time(value: str | date, key: str) -> int:
    """Epoch seconds (UTC) from ``value``: integer seconds, or an ISO-8601 date or date-time
    (``2003-01-31``, ``2003-01-31T12:00``, ``...+02:00``; without an offset it is UTC).
    A bad value is a one-line error naming ``key``."""
    # YAML reads an unquoted date as a date
    text = value.isoformat() if isinstance(value, date) else value.strip()
    if text.lstrip("+-").isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise SeqtwinsError(
            f"{key}={text!r} must be epoch seconds or an ISO date like 2003-01-31 or "
            "2003-01-31T12:00:00"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def build_options(
    *layers: Mapping[str, Any], overrides: Iterable[str] = (), prefix: str = ""
) -> PrepareOptions:
    """:class:`PrepareOptions` from flat mappings (YAML files, flags), applied in order, then
    ``key=value`` overrides (``--set min_user_count=5``), through
    :func:`seqtwins.settings.build`: a bad value is a one-line error naming its key
    (after ``prefix``, where the mapping sits in a larger file: ``data.prepare``)."""
    data: dict[str, Any] = {}
    for layer in layers:
        data = deep_merge(data, options_data(layer))
    for text in overrides:
        key, value = parse_override(text)
        data = deep_merge(data, options_data(nest(key, value)))
    return build(PrepareOptions, data, prefix=prefix)
