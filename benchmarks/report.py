"""The results tables of README.md, docs/*.md and benchmarks/RESULTS.md, made from the committed records alone.

    python benchmarks/report.py           # rewrite every marked table from benchmarks/records/
    python benchmarks/report.py --check   # exit 1 if a committed table differs from what the records give

A table lives between two markers in a Markdown file:

    <!-- report: NAME -->
    ...the table, as this script writes it...
    <!-- /report: NAME -->

and NAME is a key of TABLES: a function of the records folder that returns the table's Markdown. So a figure in
a marked table is what its record says, and a test (tests/test_benchmark_bookkeeping.py) runs --check: a table
edited by hand, or a record changed without its table, fails the suite.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# every page a marked table may sit on: a new docs/ page is covered without being listed
DOCUMENTS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md")
MARKER = re.compile(r"(<!-- report: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /report: (?P=name) -->)", re.S)


def _parity_noise(records: Path) -> str:
    import parity_noise

    return parity_noise.report(json.loads((records / "parity_noise.json").read_text()))


def _quickstart(plan: str) -> Callable[[Path], str]:
    def table(records: Path) -> str:
        import quickstart_seeds

        return quickstart_seeds.report(json.loads((records / f"quickstart_{plan}.json").read_text()))
    return table


def _overhead(records: Path) -> str:
    import overhead

    return overhead.report(overhead.read_record(records))


def _deploy_speed(records: Path) -> str:
    import deploy_speed

    return deploy_speed.report(deploy_speed.read_record(records))


def _digits_kd(records: Path) -> str:
    import digits_kd

    return digits_kd.report_table(digits_kd.read_record(records))


def _qat_int8(records: Path) -> str:
    import qat_int8

    return qat_int8.report(json.loads((records / "qat_int8.json").read_text()))


def _site_gain(records: Path) -> str:
    import site_gain

    return site_gain.record_table(json.loads((records / "site_gain.json").read_text()))


TABLES: dict[str, Callable[[Path], str]] = {
    "site_gain": _site_gain,
    "qat_int8": _qat_int8,
    "overhead": _overhead,
    "deploy_speed": _deploy_speed,
    "parity_noise": _parity_noise,
    "quickstart_default": _quickstart("default"),
    "digits_kd": _digits_kd,
}


def render(text: str, records: Path) -> str:
    """`text` with every marked table made anew from `records`; an unknown NAME is an error."""
    def fill(m: re.Match) -> str:
        name = m.group("name")
        if name not in TABLES:
            raise SystemExit(f"unknown report table {name!r}: known are {', '.join(TABLES)}")
        return f"{m.group(1)}{TABLES[name](records).rstrip()}\n{m.group(4)}"
    return MARKER.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare, write nothing; exit 1 on a difference")
    ap.add_argument("--records", default=str(ROOT / "benchmarks" / "records"))
    ap.add_argument("--documents", nargs="+", default=[str(p) for p in DOCUMENTS])
    args = ap.parse_args(argv)
    stale = []
    for path in map(Path, args.documents):
        text = path.read_text()
        made = render(text, Path(args.records))
        if made == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(made)
    if args.check and stale:
        print(f"tables differ from their records in {', '.join(str(p) for p in stale)}: "
              f"run python benchmarks/report.py", file=sys.stderr)
        return 1
    for path in stale:
        print(f"rewrote the tables of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
