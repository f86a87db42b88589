"""Run one experiment: config in, ``result.json`` + ``metrics.jsonl`` + plots out."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from lgrad.engine.claims import Claim, to_jsonable
from lgrad.engine.config import ConfigError, apply_overrides
from lgrad.engine.environment import environment
from lgrad.engine.registry import get

__all__ = ["RunContext", "Result", "check_writable", "run_experiment"]


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
    checkpoints: Any = None  # the lgrad.checkpoint.CheckpointSession when checkpointing, else None

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

    def progress(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "") -> Any:
        from tqdm.auto import tqdm

        return tqdm(
            iterable,
            total=total,
            desc=f"{self.name}: {desc}" if desc else self.name,
            disable=not self.show_progress,
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
        )

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "paper": self.paper,
            "mode": self.mode,
            "claims": [c.to_dict() for c in self.claims],
            "runtime_s": round(self.runtime_s, 3),
            "config": to_jsonable(self.config),
            "environment": self.environment,
        }

    @property
    def failed(self) -> list[Claim]:
        return [c for c in self.claims if c.passed is False]


@contextlib.contextmanager
def _matplotlib_headless() -> Iterator[None]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    yield


def run_experiment(
    name: str,
    mode: str = "quick",
    overrides: Mapping[str, Any] | None = None,
    out: str | os.PathLike = "results",
    *,
    show_progress: bool = True,
    checkpoint_every: int = 0,
    resume: bool = False,
) -> Result:
    """Run experiment ``name`` in ``mode`` and write ``<out>/<name>/``.

    With ``checkpoint_every > 0`` or ``resume``, every training loop of the run
    (``lgrad.engine.fit`` / ``run_loop``) checkpoints into ``<out>/<name>/checkpoints``
    every ``checkpoint_every`` steps; ``resume`` continues from there (a killed run
    finishes with the same numbers as an uninterrupted one). The checkpoints are
    deleted when the run completes.

    Raises ``UnknownExperiment`` (a ``KeyError``), ``ConfigError`` (a ``ValueError``;
    also for a resume directory written with another config) or ``PermissionError``
    before any computation when the request is bad.
    """
    exp = get(name)
    config = apply_overrides(exp.config(mode), overrides)
    if checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    root = check_writable(out)
    out_dir = check_writable(root / exp.name)
    session = None
    if checkpoint_every > 0 or resume:
        from lgrad.checkpoint import CheckpointSession

        session = CheckpointSession(
            out_dir / "checkpoints",
            every=checkpoint_every or None,
            fingerprint={"experiment": exp.name, "mode": mode, "config": config},
            resume=resume,
        )
    for stale in out_dir.glob("*.png"):
        stale.unlink()
    (out_dir / "config.json").write_text(json.dumps(to_jsonable({"mode": mode, **config}), indent=2) + "\n")
    start = time.perf_counter()
    with _matplotlib_headless(), open(out_dir / "metrics.jsonl", "w") as metrics:
        ctx = RunContext(
            name=exp.name, mode=mode, out_dir=out_dir, show_progress=show_progress, _metrics_file=metrics, checkpoints=session
        )
        with session.activate() if session is not None else contextlib.nullcontext():
            claims = list(exp.run(config, ctx))
    runtime = time.perf_counter() - start
    for c in claims:
        if not isinstance(c, Claim):
            raise TypeError(f"{exp.name}.run must return Claims, got {type(c).__name__}")
    result = Result(
        name=exp.name,
        paper=exp.paper,
        mode=mode,
        claims=claims,
        runtime_s=runtime,
        config=config,
        environment=environment(),
        out_dir=out_dir,
    )
    (out_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    if session is not None:
        if session.loops == 0:
            print(
                f"lgrad: note: {exp.name} trains outside lgrad.engine.fit/run_loop, so nothing was checkpointed",
                file=sys.stderr,
            )
        session.remove()
    return result
