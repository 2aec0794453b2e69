"""Weighted gradient ascent (WGA; OpenUnlearning `compute_wga_loss` + GradDiff retain) as a custom PULSE method.

Forget: L_f = −Σ_t m_t·w_t·NLL_t / Σ_t m_t with token weights w_t = p_θ(y_t)^β, detached (tokens already
unlikely get a weak push). Retain: NLL on D_r; weights 1/1. β: unlearn.params (default 1.0, as OpenUnlearning). Run:
    pulse run "methods=[ga,npo,examples.my_method:MY_METHOD]" unlearn.params.wga.beta=2
"""
from pulse.unlearn import Method, Outputs, losses


def wga_loss(out: Outputs):
    logps, mask = losses.token_logps(out.logits, out.labels)  # log p_θ(y_t), [B, T-1]; 0 outside the mask
    weights = (logps.detach() * out.params["beta"]).exp()  # p^β, no gradient through the weights
    return (weights * logps).sum() / mask.sum().clamp(min=1.0)  # = −mean over answer tokens of w_t·NLL_t


def retain_nll(out: Outputs):
    return losses.nll(out.logits, out.labels)


MY_METHOD = Method(
    name="wga",
    description="Weighted gradient ascent (OpenUnlearning WGA): p^β-weighted −NLL on D_f + NLL on D_r, beta 1.",
    forget_loss=wga_loss,
    retain_loss=retain_nll,
    defaults={"beta": 1.0},
)
