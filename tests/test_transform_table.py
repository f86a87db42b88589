"""Every public transform, checked the same way (the table is transform_table.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lgrad.distributed import run_workers
from transform_table import ENTRIES, PACKAGES, Entry, Problem, missing_from_table, problem, public_transforms

IDS = [e.name for e in ENTRIES]


def _is_slow(entry, test_name: str) -> bool:
    """Slow entries, and an entry's slow checks, are marked ``slow``."""
    return entry.slow or test_name in entry.slow_checks


def table(test):
    """Parametrize ``test`` over the table; slow entries (and an entry's slow checks)
    are marked ``slow``."""
    params = [pytest.param(e, marks=pytest.mark.slow) if _is_slow(e, test.__name__) else e for e in ENTRIES]
    return pytest.mark.parametrize("entry", params, ids=IDS)(test)


@pytest.fixture(autouse=True)
def _known_failures(request):
    """An entry's ``known_failures`` (a gap in a file this table does not own) xfail."""
    entry = getattr(request.node, "callspec", None) and request.node.callspec.params.get("entry")
    reason = entry.known_failures.get(request.node.originalname) if isinstance(entry, Entry) else None
    if reason:
        request.node.add_marker(pytest.mark.xfail(reason=reason, strict=False))


def one_worker(tx) -> optax.GradientTransformationExtraArgs:
    """``tx`` run by a single worker under the worker axis (a vmap of size 1), for
    rules that have no ``axis_name=None`` form."""
    from lgrad.distributed import comm

    def update(updates, state, params=None, **extra_args):
        add = lambda t: jax.tree.map(lambda a: a[None], t)  # noqa: E731
        out = jax.vmap(lambda u, s, p: tx.update(u, s, p, **extra_args), axis_name=comm.AXIS)(
            add(updates), add(state), add(params))
        return jax.tree.map(lambda a: a[0], out)

    return optax.GradientTransformationExtraArgs(tx.init, update)
WORKER_AXIS_OFF = {"axis_name": None}


def one_example(tx) -> optax.GradientTransformationExtraArgs:
    """``tx`` fed per-example gradients: the gradient as a batch of one example."""

    def update(updates, state, params=None, **extra_args):
        return tx.update(jax.tree.map(lambda a: a[None], updates), state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(tx.init, update)


# ----------------------------------------------------------------------------- harness
def make(entry: Entry, *, wrap=None, workers=False, **overrides) -> optax.GradientTransformation:
    """The entry's transform (one worker unless ``workers``), chained with
    ``optax.scale(-lr)`` for ``scale_by_*`` pieces; ``wrap`` replaces the factory
    call (e.g. with ``optax.inject_hyperparams``)."""
    single = not workers and entry.multi_worker and not entry.needs_axis
    kwargs = {**entry.kwargs, **(WORKER_AXIS_OFF if single else {}), **overrides}
    tx = (wrap or entry.factory)(**kwargs)
    if entry.needs_axis and not workers:
        tx = one_worker(tx)
    if entry.per_example:
        tx = one_example(tx)
    if entry.scale_lr is not None:
        tx = optax.chain(tx, optax.scale(-entry.scale_lr))
    return tx


def extra(entry: Entry, prob: Problem, loss=None) -> dict:
    """The extra arguments the entry's update needs."""
    return {"loss_fn": loss or prob.loss} if entry.loss_fn else {}


def run(entry, tx, prob, steps, *, jit=True, params=None, loss=None, trajectory=False):
    """``steps`` descent steps (one ``lax.scan`` under jit, op by op otherwise);
    returns (params, state), or the (steps, d) flat trajectory with ``trajectory``."""
    params = prob.params if params is None else params
    loss = loss or prob.loss

    def step(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(loss)(p), s, p, **extra(entry, prob, loss))
        p = optax.apply_updates(p, u)
        return (p, s), (jnp.concatenate([p["w"], p["b"]]) if trajectory else None)

    carry = (params, tx.init(params))
    if jit:
        carry, traj = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))(carry)
    else:
        traj = []
        for _ in range(steps):
            carry, x = step(carry, None)
            traj.append(x)
    return np.asarray(traj) if trajectory else carry


_BASELINE: dict[str, tuple] = {}


def baseline(entry: Entry):
    """(params, state) after 3 jitted steps of the entry alone on ``problem()`` (cached)."""
    if entry.name not in _BASELINE:
        _BASELINE[entry.name] = run(entry, make(entry), problem(), 3)
    return _BASELINE[entry.name]


def assert_trees_close(x, y, rtol=1e-6, atol=1e-7):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                                         rtol=rtol, atol=atol), x, y)


# ----------------------------------------------------------------------------- coverage
def test_every_public_transform_is_in_the_table():
    """Fails when a public transform factory of lgrad.optim / robust / federated has no entry."""
    assert public_transforms("lgrad.optim"), "discovery found nothing in lgrad.optim"
    missing = missing_from_table()
    optim_missing = [m for m in missing if m.startswith("lgrad.optim.")]
    assert not optim_missing, f"transforms without an entry in tests/transform_table.py: {optim_missing}"
    if missing:
        pytest.xfail(f"known missing (lgrad.robust / lgrad.federated, rewritten now): {missing}")


def test_discovery_sees_every_optim_transform():
    import lgrad.optim as lo

    found = set(public_transforms("lgrad.optim"))
    assert found >= {f"lgrad.optim.{n}" for n in lo.TRANSFORMS}
    assert {"lgrad.optim.dgc", "lgrad.optim.mezo", "lgrad.optim.scale_by_mezo"} <= found
    assert "lgrad.optim.select_topk" not in found  # a helper, not a transform
    assert set(PACKAGES) == {"lgrad.optim", "lgrad.robust", "lgrad.federated"}


def test_no_module_shadowed_by_a_function():
    """optax style: private ``_name.py`` modules, public names re-exported explicitly."""
    import importlib
    import pkgutil

    for package in PACKAGES:
        try:
            pkg = importlib.import_module(package)
        except ImportError:
            continue
        if package != "lgrad.optim":
            continue  # lgrad.robust / lgrad.federated are not this table's to police
        for mod in pkgutil.iter_modules(pkg.__path__):
            assert mod.name.startswith("_"), f"{package}.{mod.name} should be private (_{mod.name}.py)"


def test_axis_name_default_is_the_worker_axis():
    import inspect

    from lgrad.distributed import comm

    for entry in ENTRIES:
        if entry.multi_worker:
            assert inspect.signature(entry.factory).parameters["axis_name"].default == comm.AXIS, entry.name


@table
def test_factory_shape(entry):
    """``scale_by_x(...)`` without a learning rate, ``x(learning_rate, ...)`` with one;
    a docstring that documents ``inject_hyperparams``."""
    import inspect

    params = inspect.signature(entry.factory).parameters
    name = entry.factory.__name__
    if name.startswith("scale_by_") or entry.combinator:
        assert "learning_rate" not in params
    else:
        assert next(iter(params)) == "learning_rate"
    assert "inject_hyperparams" in (entry.factory.__doc__ or ""), f"{name}: document its static_args"
    for arg in entry.static_args:
        assert arg in entry.factory.__doc__, (name, arg)


# ----------------------------------------------------------------------------- composition
@table
def test_jit_matches_eager(entry):
    prob = problem()
    p_jit, _ = baseline(entry)
    p_eager, _ = run(entry, make(entry), prob, 3, jit=False)
    assert_trees_close(p_jit, p_eager, rtol=entry.rtol, atol=1e-6)


@table
def test_inject_hyperparams(entry):
    prob = problem()
    wrap = optax.inject_hyperparams(entry.factory, static_args=entry.static_args)
    p_inj, state = run(entry, make(entry, wrap=wrap), prob, 3)
    p_dir, _ = baseline(entry)
    assert_trees_close(p_inj, p_dir, rtol=entry.rtol, atol=1e-6)
    # the numeric hyperparameters really live in the state
    inner = state[0] if entry.scale_lr is not None else state
    numeric = {k for k, v in entry.kwargs.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in entry.static_args}
    assert set(inner.hyperparams) >= numeric


@table
def test_multi_steps(entry):
    """optax.MultiSteps(k=2): nothing, then the rule applied to the mean gradient."""
    prob = problem()
    g1 = jax.grad(prob.loss)(prob.params)
    g2 = jax.tree.map(lambda g: -0.5 * g, g1)
    ms = optax.MultiSteps(make(entry), every_k_schedule=2)
    s = ms.init(prob.params)
    update = jax.jit(lambda g, s: ms.update(g, s, prob.params, **extra(entry, prob)))
    u1, s = update(g1, s)
    u2, s = update(g2, s)
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(u1))
    inner = make(entry)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    want, _ = jax.jit(lambda g, s: inner.update(g, s, prob.params, **extra(entry, prob)))(
        mean, inner.init(prob.params))
    assert_trees_close(u2, want, rtol=entry.rtol, atol=1e-7)


@table
def test_masked(entry):
    """optax.masked: the rule on the selected leaves only; the others pass through."""
    prob = problem()
    mask = {"w": True, "b": False}
    g = jax.grad(prob.loss)(prob.params)

    def loss_masked(q):  # a frozen leaf arrives as optax.MaskedNode: use the fixed value
        return prob.loss({k: prob.params[k] if isinstance(q[k], optax.MaskedNode) else q[k] for k in q})

    tx = optax.masked(make(entry), mask)
    u, _ = jax.jit(lambda g, s: tx.update(g, s, prob.params, **extra(entry, prob, loss_masked)))(
        g, tx.init(prob.params))
    np.testing.assert_array_equal(u["b"], g["b"])
    sub = make(entry)
    w_only = {"w": prob.params["w"]}
    want, _ = jax.jit(lambda g, s: sub.update(g, s, w_only, **extra(
        entry, prob, lambda q: prob.loss({"w": q["w"], "b": prob.params["b"]}))))({"w": g["w"]}, sub.init(w_only))
    np.testing.assert_allclose(u["w"], want["w"], rtol=entry.rtol, atol=1e-7)


@table
def test_chain(entry):
    """Inside optax.chain (extra arguments forwarded) it behaves as alone."""
    prob = problem()
    chained = optax.chain(optax.clip_by_global_norm(1e6), make(entry), optax.scale(1.0))
    p_chain, _ = run(entry, chained, prob, 3)
    p_alone, _ = baseline(entry)
    assert_trees_close(p_chain, p_alone, rtol=entry.rtol, atol=1e-7)


@table
def test_extra_args(entry):
    """Unused extra arguments (loss_fn, key) are accepted through
    ``optax.with_extra_args_support``; a rule that needs ``loss_fn`` says so."""
    prob = problem()
    tx = optax.with_extra_args_support(make(entry))
    g = jax.grad(prob.loss)(prob.params)
    s = tx.init(prob.params)
    u_extra, _ = tx.update(g, s, prob.params, loss_fn=prob.loss, key=jax.random.PRNGKey(1))
    u_plain, _ = tx.update(g, s, prob.params, **extra(entry, prob))
    assert_trees_close(u_extra, u_plain, rtol=0, atol=0)
    if entry.loss_fn:
        with pytest.raises(ValueError, match="loss_fn"):
            tx.update(g, s, prob.params)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@table
def test_dtypes_preserved(entry, dtype):
    """Updates keep the params' dtype; the state's dtypes do not change across an update
    (so it can be a ``lax.scan`` carry); param-shaped state follows the params."""
    prob = problem(dtype)
    tx = make(entry)
    state = tx.init(prob.params)
    g = jax.grad(prob.loss)(prob.params)
    u, new_state = jax.jit(lambda g, s: tx.update(g, s, prob.params, **extra(entry, prob)))(g, state)
    for k in prob.params:
        assert u[k].dtype == dtype, (k, u[k].dtype)
        assert bool(jnp.all(jnp.isfinite(u[k].astype(jnp.float32))))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert [x.dtype for x in jax.tree.leaves(new_state)] == [x.dtype for x in jax.tree.leaves(state)]
    shaped = [x.dtype for x in jax.tree.leaves(state) if x.shape in {p.shape for p in prob.params.values()}
              and jnp.issubdtype(x.dtype, jnp.floating) and x.ndim == 1 and x.size > 2]
    want = jnp.dtype(entry.kwargs.get("state_dtype") or dtype)
    assert all(d == want for d in shaped), shaped
    assert all(x.dtype == dtype for x in jax.tree.leaves(optax.apply_updates(prob.params, u)))


# ----------------------------------------------------------------------------- workers
def _worker_run(entry, n, steps=3, different=False):
    """``steps`` steps inside ``run_workers`` with n workers (identical data unless
    ``different``): returns the stacked (params, state) of every worker."""
    prob = problem()
    tx = make(entry, workers=True)
    shift = jnp.asarray(np.random.default_rng(7).normal(size=(n, 6)) if different else np.zeros((n, 6)), jnp.float32)

    def worker(p, s, c):
        def loss(q):
            return prob.loss(q) + jnp.sum(c * jnp.concatenate([q["w"], q["b"]]))

        def step(carry, _):
            p, s = carry
            u, s = tx.update(jax.grad(loss)(p), s, p, **extra(entry, prob, loss))
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (p, s), None, length=steps)[0]

    rep = jax.tree.map(lambda a: jnp.stack([a] * n), prob.params)
    return run_workers(worker, rep, jax.vmap(tx.init)(rep), shift, n_workers=n), prob, shift


def _worker_counts():
    """(entry, n) for every entry: n = 2, 3, 4 workers for multi-worker rules (2 and 4
    marked slow); single-worker rules only n = 3 (their workers are independent vmapped
    copies with no collective, so the count changes nothing)."""
    params = []
    for e in ENTRIES:
        for n in (2, 3, 4) if e.multi_worker else (3,):
            slow = _is_slow(e, "test_inside_run_workers") or n != 3
            params.append(pytest.param(e, n, marks=pytest.mark.slow if slow else (), id=f"{e.name}-{n}"))
    return params


@pytest.mark.parametrize("entry,n", _worker_counts())
def test_inside_run_workers(entry, n):
    """Multi-worker rules: every replica ends identical (the aggregate is shared) and,
    where the rule is deterministic per worker, n workers with the same data equal one.
    Single-worker rules: each worker equals the rule run alone on its own data."""
    if entry.multi_worker:
        (p, _), prob, _ = _worker_run(entry, n)
        for leaf in jax.tree.leaves(p):
            a = np.asarray(leaf)
            assert all(a[i].tobytes() == a[0].tobytes() for i in range(n))
        if entry.workers_match_single:
            single, _ = baseline(entry)
            assert_trees_close(jax.tree.map(lambda a: a[0], p), single, rtol=entry.rtol, atol=1e-6)
    else:
        (p, _), prob, shift = _worker_run(entry, n, different=True)
        def alone(c):  # the rule run by itself on one worker's data
            return run(entry, make(entry), prob, 3, loss=lambda q: prob.loss(q) + jnp.sum(
                c * jnp.concatenate([q["w"], q["b"]])))[0]

        assert_trees_close(p, jax.vmap(alone)(shift), rtol=entry.rtol, atol=1e-6)


# ----------------------------------------------------------------------------- numerics
@table
def test_converges_on_quadratic(entry):
    prob = problem()
    best, start = prob.best(), float(prob.loss(prob.params))
    final, _ = run(entry, make(entry), prob, entry.converge_steps)
    assert float(prob.loss(final)) - best <= 1e-2 * (start - best)


@table
def test_matches_numpy_reference(entry):
    if entry.reference is None:
        pytest.skip("no numpy reference for this configuration")
    steps = entry.ref_steps
    with jax.enable_x64(True):
        prob = problem(jnp.float64)
        traj = run(entry, make(entry), prob, steps, trajectory=True)
        want = entry.reference(prob, steps, **(entry.ref_kwargs or entry.kwargs))
    np.testing.assert_allclose(traj, want, rtol=0, atol=entry.ref_atol)


@table
def test_bad_arguments_raise(entry):
    for bad in entry.bad_args:
        with pytest.raises(ValueError) as info:
            entry.factory(**{**entry.kwargs, **bad})
        ((name, _),) = bad.items()
        assert name in str(info.value), (bad, str(info.value))
        assert "\n" not in str(info.value), str(info.value)
