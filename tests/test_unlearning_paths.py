"""unlearning-paths: the claims follow from the measurements alone (no training)."""
from __future__ import annotations

import math

from experiments import unlearning_paths as exp


def _measurements(control_max=0.0):
    T = 12
    dist = [0.1 * 1.5**t for t in range(T + 1)]
    linear = {"closed_form_rel_err": 3e-14, "lemma_rel_err": 8e-16, "dist": dist, "ratio": [0.5] * 4 + [2.0] * (T - 3), "t0": 4,
              "t0_formula": 6, "rho": 0.1, "sigma_u": 1.0, "pd0_norm": 0.5, "slope": math.log(1.5),
              "control_dist": [0.0] * T + [control_max], "control_scale": 1.0, "xaxb_norm": 0.0}
    method = {"retain_acc": [0.75, 0.5], "retain_acc_spread": 0.25, "retain_acc_std": 0.125, "retain_drop_spread": 0.0625,
              "forget_acc_by_p": [0.5, 0.25], "forget_logp_by_p": [-1.0, -0.5], "forget_logp_before_by_p": [-0.5, -0.25],
              "forget_logp_drop_by_p": [0.5, 0.25], "pairwise_re_after": 0.01, "re_to_retrain_after": 0.02}
    classifier = {"positions": [1, 4], "retain_acc_spread_before": 0.25, "forget_acc_before_by_p": [0.9, 0.8],
                  "pairwise_re_before": float("nan"), "re_to_retrain_before": 0.03, "npo": method}
    return {"linear": linear, "classifier": classifier}


def test_claims_from_hand_made_measurements():
    config = dict(exp.CONFIGS["quick"], **exp.SMOKE)  # lin_T = 12, clf_positions = [4], unlearn_methods = ["npo"]
    config["clf_positions"] = [1, 4]
    out = {c.id: c for c in exp.claims(_measurements(), config)}
    assert all(out[k].passed for k in ("closed-form-stages", "lemma-exact", "bound-holds-after-t0", "growth-slope", "orthogonal-control"))
    assert out["bound-holds-after-t0"].measured["min_distance_over_bound_all_t"] == 0.5
    assert out["growth-slope"].measured == math.log(1.5) and out["growth-slope"].target == f">= {2 * math.log1p(0.1):g}"
    assert out["linear-distance-trajectory"].measured == {"t=0": 0.1, "t=10": 0.1 * 1.5**10, "t=12": 0.1 * 1.5**12}
    spread = out["retain-acc-spread-npo"].measured
    assert spread["min_after"] == 0.5 and spread["max_after"] == 0.75 and spread["spread_before"] == 0.25
    forget = out["forget-vs-position-npo"].measured
    assert forget["highest_forget_logp_after_at_last_p"] and forget["smallest_logp_drop_at_last_p"]
    assert out["path-divergence-npo"].measured["pairwise_before"] == "nan"
    assert not {c.id: c for c in exp.claims(_measurements(control_max=1e-20), config)}["orthogonal-control"].passed
