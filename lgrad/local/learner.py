r"""One jitted local step over a sequence of blocks; adapters for optax pytrees and ``nnx.Optimizer``.

:class:`LocalLearner` binds blocks and a rule (validated at construction, outside
``jit``) and gives

* ``grads(params, state, x, y) -> (grads, metrics)``: the local updates as an ordinary
  gradient pytree shaped like ``params = {"blocks": [...], "aux": [...]}``, so any
  optax transform (``lgrad.optim.diffgrad`` included) applies. It is *forward-only
  interleaved*: block k's forward, its local loss and its gradient are computed before
  block k+1 runs, on ``stop_gradient(h_{k-1})``; with ``barrier=True`` an
  ``optimization_barrier`` forces that order in XLA, so at most one block's residuals
  are alive at a time (that is where the memory saving comes from);
* ``local_losses(params, state, x, y)``: the vector of local losses :math:`J_k`
  computed in one stop-gradient forward pass; :math:`\nabla \sum_k J_k` equals
  ``grads`` (the test of exact isolation differentiates each :math:`J_k` w.r.t. every
  other block and gets exact zeros);
* ``train_step(tx, batch_fn)`` for :func:`lgrad.train.run_loop` and ``fit``.

:class:`NNXLocalTrainer` is the ``nnx.Optimizer`` adapter: the user's NNX model is
updated in place by its own ``nnx.Optimizer`` with the local gradients; the rule's
auxiliary nets are a plain pytree with their own optax state.

Example::

    import jax, optax, lgrad.local as ll
    from flax import nnx
    model = nnx.Sequential(nnx.Sequential(nnx.Linear(64, 32, rngs=nnx.Rngs(0)), jax.nn.relu),
                           nnx.Linear(32, 10, rngs=nnx.Rngs(1)))
    learner = ll.LocalLearner(model, "tpsgd", input_shape=(64,), num_classes=10)
    params, state = learner.init_params(), learner.init_state()
    grads, metrics = jax.jit(learner.grads)(params, state, x, y)
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad._validation import check_int
from lgrad.train import FitResult, run_loop
from lgrad.local.blocks import Block, as_blocks, chain_shapes
from lgrad.local.rules import LocalBatch, LocalRule, Spec, cross_entropy, make_rule

__all__ = ["LocalLearner", "LocalTrainState", "NNXLocalTrainer"]

sg = jax.lax.stop_gradient


def _tie(batch: LocalBatch, h: jax.Array) -> LocalBatch:
    """``batch`` with a zero-valued data dependence on ``h``.

    XLA's CPU scheduler drops ``optimization_barrier`` ordering and hoists every
    label-only computation (the projected targets ``onehot @ P_k``, one
    ``(B, d_k)`` array per block) to the start, where they all stay alive. Adding
    ``0 * h[0]`` to the one-hot labels makes block k's targets computable only once
    block k's input exists, so they are created and freed block by block. (A NaN/inf in
    ``h`` would propagate into the loss, which it would anyway.)
    """
    dep = 0.0 * h.reshape(-1)[0].astype(batch.onehot.dtype)
    return batch._replace(onehot=batch.onehot + dep)


def _after(x: jax.Array, tree: Any) -> jax.Array:
    """``x`` plus a zero-valued data dependence on every leaf of ``tree``."""
    leaves = [l.reshape(-1)[0] for l in jax.tree.leaves(tree) if l.size]
    if not leaves:
        return x
    return x + (0.0 * sum(leaves)).astype(x.dtype)


class LocalTrainState(NamedTuple):
    params: Any  # {"blocks": [...], "aux": [...]}
    opt_state: Any
    rule_state: Any
    key: jax.Array
    step: jax.Array


def _resolve_rule(rule: Any, options: dict | None) -> LocalRule:
    if isinstance(rule, LocalRule):
        if options:
            raise ValueError("rule_options only apply when rule is given by name")
        return rule
    if isinstance(rule, str):
        return make_rule(rule, **(options or {}))
    raise ValueError(f"rule must be a rule name or a lgrad.local.LocalRule, got {type(rule).__name__}")


class LocalLearner:
    """Blocks + a local rule, validated at construction.

    Args:
      blocks: a sequence of :class:`~lgrad.local.Block` / ``(apply, params)`` pairs or
        of NNX modules (an ``nnx.Sequential`` works too). The last block must output
        ``num_classes`` logits.
      rule: a rule name (``lgrad.local.RULES``) or a :class:`~lgrad.local.LocalRule`.
      input_shape: per-example input shape.
      num_classes: number of classes.
      key: PRNG key for projections / auxiliary nets.
      barrier: force the one-block-at-a-time schedule with ``optimization_barrier``.
      rule_options: keyword options when ``rule`` is a name.
    """

    def __init__(
        self,
        blocks: Sequence[Any],
        rule: Any = "backprop",
        *,
        input_shape: Sequence[int],
        num_classes: int,
        key: jax.Array | None = None,
        barrier: bool = True,
        rule_options: dict | None = None,
    ):
        self.rule = _resolve_rule(rule, rule_options)
        self.blocks: list[Block] = as_blocks(blocks)
        try:
            input_shape = tuple(int(d) for d in input_shape)
        except TypeError:
            raise ValueError(f"input_shape must be a sequence of ints, got {input_shape!r}") from None
        if any(d <= 0 for d in input_shape):
            raise ValueError(f"input_shape must hold positive ints, got {input_shape}")
        self.num_classes = check_int(num_classes, "num_classes", minimum=2)
        shapes = chain_shapes(self.blocks, input_shape)
        if shapes[-1] != (self.num_classes,):
            raise ValueError(
                f"the last block must output num_classes={self.num_classes} logits per example, "
                f"got per-example shape {shapes[-1]}"
            )
        self.spec = Spec(tuple(self.blocks), input_shape, tuple(shapes), self.num_classes)
        self.barrier = bool(barrier)
        self.bound = self.rule.setup(jax.random.PRNGKey(0) if key is None else key, self.spec)

    # ---- params / state ------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.rule.name

    def init_params(self) -> dict:
        return {"blocks": [b.params for b in self.blocks], "aux": list(self.bound.aux)}

    def init_state(self) -> Any:
        return self.bound.state

    def forward(self, params: dict, x: jax.Array) -> jax.Array:
        h = x
        for b, p in zip(self.blocks, params["blocks"]):
            h = b.apply(p, h)
        return h

    def _batch(self, x, y) -> LocalBatch:
        return LocalBatch(x, y, jax.nn.one_hot(y, self.num_classes))

    # ---- local losses ------------------------------------------------------------------
    def _block_loss(self, k: int, out, aux_k, h_in, batch, state):
        if k == len(self.blocks) - 1:
            return cross_entropy(out, batch.y)
        return self.bound.losses[k](out, aux_k, h_in, batch, state)

    def local_losses(self, params: dict, state: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        """``(n_blocks,)`` local losses from one stop-gradient forward pass (for backprop:
        the end-to-end cross-entropy at the last entry, zeros elsewhere)."""
        batch = self._batch(x, y)
        if self.rule.end_to_end:
            loss = cross_entropy(self.forward(params, x), y)
            return jnp.zeros(len(self.blocks)).at[-1].set(loss)
        h, out = x, []
        for k, b in enumerate(self.blocks):
            h_in = sg(h)
            h = b.apply(params["blocks"][k], h_in)
            out.append(self._block_loss(k, h, params["aux"][k], h_in, batch, state))
        return jnp.stack(out)

    def grads(self, params: dict, state: Any, x: jax.Array, y: jax.Array) -> tuple[dict, dict]:
        """Local updates (a gradient pytree shaped like ``params``) and metrics
        (``loss``: the classifier's cross-entropy; ``local_losses``: every J_k)."""
        batch = self._batch(x, y)
        if self.rule.end_to_end:
            loss, g = jax.value_and_grad(lambda p: cross_entropy(self.forward(p, x), y))(params)
            return g, {"loss": loss, "local_losses": jnp.zeros(len(self.blocks)).at[-1].set(loss)}
        h = x
        gb, ga, losses = [], [], []
        for k, b in enumerate(self.blocks):
            h_in = sg(h)
            # tie the labels of block k to block k's input (not to the previous tie:
            # a chain of ties would fuse into one kernel reading every earlier h)
            batch_k = _tie(batch, h_in) if (self.barrier and k > 0) else batch

            def f(pk, ak, _k=k, _b=b, _h=h_in, _batch=batch_k):
                out = _b.apply(pk, _h)
                return self._block_loss(_k, out, ak, _h, _batch, state), out

            (lk, h), (g_p, g_a) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(
                params["blocks"][k], params["aux"][k]
            )
            if self.barrier and k < len(self.blocks) - 1:
                # the next block's forward may start only once this block's gradient
                # exists (a barrier, plus a zero-valued data dependence for backends
                # whose scheduler ignores the barrier, like XLA:CPU)
                h, lk, g_p, g_a = jax.lax.optimization_barrier((h, lk, g_p, g_a))
                h = _after(h, (lk, g_p, g_a))
            gb.append(g_p)
            ga.append(g_a)
            losses.append(lk)
        return {"blocks": gb, "aux": ga}, {"loss": losses[-1], "local_losses": jnp.stack(losses)}

    def after_update(self, params: dict, state: Any) -> Any:
        """Rule state after an optimizer step (MAN's EMA); identity for other rules."""
        fn = self.bound.after_update
        return state if fn is None else fn(params, state)

    # ---- training (plain pytree adapter) -----------------------------------------------
    def init_train_state(self, tx: optax.GradientTransformation, key: jax.Array | None = None) -> LocalTrainState:
        params = self.init_params()
        return LocalTrainState(
            params, tx.init(params), self.init_state(), jax.random.PRNGKey(0) if key is None else key, jnp.zeros([], jnp.int32)
        )

    def train_step(
        self, tx: optax.GradientTransformation, batch_fn: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
    ) -> Callable[[LocalTrainState], tuple[LocalTrainState, dict]]:
        """``step_fn`` for :func:`lgrad.train.run_loop`: batch -> local grads -> ``tx`` ->
        params -> rule state. ``batch_fn(step, key) -> (x, y)``."""
        txe = optax.with_extra_args_support(tx)

        def step(s: LocalTrainState):
            key, kb, ko = jax.random.split(s.key, 3)
            x, y = batch_fn(s.step, kb)
            g, metrics = self.grads(s.params, s.rule_state, x, y)
            updates, opt_state = txe.update(g, s.opt_state, s.params, value=metrics["loss"], key=ko)
            params = optax.apply_updates(s.params, updates)
            rule_state = self.after_update(params, s.rule_state)
            return LocalTrainState(params, opt_state, rule_state, key, s.step + 1), metrics

        return step

    def fit(
        self,
        tx: optax.GradientTransformation,
        *,
        steps: int,
        batch_fn: Callable,
        key: jax.Array | None = None,
        eval_fn: Callable[[dict], dict] | None = None,
        eval_every: int = 0,
        progress: Callable | None = None,
        state: LocalTrainState | None = None,
        chunk_size: int | None = None,
    ) -> FitResult:
        """Train with :func:`lgrad.train.run_loop`; ``eval_fn(params) -> dict``."""
        s = self.init_train_state(tx, key) if state is None else state
        return run_loop(
            self.train_step(tx, batch_fn),
            s,
            steps=steps,
            eval_fn=None if eval_fn is None else (lambda st: eval_fn(st.params)),
            eval_every=eval_every,
            chunk_size=chunk_size,
            progress=progress,
            start_step=int(s.step),
        )


# ---- nnx.Optimizer adapter ---------------------------------------------------------------
def _module_paths(model: Any, modules: Sequence[Any]) -> list[tuple]:
    from flax import nnx

    found: dict[int, tuple] = {}
    for path, node in nnx.iter_graph(model):
        for k, m in enumerate(modules):
            if node is m and k not in found:
                found[k] = tuple(path)
    missing = [k for k in range(len(modules)) if k not in found]
    if missing:
        raise ValueError(f"blocks {missing} are not sub-modules of model")
    return [found[k] for k in range(len(modules))]


def _get(node: Any, path: tuple) -> Any:
    for p in path:
        node = node[p] if isinstance(p, int) else getattr(node, p)
    return node


def _set_pure(d: dict, path: tuple, value: Any) -> None:
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value


class NNXLocalTrainer:
    """Layer-local training of an NNX model with the user's ``nnx.Optimizer``.

    ``model`` is the module the optimizer was built on (``nnx.Optimizer(model, tx,
    wrt=nnx.Param)``); ``blocks`` its sub-modules in forward order (default:
    ``model.layers`` of an ``nnx.Sequential``). ``step(x, y)`` computes the local
    gradients, calls ``optimizer.update(model, grads)`` (params outside the blocks get
    zero gradient) and trains the rule's auxiliary nets with ``aux_tx`` (default: the
    optimizer's ``tx``).

    Example::

        opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
        trainer = NNXLocalTrainer(model, opt, "drtp", input_shape=(64,), num_classes=10)
        metrics = trainer.step(x, y)
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        rule: Any,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        blocks: Sequence[Any] | None = None,
        aux_tx: optax.GradientTransformation | None = None,
        key: jax.Array | None = None,
        rule_options: dict | None = None,
    ):
        from flax import nnx

        if blocks is None:
            if not hasattr(model, "layers"):
                raise ValueError("pass blocks=[...] (the model's sub-modules in order) unless model is an nnx.Sequential")
            blocks = list(model.layers)
        self.learner = LocalLearner(
            list(blocks), rule, input_shape=input_shape, num_classes=num_classes, key=key, rule_options=rule_options
        )
        self.paths = _module_paths(model, list(blocks))
        self.model, self.optimizer = model, optimizer
        self.aux_tx = aux_tx if aux_tx is not None else optimizer.tx
        self.aux = self.learner.init_params()["aux"]
        self.aux_opt_state = self.aux_tx.init(self.aux)
        self.rule_state = self.learner.init_state()
        learner, paths, aux_tx = self.learner, self.paths, self.aux_tx

        @nnx.jit
        def _step(model, optimizer, aux, aux_opt_state, rule_state, x, y):
            def block_params():
                return [nnx.to_pure_dict(nnx.state(_get(model, p), nnx.Param)) for p in paths]

            params = {"blocks": block_params(), "aux": aux}
            g, metrics = learner.grads(params, rule_state, x, y)
            pure = jax.tree.map(jnp.zeros_like, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
            for p, gk in zip(paths, g["blocks"]):
                _set_pure(pure, p, gk)
            gstate = nnx.state(model, nnx.Param)
            nnx.replace_by_pure_dict(gstate, pure)
            optimizer.update(model, gstate)
            upd, aux_opt_state = aux_tx.update(g["aux"], aux_opt_state, aux)
            aux = optax.apply_updates(aux, upd)
            rule_state = learner.after_update({"blocks": block_params(), "aux": aux}, rule_state)
            return aux, aux_opt_state, rule_state, metrics

        self._step = _step

    def step(self, x: jax.Array, y: jax.Array) -> dict:
        self.aux, self.aux_opt_state, self.rule_state, metrics = self._step(
            self.model, self.optimizer, self.aux, self.aux_opt_state, self.rule_state, x, y
        )
        return metrics
