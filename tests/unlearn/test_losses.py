"""Hand-checked values for the pure unlearning losses (tiny tensors, V = 3)."""
import math

import pytest
import torch
import torch.nn.functional as F

from pulse.unlearn import losses

L = math.log


def logits_from_probs(rows):
    """Logits whose softmax is exactly the given (unnormalised) probability rows."""
    return torch.log(torch.tensor(rows, dtype=torch.float32))


def batch():
    # row 0: softmax at pos0 = [.25, .5, .25], pos1 = [.125, .375, .5]; pos2 unused (last position)
    # row 1: softmax at pos0 = [.5, .25, .25] (masked: next label is -100), pos1 = [.25, .25, .5]
    logits = torch.stack([
        logits_from_probs([[1, 2, 1], [1, 3, 4], [9, 9, 9]]) + 3.0,  # a constant shift changes nothing
        logits_from_probs([[2, 1, 1], [1, 1, 2], [5, 1, 1]]),
    ])
    labels = torch.tensor([[-100, 1, 1], [-100, -100, 0]])
    return logits, labels


def test_token_logps_hand_values():
    logits, labels = batch()
    logps, mask = losses.token_logps(logits, labels)
    expected = torch.tensor([[L(0.5), L(0.375)], [0.0, L(0.25)]])
    assert torch.allclose(logps, expected, atol=1e-6)
    assert mask.tolist() == [[1.0, 1.0], [0.0, 1.0]]
    assert logps.dtype == torch.float32


def test_token_logps_fp32_from_bf16():
    logits, labels = batch()
    logps, _ = losses.token_logps(logits.bfloat16(), labels)
    assert logps.dtype == torch.float32


def test_nll_ga_hand_and_equal_to_hf_cross_entropy():
    logits, labels = batch()
    expected = -(L(0.5) + L(0.375) + L(0.25)) / 3
    assert losses.nll(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    assert losses.ga(logits, labels).item() == pytest.approx(-expected, abs=1e-6)
    hf = F.cross_entropy(logits[:, :-1].reshape(-1, 3), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert losses.nll(logits, labels).item() == pytest.approx(hf.item(), abs=1e-6)


def test_sequence_sum_mean_lengths_hand():
    logits, labels = batch()
    assert losses.answer_lengths(labels).tolist() == [2.0, 1.0]
    s = losses.sequence_logps_sum(logits, labels)
    m = losses.sequence_logps_mean(logits, labels)
    assert torch.allclose(s, torch.tensor([L(0.5) + L(0.375), L(0.25)]), atol=1e-6)
    assert torch.allclose(m, torch.tensor([(L(0.5) + L(0.375)) / 2, L(0.25)]), atol=1e-6)


def test_doubling_answer_doubles_sum_keeps_mean():
    def seq(n):  # one prompt token then n answer tokens, every position predicts token 1 with p = .375
        logits = logits_from_probs([[1, 3, 4]] * (n + 1)).unsqueeze(0)
        labels = torch.tensor([[-100] + [1] * n])
        return logits, labels

    s1, m1 = losses.sequence_logps_sum(*seq(3)), losses.sequence_logps_mean(*seq(3))
    s2, m2 = losses.sequence_logps_sum(*seq(6)), losses.sequence_logps_mean(*seq(6))
    assert s2.item() == pytest.approx(2 * s1.item(), rel=1e-6)
    assert m2.item() == pytest.approx(m1.item(), rel=1e-6)
    assert m1.item() == pytest.approx(L(0.375), abs=1e-6)


A = [1, 3, 4]  # probs .125 .375 .5
R = [2, 1, 1]  # probs .5 .25 .25
KL_R_A = 0.5 * L(0.5 / 0.125) + 0.25 * L(0.25 / 0.375) + 0.25 * L(0.25 / 0.5)  # KL(R || A)
KL_A_R = 0.125 * L(0.125 / 0.5) + 0.375 * L(0.375 / 0.25) + 0.5 * L(0.5 / 0.25)  # KL(A || R)


def test_kl_zero_when_equal_positive_and_direction():
    theta = logits_from_probs([[A]])
    ref = logits_from_probs([[R]])
    assert losses.kl_ref(theta, theta.clone()).item() == pytest.approx(0.0, abs=1e-7)
    forward = losses.kl_ref(theta, ref).item()
    swapped = losses.kl_ref(ref, theta).item()
    assert forward > 0 and swapped > 0
    assert forward == pytest.approx(KL_R_A, abs=1e-6)  # KL(p_ref || p_theta)
    assert swapped == pytest.approx(KL_A_R, abs=1e-6)
    assert abs(forward - swapped) > 0.05  # a reverse-KL bug would show here


def test_kl_reductions_hand():
    # B=2, T=2: (0,0) KL(R||A); (1,0) KL(A||R); the other positions have equal logits.
    theta = logits_from_probs([[A, A], [R, R]])
    ref = logits_from_probs([[R, A], [A, R]])
    assert losses.kl_ref(theta, ref, reduction="mllmu").item() == pytest.approx((KL_R_A + KL_A_R) / 2, abs=1e-6)
    assert losses.kl_ref(theta, ref).item() == pytest.approx((KL_R_A + KL_A_R) / 4, abs=1e-6)
    labels = torch.tensor([[-100, 0], [-100, -100]])  # only position (0,0) predicts a labelled token
    assert losses.kl_ref(theta, ref, labels=labels).item() == pytest.approx(KL_R_A, abs=1e-6)
    assert losses.kl_ref(theta, ref, labels=labels, reduction="mllmu").item() == pytest.approx(KL_R_A / 2, abs=1e-6)
    mask = torch.tensor([[0, 0], [1, 0]])
    assert losses.kl_ref(theta, ref, mask=mask).item() == pytest.approx(KL_A_R, abs=1e-6)
    with pytest.raises(ValueError):
        losses.kl_ref(theta, ref, reduction="batchmean")


def test_kl_masked_positions_ignored():
    torch.manual_seed(0)
    theta, ref = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    labels = torch.tensor([[-100, -100, 1, 2], [-100, 3, 4, -100]])
    before = losses.kl_ref(theta, ref, labels=labels)
    theta2, ref2 = theta.clone(), ref.clone()
    for b, t in [(0, 0), (0, 3), (1, 2), (1, 3)]:  # positions whose next label is -100, and the last position
        theta2[b, t] += torch.randn(5) * 5
        ref2[b, t] -= 3.0 * torch.arange(5.0)
    assert losses.kl_ref(theta2, ref2, labels=labels).item() == pytest.approx(before.item(), abs=1e-6)


def test_npo_at_equality_value_and_gradient():
    beta = 0.1
    logps = torch.tensor([-3.0, -5.0, -1.0, -8.0], requires_grad=True)
    loss = losses.npo(logps, logps.detach().clone(), beta)
    assert loss.item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)  # 13.86
    loss.backward()
    # W = 1: the gradient of GA in sequence-sum form, mean_b log pi(y_b|x_b), i.e. +1/B per sample
    assert torch.allclose(logps.grad, torch.full((4,), 1 / 4))


def test_npo_gradient_through_logits_equals_sequence_sum_ga_at_start():
    torch.manual_seed(1)
    labels = torch.tensor([[-100, 1, 2, 3], [-100, -100, 4, -100]])
    logits = torch.randn(2, 4, 5, requires_grad=True)
    ref = losses.sequence_logps_sum(logits, labels).detach()
    (g_npo,) = torch.autograd.grad(losses.npo(losses.sequence_logps_sum(logits, labels), ref, 0.1), logits)
    (g_ga,) = torch.autograd.grad(losses.sequence_logps_sum(logits, labels).mean(), logits)
    assert torch.allclose(g_npo, g_ga, atol=1e-6)


def test_npo_small_beta_approaches_ga_up_to_constant():
    beta = 1e-4
    logps = torch.tensor([-3.0, -1.0, -7.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-2.0, -2.0, -2.0], dtype=torch.float64)
    loss = losses.npo(logps, ref, beta)
    assert loss.item() - 2 / beta * math.log(2) == pytest.approx((logps - ref).mean().item(), abs=1e-3)
    loss.backward()
    assert torch.allclose(logps.grad, torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-4)
    # with a large beta the per-sample weight W = 2*sigmoid(beta*log_ratio) departs from 1
    logps2 = logps.detach().clone().requires_grad_(True)
    losses.npo(logps2, ref, 1.0).backward()
    w = 2 * torch.sigmoid(logps2.detach() - ref)
    assert torch.allclose(logps2.grad, w / 3)


def test_simnpo_hand_values_and_sign():
    logps = torch.tensor([-2.0, -6.0], requires_grad=True)
    lengths = torch.tensor([2.0, 3.0])
    logsig = lambda z: -math.log(1 + math.exp(-z))  # noqa: E731
    # beta=1, margin 0: arguments are mean NLLs 1 and 2
    assert losses.simnpo(logps, lengths, 1.0).item() == pytest.approx(-(logsig(1) + logsig(2)), abs=1e-6)
    # beta=2, margin 0.5: arguments 2*1-0.5 and 2*2-0.5
    value = losses.simnpo(logps, lengths, 2.0, margin=0.5)
    assert value.item() == pytest.approx(-(logsig(1.5) + logsig(3.5)) / 2, abs=1e-6)
    value.backward()
    assert (logps.grad > 0).all()  # minimising lowers the forget log-probs
