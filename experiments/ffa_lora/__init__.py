"""FFA-LoRA vs LoRA in federated fine-tuning: exact aggregation, frozen A, the
alpha-learning-rate equivalence, and accuracy under DP-SGD.

Paper: Y. Sun, Z. Li, Y. Li, B. Ding, "Improving LoRA in Privacy-preserving
Federated Learning", ICLR 2024 (FFA-LoRA). The project's account:
``docs/papers/ffa-lora.md``.

Model: a Flax NNX MLP (196-64-64-10 on 14x14 MNIST-5k in quick) pretrained
centrally (Adam) on a quarter of the training images, then fine-tuned federatedly
on the rest across 3 clients (Dirichlet label skew) with LoRA adapters on every
``Linear`` kernel (``lgrad.adapters.add_lora``, rank r, Delta W = (alpha / r) A B in
the (in, out) kernel layout). FFA-LoRA freezes A (drawn from one shared seed) and
trains and sends only B; vanilla LoRA trains and sends A and B, the server averaging
each. Clients: ``lgrad.adapters.lora_client`` (``multi_transform`` with
``set_to_zero`` on the frozen leaves) in ``lgrad.federated.server_algorithm``;
DP-SGD on the trained leaves with ``lgrad.optim._dpsgd.dpsgd`` (per-example
clipping to C, Gaussian noise sigma C); epsilon from ``dp_accounting``'s RDP
accountant (Poisson-subsampled Gaussian, q = batch / client size) when installed.

Command: ``lgrad run ffa-lora --quick``.
Expected: A·mean(B_i) equals mean(A·B_i) to 1e-6 while LoRA's mean(A_i)·mean(B_i)
differs from mean(A_i B_i) by more than 1e-3; A bit-for-bit unchanged; (alpha, eta)
and (c alpha, eta / c^2) give the same Delta W to 1e-6 (SGD, no noise); accuracy of
both methods for three noise levels sigma (reported, no ordering claimed).

Config history (no criterion changed). The first quick run used
``learning_rate=0.5``, ``equivalence_c=4`` and ``dp_rounds=20``: vanilla LoRA diverged
under plain SGD at that step (accuracy 0.087, NaN adapters), its aggregation gap was
NaN and read as 0 by a ``max`` that dropped NaN (fixed: NaN now propagates and
fails the claim); c = 4 made the equivalence check trivially exact (scaling by
powers of two is exact in floating point: error 0); the run took 196 s on the
loaded CPU. After: ``learning_rate=0.1`` for both methods (LoRA converges: gap
3.4e-3, pass), ``equivalence_c=3`` (error 1.7e-8, pass), ``dp_rounds=12`` (153 s).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lgrad import federated
from lgrad.adapters import add_lora, combine, lora_client, lora_delta, lora_labels, merge_lora, partition
from lgrad.data import average_pool, mnist5k, train_test_split
from lgrad.distributed.partition import dirichlet
from lgrad.engine import Claim, RunContext
from lgrad.train import run_loop
from lgrad.engine.config import Choice, Float, Int
from lgrad.optim import dpsgd

NAME = "ffa-lora"
PAPER = "Sun, Li, Li, Ding 2024, Improving LoRA in Privacy-preserving Federated Learning (ICLR), FFA-LoRA"
DESCRIPTION = "FFA-LoRA vs LoRA across 3 clients on MNIST-5k: exact B-averaging, frozen A, alpha/lr equivalence, DP-SGD accuracy."
EXPECTED = (
    "|A mean(B_i) - mean(A B_i)| <= 1e-6, LoRA's aggregation gap > 1e-3; A unchanged bit for bit; (alpha, eta) and "
    "(c alpha, eta/c^2) give the same Delta W to 1e-6; DP accuracies reported for both."
)
CRITERIA = {
    "ffa_merge_error": 1e-6,  # max |A mean(B_i) - mean(A B_i)| * alpha / r over adapted layers (at most)
    "lora_merge_gap": 1e-3,  # max |mean(A_i) mean(B_i) - mean(A_i B_i)| * alpha / r (at least)
    "equivalence_error": 1e-6,  # max |Delta W(alpha, eta) - Delta W(c alpha, eta / c^2)| (at most)
}
METHODS = ("FFA-LoRA", "LoRA")

_COMMON = dict(
    seed=0, n_clients=3, dirichlet_alpha=0.5, pretrain_fraction=0.25, pretrain_lr=3e-3, hidden=64,
    rank=4, lora_alpha=8.0, learning_rate=0.1, local_steps=10, batch_size=32, equivalence_c=3.0,
    l2_norm_clip=1.0, sigmas=[0.5, 1.0, 2.0], dp_learning_rate=0.5, delta=1e-5,
)
CONFIGS = {
    "quick": dict(_COMMON, pretrain_steps=300, rounds=20, dp_rounds=12, n_seeds=3, downsample=2),
    "full": dict(_COMMON, pretrain_steps=1000, rounds=60, dp_rounds=60, n_seeds=5, downsample=1),
}
SMOKE = dict(pretrain_steps=5, rounds=2, dp_rounds=2, n_seeds=1, sigmas=[1.0], local_steps=2)
LIMITS = {
    "seed": Int(min=0, max=2**31 - 1),
    "n_clients": Int(min=2, max=100),
    "dirichlet_alpha": Float(gt=0),
    "pretrain_fraction": Float(gt=0, lt=1),
    "pretrain_lr": Float(gt=0),
    "pretrain_steps": Int(min=0, max=10**6),
    "hidden": Int(min=1, max=4096),
    "rank": Int(min=1, max=256),
    "lora_alpha": Float(gt=0),
    "learning_rate": Float(gt=0),
    "local_steps": Int(min=1, max=10**4),
    "batch_size": Int(min=1, max=4096),
    "equivalence_c": Float(gt=0),
    "l2_norm_clip": Float(gt=0),
    "sigmas": Float(min=0),
    "dp_learning_rate": Float(gt=0),
    "delta": Float(gt=0, lt=1),
    "rounds": Int(min=1, max=10**5),
    "dp_rounds": Int(min=1, max=10**5),
    "n_seeds": Int(min=1, max=100),
    "downsample": Choice(1, 2, 4),
}


class MLP(nnx.Module):
    def __init__(self, d_in: int, hidden: int, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(d_in, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.l2(jax.nn.relu(self.l1(x)))))


# ----------------------------------------------------------------------------- data, pretraining
def _data(cfg):
    train, test = train_test_split(mnist5k(), 0.2, seed=cfg["seed"])
    x, y = average_pool(train.x, cfg["downsample"]), np.asarray(train.y, np.int32)
    perm = np.random.default_rng(cfg["seed"]).permutation(len(y))
    n_pre = int(round(cfg["pretrain_fraction"] * len(y)))
    pre, rest = perm[:n_pre], perm[n_pre:]
    parts = dirichlet(y[rest], cfg["n_clients"], cfg["dirichlet_alpha"], seed=cfg["seed"], min_size=cfg["batch_size"])
    stacked = federated.stack_clients([rest[p] for p in parts], x, y)
    clients = federated.ClientData(tuple(jnp.asarray(a) for a in stacked.arrays), jnp.asarray(stacked.count))
    test_xy = (jnp.asarray(average_pool(test.x, cfg["downsample"])), jnp.asarray(np.asarray(test.y, np.int32)))
    return (jnp.asarray(x[pre]), jnp.asarray(y[pre])), clients, test_xy


def _pretrain(cfg, pre, d_in):
    """Central Adam on the pretraining images: (graphdef, plain params dict)."""
    graphdef, state = nnx.split(MLP(d_in, cfg["hidden"], nnx.Rngs(cfg["seed"])))
    params = nnx.to_pure_dict(state)
    tx = optax.adam(cfg["pretrain_lr"])
    loss = _loss_fn(graphdef)

    def step(carry):
        p, s, k = carry
        k, sub = jax.random.split(k)
        idx = jax.random.randint(sub, (cfg["batch_size"],), 0, pre[1].shape[0])
        value, g = jax.value_and_grad(loss)(p, (pre[0][idx], pre[1][idx]))
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s, k), {"loss": value}

    res = run_loop(step, (params, tx.init(params), jax.random.PRNGKey(cfg["seed"])), steps=cfg["pretrain_steps"])
    return graphdef, res.state[0]


def _loss_fn(graphdef):
    def loss(params, batch):
        logits = nnx.merge(graphdef, nnx.State(params))(batch[0])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

    return loss


def _accuracy(graphdef, params, test_xy):
    logits = nnx.merge(graphdef, nnx.State(params))(test_xy[0])
    return jnp.mean(jnp.argmax(logits, -1) == test_xy[1])


# ----------------------------------------------------------------------------- federated fine-tuning
class _Setup:
    """The pretrained model, the client data and the test set of one run."""

    def __init__(self, cfg):
        pre, self.clients, self.test_xy = _data(cfg)
        self.graphdef, self.base = _pretrain(cfg, pre, self.test_xy[0].shape[1])
        self.loss = _loss_fn(self.graphdef)
        self.pretrained_acc = float(_accuracy(self.graphdef, self.base, self.test_xy))


def _parts(cfg, setup: _Setup, method: str, alpha: float):
    """(trained, frozen) of the LoRA tree; A from one shared seed (identical for every client and alpha)."""
    full = add_lora(setup.base, jax.random.PRNGKey(cfg["seed"] + 1), rank=cfg["rank"], alpha=alpha)
    return partition(full, lora_labels(full, freeze_a=method == "FFA-LoRA"))


def _algorithm(cfg, setup, method, frozen, tx, per_example):
    client = lora_client(tx, setup.loss, frozen, freeze_a=method == "FFA-LoRA", local_steps=cfg["local_steps"],
                         batch_size=cfg["batch_size"], per_example=per_example)
    return client, federated.server_algorithm(client, n_clients=cfg["n_clients"], weighted=False)


def _sgd_run(cfg, setup: _Setup, method: str, alpha: float, lr: float):
    """Plain SGD, no noise: (final trained params, frozen, accuracy per round, metrics history, client)."""
    trained, frozen = _parts(cfg, setup, method, alpha)
    client, alg = _algorithm(cfg, setup, method, frozen, optax.sgd(lr), per_example=False)

    def step(carry):
        state, k = carry
        k, sub = jax.random.split(k)
        state, m = alg.round(state, setup.clients, sub)
        acc = _accuracy(setup.graphdef, merge_lora(combine(state.params, frozen)), setup.test_xy)
        return (state, k), {"acc": acc, "frozen_changed": m["frozen_changed"], "bytes_up": m["bytes_up"]}

    res = run_loop(step, (alg.init(None, trained), jax.random.PRNGKey(cfg["seed"])), steps=cfg["rounds"])
    return res.state[0].params, frozen, {k: np.asarray(v) for k, v in res.history.items()}, client


def _dp_runs(cfg, setup: _Setup, method: str, progress=None) -> np.ndarray:
    """DP-SGD fine-tuning for every (sigma, seed) at once (vmap): final accuracy (sigmas, seeds)."""
    trained, frozen = _parts(cfg, setup, method, cfg["lora_alpha"])
    sig = jnp.repeat(jnp.asarray(cfg["sigmas"], jnp.float32), cfg["n_seeds"])
    keys = jnp.stack([jax.random.PRNGKey(cfg["seed"] + 100 + s) for _ in cfg["sigmas"] for s in range(cfg["n_seeds"])])

    def alg_for(sigma):
        tx = dpsgd(cfg["dp_learning_rate"], l2_norm_clip=cfg["l2_norm_clip"], noise_multiplier=sigma)
        return _algorithm(cfg, setup, method, frozen, tx, per_example=True)[1]

    states = jax.vmap(lambda _: alg_for(1.0).init(None, trained))(sig)

    def step(carry):
        states, keys = carry
        keys, sub = jax.vmap(jax.random.split, out_axes=1)(keys)
        states = jax.vmap(lambda st, s, k: alg_for(s).round(st, setup.clients, k)[0])(states, sig, sub)
        return (states, keys), {}

    res = run_loop(step, (states, keys), steps=cfg["dp_rounds"], progress=progress)
    acc = jax.vmap(lambda p: _accuracy(setup.graphdef, merge_lora(combine(p, frozen)), setup.test_xy))(res.state[0].params)
    return np.asarray(acc).reshape(len(cfg["sigmas"]), cfg["n_seeds"])


# ----------------------------------------------------------------------------- measurements
def _adapters(tree) -> list:
    from lgrad.adapters import LoRA

    return [n for n in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, LoRA)) if isinstance(n, LoRA)]


def _client_models(cfg, setup, client, trained, frozen) -> list[list]:
    """One more round of local training from ``trained`` on every client: each client's adapters."""
    keys = jax.random.split(jax.random.PRNGKey(cfg["seed"] + 7), cfg["n_clients"])
    deltas, _, _ = jax.vmap(client.apply, in_axes=(None, None, 0, 0, 0))(
        trained, (), setup.clients.arrays, setup.clients.count, keys)
    return [_adapters(combine(jax.tree.map(lambda t, d: t + d[i], trained, deltas), frozen))
            for i in range(cfg["n_clients"])]


def _merge_errors(models: list[list]) -> tuple[float, float]:
    """max over layers of |scale * (mean_i A_i) (mean_i B_i) - mean_i scale * A_i B_i| (float32, as the server),
    and the largest |scale * mean_i A_i B_i| for scale. NaN propagates (a diverged run fails the claims)."""
    errors, sizes = [], []
    for layer in zip(*models):
        s = layer[0].scale
        a = jnp.stack([n.a for n in layer])
        b = jnp.stack([n.b for n in layer])
        server = s * (jnp.mean(a, 0) @ jnp.mean(b, 0))
        exact = jnp.mean(jnp.stack([s * (ai @ bi) for ai, bi in zip(a, b)]), 0)
        errors.append(float(jnp.max(jnp.abs(server - exact))))
        sizes.append(float(jnp.max(jnp.abs(exact))))
    return float(np.max(errors)), float(np.max(sizes))


_RDP_ORDERS = [1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0, 128.0, 256.0]


def _epsilons(cfg, clients) -> dict[str, Any]:
    """Per sigma: the largest client epsilon at ``delta`` (RDP accountant, Poisson-subsampled Gaussian)."""
    steps = cfg["dp_rounds"] * cfg["local_steps"]
    q = [cfg["batch_size"] / int(c) for c in np.asarray(clients.count)]
    try:
        import dp_accounting as dpa
    except ImportError:
        return {"accountant": None, "steps": steps, "sampling_rates": q}
    out = {}
    for sigma in cfg["sigmas"]:
        eps = []
        for qi in q:
            acc = dpa.rdp.RdpAccountant(orders=_RDP_ORDERS)
            acc.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(min(qi, 1.0), dpa.GaussianDpEvent(sigma)), steps))
            eps.append(acc.get_epsilon(cfg["delta"]))
        out[f"sigma={sigma:g}"] = float(max(eps))
    return {"accountant": "dp_accounting RDP", "steps": steps, "sampling_rates": q, "epsilon": out}


# ----------------------------------------------------------------------------- run
def measure(config: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Merge errors, the (alpha, eta) equivalence gap, frozen-bit count, SGD accuracies and
    bytes, DP accuracies (sigmas, seeds; float32) and the privacy accounting."""
    cfg = dict(config)
    setup = _Setup(cfg)
    alpha, lr, c = cfg["lora_alpha"], cfg["learning_rate"], cfg["equivalence_c"]
    sgd = {m: _sgd_run(cfg, setup, m, alpha, lr) for m in METHODS}
    scaled = _sgd_run(cfg, setup, "FFA-LoRA", c * alpha, lr / c**2)
    models = {m: _client_models(cfg, setup, r[3], r[0], r[1]) for m, r in sgd.items()}
    merge = {m: _merge_errors(v) for m, v in models.items()}
    dw = [lora_delta(n) for n in _adapters(combine(sgd["FFA-LoRA"][0], sgd["FFA-LoRA"][1]))]
    dw_c = [lora_delta(n) for n in _adapters(combine(scaled[0], scaled[1]))]
    equiv = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(dw, dw_c))
    dp = {}
    for m in METHODS:
        with ctx.variant(f"{m} DP-SGD"):
            dp[m] = _dp_runs(cfg, setup, m, ctx.progress)
    eps = _epsilons(cfg, setup.clients)
    for m, r in sgd.items():
        ctx.log_history(f"sgd/{m}", r[2])
    ctx.log("summary", pretrained_acc=setup.pretrained_acc, merge=merge, equivalence=equiv,
            dp_acc={m: v.tolist() for m, v in dp.items()}, privacy=eps)
    _plot(ctx, cfg, setup, sgd, dp, eps, dw, dw_c)
    return {
        "pretrained_acc": setup.pretrained_acc, "merge": merge, "equivalence": equiv,
        "frozen_changed": int(np.sum(sgd["FFA-LoRA"][2]["frozen_changed"])),
        "sgd_acc": {m: float(r[2]["acc"][-1]) for m, r in sgd.items()},
        "bytes_up": {m: int(r[2]["bytes_up"][-1]) for m, r in sgd.items()},
        "dp_acc": {m: v.tolist() for m, v in dp.items()}, "privacy": eps,
    }


def claims(measurements: dict[str, Any], config: dict[str, Any]) -> list[Claim]:
    """The claims from the measurements and ``CRITERIA``."""
    cfg, merge, changed = config, measurements["merge"], measurements["frozen_changed"]
    setting = f"{cfg['n_clients']} clients, rank {cfg['rank']}, alpha {cfg['lora_alpha']:g}, {cfg['rounds']} rounds of SGD"
    out = [
        Claim.at_most(
            "ffa-aggregation-exact",
            f"FFA-LoRA: the server's scale * A mean(B_i) equals mean(scale * A B_i) ({setting}; max abs over layers, "
            "float32)", merge["FFA-LoRA"][0], CRITERIA["ffa_merge_error"],
            note=f"largest |Delta W| entry {merge['FFA-LoRA'][1]:.3g}"),
        Claim.at_least(
            "lora-aggregation-gap",
            "vanilla LoRA: the server's scale * mean(A_i) mean(B_i) differs from mean(scale * A_i B_i) (max abs over "
            "layers)", merge["LoRA"][0], CRITERIA["lora_merge_gap"],
            note=f"largest |Delta W| entry {merge['LoRA'][1]:.3g}; clients' A_i and B_i after one more local round"),
        Claim.holds(
            "a-frozen-bitwise",
            "FFA-LoRA: A (and W0, biases) are bit-for-bit unchanged by local training on every client in every round",
            {"elements_changed": changed}, "0 elements changed", changed == 0,
            note="counted by lgrad.adapters.lora_client on the bit patterns of the frozen leaves"),
        Claim.at_most(
            "alpha-lr-equivalence",
            f"FFA-LoRA with SGD and no noise: (alpha, eta) = ({cfg['lora_alpha']:g}, {cfg['learning_rate']:g}) and "
            f"(c alpha, eta / c^2) with c = {cfg['equivalence_c']:g} give the same Delta W (max abs over layers)",
            measurements["equivalence"], CRITERIA["equivalence_error"]),
    ]
    return out + _findings(cfg, measurements)


def _findings(cfg, meas) -> list[Claim]:
    eps = meas["privacy"]
    dp = {k: np.asarray(v, np.float32) for k, v in meas["dp_acc"].items()}  # as measured
    fmt = lambda a: {f"sigma={s:g}": [round(float(a[i].mean()), 4), round(float(a[i].std()), 4)]  # noqa: E731
                     for i, s in enumerate(cfg["sigmas"])}
    eps_note = (", ".join(f"{k}: eps {v:.2f}" for k, v in eps["epsilon"].items()) if eps.get("epsilon")
                else "no accountant installed (pip install dp-accounting): sigma and steps only")
    return [
        Claim.finding(
            "accuracy-no-noise",
            f"test accuracy after {cfg['rounds']} rounds of plain SGD fine-tuning (pretrained model: "
            f"{meas['pretrained_acc']:.4f})", meas["sgd_acc"]),
        Claim.finding(
            "accuracy-under-dp",
            f"test accuracy [mean, std over {cfg['n_seeds']} seeds] after {cfg['dp_rounds']} rounds of DP-SGD "
            f"(clip {cfg['l2_norm_clip']:g}, lr {cfg['dp_learning_rate']:g}) per noise multiplier sigma",
            {m: fmt(v) for m, v in dp.items()},
            note=f"per-client privacy at delta {cfg['delta']:g} after {eps['steps']} steps: {eps_note}; the "
                 "accountant assumes Poisson sampling with q = batch / client size, our minibatches are drawn "
                 "uniformly with replacement (the usual approximation). No ordering is claimed: reviewers found "
                 "counterexamples to FFA-LoRA >= LoRA"),
        Claim.finding(
            "bytes-up-per-client",
            "bytes each client sends per round (FFA-LoRA: B only; LoRA: A and B)",
            meas["bytes_up"]),
    ]


def _plot(ctx: RunContext, cfg, setup, sgd, dp, eps, dw, dw_c) -> None:
    import matplotlib.pyplot as plt

    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.2))
    for m, r in sgd.items():
        a1.plot(np.arange(1, cfg["rounds"] + 1), r[2]["acc"], marker=".", label=m)
    a1.axhline(setup.pretrained_acc, color="grey", ls="--", lw=0.8, label="pretrained")
    a1.set(xlabel="round", ylabel="test accuracy", title="federated fine-tuning, SGD, no noise")
    a1.legend(fontsize=8)
    sig = np.asarray(cfg["sigmas"])
    for j, (m, v) in enumerate(dp.items()):
        a2.errorbar(sig * (1 + 0.03 * j), v.mean(1), yerr=v.std(1), marker="o", capsize=3, label=m)
    labels = [f"{s:g}\neps {eps['epsilon'][f'sigma={s:g}']:.1f}" if eps.get("epsilon") else f"{s:g}" for s in sig]
    a2.set_xticks(sig, labels, fontsize=8)
    a2.set(xlabel=f"noise multiplier sigma (eps at delta {cfg['delta']:g})", ylabel="test accuracy",
           title=f"DP-SGD, {cfg['dp_rounds']} rounds, {cfg['n_seeds']} seeds")
    a2.legend(fontsize=8)
    x = np.concatenate([np.ravel(d) for d in dw])
    y = np.concatenate([np.ravel(d) for d in dw_c])
    a3.plot(x, y, ".", ms=2)
    a3.set(xlabel=f"Delta W, alpha={cfg['lora_alpha']:g}, eta={cfg['learning_rate']:g}",
           ylabel=f"Delta W, {cfg['equivalence_c']:g} alpha, eta/{cfg['equivalence_c']**2:g}",
           title="FFA-LoRA: scaling alpha = scaling the learning rate")
    a3.locator_params(nbins=5)
    fig.tight_layout()
    ctx.savefig(fig, "ffa_lora.png", dpi=90)
