"""The deletion test of attributions, on trained runs, and what ``seqtwins explain`` costs.

For each case (a name, a run, its dataset and a task) this runs
:func:`seqtwins.explain.faithfulness.faithfulness`: over up to ``--users`` labelled test
users, the probe's confidence in its predicted class is measured after removing each user's
top-k attributed items (integrated gradients, occlusion) and k random items, k = 1..5; the
areas under the deletion curves and their ratios to random are recorded. With
``--explain-user`` it also times ``seqtwins explain`` for that user in a fresh process
(``--repeats`` times: wall seconds, CPU seconds, and the load average before), which
includes Python start, imports, opening the dataset and loading the run.

    .venv/bin/python benchmarks/bench_faithfulness.py \\
        --case ml-1m out/ml1m/run out/ml1m/data favorite_category --users 500

Cases are merged into ``benchmarks/results/faithfulness.json`` (a case of the same name is
replaced) and the whole file is rendered to ``faithfulness.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def time_explain(run: str, data: str, user: str, task: str, repeats: int) -> dict[str, Any]:
    """Wall and CPU seconds of ``seqtwins explain`` in a fresh process, ``repeats`` times."""
    cmd = [sys.executable, "-m", "seqtwins", "explain", run, "--data", data, "--user", user,
           "--json"]  # fmt: skip
    out: dict[str, Any] = {"command": shlex.join(["seqtwins", *cmd[3:]]), "runs": []}
    for with_task in (False, True):
        for _ in range(repeats):
            load = os.getloadavg()[0]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            args = cmd + (["--task", task] if with_task else [])
            done = subprocess.run(args, capture_output=True, text=True, check=True)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            inside = json.loads(done.stdout)["seconds"]
            out["runs"].append({"task": task if with_task else None, "wall_s": round(wall, 2),
                                "cpu_s": round(cpu, 2), "explain_user_s": inside,
                                "load_1min_before": round(load, 2)})  # fmt: skip
    return out


def run_case(args: argparse.Namespace, name: str, run: str, data: str, task: str) -> dict[str, Any]:
    from seqtwins.explain.faithfulness import faithfulness
    from seqtwins.run import Run

    r = Run.open(run)
    summary = r.summary() if r.finished else {}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = faithfulness(run, data, task, users=args.users, draws=args.draws, seed=args.seed,
                       checkpoint=args.checkpoint)  # fmt: skip
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    res["load_1min_before"] = round(load, 2)
    res["pretraining"] = {
        "objective": r.config.objective,
        "epochs": r.config.train.epochs,
        "epochs_done": summary.get("epochs_done"),
        "encoder": {k: getattr(r.config.encoder, k) for k in ("dim", "layers", "max_len")},
    }
    if args.explain_user:
        res["explain_timing"] = time_explain(run, data, args.explain_user, task, args.repeats)
    return res


def _f(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def render(doc: dict[str, Any]) -> str:
    lines = [
        "# Faithfulness of attributions: the deletion test",
        "",
        "Drop = the probe's confidence in its predicted class (predicted from the full "
        "window) before minus after removing k items; mean over the test users. AUC = area "
        "under the deletion curve from (0, 0) to (5, drop@5); ratio = attribution / random "
        "(random = mean of the random draws). docs/explain.md explains the test.",
        "",
        "| case | task (probe) | users | method | drop@1 | drop@3 | drop@5 | AUC | AUC ratio "
        "| drop@5 ratio |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in doc["cases"].items():
        rows = [("random", c["random"])] + list(c["methods"].items())
        for method, s in rows:
            d = s["drop"]
            lines.append(
                f"| {name} | `{c['task']}` ({c['probe_solver']}) | {c['users']} | {method} | "
                f"{_f(d[0])} | {_f(d[2])} | {_f(d[4])} | {_f(s['auc'])} | "
                f"{_f(s.get('auc_ratio'), 2)} | {_f(s.get('drop_ratio_at_k'), 2)} |"
            )
    lines.append("")
    for name, c in doc["cases"].items():
        p = c["pretraining"]
        lines += [
            f"**{name}**: `{c['run']}` ({p['objective']}, {p['epochs_done']} of "
            f"{p['epochs']} epochs, dim {p['encoder']['dim']}, max_len "
            f"{p['encoder']['max_len']}); mean confidence before removal "
            f"{c['confidence']:.3f}; {c['users']} of {c['eligible_test_users']} eligible test "
            f"users; {c['wall_seconds']:.0f} s (load average {c['load_1min_before']} before). "
            f"Command: `{c['command']}` ({c['started']}).",
            "",
        ]
        timing = c.get("explain_timing")
        if timing:
            lines += [
                f"`{timing['command']}` [--task {c['task']}] in a fresh process:",
                "",
                "| --task | wall s | CPU s | explain_user s (in process) | load before |",
                "|---|---:|---:|---:|---:|",
            ]
            for t in timing["runs"]:
                lines.append(f"| {t['task'] or '-'} | {t['wall_s']} | {t['cpu_s']} | "
                             f"{t['explain_user_s']} | {t['load_1min_before']} |")  # fmt: skip
            lines.append("")
    m = doc["machine"]
    lines.append(
        f"Machine: {m['nproc']} cores ({m['cpu']}), Python {m['python']}, torch {m['torch']}, "
        f"captum {m['captum']}; shared with other jobs while this ran (see the load averages)."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", nargs=4, action="append", required=True,
                    metavar=("NAME", "RUN", "DATA", "TASK"))  # fmt: skip
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--draws", type=int, default=3, help="Random orders per user.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default="best")
    ap.add_argument("--explain-user", help="Also time `seqtwins explain` for this user id.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "faithfulness")
    args = ap.parse_args(argv)
    path = args.out.with_suffix(".json")
    doc: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"cases": {}}
    command = shlex.join(["python", "benchmarks/bench_faithfulness.py",
                          *(argv if argv is not None else sys.argv[1:])])  # fmt: skip
    for name, run, data, task in args.case:
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        res = run_case(args, name, run, data, task)
        res.update(command=command, started=started)
        doc["cases"][name] = res
        doc["machine"] = machine_info("torch", "captum")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(render(doc))
        ratios = [f"{m} AUC ratio {_f(s['auc_ratio'], 2)}" for m, s in res["methods"].items()]
        print(f"{name}: " + ", ".join(ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
