"""The one training loop every experiment uses.

``run_loop`` scans any ``step_fn(carry) -> (carry, metrics)`` for ``steps`` steps,
jitted with ``lax.scan`` in chunks (a progress bar advances per chunk; a callback
between chunks is where checkpointing hooks in), recording per-step metrics and,
every ``eval_every`` steps, ``eval_fn(carry)``.

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

__all__ = ["TrainState", "FitResult", "run_loop", "fit", "batch_sampler"]


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


def _stack(chunks: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    if not chunks:
        return {}
    return {k: np.concatenate([np.asarray(c[k]) for c in chunks], axis=0) for k in chunks[0]}


def run_loop(
    step_fn: Callable[[Any], tuple[Any, dict[str, Any]]],
    carry: Any,
    *,
    steps: int,
    eval_fn: Callable[[Any], dict[str, Any]] | None = None,
    eval_every: int = 0,
    chunk_size: int | None = None,
    progress: Callable[..., Any] | None = None,
    on_chunk: Callable[[Any, int], None] | None = None,
    start_step: int = 0,
    checkpoint: Any = None,
) -> FitResult:
    """Run ``steps`` steps of ``step_fn`` under ``jax.jit(lax.scan)``.

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
      checkpoint: a :class:`lgrad.checkpoint.LoopCheckpoint`; ``None`` (default)
        takes the next one from the active :class:`lgrad.checkpoint.CheckpointSession`
        if a run is being checkpointed (``lgrad run --checkpoint-every/--resume``),
        ``False`` disables checkpointing. The loop then restores its latest good
        checkpoint (carry, history, evals), saves every ``checkpoint.every`` steps
        (chunks shrink to fit) and at the end, and finishes with the same numbers
        as an uninterrupted run.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if eval_every < 0:
        raise ValueError(f"eval_every must be >= 0, got {eval_every}")
    if checkpoint is None:
        from lgrad.checkpoint import active_session

        session = active_session()
        checkpoint = session.next_loop() if session is not None else None
    elif checkpoint is False:
        checkpoint = None
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
    evaluate = eval_fn if eval_fn is not None else (lambda c: {})

    @jax.jit
    def eval_jit(c):
        return evaluate(c)

    def block(c, _):
        c, metrics = jax.lax.scan(lambda cc, __: step_fn(cc), c, None, length=period)
        return c, (metrics, evaluate(c) if eval_in_blocks else {})

    compiled: dict[int, Callable] = {}

    def chunk(c, n_blocks):
        if n_blocks not in compiled:
            compiled[n_blocks] = jax.jit(lambda cc: jax.lax.scan(block, cc, None, length=n_blocks))
        return compiled[n_blocks](c)

    def tail(c, n):
        key = -n
        if key not in compiled:
            compiled[key] = jax.jit(
                lambda cc: (lambda r: (r[0], (r[1], evaluate(r[0]))))(
                    jax.lax.scan(lambda x, __: step_fn(x), cc, None, length=n)
                )
            )
        return compiled[key](c)

    history: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    eval_steps: list[int] = []
    done = 0
    resumed = checkpoint.restore(carry, steps) if checkpoint is not None else None
    if resumed is not None:
        carry, done = resumed.carry, resumed.done
        history = [resumed.history] if resumed.history else []
        evals = [resumed.evals] if resumed.evals else []
        eval_steps = list(resumed.eval_steps)
    elif start_step == 0 and eval_fn is not None:
        evals.append(jax.tree.map(lambda x: np.asarray(x)[None], eval_jit(carry)))
        eval_steps.append(0)
    bar = progress(total=steps, desc="steps") if progress is not None else None
    if bar is not None and done:
        bar.update(done)

    def save_if_due() -> None:
        if checkpoint is not None and checkpoint.due(done, steps):
            history[:] = [_stack(history)] if history else []
            kept = [e for e in evals if e]
            evals[:] = [_stack(kept)] if kept else []
            checkpoint.save(carry, done, steps, history[0] if history else {}, evals[0] if evals else {}, eval_steps)
    full_blocks, rest = divmod(steps, period)
    blocks_per_chunk = chunk_size // period
    while done < full_blocks * period:
        nb = min(blocks_per_chunk, full_blocks - done // period)
        carry, (metrics, ev) = chunk(carry, nb)
        history.append(jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + np.shape(x)[2:]), metrics))
        if eval_in_blocks:
            evals.append(jax.tree.map(np.asarray, ev))
            eval_steps.extend(start_step + done + period * (i + 1) for i in range(nb))
        done += nb * period
        if bar is not None:
            bar.update(nb * period)
        save_if_due()
        if on_chunk is not None:
            on_chunk(carry, start_step + done)
    if rest and done < steps:
        carry, (metrics, ev) = tail(carry, rest)
        history.append(jax.tree.map(np.asarray, metrics))
        evals.append(jax.tree.map(lambda x: np.asarray(x)[None], ev))
        done += rest
        eval_steps.append(start_step + done)
        if bar is not None:
            bar.update(rest)
        save_if_due()
        if on_chunk is not None:
            on_chunk(carry, start_step + done)
    if not eval_in_blocks and not rest and eval_fn is not None:
        evals.append(jax.tree.map(lambda x: np.asarray(x)[None], eval_jit(carry)))
        eval_steps.append(start_step + steps)
    if bar is not None:
        bar.close()
    return FitResult(
        state=carry,
        history=_stack(history),
        evals=_stack([e for e in evals if e]) if eval_fn is not None else {},
        eval_steps=np.asarray(eval_steps if eval_fn is not None else [], dtype=np.int64),
    )


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
    grad_fn = jax.value_and_grad(loss_fn, has_aux=has_aux)

    def step_fn(s: TrainState):
        key, k_batch, k_opt = jax.random.split(s.key, 3)
        batch = batch_fn(s.step, k_batch) if batch_fn is not None else data
        if has_aux:
            (loss, aux), grads = grad_fn(s.params, batch)
        else:
            loss, grads = grad_fn(s.params, batch)
            aux = {}
        updates, opt_state = tx.update(grads, s.opt_state, s.params, value=loss, key=k_opt)
        new_params = optax.apply_updates(s.params, updates)
        metrics = {"loss": loss, **aux}
        if record_params:
            metrics["params"] = new_params
        return TrainState(new_params, opt_state, key, s.step + 1), metrics

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
