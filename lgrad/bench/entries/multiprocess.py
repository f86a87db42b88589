"""Multi-process: ``lgrad launch --processes 2`` ÷ one process, on dsgd-topology's quick workload.

The workload (the ``SCRIPT`` below, run as a fresh interpreter exactly as a user runs a
command) is the ``dsgd-topology --quick`` training: n = 16 workers, heterogeneous
logistic regression (d = 10, 3 seeds batched inside each worker), D-SGD with gossip
over the complete graph, the 4x4 torus and the ring, all three advanced in one
``lgrad.train.scan_steps`` scan of 2000 steps (200 with ``--quick``), with the
experiment's diagnostics (consensus distance, loss of the average model) every 10
steps as its ``eval_fn`` and ``worker_algorithm``'s per-worker loss in the history
(gathered once, with ``to_host``). One process runs it with the vmap backend on its
one CPU device; under ``lgrad launch --processes 2`` each process holds one CPU
device and the workers run on the 2-device mesh with gloo collectives over 127.0.0.1
(what ``backend="auto"`` picks).

The target row times the whole command from the outside (wall; the CPU time of all
its processes is in ``extra``); pairs are run interleaved because the machine is
shared. Each process also reports where its time goes (``extra["breakdown"]``,
process 0): interpreter start + imports, ``jax.distributed`` init, compile, the
steady-state step (the compiled scan re-run, ÷ steps), the host transfer of the
histories, the collectives alone (a scan doing only the collectives of the program,
same count and shapes, on the mesh) and XLA's cost analysis of the compiled scan
(flops, bytes, and the collectives in the optimised HLO: the step's and the
every-10-steps diagnostics' together).

Where the time went before (shared 2-core CPU, load ~9): 10.6 s vs 58.3 s wall
(5.5x), 7.1 s vs 45.0 s CPU (6.3x); the mesh step cost 5.3 ms against 0.35 ms with
vmap. The optimised HLO of one step held 3 all-gathers (one per graph: XLA merges
the identical gathers the gossip rounds' ppermutes become when 8 workers share a
device) and 4 all-reduces (the experiment's per-step diagnostics and
``worker_algorithm``'s ``loss`` metric, a mean over the workers), no
collective-permute; ``run_loop`` syncs with the host once per chunk, never per
step. Each gloo rendezvous waits for the other process, and gloo waits by polling
(42 s of 73 s CPU were system time); on a 2-core machine the waiting process takes
the core the other needs. One XLA thread per process did not change this.

Now (the loss metric is per worker and unreduced, the diagnostics run every 10
steps, so a step holds only the 3 gossip all-gathers; the HLO's 4 all-reduces are
the diagnostics'), same machine, load ~9-10, 2000 steps, two interleaved pairs:
13.7 / 14.1 s vs 43.2 / 48.8 s wall (3.3x), 6.9 s vs 29.6 s CPU (4.3x). Per
process: start + imports 2.1 vs 4.0 s, compile 7.9 vs 11.5 s, the 2000 steps 0.97
vs 9.8 s: the mesh step costs 3.8 ms against 0.48 ms with vmap, while the
collectives alone cost 0.35 ms per step; host transfer 0.3 s (the per-worker
losses gathered once). So the 3 rendezvous per step still dominate: with compute
between them the two processes drift apart and each rendezvous waits for a
descheduled peer (~1.2 ms each under this load). ``lgrad run dsgd-topology
--quick`` as a whole (the backend check included): 1.7x / 1.8x wall, 2.5x / 2.8x
CPU (before: 2.8x / 2.1x wall, 2.9x / 3.3x CPU), system time 2-3.5 s (was 12-15 s).
What would go further: one rendezvous per step for the three graphs (a combined
gather) or gossip every few local steps.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lgrad.bench import Entry

SHARED = "shared 2-core CPU (other jobs running): medians of interleaved runs"

SCRIPT = r'''
import json, sys, time
T0 = time.perf_counter()
from lgrad.distributed.multiprocess import initialize_from_env
initialize_from_env()
import jax, jax.numpy as jnp, numpy as np, optax
jax.devices()
T1 = time.perf_counter()
from lgrad import federated
from lgrad.data import logistic_regression
from lgrad.distributed import comm, topology
from lgrad.distributed.multiprocess import to_host
from lgrad.train import scan_steps

steps, n, S, d, m, B = int(sys.argv[1]), 16, 3, 10, 100, 10
backend = "mesh" if jax.device_count() > 1 else "vmap"
tasks = [logistic_regression(m, dim=d, n_workers=n, heterogeneity=1.0, w_norm=3.0, seed=s) for s in range(S)]
x = np.stack([t.x for t in tasks], 2).astype(np.float32)
y = np.stack([t.y for t in tasks], 2).astype(np.float32)
data = federated.ClientData((x, y), np.full(n, m, np.int32))

def local_loss(w, xb, yb):
    z = xb @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - yb * z) + 0.5e-3 * jnp.sum(w ** 2)

def loss_fn(w, batch):
    return jnp.sum(jax.vmap(local_loss)(w, *batch))

def batch_fn(arrays, count, key):
    xa, ya = arrays
    idx = jax.vmap(lambda k: jax.random.randint(k, (B,), 0, count))(jax.random.split(key, S))
    return xa[idx, jnp.arange(S)[:, None]], ya[idx, jnp.arange(S)[:, None]]

graphs = {"complete": topology.complete(n), "torus": topology.torus(4, 4), "ring": topology.ring(n)}
algs = {g: federated.worker_algorithm(
    federated.decentralized(optax.sgd(0.1), federated.gossip_mix(topology.metropolis_hastings(a))),
    loss_fn, n_workers=n, batch_fn=batch_fn, backend=backend) for g, a in graphs.items()}
placed = federated.shard_workers(data, n_workers=n, backend=backend)
runs = {g: (alg.init(None, jnp.zeros((S, d))), jax.random.PRNGKey(0)) for g, alg in algs.items()}

def step(carry):  # only the gossip communicates; the per-worker loss stays split over the workers
    new, out = {}, {}
    for g, (state, key) in carry["runs"].items():
        key, sub = jax.random.split(key)
        state, met = algs[g].round(state, carry["data"], sub)
        new[g] = (state, key)
        out[g + "/loss"] = met["loss"]  # (n,): mean taken on the host
    return {"data": carry["data"], "runs": new}, out

def diagnostics(carry):  # every EVERY steps, as the experiment's eval_fn: the mean over workers
    out = {}
    for g, (state, _) in carry["runs"].items():
        wbar = jnp.mean(state.params, 0)
        out[g + "/consensus"] = jnp.mean(jnp.sum((state.params - wbar) ** 2, -1), 0)
        out[g + "/loss"] = jnp.mean(jax.vmap(lambda xa, ya: jax.vmap(local_loss, in_axes=(0, 1, 1))(wbar, xa, ya))(*carry["data"].arrays), 0)
    return out

EVERY = 10
carry = {"data": placed, "runs": runs}
T2 = time.perf_counter()
compiled = jax.jit(lambda c: scan_steps(step, c, steps, eval_every=EVERY, eval_fn=diagnostics)).lower(carry).compile()
T3 = time.perf_counter()
final, history, evals = jax.block_until_ready(compiled(carry))  # what run_loop runs: one chunk, one host sync
T4 = time.perf_counter()
history, evals = to_host(history), to_host(evals)  # the per-worker losses: one gather per chunk
loss_mean = {g: float(history[g + "/loss"][-1].mean()) for g in graphs}
params = {g: to_host(s.params) for g, (s, _) in final["runs"].items()}
T5 = time.perf_counter()
reps = []
for _ in range(2):
    t = time.perf_counter(); jax.block_until_ready(compiled(carry)); reps.append(time.perf_counter() - t)
hlo = compiled.as_text()
ca = compiled.cost_analysis()
ca = (ca[0] if isinstance(ca, list) else ca) or {}
coll = {k: hlo.count(" " + k + "(") + hlo.count(" " + k + "-start(") for k in ("all-gather", "all-reduce", "collective-permute")}
coll_ms = 0.0
if backend == "mesh":  # the collectives alone: per step and graph one all-gather, every EVERY steps 3 all-reduces
    from jax.sharding import NamedSharding, PartitionSpec as P
    from lgrad.distributed import make_program
    from lgrad.distributed.workers import worker_mesh
    def gossip(p):
        return p + 1e-9 * jnp.sum(comm.all_gather(p))
    def reduce(p):
        return p + 1e-9 * (comm.pmean(jnp.sum(p)) + comm.pmean(jnp.sum(p * p)) + comm.pmean(jnp.mean(p)))
    prog, red = (make_program(f, n_workers=n, backend="mesh", in_axes=(0,)) for f in (gossip, reduce))
    p0 = jax.device_put(jnp.zeros((n, S, d)), NamedSharding(worker_mesh(n, comm.AXIS, None), P(comm.AXIS)))
    def block(c, _):
        c = jax.lax.scan(lambda cc, _: (prog(prog(prog(cc))), None), c, None, length=EVERY)[0]
        return red(red(red(c))), None
    body = jax.jit(lambda p: jax.lax.scan(block, p, None, length=steps // EVERY)[0])
    jax.block_until_ready(body(p0))
    t = time.perf_counter(); jax.block_until_ready(body(p0)); coll_ms = 1e3 * (time.perf_counter() - t) / steps
out = {"process": jax.process_index(), "processes": jax.process_count(), "backend": backend, "steps": steps,
       "start_import_s": T1 - T0, "setup_s": T2 - T1, "compile_s": T3 - T2, "first_run_s": T4 - T3,
       "host_transfer_s": T5 - T4, "step_ms": 1e3 * min(reps) / steps, "collectives_only_step_ms": coll_ms,
       "xla_flops_per_step": float(ca.get("flops", 0.0)) / steps, "xla_bytes_per_step": float(ca.get("bytes accessed", 0.0)) / steps,
       "hlo_collectives": coll, "diagnostics_every": EVERY, "loss_mean_last_step": loss_mean}
if jax.process_index() == 0:
    print("BREAKDOWN " + json.dumps(out), flush=True)
'''


def _run(argv: list[str], timeout: float) -> tuple[float, float, dict]:
    """Wall and CPU seconds (all processes) of one command; process 0's breakdown."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", JAX_PLATFORMS="cpu")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=Path(__file__).resolve().parents[3])
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BREAKDOWN ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(a for a in argv if a != SCRIPT)} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-600:]}")
    return wall, cpu, json.loads(lines[-1][len("BREAKDOWN "):])


def run(quick: bool) -> list[Entry]:
    steps, pairs = (200, 1) if quick else (2000, 2)
    one = [sys.executable, "-c", SCRIPT, str(steps)]
    two = [sys.executable, "-m", "lgrad.cli", "launch", "--processes", "2", "--", "python", "-c", SCRIPT, str(steps)]
    got: dict[str, list] = {"one": [], "two": []}
    for _ in range(pairs):  # interleaved: a drift of the shared machine hits both alike
        got["one"].append(_run(one, 900))
        got["two"].append(_run(two, 900))
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in got.items()}
    breakdown = {k: v[-1][2] for k, v in got.items()}
    rnd = lambda d: {k: (round(x, 4) if isinstance(x, float) else x) for k, x in d.items()}  # noqa: E731
    extra = {"steps": steps, "cpu_s": {k: round(v[1], 2) for k, v in med.items()},
             "walls_s": {k: [round(r[0], 2) for r in v] for k, v in got.items()},
             "breakdown": {k: rnd(v) for k, v in breakdown.items()}}
    what = (f"`lgrad launch --processes 2` ÷ 1 process: wall of the whole command, dsgd-topology's quick workload "
            f"(16 workers, 3 graphs, {steps} steps, diagnostics every 10 steps; mesh over 2 processes with gloo vs vmap); {SHARED}")
    return [
        Entry("multiprocess/launch-2/one-process", what, med["two"][0], med["one"][0], "s", max_ratio=2.0, extra=extra),
        Entry("multiprocess/launch-2-cpu/one-process",
              "as multiprocess/launch-2 but CPU seconds (user + system) of all processes: each process compiles and "
              "runs its half of the workers' program", med["two"][1], med["one"][1], "s", extra={"steps": steps}),
        Entry("multiprocess/step/one-process",
              "steady-state step of the compiled scan (process 0 of 2, mesh + gloo) ÷ the one-process vmap step; "
              f"collectives alone: {breakdown['two']['collectives_only_step_ms']:.3g} ms/step",
              breakdown["two"]["step_ms"], breakdown["one"]["step_ms"], "ms", extra={"steps": steps}),
    ]
