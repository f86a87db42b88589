"""``lgrad list``, ``lgrad run`` and ``lgrad reproduce``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from lgrad.cli import CliError
from lgrad.cli.interrupt import EXIT_INTERRUPTED, Interrupts

__all__ = ["register", "format_claims_table", "parse_sets"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the reproductions")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="run one reproduction")
    p.add_argument("name", help="experiment name (see `lgrad list`)")
    _mode_flags(p)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--out", default="results", help="output root (default: results/)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="checkpoint every training loop every N steps into <out>/<name>/checkpoints")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed run from its checkpoints (same numbers as an uninterrupted run)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("reproduce", help="run every reproduction and print a table of claims")
    _mode_flags(p)
    p.add_argument("--out", default="results", help="output root (default: results/)")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="restrict to these experiments")
    p.add_argument("--strict", action="store_true", help="exit 1 if any claim fails")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_reproduce)


def _mode_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="mode", action="store_const", const="quick", help="CPU-sized config (default)")
    g.add_argument("--full", dest="mode", action="store_const", const="full", help="accelerator-sized config")
    p.set_defaults(mode="quick")


def parse_sets(items: list[str]) -> dict[str, str]:
    from lgrad.engine.config import ConfigError, parse_override

    out: dict[str, str] = {}
    for item in items:
        try:
            key, value = parse_override(item)
        except ConfigError as e:
            raise CliError(str(e)) from None
        out[key] = value
    return out


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def _short(value: Any, width: int = 44) -> str:
    value = _round(value)
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, default=str, separators=(",", ":"))
        text = text.replace('"', "")
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def format_claims_table(rows: list[tuple[str, Any]]) -> str:
    """rows: (experiment name, Claim). One line per claim."""
    header = ("experiment", "claim", "status", "measured", "target")
    body = [(name, c.id, c.status, _short(c.measured), c.target) for name, c in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, body)])


def _summary(rows: list[tuple[str, Any]], n_exp: int, seconds: float) -> str:
    n = len(rows)
    passed = sum(c.passed is True for _, c in rows)
    failed = sum(c.passed is False for _, c in rows)
    skipped = sum(c.is_skipped for _, c in rows)
    info = sum(c.passed is None for _, c in rows) - skipped
    return (
        f"{n_exp} experiment(s), {n} claims: {passed} pass, {failed} FAIL, {info} findings, {skipped} skipped "
        f"({seconds:.1f} s)"
    )


def _prepare(names: list[str], mode: str, sets: dict[str, str], out: str) -> None:
    """Validate everything that can be validated before any work starts: names, the
    types, ranges and memory estimate of every config, the output folder."""
    from lgrad.engine import ConfigError, UnknownExperiment, check_writable, get_experiment
    from lgrad.engine.runner import experiment_config

    try:
        for name in names:
            experiment_config(get_experiment(name), mode, sets)
        check_writable(out)
    except UnknownExperiment as e:
        raise CliError(str(e)) from None
    except (ConfigError, PermissionError) as e:
        raise CliError(str(e)) from None


def _check_resume(name: str, mode: str, sets: dict[str, str], out: str, every: int) -> None:
    """Refuse (one line) to resume from checkpoints written with another config."""
    from pathlib import Path

    from lgrad.engine import get_experiment
    from lgrad.engine.runner import experiment_config
    from lgrad.train import checkpoint as ckpt

    exp = get_experiment(name)
    config = experiment_config(exp, mode, sets)
    root = Path(out) / exp.name / "checkpoints"
    try:
        stored = ckpt.check_resume(root, {"experiment": exp.name, "mode": mode, "config": config}, every)
    except ckpt.CheckpointMismatch as e:
        raise CliError(str(e)) from None
    if stored is None:
        print(f"lgrad: no checkpoints in {root}; starting from the beginning", file=sys.stderr)


def cmd_list(args: argparse.Namespace) -> int:
    from lgrad.engine import discover

    table = discover()
    width = max((len(n) for n in table), default=4)
    for name, exp in table.items():
        print(f"{name.ljust(width)}  {exp.paper}")
        if exp.description:
            print(f"{'':{width}}  {exp.description}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from lgrad.engine import run_experiment

    sets = parse_sets(args.sets)
    _prepare([args.name], args.mode, sets, args.out)
    every = getattr(args, "checkpoint_every", 0)
    resume = getattr(args, "resume", False)
    if every < 0:
        raise CliError(f"--checkpoint-every must be >= 0, got {every}")
    if resume:
        _check_resume(args.name, args.mode, sets, args.out, every)
    stopped = _stopped_line(args.name, args.out, every > 0 or resume)
    with Interrupts(on_force=lambda: print(stopped, file=sys.stderr)):
        try:
            result = run_experiment(
                args.name, args.mode, sets, args.out, show_progress=not args.no_progress, checkpoint_every=every, resume=resume
            )
        except KeyboardInterrupt:
            print(stopped, file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception:
            print(stopped.replace("interrupted: ", "run failed: ").replace("did not finish", "crashed (traceback below)"), file=sys.stderr)
            raise
    rows = [(result.name, c) for c in result.claims]
    print(format_claims_table(rows))
    print(f"wrote {result.out_dir}/result.json  ·  " + _summary(rows, 1, result.runtime_s))
    return 0


def _stopped_line(name: str, out: str, checkpointed: bool = False) -> str:
    from pathlib import Path

    folder = Path(out) / name
    resume = f"; its checkpoints stay in {folder / 'checkpoints'} (--resume continues)" if checkpointed else ""
    return f"lgrad: interrupted: {name} did not finish; {folder} is untouched{resume}"


def cmd_reproduce(args: argparse.Namespace) -> int:
    from lgrad.engine import discover, run_experiment

    names = args.only or list(discover())
    _prepare(names, args.mode, {}, args.out)
    start = time.perf_counter()
    rows: list[tuple[str, Any]] = []
    state = {"current": None, "finished": 0}

    def report_interrupt() -> None:
        if rows:
            print(format_claims_table(rows))
            print(_summary(rows, state["finished"], time.perf_counter() - start))
        print(_stopped_line(state["current"], args.out) + f" ({state['finished']} of {len(names)} experiments finished)", file=sys.stderr)

    with Interrupts(on_force=report_interrupt):
        for i, name in enumerate(names, 1):
            state["current"] = name
            print(f"[{i}/{len(names)}] {name} ({args.mode}) ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                result = run_experiment(name, args.mode, None, args.out, show_progress=not args.no_progress)
            except KeyboardInterrupt:
                report_interrupt()
                return EXIT_INTERRUPTED
            except Exception as e:  # one broken experiment must not hide the others' results
                from lgrad.engine import Claim

                print(f"  {name} crashed: {type(e).__name__}: {e}; {args.out}/{name} is untouched", file=sys.stderr)
                rows.append((name, Claim.holds("run-completed", "the experiment runs to completion", f"{type(e).__name__}", "no exception", False)))
                state["finished"] += 1
                continue
            rows.extend((name, c) for c in result.claims)
            state["finished"] += 1
            print(f"  done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(format_claims_table(rows))
    print(_summary(rows, len(names), time.perf_counter() - start))
    if args.strict and any(c.passed is False for _, c in rows):
        return 1
    return 0
