"""``lgrad bench``: performance as ratios against the baseline users would pick.

A benchmark module lives in ``lgrad/bench/entries/<topic>.py`` and defines

    def run(quick: bool) -> list[lgrad.bench.Entry]

Each ``Entry`` compares ``ours`` with a ``baseline`` measured side by side in the same
process (timings via :func:`lgrad.bench.timing.time_fn`: compile excluded, warm-up,
median of repeats, ``block_until_ready``). ``quick`` must finish in seconds (it is
what CI's smoke test runs).
"""
from lgrad.bench.entry import Entry as Entry
from lgrad.bench.timing import compiled_memory as compiled_memory
from lgrad.bench.timing import time_fn as time_fn
from lgrad.bench.timing import time_pair as time_pair

__all__ = ["Entry", "compiled_memory", "time_fn", "time_pair"]
