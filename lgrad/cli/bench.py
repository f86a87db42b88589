"""``lgrad bench``: performance ratios against the baseline, in one run."""
from __future__ import annotations

import argparse
import sys

from lgrad.cli import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run the benchmarks (ratios against baselines) and write bench.json/png")
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats (seconds)")
    p.add_argument("--out", default="results", help="output directory (default: results/)")
    p.add_argument("--only", action="append", default=[], metavar="TOPIC", help="run only these benchmark modules (their rows replace theirs in an existing bench.json)")
    p.add_argument("--list", action="store_true", help="list the benchmark modules and exit")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from lgrad.bench import runner
    from lgrad.engine import check_writable

    if args.list:
        print("\n".join(runner.available()))
        return 0
    unknown = sorted(set(args.only) - set(runner.available()))
    if unknown:
        raise CliError(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(runner.available())}")
    try:
        check_writable(args.out)
    except PermissionError as e:
        raise CliError(str(e)) from None
    from lgrad.cli.interrupt import EXIT_INTERRUPTED, Interrupts

    stopped = f"lgrad: interrupted: the benchmarks did not finish; {args.out}/bench.json and bench.png are untouched"
    with Interrupts(on_force=lambda: print(stopped, file=sys.stderr)):
        try:
            return runner.main(quick=args.quick, out=args.out, only=args.only or None, progress=not args.no_progress)
        except KeyboardInterrupt:
            print(stopped, file=sys.stderr)
            return EXIT_INTERRUPTED
