"""Membership inference at every request-level evaluation (eval/mia.py scores), and its results.csv rows.

Fictional people (fine-tuned and sustainability scenarios): members = D_unlearn, non-members = held-out fictional
people (Full_Set after the fine-tuned ones by ID: never trained on; at most eval.mia_nonmembers), each person's
`ft_Data` pairs (what fine-tuning trained on). An AUC near 0.5 after unlearning = D_unlearn looks unseen; the
oracle's AUC is that of a model that never saw it, and PrivLeak compares with it (fine-tuned scenario).

Celebrities (pre-trained scenario): the pre-training data is unknown and there are no non-members, so only the
relative form — D_unlearn against D_retain on their MCQs as QA (the unlearning data), before and after — split
`unlearn_vs_retain`: 0.5 = the two sets look alike; it is not a membership test.
"""
from __future__ import annotations

from ..data.records import QAPair
from ..eval.mia import ATTACKS, aucs, pair_scores, privleak

PRIVLEAK_ATTACK = "mink"  # MUSE's PrivLeak uses Min-K% (k = 40 %)
MODALITIES = {"image": ("image",), "text": ("text",), "all": ("image", "text")}


def mcq_pairs(people) -> list[QAPair]:
    """Each person's MCQs as QA pairs (question -> correct option text), both forms."""
    return [QAPair(p.id, m.question, m.options[m.answer], p.image if m.form == "image" else None, m.form)
            for p in people for m in p.image_mcqs + p.text_mcqs]


def mia_record(ctx, lm, enc, sets: dict) -> dict:
    """{"kind", "members", "nonmembers", "pairs": [[person_id, form, loss, zlib, mink, minkpp], ...]} of one model
    on the evaluated sets {name: (people, demo people)}."""
    unlearn, retain = sets["unlearn"][0], sets["retain"][0]
    fictional = {p.id for p in ctx.fictional}
    if all(p.id in fictional for p in unlearn + retain):
        kind, nonmembers = "holdout", [p.id for p in ctx.holdout]
        ids = {p.id for p in unlearn} | set(nonmembers)
        pairs = [q for q in ctx.ft_data if q.person_id in ids] if nonmembers else []  # none held out: no test
    else:
        kind, nonmembers = "retain", [p.id for p in retain]
        pairs = mcq_pairs(unlearn + retain)
    records = pair_scores(lm.model, enc, lm.template, pairs, batch_size=max(1, ctx.cfg.eval.batch_size // 4))
    return {"kind": kind, "members": [p.id for p in unlearn], "nonmembers": nonmembers,
            "pairs": [[r["person_id"], r["form"], *(round(r[a], 6) for a in ATTACKS)] for r in records]}


def _records(mia: dict) -> list[dict]:
    return [{"person_id": pid, "form": form, **dict(zip(ATTACKS, vals))} for pid, form, *vals in mia["pairs"]]


def mia_rows(meta: dict, mcq: dict | None, orc: dict | None) -> list[dict]:
    """results.csv rows of one evaluation's membership inference: metric mia_auc_<attack> per modality (split
    unlearn against held-out people, or unlearn_vs_retain), and privleak against the oracle where there is one."""
    mia = (mcq or {}).get("mia")
    if not mia or not mia["nonmembers"]:  # no held-out people in the data: nothing to compare with
        return []
    meta = {"probe": "none", "step": None, "at": "budget", "status": "ok", "relative": None, **meta}
    split = "unlearn" if mia["kind"] == "holdout" else "unlearn_vs_retain"
    records, members, nonmembers = _records(mia), set(mia["members"]), set(mia["nonmembers"])
    theirs = _records(orc["mcq"]["mia"]) if orc and (orc["mcq"].get("mia") or {}).get("kind") == "holdout" else None
    rows = []
    for modality, forms in MODALITIES.items():
        n = sum(r["person_id"] in members and r["form"] in forms for r in records)
        got = aucs(records, members, nonmembers, forms)
        rows += [{**meta, "split": split, "modality": modality, "metric": f"mia_auc_{a}", "accuracy": round(v, 6),
                  "n": n} for a, v in got.items()]
        if theirs is not None and split == "unlearn":
            base = aucs(theirs, members, nonmembers, forms)[PRIVLEAK_ATTACK]
            rows.append({**meta, "split": split, "modality": modality, "metric": "privleak",
                         "accuracy": round(privleak(got[PRIVLEAK_ATTACK], base), 4), "n": n})
    return rows
