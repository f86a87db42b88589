"""Discover and run the benchmark modules in ``lgrad/bench/entries``."""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pkgutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from lgrad.bench.entry import Entry

__all__ = ["available", "run_benchmarks", "format_table", "plot"]


def available() -> list[str]:
    import lgrad.bench.entries as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def run_benchmarks(
    *, quick: bool, only: list[str] | None = None, progress: bool = True
) -> tuple[list[Entry], dict[str, str]]:
    """Run every (or the ``only``) benchmark module; returns entries and per-module errors."""
    from tqdm.auto import tqdm

    topics = available()
    if only:
        unknown = sorted(set(only) - set(topics))
        if unknown:
            raise KeyError(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(topics)}")
        topics = [t for t in topics if t in only]
    entries: list[Entry] = []
    errors: dict[str, str] = {}
    bar = tqdm(topics, desc="bench", disable=not progress, leave=False, file=sys.stderr)
    for topic in bar:
        bar.set_description(f"bench: {topic}")
        try:
            module = importlib.import_module(f"lgrad.bench.entries.{topic}")
            got = list(module.run(quick))
            for e in got:
                if not isinstance(e, Entry):
                    raise TypeError(f"{topic}.run returned {type(e).__name__}, not Entry")
            entries.extend(dataclasses.replace(e, extra={**e.extra, "topic": topic}) for e in got)
        except Exception as e:  # one broken benchmark must not hide the others
            errors[topic] = f"{type(e).__name__}: {e}"
            traceback.print_exc(file=sys.stderr)
    return entries, errors


def format_table(entries: list[Entry]) -> str:
    header = ("benchmark", "ours", "baseline", "ratio", "better", "target", "met")
    rows = [
        (
            e.name,
            f"{e.ours:.4g} {e.unit}",
            f"{e.baseline:.4g} {e.unit}",
            f"{e.ratio:.3f}",
            e.direction,
            e.target or "-",
            {True: "yes", False: "NO", None: "-"}[e.met],
        )
        for e in entries
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


def plot(entries: list[Entry], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    if not entries:
        return
    from matplotlib.ticker import FuncFormatter, LogLocator

    fig, ax = plt.subplots(figsize=(10, 0.32 * len(entries) + 1.6))
    names = [f"{e.name} ({e.direction} is better)" for e in entries][::-1]
    ratios = [e.ratio for e in entries][::-1]
    colors = [{True: "tab:green", False: "tab:red", None: "tab:gray"}[e.met] for e in entries][::-1]
    ax.barh(names, ratios, color=colors)
    for i, e in enumerate(entries[::-1]):
        bound = e.max_ratio if e.max_ratio is not None else e.min_ratio
        if bound is not None:
            ax.plot([bound, bound], [i - 0.4, i + 0.4], color="k", lw=2)
        ax.text(e.ratio, i, f" {e.ratio:.3g}", va="center", fontsize=8)
    ax.axvline(1.0, color="0.5", ls=":", lw=1)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.tick_params(axis="y", labelsize=7)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel("ratio ours / baseline (black tick: target; green met, red missed, grey reported)")
    ax.set_title("lgrad bench: ratios against the baseline, measured side by side")
    fig.tight_layout()
    fig.savefig(path, dpi=80)  # ~90 rows: keeps the committed PNG under ~300 KB
    plt.close(fig)


def write(
    entries: list[Entry], errors: dict[str, str], out: Path, *, quick: bool, seconds: float, only: list[str] | None = None
) -> Path:
    """Write bench.json/png (through temporary files: an interrupted write leaves the old
    ones intact). With ``only``, entries of the other topics already in an existing
    bench.json of the same mode are kept (a partial re-run updates the file)."""
    from lgrad.engine.environment import environment

    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench.json"
    rows = [e.to_dict() for e in entries]
    if only and path.exists():
        old = json.loads(path.read_text())
        if old.get("quick") == quick:
            kept = [r for r in old.get("entries", []) if r.get("extra", {}).get("topic") not in set(only)]
            rows = kept + rows
            entries = [Entry.from_dict(r) for r in rows]
    data: dict[str, Any] = {
        "quick": quick,
        "runtime_s": round(seconds, 2),
        "environment": environment(),
        "entries": rows,
        "errors": errors,
    }
    tmp_json, tmp_png = out / f".bench.json.partial-{os.getpid()}", out / f".bench.partial-{os.getpid()}.png"
    try:  # both files are replaced only once both are written
        tmp_json.write_text(json.dumps(data, indent=2) + "\n")
        plot(entries, tmp_png)
        os.replace(tmp_json, path)
        if tmp_png.exists():
            os.replace(tmp_png, out / "bench.png")
    finally:
        tmp_json.unlink(missing_ok=True)
        tmp_png.unlink(missing_ok=True)
    return path


def main(*, quick: bool, out: str, only: list[str] | None, progress: bool) -> int:
    start = time.perf_counter()
    entries, errors = run_benchmarks(quick=quick, only=only, progress=progress)
    path = write(entries, errors, Path(out), quick=quick, seconds=time.perf_counter() - start, only=only)
    print(format_table(entries))
    met = sum(e.met is True for e in entries)
    missed = sum(e.met is False for e in entries)
    print(
        f"wrote {path}  ·  {len(entries)} entries: {met} met, {missed} missed, "
        f"{len(entries) - met - missed} reported; {len(errors)} module error(s) "
        f"({time.perf_counter() - start:.1f} s)"
    )
    for topic, err in errors.items():
        print(f"  {topic}: {err}", file=sys.stderr)
    return 1 if errors else 0
