"""AugLocal (augmented auxiliary networks) vs backprop (docs/papers/local-auglocal.md).

Paper: Ma et al., "Scaling Supervised Local Learning with Augmented Auxiliary Networks" (AugLocal, ICLR 2024). Command: ``lgrad run local-auglocal --quick`` (``--full``: MNIST-5k
too, wider models, 5 seeds).
Expected: every block's update depends only on its own local loss (cross-block gradients
exactly 0); AugLocal within 3 points of backprop on the shallow ReLU MLP and CNN (mean gap
over 3 seeds, paired by seed, on the same model); the compiled memory of its gradient
step reported as a ratio to backprop's (the paper: about 40% less memory).

80 epochs on the 8x8 digits, 3 seeds, the seeds of a (model, rule) one after the other
through one compiled step (``experiments/_local_common.py``). Split out of the former
``local-learning`` experiment with the same jobs, seeds and settings, so the same
numbers: mean gap MLP 0.19, CNN 0.00 points; isolation exact; peak memory 1.06 / 1.13
(MLP / CNN) of backprop's.
"""
from __future__ import annotations

from typing import Any

from experiments import _local_common as C
from lgrad.engine import Claim, RunContext
from lgrad.engine.config import Choice, Int

NAME = "local-auglocal"
PAPER = "Ma, Wu, Si, Tan 2024, Scaling Supervised Local Learning with Augmented Auxiliary Networks (ICLR), AugLocal"
DESCRIPTION = "AugLocal vs backprop on digits (MLP, CNN), 3 seeds: accuracy, gradient isolation, memory."
EXPECTED = "AugLocal within 3 points of backprop (mean over seeds); cross-block grads exactly 0; memory vs backprop reported."
# Every threshold the claims use: the accuracy gap in points (on the mean over seeds), float tolerances.
CRITERIA = {"gap": 3.0, "cross_grad": 0.0, "grad_match": 1e-6}

RULE = "auglocal"
RULES = ["backprop", RULE]
_OWN = dict(rules=RULES, auglocal_depth=3)
CONFIGS = {"quick": dict(C.QUICK, **_OWN), "full": dict(C.FULL, **_OWN)}
SMOKE = dict(C.SMOKE)
# What `lgrad run --set` / `lgrad sweep` accept (lgrad.engine.config; refused before any compute).
LIMITS = {**C.LIMITS, "models": Choice("mlp", "cnn"), "rules": Choice(*RULES), "auglocal_depth": Int(min=1)}
memory_estimate = C.memory_estimate


def measure(config: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    return C.measure(config, ctx, figure="local_auglocal.png", title="AugLocal vs backprop")


def claims(measurements: dict[str, Any], config: dict[str, Any]) -> list[Claim]:
    m, S = measurements, config["seeds"]
    gap = C.gap_claim(
        f"{RULE}-within-3", f"{RULE} within {CRITERIA['gap']:g} points of backprop (mean over {S} seeds)", m, RULE,
        ["mlp", "cnn"], CRITERIA["gap"], config,
    )
    findings = C.memory_findings(m, config, "AugLocal reports about 40% less memory than backprop on deep nets")
    return C.isolation_claims(m, CRITERIA) + ([gap] if gap else []) + findings
