"""What every cell of one scenario × seed starts from, computed once per run directory: the people (selection of
the celebrities, the unlearn / retain split, the folds), the evaluation before unlearning (request 0) and the
never-learned reference of matched forgetting — a frozen `Baseline`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import progress
from ..data.records import FORMS, Person
from ..errors import PulseError
from ..eval.mcq import evaluate_mcq
from ..fsutil import atomic_write_json
from ..models.templates import MLLMU
from . import claims, curves, fingerprint, stored
from .context import Context, eval_sets, sub_point
from .oracle import oracle_eval
from .plan import MATCHED_SCENARIOS, PHASE
from .rundir import update_manifest
from .scenarios import make_folds, mcq_samples, pair_samples, select_known, split_people, splits


@dataclass(frozen=True)
class People:
    """Who one scenario × seed unlearns and retains, in which folds, from which checkpoint; `forget_of(people,
    template)` writes their unlearning samples."""
    unlearn: list[Person]
    retain: list[Person]
    folds: list[list[Person]] | None
    phase: str
    forget_of: Callable


@dataclass(frozen=True)
class Baseline:
    """The shared inputs of a scenario × seed's cells: its people, the request-0 record (the evaluation before
    unlearning) and the matched-forgetting target (None where it does not apply)."""
    people: People
    request0: dict
    stop: dict | None


def baseline(ctx: Context, scenario: str, seed: int, wait: bool = True) -> Baseline | None:
    """The Baseline of a scenario × seed, computed once per run directory under claims, once per process in
    memory. None when `wait` is False and another live process is computing one of its files."""
    if (scenario, seed) in ctx.shared:
        return ctx.shared[(scenario, seed)]
    chosen = None
    if scenario == "pretrained":
        with claims.claim(ctx.out / "selection.lock", wait) as held:
            if not held:
                return None
            chosen = selection(ctx)
    people = scenario_people(ctx, scenario, seed, chosen)
    if any(baseline(ctx, s, k, wait) is None for s, k in _computed_first(ctx, scenario, seed, people.phase)):
        return None
    base = ctx.out / "cells" / scenario
    with claims.claim(base / f"request0__seed{seed}.lock", wait) as held:
        if not held:
            return None
        ref = request0(ctx, scenario, seed, people)
    orc = oracle_eval(ctx, seed, people.unlearn, people.retain, wait) if scenario == "finetuned" else None
    if orc is False:
        return None
    with claims.claim(base / f"reference__seed{seed}.lock", wait) as held:
        if not held:
            return None
        stop = stop_target(ctx, scenario, seed, people, chosen, orc)
    update_manifest(ctx.out, lambda manifest: _record(manifest, scenario, seed, people, chosen, stop))
    ctx.shared[(scenario, seed)] = Baseline(people, ref, stop)
    return ctx.shared[(scenario, seed)]


def _computed_first(ctx: Context, scenario: str, seed: int, phase: str) -> list[tuple[str, int]]:
    """The baselines whose files this one reuses: sustainability takes the fine-tuned scenario's request 0, later
    seeds the first seed's MMBench."""
    first = []
    if scenario == "sustainability" and "finetuned" in ctx.cfg.scenarios:
        first.append(("finetuned", seed))  # its request 0 is this scenario's too: compute it there first
    if seed != ctx.cfg.seeds[0]:  # later seeds reuse the first seed's MMBench: make sure it is written
        first += [(s, ctx.cfg.seeds[0]) for s in ctx.cfg.scenarios if PHASE[s] == phase][:1]
    return first


def _record(manifest: dict, scenario: str, seed: int, people: People, chosen: dict | None, stop: dict | None):
    """The manifest's record of a baseline: selected celebrities, splits, folds, matched-forgetting target."""
    if chosen:
        manifest["selected_celebrities"] = [{"id": i, "accuracy": chosen["accuracy"][i]} for i in chosen["selected"]]
    manifest.setdefault("splits", {})[f"{scenario}/seed{seed}"] = {"unlearn": [p.id for p in people.unlearn],
                                                                  "retain": [p.id for p in people.retain]}
    if people.folds:
        manifest.setdefault("folds", {})[f"seed{seed}"] = [[p.id for p in f] for f in people.folds]
    if stop:
        manifest.setdefault("matched_targets", {})[f"{scenario}/seed{seed}"] = \
            {k: stop[k] for k in ("reference", "margin", "target", "n")}


def selection(ctx: Context) -> dict:
    """Pre-trained scenario: the base model's accuracy on every celebrity, and the best-known ones; "correct"
    keeps every answer ({id: {form: "1"/"0" per question index}}) for the never-known reference."""
    path = ctx.out / "selection.json"
    if path.is_file():
        return stored.read(path)
    pt = ctx.cfg.scenario.pretrained
    lm, enc = ctx.model("pretrained")
    ctx.log(f"selecting celebrities: evaluating the base model on {len(ctx.celebrities)}")
    e = ctx.cfg.eval
    with progress.stage("celebrity selection"):
        res = evaluate_mcq(lm, ctx.celebrities, scoring=e.scoring, enc=enc, demo_people=0,
                           max_new_tokens=e.max_new_tokens, batch_size=e.batch_size)
    accuracy = {}
    for p in ctx.celebrities:
        preds = [q for q in res.predictions if q["person_id"] == p.id]
        accuracy[p.id] = round(100.0 * sum(q["correct"] for q in preds) / len(preds), 2) if preds else 0.0
    chosen = select_known(ctx.celebrities, accuracy, pt.select, pt.min_accuracy)
    correct = {p.id: {form: curves.encode([curves.key(p.id, form, m.index) for m in p.mcqs(form)], res.predictions)
                      for form in FORMS} for p in ctx.celebrities}
    sel = {"rule": f"top {pt.select} by base accuracy (both forms), ties by ID, min {pt.min_accuracy}%",
           "accuracy": accuracy, "selected": [p.id for p in chosen],
           "demo_people": 0,  # celebrities zero-shot, as MLLMU-Bench's Retain_Set
           "correct": correct}
    sel = fingerprint.stamped(ctx, path, sel)
    atomic_write_json(path, sel)
    return sel


def scenario_people(ctx: Context, scenario: str, seed: int, chosen: dict | None) -> People:
    """The People of one scenario and seed (`chosen`: the pre-trained scenario's selection)."""
    cfg = ctx.cfg
    fmt = (lambda tpl: MLLMU) if cfg.unlearn.format == "mllmu" else (lambda tpl: tpl)
    if scenario == "pretrained":
        known = [p for p in ctx.celebrities if p.id in set(chosen["selected"])]
        unlearn, retain = split_people(known, cfg.scenario.pretrained.unlearn, seed, "pretrained")
        return People(unlearn, retain, None, "pretrained", lambda ps, tpl: mcq_samples(ps, fmt(tpl)))
    unlearn, retain = split_people(ctx.fictional, cfg.scenario.finetuned.unlearn, seed, "finetuned")
    folds = make_folds(unlearn, cfg.scenario.sustainability.folds, seed) if scenario == "sustainability" else None
    if cfg.unlearn.data == "ft_data":
        return People(unlearn, retain, folds, "finetuned",
                      lambda ps, tpl: pair_samples(ctx.train_pairs, ps, fmt(tpl)))
    return People(unlearn, retain, folds, "finetuned", lambda ps, tpl: mcq_samples(ps, fmt(tpl)))


def request0(ctx: Context, scenario: str, seed: int, people: People) -> dict:
    """The evaluation before unlearning. Shared, not repeated: sustainability takes the fine-tuned scenario's
    (same model, same people), and every seed after the first takes the first seed's MMBench (same model, same
    rows, same batches: the same numbers)."""
    path = ctx.out / "cells" / scenario / f"request0__seed{seed}.json"
    if path.is_file():
        return stored.read(path)
    shared = ctx.out / "cells" / "finetuned" / f"request0__seed{seed}.json"
    if scenario == "sustainability" and shared.is_file():  # same model, same people: reuse, do not re-evaluate
        done = stored.read(shared)
        mcq, mmb = done["mcq"], done["mmbench"]
    else:
        lm, enc = ctx.model(people.phase)
        sets = eval_sets(ctx, scenario, people.unlearn, people.retain)
        mmb = _earlier_mmbench(ctx, people.phase, seed)
        with progress.stage(f"request 0 {scenario} seed {seed}"):
            if mmb is None:
                mcq, mmb = ctx.evaluate(lm, enc, sets)
            else:
                mcq = ctx.measures(lm, enc, sets)
    cell = {"mcq": mcq, "mmbench": mmb,
            "splits": splits(scenario, people.unlearn, people.retain, people.folds, 0),
            "halves": curves.half_keys(people.unlearn + people.retain, ctx.cfg.eval.half_seed)}
    if ctx.cfg.eval.every:
        cell["mmbench_sub"] = sub_point(ctx, mmb)
    cell = fingerprint.stamped(ctx, path, cell)
    atomic_write_json(path, cell)
    return cell


def _earlier_mmbench(ctx: Context, phase: str, seed: int) -> dict | None:
    """The MMBench record of the first seed's request 0 on the same model, if written."""
    first = ctx.cfg.seeds[0]
    if seed == first:
        return None
    for scenario in ctx.cfg.scenarios:
        path = ctx.out / "cells" / scenario / f"request0__seed{first}.json"
        if PHASE[scenario] == phase and path.is_file():
            mmb = stored.read(path)["mmbench"]
            if "letters" in mmb:
                return mmb
    return None


def stop_target(ctx: Context, scenario: str, seed: int, people: People, chosen: dict | None,
                oracle: dict | None = None) -> dict | None:
    """{reference, margin, target, n, rule, ...} of a single-request scenario under unlearn.stop, cached as
    cells/<scenario>/reference__seed<S>.json; None when matched forgetting does not apply. Rule `oracle`: the
    retrained oracle's evaluation (`oracle`) on D_unlearn's selection half — fine-tuned knowledge only; the
    pre-trained scenario has no oracle and keeps its never-known reference (recorded in the rule)."""
    st = ctx.cfg.unlearn.stop
    if st.rule == "none" or scenario not in MATCHED_SCENARIOS:
        return None
    path = ctx.out / "cells" / scenario / f"reference__seed{seed}.json"
    if path.is_file():
        return stored.read(path)
    if scenario == "finetuned" and st.rule == "oracle":
        ref = _oracle_reference(ctx, people, oracle)
    elif scenario == "finetuned":
        ref = _never_learned_finetuned(ctx, scenario, seed, people)
    else:
        ref = _never_known_pretrained(ctx, people, chosen)
    ref.update({"reference": ref.pop("accuracy"), "margin": st.margin})
    ref["target"] = ref["reference"] + st.margin
    ref = fingerprint.stamped(ctx, path, ref)
    atomic_write_json(path, ref)
    return ref


def _never_learned_finetuned(ctx: Context, scenario: str, seed: int, people: People) -> dict:
    """Fine-tuned knowledge: the fine-tuning base never learned these people — the pretrained checkpoint on
    D_unlearn's selection half, with the same evaluation settings."""
    unlearn = people.unlearn
    sel = curves.half_keys(unlearn, ctx.cfg.eval.half_seed)["sel"]
    lm, enc = ctx.model("pretrained")
    n_demo = eval_sets(ctx, scenario, unlearn, people.retain)["unlearn"][1]
    with progress.stage(f"never-learned reference {scenario} seed {seed}"):
        mcq = ctx.mcq(lm, enc, {"unlearn": (unlearn, n_demo)}, questions={curves.parse_key(k) for k in sel})
    return {"rule": "the pretrained checkpoint on D_unlearn's selection half", "model": "pretrained",
            "people": [p.id for p in unlearn], "questions": sel, "sel": curves.encode(sel, mcq["predictions"]),
            "accuracy": curves.accuracy(mcq["predictions"]), "n": len(mcq["predictions"])}


def _oracle_reference(ctx: Context, people: People, oracle: dict) -> dict:
    """Fine-tuned knowledge, rule oracle: the retrained oracle's answers on D_unlearn's selection half (the same
    evaluation settings; taken from its full evaluation)."""
    sel = curves.half_keys(people.unlearn, ctx.cfg.eval.half_seed)["sel"]
    preds = [p for p in oracle["mcq"]["predictions"] if curves.key(p["person_id"], p["form"], p["index"]) in set(sel)]
    return {"rule": "the retrained oracle on D_unlearn's selection half", "model": oracle["model"],
            "people": [p.id for p in people.unlearn], "questions": sel, "sel": curves.encode(sel, preds),
            "accuracy": curves.accuracy(preds), "n": len(preds)}


def _never_known_pretrained(ctx: Context, people: People, chosen: dict) -> dict:
    """Pre-trained knowledge: celebrities the base model never knew (curves.never_known_reference)."""
    taken = {p.id for p in people.unlearn + people.retain}
    candidates = sorted(pid for pid in chosen["correct"] if pid not in taken)
    try:
        nk = curves.never_known_reference(chosen["correct"], candidates, len(people.unlearn), ctx.cfg.eval.half_seed)
    except ValueError as e:
        raise PulseError(f"unlearn.stop: {e} (scenario.pretrained.unlearn = {len(people.unlearn)})") from None
    return {"rule": curves.NEVER_KNOWN_RULE, "model": "pretrained", **nk}
