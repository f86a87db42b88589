"""Regenerate README.md's generated tables from the code and results/.

    python scripts/update_readme.py [--only transforms|reproductions|bench]

Sections between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` are replaced:
``transforms`` (every public factory in lgrad's rule packages), ``reproductions``
(every registered experiment with its committed result) and ``bench`` (the latest
results/bench.json, when present).
"""
from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "results"

# Packages whose public callables are listed as transforms / tools.
RULE_PACKAGES = [
    "lgrad.optim",
    "lgrad.robust",
    "lgrad.federated",
    "lgrad.distributed",
    "lgrad.local",
    "lgrad.adapters",
    "lgrad.solvers",
    "lgrad.gflownet",
    "lgrad.analysis",
    "lgrad.analysis.attribution",
    "lgrad.unlearn",
]


def _first_line(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def transforms_table() -> str:
    rows = ["| package | name | what it is |", "| --- | --- | --- |"]
    for pkg_name in RULE_PACKAGES:
        try:
            pkg = importlib.import_module(pkg_name)
        except ImportError:
            continue
        for name in getattr(pkg, "__all__", []):
            obj = getattr(pkg, name)
            if inspect.isclass(obj) or not callable(obj):
                continue  # states and containers are documented with their factory
            rows.append(f"| `{pkg_name}` | `{name}` | {_first_line(obj)} |")
    return "\n".join(rows)


def reproductions_table() -> str:
    from lgrad.engine import discover

    rows = [
        "| experiment | paper | quick result (committed in `results/`) |",
        "| --- | --- | --- |",
    ]
    for name, exp in discover().items():
        path = RESULTS / name / "result.json"
        if path.exists():
            data = json.loads(path.read_text())
            claims = data["claims"]
            p = sum(c["passed"] is True for c in claims)
            f = sum(c["passed"] is False for c in claims)
            from lgrad.engine.claims import SKIPPED

            k = sum(c["passed"] is None and c["target"] == SKIPPED for c in claims)
            i = sum(c["passed"] is None for c in claims) - k
            skipped = f", {k} skipped" if k else ""
            status = f"{p} pass, {f} fail, {i} findings{skipped} ({data['mode']}, {data['runtime_s']:.0f} s)"
        else:
            status = "not run yet"
        rows.append(f"| `{name}` | {exp.paper} | {status} |")
    return "\n".join(rows)


def bench_table() -> str:
    path = RESULTS / "bench.json"
    if not path.exists():
        return "_No benchmark recorded yet: run `lgrad bench`._"
    data = json.loads(path.read_text())
    entries = data["entries"] if isinstance(data, dict) else data
    from lgrad.bench.entry import Entry

    rows = [
        "| benchmark | ours | baseline | ratio | better | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries:
        met = {True: "yes", False: "**no**", None: "-"}[e.get("met")]
        better = e.get("better") or Entry.from_dict(e).direction
        rows.append(
            f"| {e['name']} | {e['ours']:.4g} {e.get('unit', '')} | {e['baseline']:.4g} {e.get('unit', '')} "
            f"| {e['ratio']:.3g} | {better} | {e.get('target') or '-'} | {met} |"
        )
    env = data.get("environment", {}) if isinstance(data, dict) else {}
    if env:
        rows.append("")
        rows.append(f"_Measured on {env.get('backend', '?')} ({env.get('device_kind', '?')}), jax {env.get('jax', '?')}._")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """``--only SECTION`` (repeatable) regenerates just those sections."""
    import argparse

    parser = argparse.ArgumentParser(description="regenerate README.md's generated tables")
    parser.add_argument("--only", action="append", default=[], choices=["transforms", "reproductions", "bench"])
    args = parser.parse_args(argv)
    text = README.read_text()
    sections = [("transforms", transforms_table), ("reproductions", reproductions_table), ("bench", bench_table)]
    for section, render in [(n, r) for n, r in sections if not args.only or n in args.only]:
        pattern = re.compile(rf"(<!-- BEGIN {section} -->\n).*?(<!-- END {section} -->)", re.S)
        if not pattern.search(text):
            print(f"README.md has no {section} section", file=sys.stderr)
            continue
        text = pattern.sub(lambda m: m.group(1) + render() + "\n" + m.group(2), text)
    README.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
