"""One unlearning request on the small mini world: reference = adapter disabled, GA forgets, NaN -> diverged."""
from dataclasses import replace

import pytest
import torch

from pulse.data.mllmu import read_people, read_qa_pairs
from pulse.errors import PulseError
from pulse.eval.likelihood import option_logps
from pulse.models.batches import Encoder
from pulse.models.load import load_model
from pulse.protocol.scenarios import pair_samples
from pulse.config import load_config
from pulse.unlearn.loop import apply_saved, check_method_mode, unlearn_request

MINI = load_config(None).unlearn  # the mini's recipe: lr 1e-3, batch 16, constant, clip 1.0, r8/α16


def UnlearnConfig(**kw):  # noqa: N802
    """The mini's recipe with a fixed step budget (these tests count steps)."""
    return replace(MINI, **{"budget": "steps", **kw})


@pytest.fixture
def setup(small_world):
    lm = load_model(small_world / "models" / "finetuned")
    people = sorted(read_people(small_world / "mllmu", "Full_Set"), key=lambda p: p.id)
    pairs = read_qa_pairs(small_world / "mllmu", "ft_Data")
    forget = pair_samples(pairs, people[:3], lm.template)
    retain = pair_samples(pairs, people[3:], lm.template)
    return lm, Encoder(lm.processor), forget, retain


def _answer_logp(lm, enc, samples):
    return sum(s[0] for s in option_logps(lm.model, enc, [(x.prompt, x.image, [x.answer]) for x in samples]))


def test_ga_lowers_forget_likelihood_and_resume_rebuilds_exactly(setup, small_world, tmp_path):
    lm, enc, forget, retain = setup
    before = _answer_logp(lm, enc, forget)
    model, res = unlearn_request(lm.model, enc, "ga", "proj+llm", forget, retain,
                                 UnlearnConfig(steps=5, batch_size=8), seed=0, save_to=tmp_path / "a")
    assert res.status == "ok" and len(res.losses) == 5
    lm.model = model
    after = _answer_logp(lm, enc, forget)
    assert after < before - 1.0
    rebuilt = apply_saved(load_model(small_world / "models" / "finetuned").model, tmp_path / "a")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_reference_is_the_model_before_the_request(setup):
    """NPO's cached reference (adapter disabled) equals the untouched model: the first loss is (2/β)·ln 2."""
    lm, enc, forget, retain = setup
    _, res = unlearn_request(lm.model, enc, "npo", "llm", forget, retain, UnlearnConfig(steps=1), seed=0)
    assert res.losses[0]["forget"] == pytest.approx(2 / 0.1 * torch.log(torch.tensor(2.0)).item(), rel=1e-4)


def test_ga_klr_first_kl_is_zero(setup):
    lm, enc, forget, retain = setup
    _, res = unlearn_request(lm.model, enc, "ga_klr", "proj+llm", forget, retain, UnlearnConfig(steps=2), seed=0)
    assert res.losses[0]["retain"] == pytest.approx(0.0, abs=1e-6)  # θ = reference at step 0
    assert res.losses[1]["retain"] > 0


def test_nan_loss_marks_request_diverged(setup):
    lm, enc, forget, retain = setup
    model, res = unlearn_request(lm.model, enc, "npo", "proj+llm", forget, retain,
                                 UnlearnConfig(steps=3, params={"beta": float("nan")}), seed=0)
    assert res.status == "diverged" and len(res.losses) == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_full_mode_refuses_methods_needing_reference_logits():
    with pytest.raises(PulseError, match="second model copy"):
        check_method_mode("ga_klr", "full")
    check_method_mode("ga", "full")
