"""Regenerate README.md's generated tables from the code and results/.

    python scripts/update_readme.py [--only transforms|reproductions|bench|papers]

Sections between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` are replaced:
``transforms`` (every public factory in lgrad's rule packages), ``reproductions``
(every registered experiment with its committed result) and ``bench`` (the latest
results/bench.json, when present); in docs/papers/README.md, ``papers`` (one row per
experiment, the total and the failing claims).
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
PAPERS_INDEX = ROOT / "docs" / "papers" / "README.md"
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


def _result(name: str) -> dict | None:
    path = RESULTS / name / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def _counts(claims: list[dict]) -> tuple[int, int, int, int]:
    """(pass, fail, finding, skipped) of a result's claims."""
    from lgrad.engine.claims import SKIPPED

    skipped = sum(c["passed"] is None and c["target"] == SKIPPED for c in claims)
    return (sum(c["passed"] is True for c in claims), sum(c["passed"] is False for c in claims),
            sum(c["passed"] is None for c in claims) - skipped, skipped)


def reproductions_table() -> str:
    from lgrad.engine import discover

    rows = [
        "| experiment | paper | quick result (committed in `results/`) |",
        "| --- | --- | --- |",
    ]
    for name, exp in discover().items():
        data = _result(name)
        if data is not None:
            p, f, i, k = _counts(data["claims"])
            skipped = f", {k} skipped" if k else ""
            status = f"{p} pass, {f} fail, {i} findings{skipped} ({data['mode']}, {data['runtime_s']:.0f} s)"
        else:
            status = "not run yet"
        rows.append(f"| [`{name}`](docs/papers/{name}.md) | {exp.paper} | {status} |")
    return "\n".join(rows)


def papers_table() -> str:
    """docs/papers/README.md: one row per experiment, a total, and where the failures are."""
    from lgrad.engine import discover

    rows = ["| experiment | paper | command | pass / fail / finding | quick time (wall, committed run) |",
            "| --- | --- | --- | --- | --- |"]
    total, seconds, failing = [0, 0, 0, 0], 0.0, []
    for name, exp in discover().items():
        data = _result(name)
        if data is None:
            rows.append(f"| [`{name}`]({name}.md) | {exp.paper} | `lgrad run {name} --quick` | not run yet | - |")
            continue
        counts = _counts(data["claims"])
        total = [a + b for a, b in zip(total, counts)]
        seconds += data["runtime_s"]
        skipped = f" ({counts[3]} skipped)" if counts[3] else ""
        rows.append(f"| [`{name}`]({name}.md) | {exp.paper} | `lgrad run {name} --quick` "
                    f"| {counts[0]} / {counts[1]} / {counts[2]}{skipped} | {data['runtime_s']:.0f} s |")
        failing += [f"- [`{name}`]({name}.md): `{c['id']}` (measured {_short(c['measured'])}, target {c['target']})"
                     for c in data["claims"] if c["passed"] is False]
    skipped = f" ({total[3]} skipped)" if total[3] else ""
    rows.append(f"| **total** | | `lgrad reproduce --quick` | **{total[0]} / {total[1]} / {total[2]}**{skipped} "
                f"| {seconds:.0f} s |")
    rows += ["", "Failing claims (each stays failing and is explained on its page):", "", *(failing or ["- none"])]
    return "\n".join(rows)


def _short(value, width: int = 60) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else json.dumps(value)
    return text if len(text) <= width else text[: width - 1] + "…"


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
            f"| {e['ratio']:.4g} | {better} | {e.get('target') or '-'} | {met} |"
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
    parser.add_argument("--only", action="append", default=[],
                        choices=["transforms", "reproductions", "bench", "papers"])
    args = parser.parse_args(argv)
    sections = [(README, "transforms", transforms_table), (README, "reproductions", reproductions_table),
                (README, "bench", bench_table), (PAPERS_INDEX, "papers", papers_table)]
    for path in (README, PAPERS_INDEX):
        text = path.read_text()
        for _, section, render in [x for x in sections if x[0] == path and (not args.only or x[1] in args.only)]:
            pattern = re.compile(rf"(<!-- BEGIN {section} -->\n).*?(<!-- END {section} -->)", re.S)
            if not pattern.search(text):
                print(f"{path.name} has no {section} section", file=sys.stderr)
                continue
            text = pattern.sub(lambda m: m.group(1) + render() + "\n" + m.group(2), text)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
