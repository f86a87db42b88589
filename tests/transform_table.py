"""The shared transform table (optax's ``contrib/_common_test.py`` is the model).

Every public transform factory of ``lgrad.optim``, ``lgrad.robust`` and
``lgrad.federated`` joins it with at least one :class:`Entry`;
``test_transform_table.py`` checks every entry the same way: jit, inject_hyperparams
(with the entry's ``static_args``, those the factory's docstring documents),
``optax.MultiSteps``, ``optax.masked``, ``optax.chain``, extra arguments, float32 and
bfloat16 params/state, running inside ``lgrad.distributed.run_workers``,
convergence on a small least-squares problem, argument validation, and agreement
with a plain-numpy reference (``lgrad.testing.numpy_reference``) where one exists.
:func:`public_transforms` discovers the factories, so a new one without an entry
fails ``test_every_public_transform_is_in_the_table``.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import lgrad.optim as lo
from lgrad.testing import numpy_reference as ref

PACKAGES = ("lgrad.optim", "lgrad.robust", "lgrad.federated")


# ----------------------------------------------------------------------------- the problem
@dataclasses.dataclass(frozen=True)
class Problem:
    """A small ill-conditioned least squares :math:`\\frac12\\|Ax - b\\|^2` whose ``x``
    is the pytree ``{"w": (d-2,), "b": (2,)}`` (two leaves of different sizes)."""

    params: dict
    loss: Callable[[dict], jax.Array]
    a: np.ndarray
    b: np.ndarray

    def flat(self, p: dict) -> np.ndarray:
        return np.concatenate([np.asarray(p["w"], np.float64), np.asarray(p["b"], np.float64)])

    @property
    def x0(self) -> np.ndarray:
        return self.flat(self.params)

    def grad_fn(self, x: np.ndarray) -> np.ndarray:
        return self.a.T @ (self.a @ x - self.b)

    def loss_fn(self, x: np.ndarray) -> float:
        r = self.a @ x - self.b
        return 0.5 * float(r @ r)

    def best(self) -> float:
        x = np.linalg.lstsq(self.a, self.b, rcond=None)[0]
        return self.loss_fn(x)


def problem(dtype: Any = jnp.float32, seed: int = 0, d: int = 6) -> Problem:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(12, d)) / np.sqrt(d)
    b = rng.normal(size=(12,))
    params = {"w": jnp.asarray(rng.normal(size=(d - 2,)), dtype), "b": jnp.asarray(rng.normal(size=(2,)), dtype)}

    def loss(p):
        x = jnp.concatenate([p["w"], p["b"]]).astype(jnp.float32 if dtype == jnp.bfloat16 else dtype)
        r = jnp.asarray(a, x.dtype) @ x - jnp.asarray(b, x.dtype)
        return 0.5 * jnp.sum(r * r)

    return Problem(params, loss, a, b)


# ----------------------------------------------------------------------------- references
def gradient_reference(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Adapt ``fn(grad_fn, x0, steps, **kw)`` to ``(problem, steps, **kw)``."""

    @functools.wraps(fn)
    def run(prob: Problem, steps: int, **kw):
        return fn(prob.grad_fn, prob.x0, steps, **kw)

    return run


def _dgc_reference(prob: Problem, steps: int, **kw):
    sizes = [int(np.size(prob.params["w"])), int(np.size(prob.params["b"]))]
    return ref.dgc_reference(prob.grad_fn, prob.x0, steps, segments=sizes, **kw)


def _mezo_reference(prob: Problem, steps: int, *, seed: int = 0, **kw):
    """MeZO's reference with the directions z regenerated from lgrad's keys
    (worker 0, sample s, step t): it checks the update algebra, not the generator."""
    zero = jax.tree.map(jnp.zeros_like, prob.params)

    def noise(t, s):
        return prob.flat(lo.perturb(zero, lo.sample_key(jax.random.PRNGKey(seed), t, 0, s), 1.0))

    return ref.mezo_reference(prob.loss_fn, prob.x0, steps, noise, **kw)


# ----------------------------------------------------------------------------- entries
@dataclasses.dataclass(frozen=True)
class Entry:
    """One configuration of one transform factory, checked by every test."""

    name: str
    factory: Callable[..., Any]  # returns an optax.GradientTransformation(ExtraArgs)
    kwargs: dict[str, Any]  # arguments for the checks (learning rate included if any)
    static_args: tuple[str, ...] = ()  # what inject_hyperparams needs (the docstring says so)
    reference: Callable[..., np.ndarray] | None = None  # reference(problem, steps, **ref_kwargs)
    ref_kwargs: dict[str, Any] | None = None  # defaults to kwargs
    ref_atol: float = 1e-6
    ref_steps: int = 100
    bad_args: tuple[dict[str, Any], ...] = ()  # each must raise a one-line ValueError naming the key
    converge_steps: int = 400
    scale_lr: float | None = None  # for "scale_by_*" pieces: chain with optax.scale(-lr)
    loss_fn: bool = False  # an ExtraArgs transform that needs update(..., loss_fn=...)
    workers_match_single: bool = False  # n workers with the same data == one worker
    rtol: float = 1e-5  # between two programs computing the same thing (jit vs eager, chained, ...)
    slow: bool = False  # a variant of a configuration already in the table: @pytest.mark.slow
    slow_checks: tuple[str, ...] = ()  # tests marked slow for this entry only (heavy compiles)
    needs_axis: bool = False  # no axis_name=None: single-worker checks run it as 1 worker under the axis
    combinator: bool = False  # builds a rule from other transforms (no learning_rate of its own)
    known_failures: dict[str, str] = dataclasses.field(default_factory=dict)  # test -> reason (xfail)
    per_example: bool = False  # takes per-example gradients: the checks feed a batch of one example

    def __str__(self) -> str:
        return self.name

    @property
    def multi_worker(self) -> bool:
        """Communicates over a worker axis (has ``axis_name``)."""
        return "axis_name" in inspect.signature(self.factory).parameters


_COMMON_BAD = (
    {"learning_rate": -1e-3},
    {"learning_rate": float("nan")},
    {"learning_rate": float("inf")},
    {"b1": 1.0},
    {"b1": -0.1},
    {"b2": 1.0},
    {"eps": 0.0},
    {"eps": -1e-8},
    {"state_dtype": "int32"},
)

_DGC_BAD = (
    {"density": 0.0}, {"density": 1.5}, {"density": float("nan")}, {"momentum": 1.0}, {"momentum": -0.1},
    {"clip_norm": 0.0}, {"threshold": "approx"}, {"sample_fraction": 0.0}, {"max_send_factor": 0.5},
    {"min_compress_size": -1},
)

_MEZO_BAD = (
    {"eps": 0.0}, {"eps": -1e-3}, {"num_samples": 0}, {"num_samples": 1.5}, {"weight_decay": -0.1},
    {"codec": "half"}, {"codec_scale": 0.0},
)

_diffgrad_ref = gradient_reference(ref.diffgrad_reference)


def _mean_rule(x, i):
    del i
    return jnp.mean(x, axis=0)


def _worker_axis_entries() -> list[Entry]:
    """Entries of lgrad.robust / lgrad.federated (written by other engineers; present
    when those packages provide the factories)."""
    import optax

    entries: list[Entry] = []
    try:
        from lgrad.robust import monna
    except ImportError:
        monna = None
    if monna is not None:
        entries.append(Entry(
            "monna",
            monna,
            dict(learning_rate=0.1, f=0, beta=0.9),
            static_args=("f",),
            reference=gradient_reference(ref.momentum_reference),
            ref_kwargs=dict(learning_rate=0.1, beta=0.9),
            bad_args=({"learning_rate": -1.0}, {"beta": 1.0}, {"f": -1}, {"attack_on": "grads"}),
            needs_axis=True,
            workers_match_single=True,
        ))
    try:
        from lgrad.federated import decentralized, mean_over_workers, neighbour_mix
    except ImportError:
        return entries
    entries.append(Entry(
        "decentralized-mean",
        decentralized,
        dict(local=optax.sgd(0.1), mix=neighbour_mix(_mean_rule)),
        static_args=("mix",),
        reference=gradient_reference(ref.gd_reference),
        ref_kwargs=dict(learning_rate=0.1),
        bad_args=({"attack_on": "grads"}, {"byzantine": (-1,)}, {"mix": 3}),
        needs_axis=True,
        combinator=True,
        workers_match_single=True,
    ))
    entries.append(Entry(
        "mean_over_workers",
        mean_over_workers,
        {},
        reference=gradient_reference(ref.gd_reference),
        ref_kwargs=dict(learning_rate=0.1),
        scale_lr=0.1,
        combinator=True,
        workers_match_single=True,
    ))
    return entries

ENTRIES: list[Entry] = [
    # ---- diffGrad (Dubey et al. 2019)
    Entry(
        "diffgrad",
        lo.diffgrad,
        dict(learning_rate=0.05, b1=0.9, b2=0.999, eps=1e-8),
        reference=_diffgrad_ref,
        bad_args=_COMMON_BAD + ({"weight_decay": -1.0},),
    ),
    Entry(
        "diffgrad-weight-decay",
        lo.diffgrad,
        dict(learning_rate=0.05, b1=0.9, b2=0.99, eps=1e-7, weight_decay=1e-3),
        reference=_diffgrad_ref,
        slow=True,
    ),
    Entry(
        "diffgrad-constant-friction",
        lo.diffgrad,
        dict(learning_rate=0.05, constant_friction=True),
        reference=_diffgrad_ref,
        slow=True,
    ),
    Entry(
        "diffgrad-float32-state",
        lo.diffgrad,
        dict(learning_rate=0.05, state_dtype="float32"),
        slow=True,
    ),
    Entry(
        "scale_by_diffgrad",
        lo.scale_by_diffgrad,
        dict(b1=0.9, b2=0.999, eps=1e-8),
        reference=_diffgrad_ref,
        ref_kwargs=dict(learning_rate=0.05, b1=0.9, b2=0.999, eps=1e-8),
        bad_args=({"b1": 1.5}, {"b2": -0.5}, {"eps": 0.0}, {"state_dtype": "int8"}),
        scale_lr=0.05,
    ),
    # ---- Deep Gradient Compression (Lin et al. 2018)
    Entry(
        "dgc-exact",
        lo.dgc,
        dict(learning_rate=0.1, density=0.5, momentum=0.9, threshold="exact"),
        static_args=("density",),
        reference=_dgc_reference,
        ref_kwargs=dict(learning_rate=0.1, density=0.5, momentum=0.9),
        ref_atol=1e-9,
        bad_args=({"learning_rate": -1.0},) + _DGC_BAD,
        workers_match_single=True,
    ),
    Entry(
        "dgc-nesterov-no-masking",
        lo.dgc,
        dict(learning_rate=0.1, density=0.5, momentum=0.8, nesterov=True, momentum_masking=False, threshold="exact"),
        static_args=("density",),
        reference=_dgc_reference,
        ref_kwargs=dict(learning_rate=0.1, density=0.5, momentum=0.8, nesterov=True, momentum_masking=False),
        ref_atol=1e-9,
        workers_match_single=True,
        slow=True,
    ),
    Entry(
        "dgc-sampled",
        lo.dgc,
        dict(learning_rate=0.1, density=0.5, momentum=0.9, min_compress_size=3, track_bookkeeping=True),
        static_args=("density", "min_compress_size"),
        slow=True,
    ),
    Entry(
        "scale_by_dgc",
        lo.scale_by_dgc,
        dict(density=0.5, momentum=0.9, threshold="exact", clip_norm=100.0),
        static_args=("density",),
        reference=_dgc_reference,
        ref_kwargs=dict(learning_rate=0.1, density=0.5, momentum=0.9),
        ref_atol=1e-9,
        bad_args=_DGC_BAD,
        scale_lr=0.1,
        workers_match_single=True,
    ),
    # ---- zeroth order (Malladi et al. 2023; Zelikman et al. 2023)
    Entry(
        "mezo",
        lo.mezo,
        dict(learning_rate=0.1, eps=1e-3, num_samples=1, seed=0),
        static_args=("num_samples",),
        reference=_mezo_reference,
        ref_atol=1e-5,
        bad_args=({"learning_rate": -1.0},) + _MEZO_BAD,
        converge_steps=600,
        loss_fn=True,
        slow_checks=("test_jit_matches_eager",),  # op by op, every PRNG call compiles apart
        rtol=1e-3,  # float32 finite differences: (L(x+eps z) - L(x-eps z)) / 2eps amplifies rounding
    ),
    Entry(
        "scale_by_mezo-one-byte",
        lo.scale_by_mezo,
        dict(eps=1e-3, num_samples=1, seed=3, weight_decay=1e-3, codec="one_byte", codec_scale=1.0),
        static_args=("num_samples",),
        bad_args=_MEZO_BAD,
        scale_lr=0.1,
        converge_steps=600,
        loss_fn=True,
        # the same code path as "mezo", whose fast checks cover these:
        slow_checks=("test_jit_matches_eager", "test_multi_steps", "test_chain", "test_masked", "test_inside_run_workers"),
        rtol=1e-3,
    ),
    # ---- SAM-style perturbed gradient (Foret et al. 2021; FedSpeed, Sun et al. 2023)
    Entry(
        "sam",
        lo.sam,
        dict(learning_rate=0.1, rho=0.05, alpha=1.0),
        reference=gradient_reference(ref.sam_reference),
        ref_steps=40,  # later, near the optimum, g / ||g|| turns chaotic: rounding (1e-16) grows to 1e-5 by step 50
        bad_args=({"learning_rate": -1.0}, {"rho": -0.1}, {"alpha": 1.5}, {"alpha": -0.1}),
        loss_fn=True,
    ),
    Entry(
        "scale_by_sam-mixed",
        lo.scale_by_sam,
        dict(rho=0.1, alpha=0.5),
        reference=gradient_reference(ref.sam_reference),
        ref_kwargs=dict(learning_rate=0.1, rho=0.1, alpha=0.5),
        ref_steps=40,  # see "sam"
        bad_args=({"rho": float("nan")}, {"alpha": 2.0}),
        scale_lr=0.1,
        loss_fn=True,
    ),
    # ---- DP-SGD (Abadi et al. 2016; FFA-LoRA): the checks feed a batch of one example
    Entry(
        "dpsgd-no-noise",
        lo.dpsgd,
        dict(learning_rate=0.1, l2_norm_clip=1.0, noise_multiplier=0.0),
        reference=gradient_reference(ref.clipped_gd_reference),
        ref_kwargs=dict(learning_rate=0.1, l2_norm_clip=1.0),
        bad_args=({"learning_rate": -1.0}, {"l2_norm_clip": 0.0}, {"noise_multiplier": -1.0},
                  {"noise_multiplier": float("nan")}),
        per_example=True,
    ),
    Entry(
        "scale_by_dpsgd",
        lo.scale_by_dpsgd,
        dict(l2_norm_clip=0.5, noise_multiplier=0.0),
        reference=gradient_reference(ref.clipped_gd_reference),
        ref_kwargs=dict(learning_rate=0.1, l2_norm_clip=0.5),
        bad_args=({"l2_norm_clip": -1.0},),
        scale_lr=0.1,
        per_example=True,
    ),
] + _worker_axis_entries()


# ----------------------------------------------------------------------------- discovery
def _returns_transform(fn: Callable[..., Any]) -> bool:
    """The return annotation names an optax GradientTransformation (string or class)."""
    try:
        ann = inspect.signature(fn).return_annotation
    except (TypeError, ValueError):
        return False
    if ann is inspect.Signature.empty:
        return False
    text = ann if isinstance(ann, str) else getattr(ann, "__name__", repr(ann))
    return "GradientTransformation" in text


def public_transforms(package: str) -> dict[str, Callable[..., Any]]:
    """``{"package.name": factory}`` for the public transform factories of ``package``:
    the names in its ``TRANSFORMS`` tuple (when it has one) plus every public function
    (in ``__all__``, else ``dir``) annotated to return a ``GradientTransformation``.
    A package that does not exist (yet) has none."""
    try:
        pkg = importlib.import_module(package)
    except ImportError:
        return {}
    names = set(getattr(pkg, "TRANSFORMS", ()))
    for name in getattr(pkg, "__all__", None) or dir(pkg):
        obj = getattr(pkg, name, None)
        if not name.startswith("_") and inspect.isfunction(obj) and _returns_transform(obj):
            names.add(name)
    return {f"{package}.{name}": getattr(pkg, name) for name in sorted(names)}


def missing_from_table() -> list[str]:
    """The discovered factories that no entry covers (by identity)."""
    covered = {id(e.factory) for e in ENTRIES}
    found: dict[str, Callable[..., Any]] = {}
    for package in PACKAGES:
        found.update(public_transforms(package))
    return sorted(name for name, fn in found.items() if id(fn) not in covered)
