"""Checkpoints for long runs and sweeps, on orbax-checkpoint's ``CheckpointManager``.

Three layers:

* :class:`Checkpointer` — one orbax ``CheckpointManager`` directory holding numbered
  steps; each step stores named numpy arrays plus a JSON record with their names,
  dtypes, shapes, a SHA-256 checksum and a fingerprint of the run. ``restore``
  tries the latest step and, when it is corrupted or truncated (orbax cannot read
  it, or the checksum differs), says so on stderr and falls back to the previous
  good step.
* :class:`LoopCheckpoint` — what :func:`lgrad.train.run_loop` (and therefore
  :func:`lgrad.train.fit`) saves every ``every`` steps: the loop carry (params,
  optimizer state, RNG key, step — for ``fit`` the step is also the data position,
  since batches are ``batch_fn(step, key)``), the per-step history and the evals so
  far. A loop resumed from it finishes with the same numbers as an uninterrupted
  one (bitwise on CPU): the compiled chunks are identical because a resumed loop
  restarts on a chunk boundary.
* :class:`CheckpointSession` — one per ``lgrad run NAME --checkpoint-every N`` /
  ``--resume``; it hands a ``LoopCheckpoint`` to every ``run_loop`` call of the
  experiment in call order (``loop-000``, ``loop-001``, ...), so any experiment
  that trains through ``lgrad.train`` gains checkpointing without code changes. The
  session is *active* (a context variable) while the experiment runs.

Example::

    from lgrad.train import CheckpointSession, fit
    session = CheckpointSession("ckpt", every=100, fingerprint={"lr": 0.1}, resume=True)
    with session.activate():
        result = fit(loss, params, optax.adam(0.1), steps=1000)  # saves every 100 steps

Single-process: arrays are gathered to the host before saving (a sweep under
``jax.distributed`` gives each process its own cells, hence its own checkpoints).
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import numpy as np

__all__ = [
    "CheckpointMismatch",
    "Checkpointer",
    "LoopCheckpoint",
    "LoopState",
    "CheckpointSession",
    "active_session",
    "check_resume",
    "fingerprint_diff",
]

SESSION_FILE = "session.json"


class CheckpointMismatch(ValueError):
    """A resume directory written by a different run (config, structure or steps).

    A ``ValueError`` (the engine reports it like a bad config, in one line)."""


def _warn(message: str) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    print(f"lgrad: warning: {message}", file=sys.stderr, flush=True)


_NOISY_LOGGERS = ("absl", "asyncio")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence orbax while it reads possibly damaged steps: its absl errors (one per
    unreadable metadata file) and the asyncio ``Event loop is closed`` tracebacks of
    the tasks it abandons; :meth:`Checkpointer.restore` says what happened in one line."""
    import gc
    import logging

    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    hook = sys.unraisablehook

    def drop_closed_loop(unraisable: Any) -> None:
        if not (isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)):
            hook(unraisable)

    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    sys.unraisablehook = drop_closed_loop
    try:
        yield
    finally:
        gc.collect()  # abandoned coroutines are finalised here, inside the quiet window
        sys.unraisablehook = hook
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _canonical(x: Any) -> Any:
    return json.loads(json.dumps(x, sort_keys=True, default=str))


def fingerprint_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """A short description of the first differences between two fingerprints ('' if equal)."""
    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(d, dict) and d:
            out: dict[str, Any] = {}
            for k, v in d.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: d}

    old, new = flat(_canonical(dict(old))), flat(_canonical(dict(new)))
    diffs = []
    for k in sorted(set(old) | set(new)):
        if old.get(k, "<absent>") != new.get(k, "<absent>"):
            diffs.append(f"{k}: {json.dumps(old.get(k, '<absent>'))} there vs {json.dumps(new.get(k, '<absent>'))} now")
    return "; ".join(diffs[:4]) + (f"; ... ({len(diffs)} differences)" if len(diffs) > 4 else "")


def _checksum(names: list[str], arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for n, a in zip(names, arrays):
        h.update(n.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _to_host(x: Any) -> tuple[np.ndarray, str | None]:
    """A numpy copy of one leaf; typed PRNG keys are stored as their key data."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(x)), str(jax.random.key_impl(x))
    return np.asarray(jax.device_get(x)), None


class Checkpointer:
    """Numbered checkpoints of named arrays in ``directory`` (an orbax CheckpointManager).

    Args:
      directory: where the steps live (created on the first save).
      max_to_keep: how many recent steps orbax keeps (>= 2, so a good one survives
        a corrupted latest one).
      fingerprint: JSON-able description of the run, stored with every step and
        compared on restore.
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 3, fingerprint: Mapping[str, Any] | None = None):
        if int(max_to_keep) < 2:
            raise ValueError(f"max_to_keep must be >= 2 (a fallback needs a previous step), got {max_to_keep}")
        self.directory = Path(directory).absolute()
        self.max_to_keep = int(max_to_keep)
        self.fingerprint = _canonical(dict(fingerprint or {}))
        self._manager = None

    # orbax is imported lazily: runs without checkpoints never pay for it.
    def _mgr(self):
        if self._manager is None:
            import orbax.checkpoint as ocp

            # A write interrupted by a kill leaves orbax's temporary folder behind; it
            # was never committed (never listed as a step), so drop it.
            if self.directory.exists():
                for tmp in sorted(self.directory.glob("*.orbax-checkpoint-tmp*")):
                    step = tmp.name.split(".", 1)[0]
                    _warn(f"checkpoint step {step} in {self.directory} was never finished (killed while saving); ignoring it")
                    shutil.rmtree(tmp, ignore_errors=True)

            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.max_to_keep, enable_async_checkpointing=False, create=True
            )
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("arrays", "record"))
        return self._manager

    def steps(self) -> list[int]:
        """Committed steps, oldest first (an interrupted write is never listed)."""
        if not self.directory.exists():
            return []
        with _quiet():
            return sorted(self._mgr().all_steps())

    def save(self, step: int, arrays: Mapping[str, Any], *, info: Mapping[str, Any] | None = None) -> None:
        """Save ``arrays`` (name -> array-like) and JSON ``info`` as step ``step``."""
        import orbax.checkpoint as ocp

        names = list(arrays)
        host, key_impls = [], {}
        for n in names:
            a, impl = _to_host(arrays[n])
            host.append(a)
            if impl is not None:
                key_impls[n] = impl
        record = {
            "step": int(step),
            "names": names,
            "dtypes": [str(a.dtype) for a in host],
            "shapes": [list(a.shape) for a in host],
            "key_impls": key_impls,
            "checksum": _checksum(names, host),
            "fingerprint": self.fingerprint,
            "info": _canonical(dict(info or {})),
        }
        # orbax refuses zero-size arrays; their dtype and shape in the record suffice.
        payload = {f"a{i:05d}": a for i, a in enumerate(host) if a.size} or {"empty": np.zeros(1, np.int8)}
        mgr = self._mgr()
        if int(step) in mgr.all_steps():  # re-saving a step (a resumed run passing it again)
            mgr.delete(int(step))
        mgr.save(
            int(step),
            args=ocp.args.Composite(arrays=ocp.args.StandardSave(payload), record=ocp.args.JsonSave(record)),
            force=True,
        )
        mgr.wait_until_finished()

    def _read(self, step: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        import orbax.checkpoint as ocp

        with _quiet():
            out = self._mgr().restore(
                step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(), record=ocp.args.JsonRestore())
            )
        record = out["record"]
        if not isinstance(record, dict) or "names" not in record:
            raise ValueError("its record is missing or unreadable")
        names = record["names"]
        payload = out["arrays"] or {}
        host = []
        for i, n in enumerate(names):
            key = f"a{i:05d}"
            if 0 in record["shapes"][i]:
                host.append(np.zeros(record["shapes"][i], dtype=np.dtype(record["dtypes"][i])))
                continue
            if key not in payload:
                raise ValueError(f"array {n!r} is missing")
            a = np.asarray(payload[key])
            if str(a.dtype) != record["dtypes"][i] or list(a.shape) != record["shapes"][i]:
                raise ValueError(f"array {n!r} has dtype/shape {a.dtype}{list(a.shape)}, recorded {record['dtypes'][i]}{record['shapes'][i]}")
            host.append(a)
        if _checksum(names, host) != record["checksum"]:
            raise ValueError("checksum mismatch (the data changed after it was written)")
        arrays = {}
        for n, a in zip(names, host):
            impl = record.get("key_impls", {}).get(n)
            arrays[n] = jax.random.wrap_key_data(a, impl=impl) if impl else a
        return arrays, record

    def restore(self, step: int | None = None) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
        """``(step, arrays, info)`` of ``step`` (default: the latest good one), or None.

        A step that cannot be read or whose checksum differs is reported on stderr and
        the previous step is tried. A step written by a run with another fingerprint
        raises :class:`CheckpointMismatch`.
        """
        candidates = self.steps()
        if step is not None:
            candidates = [s for s in candidates if s <= step]
        for i, s in enumerate(reversed(candidates)):
            try:
                arrays, record = self._read(s)
            except Exception as e:  # noqa: BLE001 - any read failure means a bad step
                older = candidates[: len(candidates) - i - 1]
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                then = f"using the previous one (step {older[-1]})" if older else "no earlier checkpoint: starting over"
                _warn(f"checkpoint step {s} in {self.directory} is corrupted or truncated ({reason}); {then}")
                continue
            if record.get("fingerprint") != self.fingerprint:
                raise CheckpointMismatch(
                    f"checkpoint {self.directory} was written by a different run "
                    f"({fingerprint_diff(record.get('fingerprint', {}), self.fingerprint)})"
                )
            return s, arrays, record.get("info", {})
        return None


# --------------------------------------------------------------------- loops
class LoopState:
    """What a loop checkpoint restores: the carry, steps done and the records so far."""

    def __init__(self, carry: Any, done: int, history: dict[str, np.ndarray], evals: dict[str, np.ndarray], eval_steps: list[int]):
        self.carry, self.done, self.history, self.evals, self.eval_steps = carry, done, history, evals, eval_steps


class LoopCheckpoint:
    """Checkpoints of one ``run_loop`` call (see the module docstring)."""

    def __init__(self, directory: str | Path, *, every: int, fingerprint: Mapping[str, Any] | None = None, max_to_keep: int = 3):
        if int(every) <= 0:
            raise ValueError(f"every must be a positive number of steps, got {every}")
        self.every = int(every)
        self.ckpt = Checkpointer(directory, max_to_keep=max_to_keep, fingerprint=fingerprint)
        self.last_saved = -1

    def chunk_size(self, period: int) -> int:
        """The compiled chunk length: the largest multiple of ``period`` <= ``every``."""
        return period * max(1, self.every // period)

    def due(self, done: int, steps: int) -> bool:
        return done >= steps or done - max(self.last_saved, 0) >= self.every

    def save(self, carry: Any, done: int, steps: int, history: Mapping[str, Any], evals: Mapping[str, Any], eval_steps: list[int]) -> None:
        leaves, treedef = jax.tree.flatten(carry)
        arrays: dict[str, Any] = {f"carry/{i}": leaf for i, leaf in enumerate(leaves)}
        arrays.update({f"history/{k}": v for k, v in history.items()})
        arrays.update({f"evals/{k}": v for k, v in evals.items()})
        arrays["eval_steps"] = np.asarray(eval_steps, dtype=np.int64)
        info = {"done": int(done), "steps": int(steps), "data_position": int(done), "treedef": str(treedef), "n_carry": len(leaves)}
        self.ckpt.save(done, arrays, info=info)
        self.last_saved = done

    def restore(self, carry_template: Any, steps: int) -> LoopState | None:
        got = self.ckpt.restore()
        if got is None:
            return None
        _, arrays, info = got
        leaves, treedef = jax.tree.flatten(carry_template)
        if info.get("steps") != steps or info.get("treedef") != str(treedef) or info.get("n_carry") != len(leaves):
            raise CheckpointMismatch(
                f"checkpoint {self.ckpt.directory} belongs to a different loop "
                f"(steps {info.get('steps')} vs {steps}, or another state structure)"
            )
        restored = []
        for i, tmpl in enumerate(leaves):
            a = arrays[f"carry/{i}"]
            restored.append(a if isinstance(a, jax.Array) else jax.numpy.asarray(a))
        carry = jax.tree.unflatten(treedef, restored)
        history = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("history/")}
        evals = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("evals/")}
        self.last_saved = int(info["done"])
        return LoopState(carry, int(info["done"]), history, evals, [int(s) for s in arrays["eval_steps"]])


# ------------------------------------------------------------------ sessions
_ACTIVE: contextvars.ContextVar["CheckpointSession | None"] = contextvars.ContextVar("lgrad_checkpoint_session", default=None)


def active_session() -> "CheckpointSession | None":
    """The session of the run in progress (None outside ``session.activate()``)."""
    return _ACTIVE.get()


def _read_session(root: Path) -> dict[str, Any] | None:
    f = root / SESSION_FILE
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def check_resume(root: str | Path, fingerprint: Mapping[str, Any], every: int | None = None) -> dict[str, Any] | None:
    """Raise :class:`CheckpointMismatch` (one line) if ``root`` holds another run's checkpoints.

    Returns the stored session record (None when there is nothing to resume).
    """
    root = Path(root)
    stored = _read_session(root)
    if stored is None:
        return None
    diff = fingerprint_diff(stored.get("fingerprint", {}), fingerprint)
    if diff:
        raise CheckpointMismatch(f"resume directory {root} is from a different config ({diff})")
    if every is not None and every > 0 and int(stored.get("every", every)) != int(every):
        raise CheckpointMismatch(
            f"resume directory {root} saved every {stored.get('every')} steps, not {every} "
            "(the step grouping must match to reproduce the same numbers)"
        )
    return stored


class CheckpointSession:
    """Checkpoints of one run: a ``LoopCheckpoint`` per ``run_loop`` call, in call order.

    Args:
      root: the run's checkpoint folder (``<out>/<name>/checkpoints``).
      every: save every ``every`` steps (and at the end of each loop).
      fingerprint: the run's identity (experiment, mode, config); a resume from a
        folder with another fingerprint is refused.
      resume: continue from what ``root`` holds; otherwise ``root`` is cleared.
    """

    DEFAULT_EVERY = 500

    def __init__(self, root: str | Path, *, every: int | None = None, fingerprint: Mapping[str, Any], resume: bool = False, max_to_keep: int = 3):
        self.root = Path(root)
        self.fingerprint = _canonical(dict(fingerprint))
        stored = check_resume(self.root, self.fingerprint, every) if resume else None
        if stored is not None:
            every = int(stored["every"])
        elif resume and self.root.exists() and any(self.root.iterdir()):
            raise CheckpointMismatch(f"resume directory {self.root} has no readable {SESSION_FILE}")
        if not every or int(every) <= 0:
            every = self.DEFAULT_EVERY
        self.every = int(every)
        self.max_to_keep = max_to_keep
        self.resumed = stored is not None
        if not resume and self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / SESSION_FILE).write_text(json.dumps({"every": self.every, "fingerprint": self.fingerprint}, indent=1) + "\n")
        self._count = 0

    def next_loop(self) -> LoopCheckpoint:
        """The checkpoint of the next ``run_loop`` call of this run."""
        i = self._count
        self._count += 1
        return LoopCheckpoint(
            self.root / f"loop-{i:03d}", every=self.every, fingerprint={**self.fingerprint, "loop": i}, max_to_keep=self.max_to_keep
        )

    @property
    def loops(self) -> int:
        """How many loops asked for a checkpoint so far."""
        return self._count

    @contextlib.contextmanager
    def activate(self) -> Iterator["CheckpointSession"]:
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def remove(self) -> None:
        """Delete the checkpoints (the run finished)."""
        shutil.rmtree(self.root, ignore_errors=True)
