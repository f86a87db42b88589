"""``lgrad sweep NAME --grid key=v1,v2 [--random key=loguniform:a:b --samples N] [--seeds S]``."""
from __future__ import annotations

import argparse
import json
import sys

from lgrad.cli import CliError
from lgrad.cli.interrupt import EXIT_INTERRUPTED, Interrupts

__all__ = ["register"]

EPILOG = """examples:
  lgrad sweep diffgrad-synthetic --grid learning_rate=0.01,0.03,0.1,0.3 --grid b1=0.8,0.9,0.95
  lgrad sweep diffgrad-synthetic --random learning_rate=loguniform:1e-3:1 --samples 32 --strategy vmap
  lgrad sweep NAME --grid lr=1e-3,1e-2 --seeds 5 --resume     # skip the cells a killed sweep finished
outputs: <out>/<name>/sweep/{sweep.csv, sweep.jsonl, best.json, sweep.json, cells/, heatmap.png (2-D grids)},
replaced only when the sweep finishes (a sweep in progress writes <out>/<name>/.sweep.partial/)"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="sweep config keys of one experiment (vmapped where possible)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="experiment name (see `lgrad list`)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="mode", action="store_const", const="quick", help="sweep around the quick config (default)")
    g.add_argument("--full", dest="mode", action="store_const", const="full", help="sweep around the full config")
    p.set_defaults(mode="quick")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="grid values of a config key (repeatable; all combinations)")
    p.add_argument("--random", action="append", default=[], metavar="KEY=DIST:LOW:HIGH",
                   help="random values: uniform|loguniform|int:LOW:HIGH or choice:v1,v2 (repeatable; needs --samples)")
    p.add_argument("--samples", type=int, default=0, metavar="N", help="number of random draws")
    p.add_argument("--random-seed", type=int, default=0, help="seed of the random draws (default 0)")
    p.add_argument("--configs", metavar="JSON_OR_FILE", help="an explicit list of override objects (JSON text or a .json file)")
    p.add_argument("--seeds", type=int, default=1, metavar="S", help="seeds per configuration: seed, seed+1, ... (default 1)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="change the base config (repeatable)")
    p.add_argument("--strategy", default="auto", help="auto (calibrated, default) | vmap | sequential")
    p.add_argument("--batch-size", type=int, default=None, metavar="B", help="largest vmapped batch")
    p.add_argument("--metric", default=None, help="metric that picks the best configuration (default: the experiment's)")
    d = p.add_mutually_exclusive_group()
    d.add_argument("--maximize", dest="maximize", action="store_const", const=True, help="larger metric is better")
    d.add_argument("--minimize", dest="maximize", action="store_const", const=False, help="smaller metric is better")
    p.add_argument("--resume", action="store_true", help="skip the cells a previous (killed) run of the same sweep finished")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="N", help="for sequentially swept experiments: checkpoint each run every N steps")
    p.add_argument("--out", default="results", help="output root (default: results/)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_sweep)


def _configs(text: str | None) -> list:
    if not text:
        return []
    from pathlib import Path

    source = text
    if not text.lstrip().startswith("["):
        path = Path(text)
        if not path.is_file():
            raise CliError(f"--configs {text!r}: neither a JSON list nor a file")
        source = path.read_text()
    try:
        value = json.loads(source)
    except json.JSONDecodeError as e:
        raise CliError(f"--configs: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(value, list) or not value:
        raise CliError("--configs: expected a non-empty JSON list of objects")
    return value


def cmd_sweep(args: argparse.Namespace) -> int:
    from lgrad.cli.experiments import parse_sets
    from lgrad.engine import ConfigError, UnknownExperiment
    from lgrad.sweep import SweepSpec, format_best, parse_grid, parse_random, prepare_sweep, run_sweep

    sets = parse_sets(args.sets)
    try:
        spec = SweepSpec(
            grid=parse_grid(args.grid),
            random=parse_random(args.random),
            samples=args.samples,
            configs=_configs(args.configs),
            seeds=args.seeds,
            random_seed=args.random_seed,
        )
        if args.samples < 0:
            raise ConfigError(f"--samples must be >= 0, got {args.samples}")
        if args.checkpoint_every < 0:
            raise ConfigError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
        kw = dict(mode=args.mode, sets=sets, out=args.out, strategy=args.strategy, batch_size=args.batch_size,
                  metric=args.metric, maximize=args.maximize, resume=args.resume)
        plan = prepare_sweep(args.name, spec, **kw)
        if not (spec.grid or spec.random or spec.configs or spec.seeds > 1):
            raise ConfigError("nothing to sweep: give --grid, --random/--samples, --configs or --seeds")
    except UnknownExperiment as e:
        raise CliError(str(e)) from None
    except (ConfigError, PermissionError) as e:
        raise CliError(str(e)) from None
    print(f"{plan.exp.name}: {len(plan.cells)} cells "
          f"({'batched: ' + ', '.join(plan.proto.sweepable) + ' traced' if plan.proto else 'sequential full runs'})",
          file=sys.stderr, flush=True)
    work = plan.work_dir

    def stopped() -> None:
        n = len(list((work / "cells").glob("*.json"))) if (work / "cells").is_dir() else 0
        print(f"lgrad: interrupted: the sweep of {plan.exp.name} did not finish; {plan.out_dir} is untouched; "
              f"{n} finished cell(s) are kept in {work} (rerun with --resume to continue)", file=sys.stderr)

    with Interrupts(on_force=stopped):
        try:
            result = run_sweep(args.name, spec, checkpoint_every=args.checkpoint_every, show_progress=not args.no_progress, **kw)
        except KeyboardInterrupt:
            stopped()
            return EXIT_INTERRUPTED
    print(format_best(result.best))
    files = ", ".join(f for f in ("sweep.csv", "sweep.jsonl", "best.json", "heatmap.png") if (result.out_dir / f).exists())
    print(f"wrote {result.out_dir}/{{{files}}}  ·  {len(result.records)} cells ({result.skipped} resumed) in {result.runtime_s:.1f} s")
    return 0
