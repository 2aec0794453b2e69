"""Membership inference: the four scores, the AUC and PrivLeak against hand-computed values; `pulse mia` on the
small mini world (fine-tuned people against the held-out ones)."""
import json
import math

import pytest
import torch

from pulse.cli import main
from pulse.eval.mia import answer_token_stats, auc, aucs, privleak, scores_of


def test_scores_by_hand():
    import numpy as np
    got = scores_of(np.array([-1.0, -3.0]), np.array([-2.0, -2.0]), np.array([1.0, 2.0]), "ab")
    # loss = mean NLL 2; zlib: 2 / len(zlib.compress(b"ab")) = 2 / 10; Min-40%: the lowest max(1, int(0.8)) = 1
    # token, -(-3); Min-K%++: z = (-1+2)/1 = 1 and (-3+2)/2 = -0.5, lowest -> 0.5
    assert got == pytest.approx({"loss": 2.0, "zlib": 0.2, "mink": 3.0, "minkpp": 0.5})


def test_token_statistics_by_hand():
    # one row, two positions; the answer is the label at position 1, scored from position 0's logits [0, ln 3]:
    # p = (1/4, 3/4): mu = 1/4 ln 1/4 + 3/4 ln 3/4, var = E[lp^2] - mu^2
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    labels = torch.tensor([[-100, 1]])
    (tok, mu, sigma), = answer_token_stats(logits, labels)
    m = 0.25 * math.log(0.25) + 0.75 * math.log(0.75)
    v = 0.25 * math.log(0.25) ** 2 + 0.75 * math.log(0.75) ** 2 - m * m
    assert tok.tolist() == pytest.approx([math.log(0.75)])
    assert mu.tolist() == pytest.approx([m]) and sigma.tolist() == pytest.approx([math.sqrt(v)])


def test_auc_counts_ties_half_and_privleak_is_relative():
    # members 1, 2 vs non-members 2, 3: 1<2, 1<3, 2=2 (1/2), 2<3 -> 3.5 / 4
    assert auc([1.0, 2.0], [2.0, 3.0]) == 0.875
    assert auc([5.0], [1.0]) == 0.0 and math.isnan(auc([], [1.0]))
    assert privleak(0.6, 0.5) == pytest.approx(20.0) and math.isnan(privleak(0.6, float("nan")))
    recs = [{"person_id": "a", "form": "image", "loss": 1.0, "zlib": 1, "mink": 1, "minkpp": 1},
            {"person_id": "b", "form": "text", "loss": 2.0, "zlib": 2, "mink": 2, "minkpp": 2}]
    assert aucs(recs, {"a"}, {"b"})["loss"] == 1.0 and math.isnan(aucs(recs, {"a"}, {"b"}, ("image",))["loss"])


def test_pulse_mia_on_the_small_world(small_world, tmp_path, capsys):
    world = json.loads((small_world / "world.json").read_text())
    n = world["counts"]["fictional"]
    assert world["counts"]["holdout"] == len(world["holdout"]) > 0
    scores = tmp_path / "scores.json"
    args = ["mia", "--model", str(small_world / "models" / "finetuned"), "--data", str(small_world / "mllmu"),
            "--members", f"first:{n}", "--nonmembers", f"after:{n}", "--scores", str(scores), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["members"] == n and out["nonmembers"] == len(world["holdout"])
    assert set(out["auc"]) == {"image", "text", "all"} and all(0 <= v <= 1 for v in out["auc"]["all"].values())
    # the fine-tuned people are trained on: their answers' loss is lower than the held-out people's
    assert out["auc"]["all"]["loss"] > 0.7
    assert len(json.loads(scores.read_text())) == out["pairs"]
    assert main(args[:5] + ["--members", "first:3", "--nonmembers", "first:2"]) == 2
    assert "share 2 people" in capsys.readouterr().err
    assert main(args[:5] + ["--members", "first:x", "--nonmembers", "after:3"]) == 2
    assert "first:N with N a whole number" in capsys.readouterr().err
