"""What ``prepare --min-item-users K`` costs: items and interactions removed, and how the
headline metric moves.

Prepares one log without the filter (``base``) and with ``--min-item-users K`` for each K
(rare items dropped), pretrains the same short ``barlow`` configuration on each (same
seed, same settings), evaluates each on the headline tasks with a linear probe (beside the
majority floor), and records the counts from each dataset's ``meta.json`` beside the
headline metrics. A filtered dataset with the same content hash as ``base`` is the same
dataset and is not trained again. Filtered datasets have fewer items (and, through the
k-core, fewer users), so their metrics are measured on other test users and item sets: the
difference is what an operator sees, not a controlled ablation of one factor.

    .venv/bin/python benchmarks/bench_min_item_users.py \\
        --input ../shared/data/beauty/Beauty.txt --format s3rec --k 5,10,20

Results go to ``benchmarks/results/min_item_users.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def prepare_all(src: Path, fmt: str, ks: list[int], work: Path) -> dict[str, Path]:
    """The dataset without the filter (``base``) and with ``min_item_users=k`` for each k."""
    from seqtwins.data.formats import ReaderOptions
    from seqtwins.data.options import PrepareOptions
    from seqtwins.data.prepare import prepare

    out = {}
    reader = ReaderOptions(format=fmt)
    for name, k in [("base", None), *((f"min_item_users={k}", k) for k in ks)]:
        path = work / ("data-" + name.replace("=", "-"))
        prepare(src, path, PrepareOptions(reader=reader, min_item_users=k, overwrite=True))
        out[name] = path
    return out


def dataset_facts(path: Path) -> dict[str, Any]:
    meta = json.loads((path / "meta.json").read_text())
    prep = meta["prepare"]
    return {
        "content_hash": meta["content_hash"],
        "users": meta["counts"]["users"],
        "items": meta["counts"]["items"],
        "interactions": meta["counts"]["interactions"],
        "dropped": prep["dropped"],
        "rare_items": prep.get("rare_items"),
    }


def train_and_evaluate(
    data: Path, run: Path, overrides: list[str], fractions: list[float], seeds: int
) -> dict[str, Any]:
    """Pretrain barlow on ``data`` and evaluate it on the headline tasks."""
    from seqtwins import pretrain_config
    from seqtwins.data.dataset import SequenceDataset
    from seqtwins.evaluate.proxy import headline_proxy
    from seqtwins.evaluate.runs import evaluate_runs
    from seqtwins.evaluate.tasks import headline_tasks
    from seqtwins.train import pretrain

    cfg = pretrain_config(objective="barlow", overrides=overrides)
    t0 = time.perf_counter()
    pretrain(data, run, cfg, progress=False, overwrite=True, proxy=headline_proxy)
    t1 = time.perf_counter()
    tasks = headline_tasks(SequenceDataset.open(data))
    res = evaluate_runs([run], data, run / "eval.json", tasks=tasks, fractions=fractions,
                        seeds=seeds, baselines=["majority"], progress=False)  # fmt: skip
    out: dict[str, Any] = {
        "train_seconds": round(t1 - t0, 1),
        "eval_seconds": round(time.perf_counter() - t1, 1),
        "tasks": {},
    }
    for cell in res["cells"]:
        info = res["tasks"][cell["task"]]
        metric = info["primary_metric"]
        entry = out["tasks"].setdefault(cell["task"], {"metric": metric, "cells": {}})
        value, spread = cell["mean"].get(metric), cell["std"].get(metric)
        entry["cells"][f"{cell['method']}|{cell['fraction']:g}"] = {"mean": value, "std": spread}
        entry["labelled_test_users"] = info["labelled_users"]["test"]
    return out


def markdown(doc: dict[str, Any]) -> str:
    names = doc["datasets"]
    base = doc["facts"]["base"]
    lines = [
        f"# `prepare --min-item-users K` on {doc['input_name']}",
        "",
        f"Command: `{doc['command']}`",
        "",
        f"Machine: {doc['machine']['cpu']}, {doc['machine']['nproc']} cores, shared with other "
        "jobs while this ran (timings are indicative only).",
        "",
        "| dataset | users | items | interactions | rare items (< K users) | their interactions "
        "| k-core cascade: users / items / interactions | content hash |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for name in doc["counted"]:
        x = doc["facts"][name]
        rare, d = x["rare_items"], x["dropped"]
        cascade = (
            f"{d['kcore_users']:,} / {d['kcore_items']:,} / {d['kcore_interactions']:,}"
            if rare
            else "-"
        )
        lines.append(
            f"| {name} | {x['users']:,} | {x['items']:,} | {x['interactions']:,} | "
            f"{rare['items']:,} | {rare['interactions']:,} | {cascade} | "
            f"`{x['content_hash'][:12]}` |"
            if rare
            else f"| {name} | {x['users']:,} | {x['items']:,} | {x['interactions']:,} | - | - "
            f"| - | `{x['content_hash'][:12]}` |"
        )
    lines += ["", "Removed relative to `base`:", ""]
    for name in doc["counted"][1:]:
        x = doc["facts"][name]
        di, dn = base["items"] - x["items"], base["interactions"] - x["interactions"]
        same = " (the same dataset, byte for byte: same content hash)" if x["same_as"] else ""
        lines.append(
            f"- {name}: {di:,} items ({100 * di / base['items']:.1f} %), {dn:,} interactions "
            f"({100 * dn / base['interactions']:.1f} %), "
            f"{base['users'] - x['users']:,} users{same}"
            + ("" if name in names else " (counted only, not trained)")
        )
    lines += [
        "",
        f"Headline metrics (barlow, `{doc['pretrain']}`; linear probe, mean ± std over "
        f"{doc['seeds']} label subsets/seeds):",
        "",
        "| task (metric) | method | label fraction | " + " | ".join(names) + " |",
        "|---|---|---:|" + "---:|" * len(names),
    ]
    rb = doc["results"]["base"]["tasks"]
    for task, entry in rb.items():
        for key in entry["cells"]:
            method, frac = key.split("|")
            shown = []
            for name in names:
                cell = doc["results"][name]["tasks"].get(task, {}).get("cells", {}).get(key, {})
                v, sd = cell.get("mean"), cell.get("std")
                b = entry["cells"][key].get("mean")
                text = "n/a" if v is None else f"{v:.4f} ± {sd or 0:.4f}"
                if name != "base" and v is not None and b:
                    text += f" ({100 * (v - b) / b:+.1f} %)"
                shown.append(text)
            lines.append(f"| {task} ({entry['metric']}) | {method} | {frac} | "
                         + " | ".join(shown) + " |")  # fmt: skip
    lines += [
        "",
        "A dataset with the same content hash as `base` is not trained again: its results are "
        "`base`'s. Filtered datasets have other items and test users, so a change mixes the "
        "filter's cost with an easier or harder task (future_items ranks over fewer items "
        "after the filter).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--format", default="auto")
    parser.add_argument("--k", default="5", help="thresholds, comma-separated: 5,10")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--count-only", default="", help="thresholds only prepared and counted, not trained"
    )
    parser.add_argument("--fractions", default="0.1,1.0")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "min_item_users")
    args = parser.parse_args()
    from seqtwins.data.options import PrepareOptions

    ks = [int(k) for k in args.k.split(",")]
    count_only = [int(k) for k in args.count_only.split(",") if k]
    for k in ks + count_only:
        PrepareOptions(min_item_users=k)  # validate before the long work
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-miu-"))
    overrides = [
        "encoder.dim=64", "encoder.layers=2", "encoder.heads=2", "encoder.max_len=50",
        f"train.epochs={args.epochs}", "train.batch_size=256", "train.patience=0",
        f"train.threads={args.threads}", "train.seed=0",
    ]  # fmt: skip
    fractions = [float(x) for x in args.fractions.split(",")]
    sources = prepare_all(args.input, args.format, ks + count_only, work)
    trained = ["base", *(f"min_item_users={k}" for k in ks)]
    doc: dict[str, Any] = {
        "command": "python " + shlex.join(sys.argv),
        "input_name": args.input.name,
        "k": ks,
        "count_only": count_only,
        "machine": machine_info("torch", "polars"),
        "pretrain": " ".join(overrides),
        "fractions": fractions,
        "seeds": args.seeds,
        "datasets": trained,
        "counted": list(sources),
        "facts": {n: dataset_facts(p) for n, p in sources.items()},
        "results": {},
    }
    base_hash = doc["facts"]["base"]["content_hash"]
    for name, data in sources.items():
        facts = doc["facts"][name]
        facts["same_as"] = "base" if name != "base" and facts["content_hash"] == base_hash else None
        if facts["same_as"]:
            doc["results"][name] = doc["results"]["base"]
            continue
        if name not in trained:
            continue
        run = work / ("run-" + name.replace("=", "-"))
        doc["results"][name] = train_and_evaluate(data, run, overrides, fractions, args.seeds)
        print(name, json.dumps(doc["results"][name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
