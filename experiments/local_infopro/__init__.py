"""InfoPro (locally supervised learning) vs backprop (docs/papers/local-infopro.md).

Paper: Wang et al., "Revisiting Locally Supervised Learning: an Alternative to End-to-end Training" (InfoPro, ICLR 2021). Command: ``lgrad run local-infopro --quick`` (``--full``: MNIST-5k
too, wider models, 5 seeds).
Expected: every block's update depends only on its own local loss (cross-block gradients
exactly 0); InfoPro within 3 points of backprop on the shallow ReLU MLP and CNN (mean gap
over 3 seeds, paired by seed, on the same model); the compiled memory of its gradient
step reported as a ratio to backprop's (the paper: 40-60% less memory on deep nets).

80 epochs on the 8x8 digits, 3 seeds, the seeds of a (model, rule) one after the other
through one compiled step (``experiments/_local_common.py``). Split out of the former
``local-learning`` experiment with the same jobs, seeds and settings, so the same
numbers: mean gap MLP 0.09, CNN 1.02 points; isolation exact; peak memory 2.24 / 0.92
(MLP / CNN) of backprop's.
"""
from __future__ import annotations

from typing import Any

from experiments import _local_common as C
from lgrad.engine import Claim, RunContext
from lgrad.engine.config import Choice

NAME = "local-infopro"
PAPER = ("Wang, Ni, Song, Yang, Huang 2021, Revisiting Locally Supervised Learning: an Alternative to End-to-end "
         "Training (ICLR), InfoPro")
DESCRIPTION = "InfoPro vs backprop on digits (MLP, CNN), 3 seeds: accuracy, gradient isolation, memory."
EXPECTED = "InfoPro within 3 points of backprop (mean over seeds); cross-block grads exactly 0; memory vs backprop reported."
# Every threshold the claims use: the accuracy gap in points (on the mean over seeds), float tolerances.
CRITERIA = {"gap": 3.0, "cross_grad": 0.0, "grad_match": 1e-6}

RULE = "infopro"
RULES = ["backprop", RULE]
_OWN = dict(rules=RULES)
CONFIGS = {"quick": dict(C.QUICK, **_OWN), "full": dict(C.FULL, **_OWN)}
SMOKE = dict(C.SMOKE)
# What `lgrad run --set` / `lgrad sweep` accept (lgrad.engine.config; refused before any compute).
LIMITS = {**C.LIMITS, "models": Choice("mlp", "cnn"), "rules": Choice(*RULES)}
memory_estimate = C.memory_estimate


def measure(config: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    return C.measure(config, ctx, figure="local_infopro.png", title="InfoPro vs backprop")


def claims(measurements: dict[str, Any], config: dict[str, Any]) -> list[Claim]:
    m, S = measurements, config["seeds"]
    gap = C.gap_claim(
        f"{RULE}-within-3", f"{RULE} within {CRITERIA['gap']:g} points of backprop (mean over {S} seeds)", m, RULE,
        ["mlp", "cnn"], CRITERIA["gap"], config,
    )
    findings = C.memory_findings(m, config, "InfoPro reports 40-60% memory savings on deep CIFAR/ImageNet nets")
    return C.isolation_claims(m, CRITERIA) + ([gap] if gap else []) + findings
