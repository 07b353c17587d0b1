"""Run tests/test_hostile.py and write its outcome as the table of docs/reliability.md.

    python benchmarks/hostile_table.py [--doc docs/reliability.md] [--findings FILE]
        [--junit FILE]

Each case is ``ok`` (the promise held), ``weak`` (exit 2 and no traceback, but the message
does not name the file/setting, is not one line, or comes late), ``defect`` (a
traceback, a wrong exit code, something lost or left behind) or ``xfail`` (a behaviour
left for a decision; the reason says which). The table replaces the
lines between the two ``hostile-table`` markers of the document; ``--findings`` also
writes the failing cases grouped by area (data / run / cli/config).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- hostile-table:start -->", "<!-- hostile-table:end -->"
BEFORE = ROOT / "benchmarks" / "results" / "hostile_main.json"
AREAS = ("data", "run", "cli/config")
OUTCOMES = ("ok", "weak", "defect", "xfail", "skipped")
_DATA = ("test_prepare", "test_synth", "test_inspect", "test_tampered", "test_out_of_range",
         "test_no_verify", "test_download", "test_disk_full_while_writing_dataset",
         "test_ctrl_c_while_writing_dataset", "test_out_is_the_current_folder")  # fmt: skip
_CLI = ("test_bad_set", "test_bad_config", "test_config_is", "test_objective_option",
        "test_backend_option", "test_device_cuda", "test_max_len", "test_resume_with",
        "test_usage_error", "test_unknown_command", "test_run_bad_experiment",
        "test_run_set_unknown", "test_run_experiment_missing", "test_tune_bad",
        "test_scientific_notation")  # fmt: skip
_TMP = re.compile(r"/tmp/pytest-of-[^/\s]+/pytest-\d+/[^/\s'\"]+")


@dataclass
class Case:
    name: str
    command: str
    expected: str
    outcome: str  # ok / weak / defect / xfail / skipped
    symptom: str

    @property
    def area(self) -> str:
        param = self.name.partition("[")[2].rstrip("]")
        if self.name.startswith(("test_os_error", "test_out_name", "test_two_writers")):
            return "data" if param in ("prepare", "synth") else "run"
        if self.name.startswith(_DATA):
            return "data"
        if self.name.startswith(_CLI):
            return "cli/config"
        return "run"

    @property
    def title(self) -> str:
        base, _, param = self.name.partition("[")
        text = base.removeprefix("test_").replace("_", " ")
        return f"{text}: {param.rstrip(']')}" if param else text


def _shorten(text: str, limit: int = 220) -> str:
    text = _TMP.sub("$TMP", " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _collapse(command: str) -> str:
    """Replace the tiny-run settings every pretrain case passes by ``$TINY``."""
    sys.path.insert(0, str(ROOT))
    try:
        from tests.test_hostile import EVAL_FAST, SETS
    finally:
        sys.path.pop(0)
    return command.replace(" ".join(SETS), "$TINY").replace(" ".join(EVAL_FAST), "$FAST")


def _pairs(props: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(command, expected) pairs in the order the test checked them."""
    out, command = [], ""
    for key, value in props:
        if key == "command":
            command = value
        elif key == "expected":
            out.append((command, value))
    return out or [(command, "")]


def parse(junit: Path) -> list[Case]:
    cases = []
    for tc in ET.parse(junit).iter("testcase"):
        props = [(p.get("name", ""), p.get("value", "")) for p in tc.iter("property")]
        pairs = _pairs(props)
        fail = next((tc.find(t) for t in ("failure", "error") if tc.find(t) is not None), None)
        skipped = tc.find("skipped")
        if skipped is not None:
            xfail = skipped.get("type") == "pytest.xfail"
            outcome = "xfail" if xfail else "skipped"
            symptom = skipped.get("message", "").removeprefix("reason: ")
        elif fail is not None:
            message = (fail.get("message") or "").removeprefix("Failed: ")
            message = message.removeprefix("AssertionError: ").split("\n")[0]
            outcome = "weak" if message.startswith("weak: ") else "defect"
            symptom = message.removeprefix("weak: ")
        else:
            outcome, symptom = "ok", ""
        if fail is not None:
            command, expected = pairs[-1]
        else:  # the first refusal the case checked, else its last command
            command, expected = next((p for p in pairs if not p[1].startswith("exit 0")), pairs[-1])
        cases.append(Case(tc.get("name", ""), _collapse(command), expected, outcome, symptom))
    return cases


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _counts(cases: list[Case]) -> str:
    return _counts_text(Counter(c.outcome for c in cases))


def _counts_text(n: Counter[str]) -> str:
    return ", ".join(f"{n[o]} {o}" for o in OUTCOMES if n[o])


def table(cases: list[Case], label: str, before: dict[str, Any] | None = None) -> str:
    """The Markdown table; ``before`` (a file written by ``--save``) adds a column with each
    case's outcome on an earlier commit."""
    counts = Counter(c.outcome for c in cases)
    old = before["cases"] if before else {}
    if before:
        was = Counter(v["outcome"] for v in old.values())
        head = (f"\n\nColumn *before*: the same cases on {before['label']} "
                f"({_counts_text(was)}).")  # fmt: skip
    else:
        head = ""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"{len(cases)} cases on {label}, run {when}: {_counts_text(counts)}"
        + ". `$TMP` is the test's temporary folder, `$TINY` the tiny-run `--set`s, `$FAST` the "
        "one-task evaluation options (see tests/test_hostile.py)." + head,
        "",
        *(f"- {area}: {_counts([c for c in cases if c.area == area])}" for area in AREAS),
        "",
        "| # | area | case | command | expected | outcome |" + (" before |" if old else ""),
        "|---|---|---|---|---|---|" + ("---|" if old else ""),
    ]
    for i, c in enumerate(sorted(cases, key=lambda c: AREAS.index(c.area)), 1):
        outcome = c.outcome if not c.symptom else f"**{c.outcome}**: {_shorten(c.symptom)}"
        lines.append(
            f"| {i} | {c.area} | {_cell(c.title)} | `{_cell(_shorten(c.command, 160))}` | "
            f"{_cell(_shorten(c.expected, 80))} | {_cell(outcome)} |"
            + (f" {old.get(c.name, {}).get('outcome', 'new')} |" if old else "")
        )
    return "\n".join(lines)


NOTES = """\
Run one case: `PYTHONPATH=src pytest tests/test_hostile.py -k 'ID'` (ID as below, e.g.
`test_embed_locked_output`). A refusal passes when: exit 2, no traceback, stderr is exactly
one line starting `error:` that contains the listed word (case-insensitive), inputs and
foreign files byte-identical, no `.NAME.tmp-*`/`.old-`/`.work-`/`.lock` sibling left.
Choices the cases make (the coordinator may overrule): `--no-verify` is tried on `pretrain`
only; the embed/evaluate lock cases hold `files.file_lock(out)`, the pretrain one runs a
real second process; a NaN stop must name a checkpoint folder that exists; duplicate YAML
keys, an empty JSON-lines `--sequences` file and `report --out` onto a foreign report.md
are refused; `train.lr=3e-3` must parse as a number (PyYAML reads it as a string); error
text with [brackets] must print verbatim (rich markup eats `[red]` in cli.fail).
"""


def findings(cases: list[Case]) -> str:
    bad = [c for c in cases if c.outcome in ("weak", "defect")]
    out = [f"# hostile findings ({len(bad)} of {len(cases)} cases fail; "
           f"{datetime.now(UTC).strftime('%H:%M UTC')})", "",
           "From `python benchmarks/hostile_table.py` on branch hostile (tests/test_hostile.py). "
           "One line per failing case: test id | command | symptom.", "", NOTES]  # fmt: skip
    for area in AREAS:
        group = [c for c in bad if c.area == area]
        out += [f"## {area} ({len(group)})", ""]
        out += [f"- [{c.outcome}] `{c.name}` | `{_shorten(c.command, 200)}` | "
                f"{_shorten(c.symptom, 260)}" for c in group]  # fmt: skip
        out.append("")
    return "\n".join(out)


def _head_label() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    return f"commit {head}" if head else "this checkout"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "reliability.md")
    ap.add_argument("--findings", type=Path, default=None)
    ap.add_argument("--junit", type=Path, default=None, help="Reuse this JUnit XML (no run).")
    ap.add_argument("--save", type=Path, default=None, help="Write the outcomes as JSON.")
    ap.add_argument("--label", default=None, help="The code tested (default: git HEAD).")
    ap.add_argument("--before", type=Path, default=BEFORE if BEFORE.is_file() else None,
                    help=f"Outcomes saved earlier, shown as a column (default: {BEFORE.name}; "
                    "none: no column).")  # fmt: skip
    args = ap.parse_args()
    if args.junit is not None:
        cases = parse(args.junit)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            junit = Path(tmp) / "hostile.xml"
            subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
                 "junit_family=xunit1", f"--junitxml={junit}", "tests/test_hostile.py"],
                cwd=ROOT, check=False,
            )  # fmt: skip
            cases = parse(junit)
    label = args.label or _head_label()
    use = args.before is not None and args.before.name != "none"
    before = json.loads(args.before.read_text()) if use else None
    doc = args.doc.read_text()
    head, _, rest = doc.partition(START)
    _, _, tail = rest.partition(END)
    args.doc.write_text(f"{head}{START}\n{table(cases, label, before)}\n{END}{tail}")
    if args.save is not None:
        saved = {c.name: {"outcome": c.outcome, "symptom": _shorten(c.symptom)} for c in cases}
        args.save.write_text(json.dumps({"label": label, "cases": saved}, indent=1) + "\n")
    if args.findings is not None:
        args.findings.write_text(findings(cases))
    counts = Counter(c.outcome for c in cases)
    print(f"{len(cases)} cases: {dict(counts)}; wrote {args.doc}")


if __name__ == "__main__":
    main()
