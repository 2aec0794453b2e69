"""`fit` never applies a non-finite update: a NaN/inf loss or gradient norm at step k leaves exactly the weights
after step k-1 (and AdamW's state) and says diverged; an update that still overflows is caught after the step."""
import math

import pytest
import torch

from pulse.config import Recipe
from pulse.unlearn.loop import all_finite, fit, grad_norm

K = 3  # the step whose gradient goes bad


class BadGrad(torch.autograd.Function):
    """Identity forward; backward returns `value` (NaN or inf) in every gradient element."""

    @staticmethod
    def forward(ctx, x, value):
        ctx.value = value
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, ctx.value), None


def _params():
    torch.manual_seed(0)
    return [("w", torch.nn.Parameter(torch.randn(3, 4))), ("b", torch.nn.Parameter(torch.randn(4)))]


def _loss_fn(named, bad_step=None, value=float("nan")):
    w, b = named[0][1], named[1][1]
    x = torch.linspace(-1, 1, 6).reshape(2, 3)

    def loss_fn(step):
        out = x @ w + b
        if step == bad_step:
            out = BadGrad.apply(out, value)  # the loss stays finite; its gradient does not
        loss = (out ** 2).mean()
        return loss, {"loss": loss.item()}
    return loss_fn


def _recipe(**kw):
    return Recipe(**{"lr": 0.1, "schedule": "linear", "warmup_steps": 1, **kw})


@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_bad_gradient_keeps_exactly_the_weights_after_the_previous_step(clip, value):
    plan = list(range(6))
    named = _params()
    losses, status = fit(named, plan, _loss_fn(named, bad_step=K, value=value), _recipe(clip=clip))
    assert status == "diverged" and len(losses) == K + 1
    assert losses[-1]["diverged"] == "gradient" and not math.isfinite(losses[-1]["grad_norm"])
    assert math.isfinite(losses[-1]["loss"])  # the loss itself was fine: only the gradient check stops it
    # the same training stopped after K steps (same plan, so the same lr schedule)
    ref = _params()
    _, ref_status = fit(ref, plan, _loss_fn(ref), _recipe(clip=clip), after_step=lambda k: "stop" if k == K else None)
    assert ref_status == "ok"
    start = _params()
    for (n, p), (_, q), (_, p0) in zip(named, ref, start):
        assert torch.equal(p, q), n
        assert not torch.equal(p, p0)  # it did train before the bad step


def test_nan_loss_keeps_the_weights_after_the_previous_step():
    plan = list(range(5))
    named = _params()
    base = _loss_fn(named)

    def loss_fn(step):
        loss, parts = base(step)
        if step == K:
            loss = loss * float("nan")
            parts = {"loss": loss.item()}
        return loss, parts

    losses, status = fit(named, plan, loss_fn, _recipe())
    ref = _params()
    fit(ref, plan, _loss_fn(ref), _recipe(), after_step=lambda k: "stop" if k == K else None)
    assert status == "diverged" and losses[-1] == {**losses[-1], "step": K, "diverged": "loss"}
    assert all(torch.equal(p, q) for (_, p), (_, q) in zip(named, ref))


def test_an_update_that_overflows_is_caught_after_the_step():
    """w0 = -3.3e38, loss = w (gradient 1), lr 1e37: AdamW's first updates are -lr each (direction m̂/sqrt(v̂) = 1),
    so w = -3.4e38 after step 0 (finite: fp32 max 3.40e38) and -inf after step 1, whose loss (-3.4e38) and
    gradient were finite."""
    named = [("w", torch.nn.Parameter(torch.tensor([-3.3e38])))]
    losses, status = fit(named, list(range(5)), lambda s: (named[0][1].sum(), {"loss": named[0][1].sum().item()}),
                         _recipe(lr=1e37, schedule="constant", warmup_steps=0))
    assert status == "diverged" and losses[-1]["step"] == 1
    assert losses[-1]["diverged"] == "weights" and losses[-1]["weights_restored"] is False
    assert losses[0]["loss"] == pytest.approx(-3.3e38) and losses[1]["loss"] == pytest.approx(-3.4e38)


def test_all_finite_is_exact_where_the_norm_overflows():
    huge = torch.full((4,), 3e38)  # finite, but its L2 norm overflows fp32
    assert all_finite([huge, torch.zeros(3)])
    assert not all_finite([torch.zeros(3), torch.tensor([1.0, float("inf")])])
    assert not all_finite([torch.tensor([float("nan")])])
    assert all_finite([])


def test_grad_norm_is_the_norm_before_clipping():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    assert grad_norm([p], None) == pytest.approx(5.0) and torch.equal(p.grad, torch.tensor([3.0, 4.0]))
    assert grad_norm([p], 1.0) == pytest.approx(5.0)
    assert torch.allclose(p.grad, torch.tensor([0.6, 0.8]), atol=1e-6)  # clipped in place, as before
