"""``evaluate --compat OLD NEW``: an old probe on new embeddings."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.data.dataset import SequenceDataset
from seqtwins.evaluate.significance import paired_bootstrap
from seqtwins.incremental.compat import _ratio, compat_scores, ratio_text, reindex
from seqtwins.incremental.growth import vocab_map

runner = CliRunner()


def test_reindex_drops_unknown_items_and_keeps_the_rest_in_order(windows):
    w1, w2 = (SequenceDataset.open(p) for p in windows)
    lut = vocab_map(w1.items["item_id"], w2.items["item_id"])
    r = reindex(w2, lut)
    s, t = w2.sequences, r.sequences
    known = lut[np.asarray(s.items)] > 0
    assert t.num_interactions == int(known.sum()) and int(t.items.max()) <= w1.num_items
    for u in (0, 5, w2.num_users - 1):
        hist = np.asarray(s.items[s.offsets[u] : s.history_end[u]])
        want = w1.items["item_id"].to_numpy()[lut[hist][lut[hist] > 0] - 1]
        got = w1.items["item_id"].to_numpy()[
            np.asarray(t.items[t.offsets[u] : t.history_end[u]]) - 1
        ]
        assert got.tolist() == want.tolist()
    same = reindex(w1, np.arange(w1.vocab_size))  # the identity changes nothing
    assert np.array_equal(same.sequences.items, w1.sequences.items)


def test_a_run_is_fully_compatible_with_itself(old_run):
    result = compat_scores(old_run, old_run)
    assert result["tasks"] and all(r["compat"] == 1.0 for r in result["tasks"].values())
    for row in result["tasks"].values():  # identical per-user values: a zero-width interval
        assert row["compat_interval"] == [1.0, 1.0]
        assert row["new_probe_ratio"] == 1.0 and row["new_probe_interval"] == [1.0, 1.0]


def test_ratio_interval_is_the_paired_bootstrap_of_the_per_user_values():
    rng = np.random.default_rng(0)
    a = (rng.random(300) < 0.1).astype(float)  # thin: about 30 hits
    b = np.where(rng.random(300) < 0.2, 1.0 - a, a)  # the same users, some flipped
    ratio, interval = _ratio((a.mean(), a), (b.mean(), b), seed=3)
    boot = paired_bootstrap(b, a, seed=3)
    assert ratio == b.mean() / a.mean()
    assert interval == [1 + boot.gain_low, 1 + boot.gain_high]
    assert interval[0] < ratio < interval[1] and interval[1] - interval[0] > 0.2  # wide
    assert _ratio((0.0, a * 0), (b.mean(), b), seed=3) == (None, None)
    assert _ratio((0.8, None), (0.6, None), seed=3) == (0.6 / 0.8, None)  # AUC: no values
    one_hit = np.zeros(300)
    one_hit[7] = 1.0  # most resamples of one hit hold none: no interval
    assert _ratio((one_hit.mean(), one_hit), (one_hit.mean(), one_hit), seed=3) == (1.0, None)
    assert ratio_text(0.872, [0.61, 1.103]) == "87.2% (95% CI 61.0%-110.3%)"
    assert ratio_text(0.872, None) == "87.2%" and ratio_text(None, None) == "n/a"


def test_cli_compat_of_an_update(windows, old_run, update_run, tmp_path):
    out = tmp_path / "compat.json"
    r = runner.invoke(app, ["evaluate", "--compat", str(old_run), str(update_run), "--out",
                            str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert result["data"] == str(windows[0])  # by default: the old run's dataset
    row = result["tasks"]["future_items"]
    assert row["compat"] == row["old_probe_on_new"] / row["old"]
    assert row["new_probe_ratio"] == row["new_probe"] / row["old"]
    low, high = row["compat_interval"]
    assert low <= row["compat"] <= high
    assert f"future_items (recall@10, {row['test_users']} test users)" in r.output
    assert "(95% CI " in r.output
    r = runner.invoke(app, ["evaluate", "--compat", str(old_run)])
    assert r.exit_code == 2 and "--compat takes two runs" in r.output
    r = runner.invoke(app, ["evaluate", str(old_run)])
    assert r.exit_code == 2 and "evaluate needs --data" in r.output
