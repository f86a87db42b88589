"""CDA: curriculum data augmentation for SRe²L-style dataset distillation on MNIST-5k.

Paper: Yin & Shen 2023, "Dataset Distillation via Curriculum Data Synthesis in Large
Data Era" (CDA, TMLR 2024, arXiv:2311.18838), built on SRe²L (Yin, Xing, Shen 2023).
Our account: ``docs/papers/cda-distill.md``. Library: ``lgrad.data._distill``
(crop-scale curriculum, differentiable random resized crop, jitter, BN matching).

Setting: MNIST-5k pooled to 14 x 14 (4,000 train / 1,000 test). Teacher: a small CNN
with BatchNorm (conv 3x3 x c1 - BN - ReLU - maxpool, conv 3x3 x c2 - BN - ReLU -
maxpool, linear), Adam; its BN targets are the exact per-channel mean / variance of
each BN input over the training set. Synthesis (10 images per class, from Gaussian
noise): Adam (0.5, 0.9), cosine learning rate, per step jitter + random resized crop
of minimum scale s_min(t), loss CE(teacher(x~), y) + r_bn * BN-matching (first BN
layer x 10), pixels clipped to [0, 1]. CDA: s_min(t) a cosine from 1.0 to 0.08 over
``milestone`` x T steps; SRe²L (no curriculum): s_min = 0.08 throughout. Student: the
same CNN without BN, trained on the synthetic set only with teacher relabelling
(soft labels of the teacher on the same random crop, every step). Every synthesis
and student of the two variants and ``n_seeds`` seeds runs in one vmapped program.

Command: ``lgrad run cda-distill --quick``.
Expected: the student's mean test accuracy with CDA >= without the curriculum (both
reported with the teacher's accuracy, the spread over seeds, and image grids).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgrad.data import average_pool, mnist5k, train_test_split
from lgrad.data._distill import bn_matching_loss, crop_scale_schedule, jitter, random_resized_crop
from lgrad.engine import Claim, RunContext
from lgrad.engine.config import Float, Int

NAME = "cda-distill"
PAPER = "Yin & Shen 2023, Dataset Distillation via Curriculum Data Synthesis in Large Data Era (CDA, TMLR)"
DESCRIPTION = "SRe²L-style synthesis from a BN teacher with and without CDA's crop-scale curriculum; student on 10 img/class."
EXPECTED = "student test accuracy with CDA >= without the curriculum (mean over seeds), teacher accuracy reported."
VARIANTS = ("sre2l", "cda")  # no curriculum, curriculum
MIN_SCALE = 0.08
CRITERIA = {
    "min_gain": 0.0,  # mean student test accuracy with CDA minus without (SRe²L) must be >= this
}

_COMMON = dict(seed=0, pool=2, c1=8, c2=16, teacher_steps=300, teacher_lr=1e-3, teacher_batch=64, ipc=10,
               synth_lr=0.1, r_bn=0.01, first_bn_multiplier=10.0, jitter=1, milestone=0.5,
               student_lr=3e-3, temperature=1.0)
CONFIGS = {
    "quick": dict(_COMMON, n_seeds=3, synth_steps=300, student_steps=200),
    "full": dict(_COMMON, n_seeds=5, synth_steps=2000, student_steps=1000, teacher_steps=2000),
}
SMOKE = dict(n_seeds=1, synth_steps=4, student_steps=4, teacher_steps=4, ipc=2)
LIMITS = {
    "seed": Int(min=0, max=2**31 - 1),
    "pool": Int(min=1, max=4),
    "c1": Int(min=1, max=256),
    "c2": Int(min=1, max=256),
    "ipc": Int(min=1, max=100),
    "synth_lr": Float(gt=0),
    "r_bn": Float(min=0),
    "first_bn_multiplier": Float(min=0),
    "jitter": Int(min=0, max=8),
    "milestone": Float(gt=0, max=1),
    "temperature": Float(gt=0),
    "n_seeds": Int(min=1, max=32),
    "teacher_steps": Int(min=1, max=10**7),
    "synth_steps": Int(min=1, max=10**7),
    "student_steps": Int(min=1, max=10**7),
    "teacher_batch": Int(min=1, max=4000),
}


def check_config(config: dict[str, Any]) -> None:
    if 28 % config["pool"]:
        raise ValueError(f"pool={config['pool']}: must divide 28 (1, 2 or 4)")


# ----------------------------------------------------------------------------- the CNN
def init_cnn(key, side: int, c1: int, c2: int, n_classes: int = 10, *, bn: bool = True):
    k1, k2, k3 = jax.random.split(key, 3)
    p = {"w1": jax.random.normal(k1, (3, 3, 1, c1)) * jnp.sqrt(2.0 / 9),
         "w2": jax.random.normal(k2, (3, 3, c1, c2)) * jnp.sqrt(2.0 / (9 * c1)),
         "fc": jax.random.normal(k3, (c2 * (side // 4) ** 2, n_classes)) / jnp.sqrt(c2 * (side // 4) ** 2),
         "fb": jnp.zeros(n_classes)}
    if bn:
        p.update(g1=jnp.ones(c1), b1=jnp.zeros(c1), g2=jnp.ones(c2), b2=jnp.zeros(c2))
    return p


def _conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _pool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def cnn_apply(p, x, stats=None):
    """Logits of ``x`` (N, H, W, 1) and the batch (mean, var) of every BN input. BN
    normalises with ``stats`` if given (eval mode), else with the batch statistics;
    a model without BN parameters skips the normalisation."""
    batch_stats = []
    h = x
    for i, w in ((1, p["w1"]), (2, p["w2"])):
        h = _conv(h, w)
        if f"g{i}" in p:
            m, v = jnp.mean(h, (0, 1, 2)), jnp.var(h, (0, 1, 2))
            batch_stats.append((m, v))
            nm, nv = stats[i - 1] if stats is not None else (m, v)
            h = (h - nm) / jnp.sqrt(nv + 1e-5) * p[f"g{i}"] + p[f"b{i}"]
        h = _pool(jax.nn.relu(h))
    return h.reshape(h.shape[0], -1) @ p["fc"] + p["fb"], batch_stats


def _accuracy(p, x, y, stats=None):
    return jnp.mean(jnp.argmax(cnn_apply(p, x, stats)[0], -1) == y)


# ----------------------------------------------------------------------------- teacher
def _data(cfg):
    train, test = train_test_split(mnist5k(), 0.2, seed=0)
    side = 28 // cfg["pool"]
    img = lambda x: jnp.asarray(average_pool(x, cfg["pool"]).reshape(-1, side, side, 1))  # noqa: E731
    return img(train.x), jnp.asarray(train.y), img(test.x), jnp.asarray(test.y), side


def train_teacher(cfg, xtr, ytr, side):
    """The BN teacher (train-mode BN) and its BN targets: exact mean / var of every BN input over the training set."""
    tx = optax.adam(cfg["teacher_lr"])
    params = init_cnn(jax.random.PRNGKey(cfg["seed"]), side, cfg["c1"], cfg["c2"])

    def step(carry, key):
        p, s = carry
        idx = jax.random.randint(key, (cfg["teacher_batch"],), 0, xtr.shape[0])
        loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(cnn_apply(q, xtr[idx])[0], ytr[idx]).mean()  # noqa: E731
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    keys = jax.random.split(jax.random.PRNGKey(cfg["seed"] + 1), cfg["teacher_steps"])
    (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, keys))((params, tx.init(params)))
    _, stats = jax.jit(cnn_apply)(params, xtr)
    return params, stats


# ----------------------------------------------------------------------------- synthesis and student
def _augment(key, x, min_scale, jit: int):
    """Per image: jitter then a random resized crop of minimum scale ``min_scale``."""
    def one(k, img):
        kj, kc = jax.random.split(k)
        return random_resized_crop(kc, jitter(kj, img, jit), min_scale=min_scale)

    return jax.vmap(one)(jax.random.split(key, x.shape[0]), x)


def synthesize(cfg, teacher, stats, labels, side, curriculum, key):
    """SRe²L recovery of ``len(labels)`` images; ``curriculum`` (0. or 1., traced) switches CDA's schedule on."""
    T = cfg["synth_steps"]
    tx = optax.adam(optax.cosine_decay_schedule(cfg["synth_lr"], T), b1=0.5, b2=0.9)
    k0, kl = jax.random.split(key)
    x = jnp.clip(0.5 + 0.2 * jax.random.normal(k0, (labels.shape[0], side, side, 1)), 0.0, 1.0)

    def loss(x, t, k):
        s_min = jnp.where(curriculum > 0, crop_scale_schedule(t, T, milestone=cfg["milestone"], end=MIN_SCALE), MIN_SCALE)
        logits, bstats = cnn_apply(teacher, _augment(k, x, s_min, cfg["jitter"]), stats)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return ce + cfg["r_bn"] * bn_matching_loss(bstats, stats, first_multiplier=cfg["first_bn_multiplier"])

    def step(carry, inp):
        x, s = carry
        t, k = inp
        g = jax.grad(loss)(x, t, k)
        u, s = tx.update(g, s, x)
        return (jnp.clip(optax.apply_updates(x, u), 0.0, 1.0), s), None

    (x, _), _ = jax.lax.scan(step, (x, tx.init(x)), (jnp.arange(T), jax.random.split(kl, T)))
    return x


def train_student(cfg, teacher, stats, x_syn, side, key):
    """A BN-free copy of the CNN trained on ``x_syn`` only; targets: the teacher's soft
    labels (temperature ``temperature``) on the same random crop, every step."""
    tx = optax.adam(cfg["student_lr"])
    ki, kt = jax.random.split(key)
    params = init_cnn(ki, side, cfg["c1"], cfg["c2"], bn=False)
    tau = cfg["temperature"]

    def step(carry, k):
        p, s = carry
        xa = _augment(k, x_syn, MIN_SCALE, 0)
        soft = jax.nn.softmax(cnn_apply(teacher, xa, stats)[0] / tau)
        loss = lambda q: optax.softmax_cross_entropy(cnn_apply(q, xa)[0] / tau, soft).mean()  # noqa: E731
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(kt, cfg["student_steps"]))
    return params


def _real_subset(cfg, ytr) -> np.ndarray:
    """``ipc`` random real training images per class (indices), the reference student's data."""
    rng = np.random.default_rng(cfg["seed"])
    y = np.asarray(ytr)
    return np.concatenate([rng.choice(np.nonzero(y == c)[0], cfg["ipc"], replace=False) for c in range(10)])


def measure(config: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Teacher accuracy; per variant and seed the student's test accuracy and the teacher's
    accuracy on the synthetic set; the real-subset students' test accuracy."""
    cfg = dict(config)
    xtr, ytr, xte, yte, side = _data(cfg)
    teacher, stats = train_teacher(cfg, xtr, ytr, side)
    teacher_acc = float(jax.jit(_accuracy)(teacher, xte, yte, stats))
    labels = jnp.repeat(jnp.arange(10), cfg["ipc"])
    seeds = cfg["n_seeds"]
    cur = jnp.repeat(jnp.arange(len(VARIANTS), dtype=jnp.float32), seeds)  # 0 = sre2l, 1 = cda
    keys = jax.random.split(jax.random.PRNGKey(cfg["seed"] + 2), len(VARIANTS) * seeds)

    def pipeline(c, k):
        ks, kt = jax.random.split(k)
        x = synthesize(cfg, teacher, stats, labels, side, c, ks)
        student = train_student(cfg, teacher, stats, x, side, kt)
        return x, _accuracy(student, xte, yte), _accuracy(teacher, x, labels, stats)

    def real_student(k):
        return _accuracy(train_student(cfg, teacher, stats, xtr[_real_subset(cfg, ytr)], side, k), xte, yte)

    with ctx.variant("synthesis+students"):
        x_syn, acc, syn_acc = jax.jit(jax.vmap(pipeline))(cur, keys)
        real = jax.jit(jax.vmap(real_student))(jax.random.split(jax.random.PRNGKey(cfg["seed"] + 3), seeds))
    acc = np.asarray(acc).reshape(len(VARIANTS), seeds)
    syn_acc = np.asarray(syn_acc).reshape(len(VARIANTS), seeds)
    x_syn = np.asarray(x_syn).reshape(len(VARIANTS), seeds, *x_syn.shape[1:])
    out = {"teacher_test_acc": teacher_acc, "real_subset_student_acc": np.asarray(real).tolist(),
           **{v: {"student_acc": acc[i].tolist(), "teacher_acc_on_synthetic": syn_acc[i].tolist()} for i, v in enumerate(VARIANTS)}}
    ctx.log("summary", **out)
    _plot(ctx, cfg, x_syn, labels, {v: float(acc[i].mean()) for i, v in enumerate(VARIANTS)}, teacher_acc)
    return out


def claims(measurements: dict[str, Any], config: dict[str, Any]) -> list[Claim]:
    m, gain = measurements, CRITERIA["min_gain"]
    res = {v: {"student_acc": m[v]["student_acc"], "mean": float(np.mean(m[v]["student_acc"])),
               "std": float(np.std(m[v]["student_acc"])), "teacher_acc_on_synthetic": m[v]["teacher_acc_on_synthetic"]}
           for v in VARIANTS}
    pairs = [round(a - b, 4) for a, b in zip(m["cda"]["student_acc"], m["sre2l"]["student_acc"])]
    real = m["real_subset_student_acc"]
    return [
        Claim.holds("cda-ge-sre2l", f"MNIST-5k, {config['ipc']} images per class, {config['n_seeds']} seeds: the student's test "
                    "accuracy with CDA's curriculum >= without it (SRe²L)",
                    {"cda": res["cda"], "sre2l": res["sre2l"], "teacher_test_acc": m["teacher_test_acc"]},
                    f"mean over seeds: CDA - SRe²L >= {gain}", res["cda"]["mean"] - res["sre2l"]["mean"] >= gain,
                    note=f"per-seed pairs (same keys): {pairs}"),
        Claim.finding("teacher-accuracy", "the teacher's test accuracy (BN in eval mode with the training-set statistics)",
                      m["teacher_test_acc"]),
        Claim.finding("real-subset-reference", f"a student trained the same way on {config['ipc']} random real images per class",
                      {"acc": real, "mean": float(np.mean(real))}),
    ]


def _plot(ctx: RunContext, cfg, x_syn, labels, means, teacher_acc) -> None:
    import matplotlib.pyplot as plt

    n = min(cfg["ipc"], 5)
    fig, axes = plt.subplots(2 * n, 10, figsize=(10, 2 * n + 0.8))
    axes = np.asarray(axes).reshape(2 * n, 10)
    lab = np.asarray(labels)
    for vi, v in enumerate(VARIANTS):
        for c in range(10):
            imgs = x_syn[vi, 0][lab == c]
            for j in range(n):
                ax = axes[vi * n + j, c]
                ax.imshow(imgs[j, :, :, 0], cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
                if c == 0 and j == 0:
                    ax.set_ylabel(v.upper(), fontsize=9)
    fig.suptitle(f"synthetic MNIST-5k (seed 0, {n} of {cfg['ipc']} per class; top: SRe²L, bottom: CDA)\n"
                 f"student acc SRe²L {means['sre2l']:.3f}, CDA {means['cda']:.3f}; teacher {teacher_acc:.3f}",
                 fontsize=9)
    ctx.savefig(fig, "synthetic.png", dpi=80)
