"""``prepare --min-item-users K``: privacy by aggregation (rare items dropped or merged)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.data.dataset import SequenceDataset
from seqtwins.data.prepare import PrepareOptions, prepare
from seqtwins.data.steps import RARE_TOKEN
from seqtwins.errors import SeqtwinsError
from tests.data.test_prepare_outofcore import both, tiny_buckets, wide_log  # noqa: F401
from tests.data.test_prepare_stream import same_dataset

runner = CliRunner()


def _log(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").write_csv(path)
    return path


def _sequences(out: Path) -> dict[str, list[str]]:
    """user id -> item ids, as written."""
    ds = SequenceDataset.open(out)
    ids = ds.items["item_id"].to_list()
    s = ds.sequences
    return {
        u: [ids[int(i) - 1] for i in s.items[s.offsets[k] : s.offsets[k + 1]]]
        for k, u in enumerate(ds.users["user_id"].to_list())
    }


def _reference(rows, k_users, ku, min_history):
    """Plain Python: the largest sub-log whose users have >= max(ku, min_history + 1) rows
    and whose items have >= k_users distinct users."""
    seqs: dict[str, list[str]] = {}
    for u, _t, _line, i in sorted((u, t, n, i) for n, (u, i, t) in enumerate(rows)):
        seqs.setdefault(u, []).append(i)
    seqs = {u: s for u, s in seqs.items() if len(s) >= min_history + 1}
    while True:
        users_of: dict[str, set[str]] = {}
        for u, s in seqs.items():
            for i in s:
                users_of.setdefault(i, set()).add(u)
        new = {u: [i for i in s if len(users_of[i]) >= k_users] for u, s in seqs.items()}
        new = {u: s for u, s in new.items() if len(s) >= max(ku, min_history + 1)}
        if new == seqs:
            return seqs
        seqs = new


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from("abcdef"), st.sampled_from("pqrstuvw"), st.integers(0, 9)),
        min_size=1,
        max_size=40,
    ),
    k_users=st.integers(1, 4),
    ku=st.integers(1, 5),
)
def test_drop_is_the_largest_sub_log_meeting_every_threshold(tmp_path_factory, rows, k_users, ku):
    tmp = tmp_path_factory.mktemp("rare")
    want = _reference(rows, k_users, ku, min_history=1)
    opts = PrepareOptions(min_item_users=k_users, min_user_count=ku, min_history=1, holdout=1)
    if not want:
        with pytest.raises(SeqtwinsError, match="no users left"):
            prepare(_log(tmp / "log.csv", rows), tmp / "out", opts)
        return
    prepare(_log(tmp / "log.csv", rows), tmp / "out", opts)
    got = _sequences(tmp / "out")
    assert got == want
    users_of: dict[str, set[str]] = {}
    for u, s in got.items():
        for i in s:
            users_of.setdefault(i, set()).add(u)
    assert all(len(us) >= k_users for us in users_of.values())  # the guarantee, as written


def test_counts_in_meta_and_summary(tmp_path):
    # item "solo" is seen by one user (3 times): rare at K=2; "pair" by two users
    rows = [
        ("a", "solo", 1),
        ("a", "solo", 2),
        ("a", "solo", 3),
        ("a", "x", 4),
        ("a", "y", 5),
        ("a", "z", 6),
        ("b", "x", 1),
        ("b", "y", 2),
        ("b", "z", 3),
        ("b", "pair", 4),
        ("c", "x", 1),
        ("c", "pair", 2),
        ("c", "y", 3),
        ("c", "z", 4),
    ]
    src = _log(tmp_path / "log.csv", rows)
    s = prepare(src, tmp_path / "out", PrepareOptions(min_item_users=2, holdout=1, min_history=1))
    assert s.dropped["rare_items"] == 1 and s.dropped["rare_item_interactions"] == 3
    assert s.rare_items == {"min_item_users": 2, "action": "drop", "items": 1, "interactions": 3}
    assert s.num_items == 4 and s.num_interactions == len(rows) - 3
    text = "\n".join(s.lines())
    assert "rare items 1; rare item interactions 3" in text
    assert "rare items (fewer than 2 users): 1 items, 3 interactions dropped" in text
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["params"]["min_item_users"] == 2 and meta["params"]["rare_items"] == "drop"
    assert meta["prepare"]["rare_items"]["items"] == 1
    assert meta["prepare"]["dropped"]["kcore_items"] == 0  # no cascade here

    t = prepare(
        src,
        tmp_path / "tok",
        PrepareOptions(min_item_users=2, rare_items="token", min_history=1, holdout=1),
    )
    assert t.num_items == 5 and t.num_interactions == len(rows) and "rare_items" not in t.dropped
    assert t.rare_items is not None and t.rare_items["token"] == {
        "item_id": RARE_TOKEN,
        "item_idx": 5,
    }
    assert "mapped to the rare-item token '<rare item>' (item_idx 5)" in "\n".join(t.lines())
    seqs = _sequences(tmp_path / "tok")
    assert seqs["a"] == [RARE_TOKEN] * 3 + ["x", "y", "z"]
    ds = SequenceDataset.open(tmp_path / "tok")
    assert ds.items["item_id"].to_list()[-1] == RARE_TOKEN


def test_default_and_k1_leave_the_dataset_as_before(tmp_path):
    src = tmp_path / "log.parquet"
    wide_log(3, n_users=60, grouped=True).write_parquet(src)
    prepare(src, tmp_path / "default", PrepareOptions())
    prepare(src, tmp_path / "k1", PrepareOptions(min_item_users=1))
    prepare(src, tmp_path / "tok1", PrepareOptions(min_item_users=1, rare_items="token"))
    base = json.loads((tmp_path / "default" / "meta.json").read_text())
    assert "min_item_users" not in base["params"] and "rare_items" not in base["prepare"]
    assert "rare_items" not in base["prepare"]["dropped"]
    for other in ("k1", "tok1"):
        meta = json.loads((tmp_path / other / "meta.json").read_text())
        assert meta["content_hash"] == base["content_hash"]
        assert meta["prepare"]["rare_items"]["items"] == 0


@pytest.mark.parametrize("mode", ["drop", "token"])
@pytest.mark.parametrize("dedup", [False, True])
def test_out_of_core_equals_in_memory(tmp_path, tiny_buckets, mode, dedup):  # noqa: F811
    src = tmp_path / "log.parquet"
    wide_log(5, n_users=80, grouped=False).write_parquet(src, row_group_size=37)
    opts = PrepareOptions(min_item_users=4, rare_items=mode, dedup=dedup, min_item_count=2)
    a, b = both(src, tmp_path, opts)
    same_dataset(a, b)
    assert (a / "meta.json").read_bytes() == (b / "meta.json").read_bytes()
    rare = json.loads((a / "meta.json").read_text())["prepare"]["rare_items"]
    assert rare["items"] > 0 and rare["interactions"] > 0  # the filter had work to do


def test_token_name_clash_and_bad_values(tmp_path):
    src = _log(
        tmp_path / "log.csv",
        [("a", RARE_TOKEN, 1)]
        + [("a", f"i{k}", k) for k in range(5)]
        + [("b", f"i{k}", k) for k in range(5)],
    )
    with pytest.raises(SeqtwinsError, match="rare-item token"):
        prepare(src, tmp_path / "out", PrepareOptions(min_item_users=2, rare_items="token"))
    for args, word in (
        (["--min-item-users", "0"], "--min-item-users=0 must be >= 1"),
        (["--min-item-users", "2", "--rare-items", "keep"], "--rare-items"),
        (["--rare-items", "token"], "--rare-items=token does nothing without min_item_users"),
        (["--set", "rare_items=token"], "(--min-item-users N)"),
    ):
        r = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "o"), *args])
        assert r.exit_code == 2 and word in r.output and len(r.output.strip().splitlines()) == 1
        assert not (tmp_path / "o").exists()


def test_cli_flags_set_keys_and_experiment_give_one_dataset(tmp_path):
    """The rare-item and pseudonymisation settings as CLI flags, as ``--set`` keys and as an
    experiment's ``data.prepare`` keys (with a key file) make the same dataset."""
    import yaml

    from seqtwins.data.privacy import pseudonym
    from seqtwins.experiment import build_data, load_experiment

    pairs = ["ax", "ay", "a-rare", "az", "bx", "by", "bz", "bw", "cw", "cx", "cy", "cz"]
    src = _log(tmp_path / "log.csv", [(p[0], p[1:], t) for t, p in enumerate(pairs)])
    key = tmp_path / "keys" / "k"
    key.parent.mkdir()
    key.write_text("a-test-key-of-at-least-16-bytes\n")
    flags = ["--min-item-users", "2", "--rare-items", "token", "--pseudonymize"]
    sets = ["min_item_users=2", "rare_items=token", "pseudonymize=true", f"key_file={key}"]
    cli = {
        "flags": [*flags, "--key-file", str(key)],
        "set": [x for kv in sets for x in ("--set", kv)],
    }
    for name, args in cli.items():
        r = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / name),
                                "--holdout", "1", *args])  # fmt: skip
        assert r.exit_code == 0, r.output
    prep = {"input": str(src), "holdout": 1, "min_item_users": 2, "rare_items": "token",
            "pseudonymize": True, "key_file": str(key)}  # fmt: skip
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({"data": {"prepare": prep}}))
    build_data(load_experiment(tmp_path / "exp.yaml", []), tmp_path / "exp" / "data", print)
    made = {n: SequenceDataset.open(tmp_path / n) for n in ("flags", "set", "exp/data")}
    assert len({ds.content_hash for ds in made.values()}) == 1
    ds = made["exp/data"]
    assert RARE_TOKEN in ds.items["item_id"].to_list()  # the token, not a drop
    assert np.array_equal(ds.sequences.offsets, [0, 4, 8, 12])  # every interaction kept
    want = sorted(pseudonym(u, key.read_bytes().strip()) for u in "abc")
    assert sorted(ds.users["user_id"].to_list()) == want  # pseudonyms under that key
