#!/usr/bin/env python3
"""Merge JUnit XML reports into one (``make test`` runs its tiers as separate pytest passes;
CI and the per-test durations read one ``test-output/junit.xml``).

Usage: junit_merge.py OUT IN [IN ...]; an input that does not exist (a pass that did not run)
is skipped and named on stderr. The totals of each input and every failed or errored test are
printed last, so the end of ``make test``'s output (all a CI log's tail may keep) names them.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def merge(inputs: list[Path]) -> ET.Element:
    """One <testsuites> holding every <testsuite> of the inputs, with summed totals."""
    out = ET.Element("testsuites")
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    seconds = 0.0
    for path in inputs:
        root = ET.parse(path).getroot()
        for suite in [root] if root.tag == "testsuite" else root.iter("testsuite"):
            out.append(suite)
            for key in totals:
                totals[key] += int(suite.get(key, 0))
            seconds += float(suite.get("time", 0))
    for key, value in totals.items():
        out.set(key, str(value))
    out.set("time", f"{seconds:.3f}")
    return out


def summary(inputs: list[Path]) -> list[str]:
    """A line of totals per input, then one line per failed or errored test with its message's
    first line."""
    lines, failed = [], []
    for path in inputs:
        root = ET.parse(path).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        count = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        lines.append(f"{path.name}: {count['tests']} tests, {count['failures']} failed, "
                     f"{count['errors']} errors, {count['skipped']} skipped")
        for case in (c for s in suites for c in s.iter("testcase")):
            for bad in (*case.findall("failure"), *case.findall("error")):
                message = (bad.get("message") or bad.text or "").strip().splitlines()
                failed.append(f"{bad.tag.upper()} {case.get('classname')}::{case.get('name')}"
                              f" - {message[0][:300] if message else ''}")
    return lines + failed


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out, inputs = Path(argv[0]), [Path(a) for a in argv[1:]]
    for missing in [p for p in inputs if not p.is_file()]:
        print(f"junit_merge: {missing} not found, skipped", file=sys.stderr)
    present = [p for p in inputs if p.is_file()]
    ET.ElementTree(merge(present)).write(out, encoding="utf-8", xml_declaration=True)
    print("\n".join(["== test summary (test-output/junit.xml)", *summary(present)]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
