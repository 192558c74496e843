"""Check the benchmark JSON files of a gpu_check run and print one compact table.

    python tools/gpu_check_summary.py OUT_DIR

Reads every ``bench*.json`` (lists of records written by ``autodeploy.tools.bench``) and the
pytest junit file ``tests.xml`` when present. Exit status 1 when a file is not a list of records
with the fields the table needs, or when no record was found; 0 otherwise (failed systems are
shown as errors in the table, they do not fail the check).
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REQUIRED = ("model", "system", "batch", "isl", "osl", "dtype", "device")
SPEED = ("ms_per_step", "decode_tok_s", "roofline_ms", "pct_roofline")
BASELINE = "hf-static-compile"


def load_records(out_dir: Path) -> list[dict]:
    records = []
    for path in sorted(out_dir.glob("bench*.json")):
        data = json.loads(path.read_text())
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        for index, record in enumerate(data):
            missing = [key for key in REQUIRED if key not in record]
            if "error" not in record:
                missing += [key for key in SPEED if key not in record]
            if missing:
                raise ValueError(f"{path} record {index}: missing {', '.join(missing)}")
            records.append(record)
    return records


def test_summary(out_dir: Path) -> str | None:
    path = out_dir / "tests.xml"
    if not path.is_file():
        return None
    suite = ElementTree.parse(path).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    line = "tests: {tests} run, {failures} failed, {errors} errors, {skipped} skipped".format(
        **counts
    )
    return "\n".join([line, *(f"  FAILED {name}" for name in failed)])


def format_rows(records: list[dict]) -> str:
    baseline = {
        (r["model"], r["batch"]): r["ms_per_step"]
        for r in records
        if r["system"] == BASELINE and r.get("ms_per_step")
    }
    header = f"{'model':<14} {'bs':>3} {'system':<36} {'ms/step':>9} {'tok/s':>9} "
    header += f"{'%floor':>7} {'vs ' + BASELINE:>22}"
    lines = [header, "-" * len(header)]
    for r in records:
        head = f"{r['model']:<14} {r['batch']:>3} {r['system']:<36} "
        if "error" in r:
            lines.append(head + f"ERROR: {str(r['error'])[:60]}")
            continue
        base = baseline.get((r["model"], r["batch"]))
        ratio = f"{base / r['ms_per_step']:.2f}x faster" if base and r["ms_per_step"] else "-"
        lines.append(
            head + f"{r['ms_per_step']:>9.4g} {r['decode_tok_s'] or 0:>9.1f} "
            f"{r['pct_roofline'] or 0:>6.1f}% {ratio:>22}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python tools/gpu_check_summary.py OUT_DIR", file=sys.stderr)
        return 2
    out_dir = Path(argv[0])
    try:
        records = load_records(out_dir)
    except (ValueError, json.JSONDecodeError) as exc:
        print(f"gpu_check_summary: {exc}", file=sys.stderr)
        return 1
    summary = test_summary(out_dir)
    if summary:
        print(summary)
    if not records:
        print(f"gpu_check_summary: no benchmark records in {out_dir}", file=sys.stderr)
        return 1
    print(format_rows(records))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
