"""The sweep's outputs: one table (csv + jsonl), the best configuration, a heat map."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["write_tables", "best_summary", "format_best", "write_heatmap"]


def _config_key(rec: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in rec["overrides"].items() if k != "seed"}, sort_keys=True)


def write_tables(out_dir: Path, records: list[dict[str, Any]], swept: Sequence[str]) -> None:
    """``sweep.jsonl`` (one full record per cell) and ``sweep.csv`` (flat columns)."""
    with open(out_dir / "sweep.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    keys = sorted({k for r in records for k in r["overrides"] if k != "seed"})
    metrics = sorted({k for r in records for k in r["metrics"]})
    claims = sorted({k for r in records for k in r["claims"]})
    with open(out_dir / "sweep.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "index", "seed", *keys, *metrics, *[f"passed:{c}" for c in claims], "group", "strategy"])
        for r in records:
            w.writerow(
                [r["cell"], r["index"], r["seed"]]
                + [json.dumps(r["overrides"][k]) if isinstance(r["overrides"].get(k), (list, dict)) else r["overrides"].get(k, r["config"].get(k)) for k in keys]
                + [r["metrics"].get(m, "") for m in metrics]
                + [r["claims"].get(c, {}).get("passed", "") for c in claims]
                + [r["group"], r["strategy"]]
            )


def _value(rec: dict[str, Any], metric: str) -> float:
    v = rec["metrics"].get(metric)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return v


def best_summary(records: list[dict[str, Any]], metric: str, direction: str) -> dict[str, Any] | None:
    """Mean/std of ``metric`` over seeds per configuration; the best by mean.

    Configurations with a non-finite mean rank last (a diverged run is never best).
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(_config_key(r), []).append(r)
    rows = []
    for key, recs in groups.items():
        vals = np.asarray([_value(r, metric) for r in recs], dtype=float)
        finite = vals[np.isfinite(vals)]
        mean = float(finite.mean()) if len(finite) == len(vals) and len(vals) else float("nan")
        rows.append(
            {
                "config": json.loads(key),
                "mean": mean,
                "std": float(finite.std()) if len(finite) > 1 else 0.0,
                "n_seeds": len(recs),
                "cells": [r["cell"] for r in recs],
            }
        )
    if not rows:
        return None
    sign = 1.0 if direction == "min" else -1.0
    rows.sort(key=lambda r: (not math.isfinite(r["mean"]), sign * r["mean"] if math.isfinite(r["mean"]) else 0.0))
    for r in rows:
        if not math.isfinite(r["mean"]):
            r["mean"] = str(r["mean"])
    return {"metric": metric, "direction": direction, "best": rows[0], "ranking": rows[:10], "n_configs": len(rows), "n_cells": len(records)}


def format_best(best: dict[str, Any] | None) -> str:
    if not best:
        return "no finished cells"
    b = best["best"]
    cfg = ", ".join(f"{k}={v}" for k, v in b["config"].items()) or "(base config)"
    mean = b["mean"] if isinstance(b["mean"], str) else f"{b['mean']:.6g}"
    spread = f" ± {b['std']:.3g} over {b['n_seeds']} seeds" if b["n_seeds"] > 1 else ""
    return f"best of {best['n_configs']} configs by {best['metric']} ({best['direction']}): {cfg} -> {mean}{spread}"


def write_heatmap(path: Path, records: list[dict[str, Any]], axes: Sequence[str], metric: str, direction: str, *, title: str = "") -> Path:
    """Mean ``metric`` over seeds on the 2-D grid ``axes`` (rows: axes[0], columns: axes[1])."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ya, xa = axes
    ys = sorted({json.dumps(r["overrides"][ya]) for r in records}, key=lambda s: json.loads(s))
    xs = sorted({json.dumps(r["overrides"][xa]) for r in records}, key=lambda s: json.loads(s))
    sums = np.zeros((len(ys), len(xs)))
    counts = np.zeros((len(ys), len(xs)))
    for r in records:
        i, j = ys.index(json.dumps(r["overrides"][ya])), xs.index(json.dumps(r["overrides"][xa]))
        sums[i, j] += _value(r, metric)
        counts[i, j] += 1
    with np.errstate(invalid="ignore"):
        grid = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    fig, ax = plt.subplots(figsize=(1.2 + 1.0 * len(xs), 1.0 + 0.7 * len(ys)))
    cmap = "viridis_r" if direction == "min" else "viridis"
    finite_vals = grid[np.isfinite(grid)]
    log = finite_vals.size > 1 and finite_vals.min() > 0 and finite_vals.max() / finite_vals.min() > 100
    norm = matplotlib.colors.LogNorm(vmin=finite_vals.min(), vmax=finite_vals.max()) if log else None
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", norm=norm)
    fig.colorbar(im, ax=ax, label=f"{metric} (mean over seeds{', log scale' if log else ''})")
    ax.set_xticks(range(len(xs)), [f"{json.loads(x):g}" if isinstance(json.loads(x), (int, float)) else x for x in xs])
    ax.set_yticks(range(len(ys)), [f"{json.loads(y):g}" if isinstance(json.loads(y), (int, float)) else y for y in ys])
    ax.set_xlabel(xa)
    ax.set_ylabel(ya)
    finite = np.isfinite(grid)
    if finite.any():
        best = np.nanargmin(grid) if direction == "min" else np.nanargmax(grid)
        bi, bj = np.unravel_index(best, grid.shape)
        ax.add_patch(plt.Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
    lo, hi = (np.nanmin(grid), np.nanmax(grid)) if finite.any() else (0.0, 1.0)
    for i in range(len(ys)):
        for j in range(len(xs)):
            v = grid[i, j]
            if log and np.isfinite(v):
                shade = (np.log(v) - np.log(lo)) / (np.log(hi) - np.log(lo))
            else:
                shade = (v - lo) / (hi - lo) if hi > lo and np.isfinite(v) else 0.5
            if direction == "min":
                shade = 1 - shade
            ax.text(j, i, "n/a" if not np.isfinite(v) else f"{v:.3g}", ha="center", va="center", fontsize=8, color="black" if shade > 0.6 else "white")
    ax.set_title(f"{title}: {metric} ({direction} is best; red box = best)" if title else metric, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
