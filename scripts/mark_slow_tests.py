"""Write ``tests/slow_tests.json``: the tests that `pytest -m "not slow"` leaves out.

Usage (on a quiet 2-core CPU, after a change that adds or slows tests)::

    pytest -m "not slow" -p no:cacheprovider --junitxml=/tmp/fast.xml
    python scripts/mark_slow_tests.py /tmp/fast.xml [--budget 120]

Reads the per-test times of a JUnit report and lists as slow the slowest tests
until the remaining ones add up to at most ``--budget`` seconds, so the quick subset
(``pytest -m "not slow"``) stays under 3 minutes with collection and imports. Tests
already marked ``slow`` in the code stay slow; ``tests/conftest.py`` adds the
marker to every test named in the file, and those stay listed (they are not in the
report); to shrink the list, empty it and report on the full suite's non-``slow``-marked
tests. The full suite (``pytest``) runs them all.
"""
from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "slow_tests.json"


def node_id(classname: str, name: str) -> str:
    """``tests.test_x`` / ``tests.test_x.TestC`` + ``test_y[p]`` -> pytest's node id."""
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        path = Path(*parts[:cut]).with_suffix(".py")
        if (ROOT / path).exists():
            return "::".join([path.as_posix(), *parts[cut:], name])
    raise ValueError(f"no test file for {classname!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("junit", type=Path)
    p.add_argument("--budget", type=float, default=120.0, help="seconds the quick subset may take (default 120)")
    args = p.parse_args(argv)
    if args.budget <= 0:
        print(f"mark_slow_tests: --budget must be > 0, got {args.budget}", file=sys.stderr)
        return 2
    times = {node_id(c.get("classname", ""), c.get("name", "")): float(c.get("time", 0.0)) for c in ET.parse(args.junit).iter("testcase")}
    # the tests the file already lists did not run (the quick subset leaves them out): they stay slow
    previous = json.loads(OUT.read_text())["slow"] if OUT.exists() else []
    kept, slow = 0.0, [nid for nid in previous if nid not in times]
    for nid, t in sorted(times.items(), key=lambda kv: kv[1]):
        if kept + t <= args.budget:
            kept += t
        else:
            slow.append(nid)
    OUT.write_text(json.dumps({"budget_s": args.budget, "quick_subset_s": round(kept, 1), "slow": sorted(slow)}, indent=1) + "\n")
    print(f"{len(times) - len(slow)} tests kept ({kept:.0f} s), {len(slow)} marked slow -> {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
