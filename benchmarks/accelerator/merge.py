"""Merge benchmark reports that share a format ({"machine", "rows", ...}) into one file: the rows
concatenated in the order given, the first report's other keys. Missing inputs are skipped.

    python benchmarks/accelerator/merge.py OUT.json IN1.json IN2.json ...
"""
from __future__ import annotations

import json
import os
import sys


def merge(paths: list[str]) -> dict | None:
    reports = []
    for path in paths:
        if os.path.exists(path):
            with open(path) as f:
                reports.append(json.load(f))
    if not reports:
        return None
    merged = dict(reports[0])
    merged["rows"] = [row for report in reports for row in report.get("rows", [])]
    return merged


def main(argv: list[str]) -> int:
    out, *inputs = argv
    merged = merge(inputs)
    if merged is None:
        print(f"merge: none of {inputs} exists")
        return 1
    with open(out, "w") as f:
        json.dump(merged, f, indent=2)
    print(f"merge: {len(merged['rows'])} rows -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
