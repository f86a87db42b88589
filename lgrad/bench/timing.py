"""Timing and memory measurement for benchmarks."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax

__all__ = ["time_fn", "time_pair", "time_pair_spread", "compiled_memory"]


def time_fn(fn: Callable[..., Any], *args: Any, repeats: int = 20, warmup: int = 3, number: int = 1) -> float:
    """Median wall time (s) of ``fn(*args)`` over ``repeats``, after ``warmup`` calls.

    ``fn`` should be jitted; the first warm-up call compiles, so compile time is
    excluded. Each timed call runs ``number`` times and waits with
    ``block_until_ready``.
    """
    for _ in range(max(1, warmup)):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


def time_pair(
    ours: Callable[..., Any],
    ours_args: tuple,
    baseline: Callable[..., Any],
    baseline_args: tuple,
    *,
    repeats: int = 21,
    warmup: int = 3,
    number: int = 1,
) -> tuple[float, float]:
    """Median times (s) of two functions measured *interleaved* (a, b, a, b, ...),
    so that drifts of a shared machine hit both alike; returns (ours, baseline)."""
    t_ours, t_base, _ = time_pair_spread(
        ours, ours_args, baseline, baseline_args, repeats=repeats, warmup=warmup, number=number
    )
    return t_ours, t_base


def time_pair_spread(
    ours: Callable[..., Any],
    ours_args: tuple,
    baseline: Callable[..., Any],
    baseline_args: tuple,
    *,
    repeats: int = 21,
    warmup: int = 3,
    number: int = 1,
) -> tuple[float, float, dict[str, float]]:
    """:func:`time_pair` plus the spread of the per-repeat ratio ours/baseline (each
    repeat times both back to back): ``{"ratio_p10", "ratio_median", "ratio_p90"}``."""
    for _ in range(max(1, warmup)):
        jax.block_until_ready(ours(*ours_args))
        jax.block_until_ready(baseline(*baseline_args))
    ta, tb = [], []
    for _ in range(repeats):
        for fn, args, acc in ((ours, ours_args, ta), (baseline, baseline_args, tb)):
            t0 = time.perf_counter()
            for _ in range(number):
                out = fn(*args)
            jax.block_until_ready(out)
            acc.append((time.perf_counter() - t0) / number)
    ratios = sorted(a / b for a, b in zip(ta, tb))
    q = lambda f: ratios[min(len(ratios) - 1, int(f * (len(ratios) - 1) + 0.5))]  # noqa: E731
    spread = {"ratio_p10": q(0.1), "ratio_median": statistics.median(ratios), "ratio_p90": q(0.9)}
    return statistics.median(ta), statistics.median(tb), spread


def compiled_memory(fn: Callable[..., Any], *args: Any, donate: tuple[int, ...] = ()) -> dict[str, int]:
    """XLA's compiled memory analysis of ``jax.jit(fn, donate_argnums=donate)(*args)`` (bytes).

    ``peak`` is arguments + outputs + temporaries - aliased (what the program needs
    resident at once, as XLA plans it; donated arguments reused by outputs count once).
    """
    compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    m = compiled.memory_analysis()
    if m is None:  # some backends do not report
        return {}
    out = {
        "argument": int(m.argument_size_in_bytes),
        "output": int(m.output_size_in_bytes),
        "temp": int(m.temp_size_in_bytes),
        "alias": int(m.alias_size_in_bytes),
        "generated_code": int(m.generated_code_size_in_bytes),
    }
    out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out
