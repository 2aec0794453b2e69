"""The multi-axis ranking, the learned-before shares and their flag, from hand-made rows."""
import math

import pandas as pd

from pulse.report.load import Run
from pulse.report.ranking import known_shares, ranking, to_markdown


def row(method, split, value, metric="accuracy", request=1, n=10, seed=0, target="proj+llm"):
    return {"scenario": "finetuned", "method": method, "target": target, "seed": seed, "request": request,
            "split": split, "modality": "all", "metric": metric, "accuracy": value, "relative": None,
            "status": "ok", "n": n, "probe": "none", "step": None, "at": "budget"}


def make_run() -> Run:
    rows = []
    for seed in (0, 1):
        rows += [row("ga", "unlearn", 20.0, seed=seed), row("ga", "retain", 50.0, seed=seed),
                 row("ga", "mmbench", 90.0, seed=seed), row("ga", "unlearn_known", 10.0, seed=seed),
                 row("ga", "unlearn", -5.0, "oracle_gap", seed=seed),
                 row("ga", "unlearn", 0.2, "forget_quality", seed=seed),
                 row("ga", "unlearn", 30.0, "privleak", seed=seed),
                 row("ga", "unlearn", 0.6, "mia_auc_mink", seed=seed),
                 row("npo", "unlearn", 40.0, seed=seed), row("npo", "retain", 80.0, seed=seed),
                 row("npo", "mmbench", 95.0, seed=seed), row("npo", "unlearn_known", 35.0, seed=seed),
                 row("npo", "unlearn", 15.0 + seed, "oracle_gap", seed=seed),
                 row("npo", "unlearn", 0.01, "forget_quality", seed=seed),
                 row("npo", "unlearn", -10.0, "privleak", seed=seed),
                 row("npo", "unlearn", 0.7, "mia_auc_mink", seed=seed),
                 # request 0: 10 questions of which 9 (seed 0) and 7 (seed 1) answered correctly
                 row("ga", "unlearn", 90.0, request=0, seed=seed), row("ga", "unlearn_known", 100.0, request=0,
                                                                      n=9 - 2 * seed, seed=seed),
                 row("oracle", "unlearn", 25.0, request=0, seed=seed, target="none")]
    return Run(label="r", path=None, df=pd.DataFrame(rows), manifest={"config": {}})


def test_each_axis_is_ranked_and_the_mean_rank_orders_methods():
    ga, npo = ranking(make_run(), "finetuned")
    assert (ga["method"], npo["method"]) == ("ga", "npo")
    # ga: retain 2, mmbench 2, known 1, |gap| 5 -> 1, forget quality 1, |privleak| 30 -> 2: mean 9/6
    assert [ga[f"rank_{k}"] for k in ("retain", "mmbench", "known", "oracle_gap", "forget_quality", "privleak")] \
        == [2, 2, 1, 1, 1, 2]
    assert ga["mean_rank"] == 1.5 and npo["mean_rank"] == 1.5 and npo["oracle_gap"] == 15.5
    assert "rank_forget" not in ga and "rank_mia_auc" not in ga  # shown, not ranked
    assert ga["mia_auc"] == 0.6 and not any(r["method"] == "oracle" for r in (ga, npo))


def test_known_share_is_counted_from_request_zero_and_flagged_below_the_threshold():
    shares = known_shares(make_run())
    assert [(s["seed"], s["known"], s["questions"], s["flagged"]) for s in shares] == \
        [(0, 9, 10, False), (1, 7, 10, True)]
    md = to_markdown(make_run())
    assert "| finetuned | 1 | 7 | 10 | 70.0% (flagged) |" in md and "## finetuned" in md
    assert not math.isnan(shares[0]["share"])
