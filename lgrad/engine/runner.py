"""Run one experiment: config in, ``result.json`` + ``metrics.jsonl`` + plots out."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from lgrad.engine.claims import Claim, from_jsonable, json_roundtrip, to_jsonable
from lgrad.engine.config import ConfigError, apply_overrides, validate_config
from lgrad.engine.environment import environment
from lgrad.engine.registry import Experiment, get

__all__ = [
    "RunContext", "Result", "atomic_dir", "check_writable", "evaluate_claims", "experiment_config", "reevaluate", "replace_dir",
    "run_experiment",
]

# Temporary folders of runs in progress: an interrupt that cannot wait for the run
# to unwind (see lgrad.cli.interrupt) removes them; the swap into place holds SWAP_LOCK.
ACTIVE_TEMP_DIRS: set[Path] = set()
SWAP_LOCK = threading.Lock()


def _is_main_process() -> bool:
    """False on processes 1.. of a multi-process run (only process 0 draws bars)."""
    if "jax" not in sys.modules:
        return True
    import jax

    try:
        return jax.process_index() == 0
    except RuntimeError:  # pragma: no cover - no backend
        return True


def _keep_alive(bar: Any, every: float = 2.0) -> None:
    """Redraw ``bar`` every ``every`` seconds until it closes, so its elapsed time moves
    while a long compiled chunk runs (the count itself moves once per chunk)."""

    def tick() -> None:
        while not getattr(bar, "disable", True):
            time.sleep(every)
            try:
                if getattr(bar, "disable", True):
                    return
                bar.refresh()
            except Exception:  # a bar closed meanwhile: nothing to redraw
                return

    threading.Thread(target=tick, name="lgrad-progress-refresh", daemon=True).start()


def check_writable(out: str | os.PathLike) -> Path:
    """Create ``out`` if needed and prove it is writable, before any work starts."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".lgrad-write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"output directory {str(path)!r} is not writable: {e.strerror or e}") from None
    return path


@dataclasses.dataclass
class RunContext:
    """What an experiment's ``run`` gets besides its config."""

    name: str
    mode: str
    out_dir: Path
    show_progress: bool = True
    _metrics_file: Any = None
    checkpoints: Any = None  # the lgrad.train.checkpoint.CheckpointSession when checkpointing, else None
    _variants: list[str] = dataclasses.field(default_factory=list)
    _bar_counts: dict[str, int] = dataclasses.field(default_factory=dict)

    def log(self, series: str, step: int | None = None, **values: Any) -> None:
        """Append one line to ``metrics.jsonl`` (``series`` names the curve)."""
        row = {"series": series}
        if step is not None:
            row["step"] = int(step)
        row.update(to_jsonable(values))
        self._metrics_file.write(json.dumps(row) + "\n")

    def log_history(self, series: str, history: Mapping[str, Any], *, every: int = 1) -> None:
        """Log a dict of equal-length arrays (a training history) every ``every`` steps."""
        import numpy as np

        arrays = {k: np.asarray(v) for k, v in history.items()}
        length = len(next(iter(arrays.values()))) if arrays else 0
        for t in range(0, length, every):
            self.log(series, step=t, **{k: v[t] for k, v in arrays.items()})
        if length and (length - 1) % every:
            self.log(series, step=length - 1, **{k: v[length - 1] for k, v in arrays.items()})

    @contextlib.contextmanager
    def variant(self, label: str) -> Iterator[None]:
        """Name the bars drawn inside (``with ctx.variant("rule=drtp"): fit(...)``)."""
        self._variants.append(str(label))
        try:
            yield
        finally:
            self._variants.pop()

    def progress(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "") -> Any:
        """A tqdm bar named ``<experiment> [<variant>]: <desc>``; a repeated name gets ``#k``."""
        from tqdm.auto import tqdm

        label = self.name + (f" [{' / '.join(self._variants)}]" if self._variants else "")
        text = f"{label}: {desc}" if desc else label
        self._bar_counts[text] = self._bar_counts.get(text, 0) + 1
        if self._bar_counts[text] > 1:
            text += f" #{self._bar_counts[text]}"
        bar = tqdm(
            iterable,
            total=total,
            desc=text,
            disable=not self.show_progress or not _is_main_process(),
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        if not bar.disable:
            _keep_alive(bar)
        return bar

    def savefig(self, fig: Any, filename: str, *, dpi: int = 110) -> Path:
        """Save a matplotlib figure into the run's folder and close it."""
        import matplotlib.pyplot as plt

        path = self.out_dir / filename
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        return path


@dataclasses.dataclass
class Result:
    name: str
    paper: str
    mode: str
    claims: list[Claim]
    runtime_s: float
    config: dict[str, Any]
    environment: dict[str, Any]
    out_dir: Path
    measurements: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "paper": self.paper,
            "mode": self.mode,
            "claims": [c.to_dict() for c in self.claims],
            "runtime_s": round(self.runtime_s, 3),
            "config": to_jsonable(self.config),
            "environment": self.environment,
        }
        out["measurements"] = to_jsonable(self.measurements)
        return out

    @property
    def failed(self) -> list[Claim]:
        return [c for c in self.claims if c.passed is False]


@contextlib.contextmanager
def _matplotlib_headless() -> Iterator[None]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    yield


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block is done (then ``KeyboardInterrupt``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {s: signal.signal(s, lambda n, f: got.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if got:
            raise KeyboardInterrupt


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike, keep: tuple[str, ...] = ()) -> None:
    """Replace folder ``final`` by ``tmp`` (renames only; SIGINT/SIGTERM wait until it is
    done). Entries of the old ``final`` named in ``keep`` move into the new one."""
    tmp, final = Path(tmp), Path(final)
    with SWAP_LOCK, _signals_deferred():
        if not final.exists():
            os.rename(tmp, final)
            return
        for name in keep:
            if (final / name).exists() and not (tmp / name).exists():
                os.rename(final / name, tmp / name)
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, *, keep: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write into a temporary sibling of ``final``; it replaces ``final`` only when the
    block finishes. On an exception or interrupt it is removed and ``final`` stays
    byte-identical. ``keep``: entries of the old ``final`` carried into the new one."""
    final = Path(final)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ACTIVE_TEMP_DIRS.add(tmp)
    try:
        yield tmp
        replace_dir(tmp, final, keep)
    finally:
        ACTIVE_TEMP_DIRS.discard(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def experiment_config(
    exp: Experiment | str, mode: str = "quick", overrides: Mapping[str, Any] | None = None, *, source: str = "--set"
) -> dict[str, Any]:
    """``exp``'s ``mode`` config with ``overrides`` applied, type-checked and validated
    against the experiment's ``LIMITS`` (and the generic ones), its ``check_config``
    and its memory estimate. Raises ``ConfigError`` (one line) before anything is computed."""
    if isinstance(exp, str):
        exp = get(exp)
    base = exp.config(mode)
    config = apply_overrides(base, overrides)
    validate_config(
        config,
        getattr(exp.module, "LIMITS", None),
        estimate=getattr(exp.module, "memory_estimate", None),
        defaults=base,
        changed={k: config[k] for k in (overrides or {})},
        check=getattr(exp.module, "check_config", None),
        source=source if overrides else "config",
    )
    return config


def _checkpoint_session(exp: Experiment, mode: str, config: dict, out_dir: Path, every: int, resume: bool) -> Any:
    if not (every > 0 or resume):
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    from lgrad.train import checkpoint  # orbax: imported only when checkpointing

    return checkpoint.CheckpointSession(
        out_dir / "checkpoints",
        every=every or None,
        fingerprint={"experiment": exp.name, "mode": mode, "config": config},
        resume=resume,
    )


def evaluate_claims(exp: Experiment, measurements: Any, config: Mapping[str, Any]) -> list[Claim]:
    """``exp.claims(measurements, config)``, checked to be a non-empty list of Claims."""
    if not isinstance(measurements, dict):
        raise TypeError(f"{exp.name}.measure must return a dict of measurements, got {type(measurements).__name__}")
    claims = list(exp.claims(measurements, dict(config)))
    for c in claims:
        if not isinstance(c, Claim):
            raise TypeError(f"{exp.name}.claims must return Claims, got {type(c).__name__}")
    return claims


def reevaluate(name: str, out: str | os.PathLike = "results") -> tuple[list[Claim], list[Claim]]:
    """The claims stored in ``<out>/<name>/result.json`` and the same claims computed
    again from its stored measurements with the current ``claims``/``CRITERIA``
    (no training). Equal lists mean the stored verdicts follow from the code."""
    exp = get(name)
    path = Path(out) / exp.name / "result.json"
    data = json.loads(path.read_text())
    if "measurements" not in data:
        raise ValueError(f"{path} holds no measurements (written before measure/claims); run it again")
    stored = [Claim(**c) for c in data["claims"]]
    return stored, evaluate_claims(exp, from_jsonable(data["measurements"]), data["config"])


def run_experiment(
    name: str,
    mode: str = "quick",
    overrides: Mapping[str, Any] | None = None,
    out: str | os.PathLike = "results",
    *,
    show_progress: bool = True,
    checkpoint_every: int = 0,
    resume: bool = False,
    variant: str | None = None,
) -> Result:
    """Run experiment ``name`` in ``mode`` and write ``<out>/<name>/``.

    The run writes into a temporary sibling folder that replaces ``<out>/<name>/``
    only when the run has finished (a ``sweep/`` folder inside is carried over): a
    failed or interrupted run leaves the previous results byte-identical.

    With ``checkpoint_every > 0`` or ``resume``, every training loop of the run
    (``lgrad.train.fit`` / ``run_loop``) checkpoints into ``<out>/<name>/checkpoints``
    every ``checkpoint_every`` steps; ``resume`` continues from there (a killed run
    finishes with the same numbers as an uninterrupted one). The checkpoints survive
    a failure and are deleted when the run completes. ``variant`` names the run's
    progress bars (e.g. the cell of a sweep).

    Raises ``UnknownExperiment`` (a ``KeyError``), ``ConfigError`` (a ``ValueError``:
    a value of the wrong type or out of its limits, a config too large for memory,
    a resume directory written with another config) or ``PermissionError`` before
    any computation when the request is bad.
    """
    exp = get(name)
    config = experiment_config(exp, mode, overrides)
    if checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    root = check_writable(out)
    out_dir = root / exp.name
    session = _checkpoint_session(exp, mode, config, out_dir, checkpoint_every, resume)
    with atomic_dir(out_dir, keep=("sweep", "checkpoints")) as tmp:
        (tmp / "config.json").write_text(json.dumps(to_jsonable({"mode": mode, **config}), indent=2) + "\n")
        start = time.perf_counter()
        with _matplotlib_headless(), open(tmp / "metrics.jsonl", "w") as metrics:
            ctx = RunContext(
                name=exp.name, mode=mode, out_dir=tmp, show_progress=show_progress, _metrics_file=metrics, checkpoints=session,
                _variants=[variant] if variant else [],
            )
            with session.activate() if session is not None else contextlib.nullcontext():
                measurements = json_roundtrip(exp.measure(config, ctx))
        runtime = time.perf_counter() - start
        claims = evaluate_claims(exp, measurements, config)
        result = Result(exp.name, exp.paper, mode, claims, runtime, config, environment(), out_dir, measurements)
        (tmp / "result.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        if session is not None:
            if session.loops == 0:
                print(
                    f"lgrad: note: {exp.name} trains outside lgrad.train.fit/run_loop, so nothing was checkpointed",
                    file=sys.stderr,
                )
            session.remove()
    return result
