"""The one training path: a pure scanned core and the host driver around it.

``scan_steps`` is the pure core: ``num_steps`` applications of
``step_fn(carry) -> (carry, metrics)`` under ``lax.scan``, with ``eval_fn(carry)``
every ``eval_every`` steps. It traces, jits and vmaps (``num_steps`` and
``eval_every`` are static), so a sweep cell is ``jax.vmap`` of the same function
an experiment's main run uses.

``run_loop`` is the host driver around ``scan_steps``: compiled chunks, a progress
bar, an ``on_chunk`` callback and orbax checkpoints (:mod:`lgrad.train.checkpoint`).

``fit`` is ``run_loop`` with the standard gradient step: batch -> loss, grads ->
``optax`` update. Multi-worker, zeroth-order or layer-local rules provide their own
``step_fn`` and reuse ``run_loop``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad.distributed.multiprocess import to_host  # one gather per chunk of what spans processes
from lgrad.train.checkpoint import active_session

__all__ = ["TrainState", "FitResult", "scan_steps", "run_loop", "fit", "batch_sampler"]

StepFn = Callable[[Any], "tuple[Any, dict[str, Any]]"]
EvalFn = Callable[[Any], "dict[str, Any]"]


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    key: jax.Array
    step: jax.Array  # int32 scalar


@dataclasses.dataclass
class FitResult:
    state: Any
    history: dict[str, np.ndarray]  # per-step metrics, each of shape (steps, ...)
    evals: dict[str, np.ndarray]  # eval_fn outputs at eval_steps, each (n_evals, ...)
    eval_steps: np.ndarray  # number of steps completed at each eval

    @property
    def params(self) -> Any:
        return self.state.params

    def run(self, i: int) -> "FitResult":
        """Run ``i`` of a loop whose step and eval were ``jax.vmap``-ed over independent runs
        (seeds): state leaves carry the run axis first, history and evals after the step axis."""
        return dataclasses.replace(self, state=jax.tree.map(lambda a: a[i], self.state),
                                   history={k: v[:, i] for k, v in self.history.items()},
                                   evals={k: v[:, i] for k, v in self.evals.items()})


def _check_steps(num_steps: Any, eval_every: Any) -> None:
    if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or num_steps < 0:
        raise ValueError(f"num_steps must be an int >= 0 (static), got {num_steps!r}")
    if not isinstance(eval_every, (int, np.integer)) or isinstance(eval_every, bool) or eval_every < 0:
        raise ValueError(f"eval_every must be an int >= 0 (static), got {eval_every!r}")


def scan_steps(
    step_fn: StepFn,
    carry: Any,
    num_steps: int,
    *,
    eval_every: int = 0,
    eval_fn: EvalFn | None = None,
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    r"""``num_steps`` steps of ``step_fn`` under ``lax.scan``; pure, jit- and vmap-able.

    .. math::
        c_{t+1}, m_t = \mathrm{step}(c_t), \qquad
        e_i = \mathrm{eval}(c_{(i+1)k}), \quad i = 0, \dots, \lfloor T/k \rfloor - 1

    with :math:`T` = ``num_steps`` and :math:`k` = ``eval_every`` (``0``: one eval,
    after the last step). Steps beyond the last multiple of ``eval_every`` run
    without an eval. The evaluation of the initial carry is the caller's (it is
    one call of ``eval_fn``).

    Args:
      step_fn: pure ``carry -> (carry, metrics dict)``.
      carry: the initial state (any pytree).
      num_steps: number of steps (a Python int, static).
      eval_every: period of ``eval_fn`` (a Python int, static; 0: at the end only).
      eval_fn: pure ``carry -> dict``; None: no evals (``evals == {}``).

    Returns:
      ``(carry, history, evals)``: history leaves have a leading axis of length
      ``num_steps``, evals leaves one of length ``num_steps // eval_every`` (1 when
      ``eval_every == 0`` and ``num_steps > 0``).
    """
    _check_steps(num_steps, eval_every)
    period = eval_every if eval_every > 0 else max(num_steps, 1)
    blocks, rest = divmod(num_steps, period)

    def steps(c, n):
        return jax.lax.scan(lambda cc, _: step_fn(cc), c, None, length=n)

    def block(c, _):
        c, metrics = steps(c, period)
        return c, (metrics, eval_fn(c) if eval_fn is not None else {})

    carry, (metrics, evals) = jax.lax.scan(block, carry, None, length=blocks)
    history = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), metrics)
    if rest:
        carry, tail = steps(carry, rest)
        history = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), history, tail)
    return carry, history, evals


def _python_steps(step: Callable, evaluate: EvalFn | None, carry: Any, num_steps: int, period: int):
    """:func:`scan_steps`'s ``(carry, history, evals)`` from ``num_steps`` calls of the
    compiled ``step`` driven by Python (``evaluate`` after every ``period`` steps)."""
    history, evals = [], []
    for t in range(num_steps):
        carry, metrics = step(carry)
        history.append(metrics)
        if evaluate is not None and (t + 1) % period == 0:
            evals.append(evaluate(carry))

    def stack(rows: list[Any]) -> Any:
        return jax.tree.map(lambda *xs: jnp.stack(xs), *rows) if rows else {}

    return carry, stack(history), stack(evals)


def _stack(chunks: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    if not chunks:
        return {}
    return {k: np.concatenate([np.asarray(c[k]) for c in chunks], axis=0) for k in chunks[0]}


class _Schedule(NamedTuple):
    period: int  # steps per compiled block (the eval period, or the checkpoint period)
    chunk_size: int  # steps per compiled chunk (a multiple of period)
    eval_in_blocks: bool  # evaluate at the end of every block


def _schedule(steps: int, eval_every: int, chunk_size: int | None, checkpoint: Any) -> _Schedule:
    period = eval_every if eval_every > 0 else max(steps, 1)
    # Without periodic evals a checkpointed loop still needs blocks of ``every`` steps;
    # those blocks skip the eval and the single final eval is done after the loop.
    eval_in_blocks = True
    if checkpoint is not None and eval_every == 0 and chunk_size is None and checkpoint.every < steps:
        period, eval_in_blocks = checkpoint.every, False
    if chunk_size is None:
        if checkpoint is not None:
            chunk_size = checkpoint.chunk_size(period)
        else:
            chunk_size = period * max(1, 500 // period) if period < 500 else period
    if chunk_size % period:
        raise ValueError(f"chunk_size ({chunk_size}) must be a multiple of eval_every ({period})")
    return _Schedule(period, chunk_size, eval_in_blocks)


def _resolve_checkpoint(checkpoint: Any) -> Any:
    if checkpoint is None:
        session = active_session()
        return session.next_loop() if session is not None else None
    return None if checkpoint is False else checkpoint


class _Records:
    """History, evals and eval steps collected on the host, chunk by chunk."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.eval_steps: list[int] = []

    def resume(self, state: Any) -> None:
        self.history = [state.history] if state.history else []
        self.evals = [state.evals] if state.evals else []
        self.eval_steps = list(state.eval_steps)

    def add_eval(self, ev: Any, step: int) -> None:
        self.evals.append(jax.tree.map(lambda x: x[None], to_host(ev)))
        self.eval_steps.append(step)

    def compact(self) -> tuple[dict[str, Any], dict[str, Any]]:
        self.history[:] = [_stack(self.history)] if self.history else []
        kept = [e for e in self.evals if e]
        self.evals[:] = [_stack(kept)] if kept else []
        return (self.history[0] if self.history else {}), (self.evals[0] if self.evals else {})


def run_loop(
    step_fn: StepFn,
    carry: Any,
    *,
    steps: int,
    eval_fn: EvalFn | None = None,
    eval_every: int = 0,
    chunk_size: int | None = None,
    progress: Callable[..., Any] | None = None,
    on_chunk: Callable[[Any, int], None] | None = None,
    start_step: int = 0,
    checkpoint: Any = None,
    host_steps: bool = False,
) -> FitResult:
    """Run ``steps`` steps of ``step_fn``: jitted :func:`scan_steps` chunks driven from the host.

    Args:
      step_fn: pure function ``carry -> (carry, metrics dict)``.
      carry: initial loop state (any pytree).
      steps: number of steps (>= 0).
      eval_fn: pure ``carry -> dict``, evaluated every ``eval_every`` steps (and at
        step 0 when ``start_step == 0``).
      eval_every: period of ``eval_fn`` (0: only at the start and the end).
      chunk_size: steps per compiled chunk (default: ``eval_every`` or all steps,
        capped near 500 so that progress is visible). Must be a multiple of
        ``eval_every``.
      progress: a ``tqdm``-like factory ``progress(total=..., desc=...)``.
      on_chunk: called as ``on_chunk(carry, steps_done)`` after every chunk.
      start_step: steps already done (when resuming), for the eval schedule.
      checkpoint: a :class:`lgrad.train.LoopCheckpoint`; ``None`` (default)
        takes the next one from the active :class:`lgrad.train.CheckpointSession`
        if a run is being checkpointed (``lgrad run --checkpoint-every/--resume``),
        ``False`` disables checkpointing. The loop then restores its latest good
        checkpoint (carry, history, evals), saves every ``checkpoint.every`` steps
        (chunks shrink to fit) and at the end, and finishes with the same numbers
        as an uninterrupted run.
      host_steps: call one compiled step (and one compiled eval) from Python instead
        of compiling a ``lax.scan`` per chunk: same steps, evals, history and
        checkpoints. XLA:CPU runs convolutions several times slower inside the
        scan's while loop (docs/papers/local-tpsgd-drtp.md, "Cost"), so CNN
        training on a CPU is cheaper this way; elsewhere the scan is the default.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if eval_every < 0:
        raise ValueError(f"eval_every must be >= 0, got {eval_every}")
    checkpoint = _resolve_checkpoint(checkpoint)
    sched = _schedule(steps, eval_every, chunk_size, checkpoint)
    period = sched.period
    block_eval = eval_fn if sched.eval_in_blocks else None
    compiled: dict[int, Callable] = {}

    if host_steps:  # compiled once, called from Python
        step_c, eval_c = jax.jit(step_fn), jax.jit(eval_fn or (lambda c: {}))

    def run(c: Any, n: int):
        if host_steps:
            return _python_steps(step_c, eval_c if block_eval is not None else None, c, n, period)
        if n not in compiled:
            compiled[n] = jax.jit(lambda cc: scan_steps(step_fn, cc, n, eval_every=period, eval_fn=block_eval))
        return compiled[n](c)

    rec = _Records()
    done = 0
    resumed = checkpoint.restore(carry, steps) if checkpoint is not None else None
    if resumed is not None:
        carry, done = resumed.carry, resumed.done
        rec.resume(resumed)
    elif start_step == 0 and eval_fn is not None:
        rec.add_eval(jax.jit(eval_fn)(carry), 0)
    bar = progress(total=steps, desc="steps") if progress is not None else None
    if bar is not None and done:
        bar.update(done)

    def after(n: int) -> None:
        if bar is not None:
            bar.update(n)
        if checkpoint is not None and checkpoint.due(done, steps):
            history, evals = rec.compact()
            checkpoint.save(carry, done, steps, history, evals, rec.eval_steps)
        if on_chunk is not None:
            on_chunk(carry, start_step + done)

    full_blocks, rest = divmod(steps, period)
    blocks_per_chunk = sched.chunk_size // period
    while done < full_blocks * period:
        nb = min(blocks_per_chunk, full_blocks - done // period)
        # wait in block_until_ready (interruptible), not inside np.asarray, which holds
        # the interpreter lock until the chunk is done and so delays Ctrl-C
        carry, history, ev = jax.block_until_ready(run(carry, nb * period))
        rec.history.append(to_host(history))
        if sched.eval_in_blocks:
            rec.evals.append(to_host(ev))
            rec.eval_steps.extend(start_step + done + period * (i + 1) for i in range(nb))
        done += nb * period
        after(nb * period)
    if rest and done < steps:
        tail = _python_steps(step_c, eval_c, carry, rest, rest) if host_steps else _tail(compiled, step_fn, eval_fn, carry, rest)
        carry, history, ev = jax.block_until_ready(tail)
        rec.history.append(to_host(history))
        rec.evals.append(to_host(ev))
        done += rest
        rec.eval_steps.append(start_step + done)
        after(rest)
    if not sched.eval_in_blocks and not rest and eval_fn is not None:
        rec.add_eval(jax.jit(eval_fn)(carry), start_step + steps)
    if bar is not None:
        bar.close()
    return FitResult(
        state=carry,
        history=_stack(rec.history),
        evals=_stack([e for e in rec.evals if e]) if eval_fn is not None else {},
        eval_steps=np.asarray(rec.eval_steps if eval_fn is not None else [], dtype=np.int64),
    )


def _tail(compiled: dict[int, Callable], step_fn: StepFn, eval_fn: EvalFn | None, carry: Any, n: int):
    """The last ``n`` (< eval period) steps and one eval after them (keyed ``-n``
    apart from the full chunks)."""
    key = -n
    if key not in compiled:
        evaluate = eval_fn if eval_fn is not None else (lambda c: {})
        compiled[key] = jax.jit(lambda cc: scan_steps(step_fn, cc, n, eval_every=0, eval_fn=evaluate))
    return compiled[key](carry)


def batch_sampler(data: Any, batch_size: int) -> Callable[[jax.Array, jax.Array], Any]:
    """``(step, key) -> batch``: ``batch_size`` rows sampled with replacement."""
    n = jax.tree.leaves(data)[0].shape[0]
    if batch_size <= 0 or batch_size > n:
        raise ValueError(f"batch_size must lie in [1, {n}], got {batch_size}")

    def sample(step, key):
        del step
        idx = jax.random.randint(key, (batch_size,), 0, n)
        return jax.tree.map(lambda a: a[idx], data)

    return sample


def gradient_step(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    data: Any = None,
    batch_fn: Callable[[jax.Array, jax.Array], Any] | None = None,
    has_aux: bool = False,
    record_params: bool = False,
) -> Callable[[TrainState], tuple[TrainState, dict[str, Any]]]:
    """The standard step of :func:`fit` on a :class:`TrainState` (pure; for ``scan_steps``).

    ``optimizer`` must support extra args (``optax.with_extra_args_support``).
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=has_aux)

    def step_fn(s: TrainState):
        key, k_batch, k_opt = jax.random.split(s.key, 3)
        batch = batch_fn(s.step, k_batch) if batch_fn is not None else data
        if has_aux:
            (loss, aux), grads = grad_fn(s.params, batch)
        else:
            loss, grads = grad_fn(s.params, batch)
            aux = {}
        updates, opt_state = optimizer.update(grads, s.opt_state, s.params, value=loss, key=k_opt)
        new_params = optax.apply_updates(s.params, updates)
        metrics = {"loss": loss, **aux}
        if record_params:
            metrics["params"] = new_params
        return TrainState(new_params, opt_state, key, s.step + 1), metrics

    return step_fn


def fit(
    loss_fn: Callable[..., Any],
    params: Any,
    optimizer: optax.GradientTransformation,
    *,
    steps: int,
    data: Any = None,
    batch_fn: Callable[[jax.Array, jax.Array], Any] | None = None,
    key: jax.Array | None = None,
    has_aux: bool = False,
    eval_fn: Callable[[Any], dict[str, Any]] | None = None,
    eval_every: int = 0,
    record_params: bool = False,
    chunk_size: int | None = None,
    progress: Callable[..., Any] | None = None,
    on_chunk: Callable[[Any, int], None] | None = None,
    state: TrainState | None = None,
    checkpoint: Any = None,
) -> FitResult:
    """Minimise ``loss_fn(params, batch)`` with ``optimizer`` for ``steps`` steps.

    The batch of each step is ``batch_fn(step, key)`` if given, else ``data`` (a
    fixed full batch, possibly None). The optimizer's update receives the extra
    arguments ``value`` (the loss) and ``key``, so ``GradientTransformationExtraArgs``
    rules that need them work unchanged. Per-step history holds ``loss`` (and the
    aux dict when ``has_aux``; the params when ``record_params``).

    Pass ``state`` (a ``TrainState``) to continue a previous run. ``checkpoint``
    is passed to :func:`run_loop` (by default the active checkpoint session's next
    loop checkpoint): params, optimizer state, RNG key and step (the data position
    of ``batch_fn``) are saved every ``checkpoint.every`` steps and restored on resume.
    """
    tx = optax.with_extra_args_support(optimizer)
    if state is None:
        if key is None:
            key = jax.random.PRNGKey(0)
        state = TrainState(params, tx.init(params), key, jnp.zeros([], jnp.int32))
    step_fn = gradient_step(loss_fn, tx, data=data, batch_fn=batch_fn, has_aux=has_aux, record_params=record_params)
    wrapped_eval = None if eval_fn is None else (lambda s: eval_fn(s.params))
    return run_loop(
        step_fn,
        state,
        steps=steps,
        eval_fn=wrapped_eval,
        eval_every=eval_every,
        chunk_size=chunk_size,
        progress=progress,
        on_chunk=on_chunk,
        start_step=int(state.step),
        checkpoint=checkpoint,
    )
