"""The README's result tables, rendered from the reports checked into ``docs/reports/``.

Each block of the README between ``<!-- report docs/reports/NAME.json -->`` and ``<!-- end report -->`` is
the markdown ``hellodd report`` writes for that report (table, verdict, label-robust scores), under one
line that says how, where and when the run was measured.  A report JSON is ``hellodd report``'s
``report.json`` with a ``made_by`` record added (command, commit, date, machine).

    python scripts/readme_tables.py          # rewrite the README's blocks
    python scripts/readme_tables.py --check  # exit 1 if a block differs from its report
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from hellodd.frontier import markdown

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- report (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- end report -->)", re.S)


def render(report_path: Path) -> str:
    """One block's body: the provenance line and the report's markdown."""
    report = json.loads(report_path.read_text())
    made = report["made_by"]
    head = (
        f"Measured {made['date']} on {made['machine']}, commit {made['commit']}: `{made['command']}` "
        f"(the report: [{report_path.relative_to(ROOT).as_posix()}]({report_path.relative_to(ROOT).as_posix()}))."
    )
    return head + "\n\n" + markdown(report["entries"], report["whole_data"]) + "\n"


def rendered(readme: str) -> str:
    """The README with every report block rendered from its report."""
    found = list(BLOCK.finditer(readme))
    if not found:
        raise SystemExit("README.md: no '<!-- report docs/reports/NAME.json -->' block")
    return BLOCK.sub(lambda m: m.group(1) + render(ROOT / m.group("path")) + m.group(4), readme)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--check", action="store_true", help="exit 1 if the README's tables differ from their reports"
    )
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = ap.parse_args(argv)
    text = args.readme.read_text()
    new = rendered(text)
    if args.check:
        if new != text:
            print(
                f"{args.readme}: its report tables differ from docs/reports; run python scripts/readme_tables.py"
            )
            return 1
        return 0
    if new != text:
        tmp = args.readme.with_suffix(".md.tmp")
        tmp.write_text(new)
        tmp.replace(args.readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
