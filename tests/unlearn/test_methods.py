"""The method registry: every entry runs, respects masks, and combines its terms as documented."""
import dataclasses

import pytest
import torch

from pulse.errors import PulseError
from pulse.unlearn import losses
from pulse.unlearn.methods import IDK_ANSWERS, METHODS, Outputs, get_method, method_loss

V = 7
LABELS = torch.tensor([[-100, -100, 3, 1, -100], [-100, 2, 4, 5, 6]])  # row 0 ends in padding
MASKED = [(0, 0), (0, 3), (0, 4), (1, 4)]  # logit positions whose next label is -100, and the last position


def outputs(method, logits, ref_logits, labels=LABELS):
    """Outputs with exactly the reference data the method's flags ask for."""
    ref_sum = losses.sequence_logps_sum(ref_logits, labels) if method.needs_ref_forget else None
    forget = Outputs(logits, labels, ref_logps_sum=ref_sum)
    retain = Outputs(logits * 0.5, labels, ref_logits=ref_logits if method.needs_ref_retain else None)
    return forget, retain


def random_logits(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 5, V, generator=g), torch.randn(2, 5, V, generator=g)


def test_registry_names():
    assert set(METHODS) == {"ga", "ga_klr", "grad_diff", "npo", "npo_klr", "simnpo", "idk", "kl_min"}
    for name, m in METHODS.items():
        assert m.name == name and m.description and m.forget_answers in ("true", "idk")


def test_unknown_method_lists_known_names():
    with pytest.raises(PulseError) as err:
        get_method("gradient_ascent")
    assert "gradient_ascent" in str(err.value) and "npo_klr" in str(err.value)
    assert get_method("npo") is METHODS["npo"]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_finite_scalar_with_gradient(name):
    method = METHODS[name]
    logits, ref = random_logits(0)
    logits.requires_grad_(True)
    forget, retain = outputs(method, logits, ref)
    loss, parts = method_loss(method, forget, retain)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    expected = method.forget_weight * parts["forget"] + method.retain_weight * parts.get("retain", 0.0)
    assert parts["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_masked_positions_change_nothing(name):
    method = METHODS[name]
    logits, ref = random_logits(1)
    logits2, ref2 = logits.clone(), ref.clone()
    for b, t in MASKED:
        logits2[b, t] += 10 * torch.randn(V)
        ref2[b, t] = torch.linspace(-5, 5, V)
    _, p1 = method_loss(method, *outputs(method, logits, ref))
    _, p2 = method_loss(method, *outputs(method, logits2, ref2))
    assert p2["forget"] == pytest.approx(p1["forget"], abs=1e-5)
    if name == "kl_min":  # documented: MLLMU-Bench's KL counts every position, masked ones included
        assert abs(p2["retain"] - p1["retain"]) > 1e-3
    else:
        assert p2["loss"] == pytest.approx(p1["loss"], abs=1e-5)


def test_terms_match_the_loss_functions():
    logits, ref = random_logits(2)
    ga_m, gd, kl_min, klr = (METHODS[n] for n in ("ga", "grad_diff", "kl_min", "ga_klr"))
    _, p = method_loss(ga_m, Outputs(logits, LABELS), None)
    assert p["loss"] == pytest.approx(-losses.nll(logits, LABELS).item(), abs=1e-6)
    _, p = method_loss(gd, Outputs(logits, LABELS), Outputs(ref, LABELS))
    assert p["loss"] == pytest.approx((losses.nll(ref, LABELS) - losses.nll(logits, LABELS)).item(), abs=1e-5)
    retain = Outputs(logits, LABELS, ref_logits=ref)
    _, p = method_loss(kl_min, Outputs(logits, LABELS), retain)
    expected = losses.nll(logits, LABELS) + losses.kl_ref(logits, ref, reduction="mllmu")
    assert p["retain"] == pytest.approx(expected.item(), abs=1e-5)
    _, p = method_loss(klr, Outputs(logits, LABELS), retain)
    assert p["retain"] == pytest.approx(losses.kl_ref(logits, ref, labels=LABELS).item(), abs=1e-6)


def test_npo_starts_at_two_ln2_over_beta_and_params_override_defaults():
    logits, _ = random_logits(3)
    forget = Outputs(logits, LABELS, ref_logps_sum=losses.sequence_logps_sum(logits, LABELS))
    _, p = method_loss(METHODS["npo"], forget, None)
    assert p["forget"] == pytest.approx(2 / 0.1 * 0.6931471805599453, rel=1e-5)
    _, p = method_loss(METHODS["npo"], dataclasses.replace(forget, params={"beta": 0.5}), None)
    assert p["forget"] == pytest.approx(2 / 0.5 * 0.6931471805599453, rel=1e-5)


def test_simnpo_and_idk_settings():
    s = METHODS["simnpo"]
    assert (s.forget_weight, s.retain_weight, s.defaults) == (0.125, 1.0, {"beta": 4.5, "margin": 0.0})
    assert not s.needs_ref_forget and not s.needs_ref_retain
    assert METHODS["idk"].forget_answers == "idk"
    assert all(m.forget_answers == "true" for n, m in METHODS.items() if n != "idk")
    assert len(IDK_ANSWERS) >= 3 and all(isinstance(a, str) and a for a in IDK_ANSWERS)


def test_missing_reference_or_retain_is_an_error():
    logits, _ = random_logits(4)
    with pytest.raises(ValueError, match="ref_logps_sum"):
        method_loss(METHODS["npo"], Outputs(logits, LABELS), None)
    with pytest.raises(ValueError, match="ref_logits"):
        method_loss(METHODS["ga_klr"], Outputs(logits, LABELS), Outputs(logits, LABELS))
    with pytest.raises(ValueError, match="retain"):
        method_loss(METHODS["grad_diff"], Outputs(logits, LABELS), None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        METHODS["ga"].forget_weight = 2.0


def test_public_api_is_exported_and_builtins_obey_it():
    """`from pulse.unlearn import Method, Outputs, losses` is the surface custom methods use; built-ins pass the same
    checks a custom method gets (scalar defaults, valid weights and answers)."""
    import pulse.unlearn as pu
    from pulse.unlearn.methods import _checked

    assert (pu.Method, pu.Outputs, pu.losses, pu.method_loss) == (METHODS["ga"].__class__, Outputs, losses,
                                                                  method_loss)
    for name, m in METHODS.items():
        assert _checked(m, name) is m


def test_params_resolution_flat_then_own_section():
    from pulse.unlearn.methods import method_params

    npo, simnpo = METHODS["npo"], METHODS["simnpo"]
    assert method_params(npo, {}) == {"beta": 0.1}
    assert method_params(npo, {"beta": 0.4, "margin": 1.0}) == {"beta": 0.4}  # margin is simnpo's only
    assert method_params(simnpo, {"beta": 0.4, "margin": 1.0}) == {"beta": 0.4, "margin": 1.0}
    both = {"beta": 0.4, "simnpo": {"beta": 3.0}}
    assert method_params(npo, both) == {"beta": 0.4}
    assert method_params(simnpo, both) == {"beta": 3.0, "margin": 0.0}
    assert method_params(METHODS["ga"], both) == {}


def test_check_params_normalises_and_names_known_parameters():
    from pulse.unlearn.methods import check_params

    assert check_params(["npo", "simnpo"], {"beta": "2e-1", "simnpo": {"margin": 1}}) == \
        {"beta": 0.2, "simnpo": {"margin": 1.0}}
    with pytest.raises(PulseError, match=r"unlearn\.params\.gamma: unknown parameter.*npo: beta; "
                                         r"simnpo: beta, margin\)$"):
        check_params(["npo", "simnpo"], {"gamma": 1.0}, "c.yaml")
    with pytest.raises(PulseError, match="expected a number, got 'x'"):
        check_params(["simnpo"], {"simnpo": {"margin": "x"}})
