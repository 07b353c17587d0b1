"""How far do the headline cells move with the training seed alone?

The evidence study trains each objective once (``train.seed`` 0) and its intervals cover
test users and probe seeds, not training seeds. This script trains the same experiment
again with other ``train.seed`` values (same prepared users and splits, same label subsets
and probe seeds), evaluates each as ``seqtwins run`` does, and tables every headline cell
at <= 10 % labels per training seed with its spread, beside ``barlow`` - ``dual`` per seed:
so a reader can tell a tuning change or a gap from training noise.

    SEQTWINS_DATA=../shared/data .venv/bin/python benchmarks/seed_spread.py \\
        configs/tuned/ml-1m.yaml --base out/evidence/ml-1m --seeds 1 2 \\
        --work out/seed_spread --out benchmarks/results/evidence/seed_spread-ml-1m

``--base`` is the experiment folder of the seed-0 run (``make evidence``'s output); the
other seeds are trained under ``--work``, which is reused if it holds finished runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _machine import machine_info
from evidence import FEW_LABELS, git_commit


def headline_cells(results: dict[str, Any]) -> dict[tuple[str, str, float, str], float]:
    """(task, metric, fraction, method) -> mean over probe seeds of the task's primary
    metric, headline tasks at <= ``FEW_LABELS`` only."""
    out = {}
    for cell in results["cells"]:
        info = results["tasks"][cell["task"]]
        metric = info["primary_metric"]
        value = cell["mean"].get(metric)
        if info.get("headline") and cell["fraction"] <= FEW_LABELS and value is not None:
            out[(cell["task"], metric, cell["fraction"], cell["method"])] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("experiment", type=Path, help="the experiment file the base run used")
    ap.add_argument("--base", type=Path, required=True, help="experiment folder of seed 0")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--work", type=Path, default=Path("out/seed_spread"))
    ap.add_argument("--out", type=Path, required=True, help="path stem for .json and .md")
    args = ap.parse_args()

    base = json.loads((args.base / "eval.json").read_text())
    name = args.base.name
    evals = {0: base}
    seconds = {}
    exe = Path(sys.executable).with_name("seqtwins")
    for seed in args.seeds:
        t = time.perf_counter()
        cmd = [str(exe), "run", str(args.experiment), "--out", str(args.work / f"seed{seed}"),
               "--set", f"pretrain.train.seed={seed}", "--no-progress"]  # fmt: skip
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        seconds[seed] = round(time.perf_counter() - t, 1)
        evals[seed] = json.loads((args.work / f"seed{seed}" / name / "eval.json").read_text())
        got, want = evals[seed]["dataset"]["content_hash"], base["dataset"]["content_hash"]
        if got != want:
            sys.exit(f"seed {seed} prepared other data ({got}) than the base run ({want})")

    cells = [headline_cells(r) for r in evals.values()]
    keys = sorted(set.intersection(*(set(c) for c in cells)))
    rows = []
    for key in keys:
        values = [c[key] for c in cells]
        rows.append({"task": key[0], "metric": key[1], "fraction": key[2], "method": key[3],
                     "values": values, "mean": statistics.mean(values),
                     "std": statistics.stdev(values)})  # fmt: skip
    gaps = []
    for task, metric, fraction, method in keys:
        if method != "barlow":
            continue
        for rival in ("dual", "dual:native"):
            if (task, metric, fraction, rival) in keys:
                rel = [c[(task, metric, fraction, "barlow")] / c[(task, metric, fraction, rival)]
                       - 1 for c in cells]  # fmt: skip
                gaps.append({"task": task, "metric": metric, "fraction": fraction,
                             "rival": rival, "gain_per_seed": rel})  # fmt: skip
    command = "python benchmarks/seed_spread.py " + " ".join(sys.argv[1:])
    record = {
        "command": command,
        "git": git_commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info("torch", "seqtwins"),
        "experiment": str(args.experiment),
        "base": str(args.base),
        "train_seeds": list(evals),
        "seconds_per_seed": seconds,
        "rows": rows,
        "gaps": gaps,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(record))
    print(f"wrote {args.out}.json and .md")


def markdown(record: dict[str, Any]) -> str:
    seeds = record["train_seeds"]
    m = record["machine"]
    lines = [
        f"# Training-seed spread: `{record['experiment']}`",
        "",
        f"`{record['command']}` (git `{record['git']}`, {record['date']}; {m['nproc']} cores, "
        f"{m['cpu']}, torch {m['torch']}). Seed 0 is the run in `{record['base']}`; every "
        "seed trains every objective on the same users and splits, and is scored on the same "
        "label subsets and probe seeds. Values are means over the probe seeds; `std` is the "
        "sample std over training seeds.",
        "",
        "| task | labels | method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std |",
        "|---|---|---|" + "---|" * (len(seeds) + 2),
    ]
    for r in record["rows"]:
        vals = " | ".join(f"{v:.3f}" for v in r["values"])
        lines.append(f"| {r['task']} {r['metric']} | {r['fraction']:.0%} | {r['method']} | "
                     f"{vals} | {r['mean']:.3f} | {r['std']:.4f} |")  # fmt: skip
    lines += ["", "`barlow` relative to `dual` (probe) and `dual:native`, per training seed:", "",
              "| task | labels | vs | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|---|---|" + "---|" * len(seeds)]  # fmt: skip
    for g in record["gaps"]:
        gains = " | ".join(f"{100 * v:+.1f}%" for v in g["gain_per_seed"])
        lines.append(
            f"| {g['task']} {g['metric']} | {g['fraction']:.0%} | {g['rival']} | {gains} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
