"""Probes of real forgetting: evaluations of an unlearned model state. Each probe is a plain function
called by the runner after a cell's last request with the unlearned model; it returns (payload, rows): a JSON-able
payload for the cell's `probes.json` and tidy results.csv rows, which `probe_rows(payload)` rebuilds from the payload
alone. Baselines that do not depend on the method (request-0 model, never-learned control) are cached once per
scenario and seed under `cells/<scenario>/`.

relearn — a relearning attack. D_unlearn's people are split in two seeded halves (`relearn_halves`). The unlearned
  model is fine-tuned briefly on the *attacked* half (its unlearning samples; the unlearning recipe with
  `probes.relearn`'s small budget and constant lr, as a LoRA adapter through `loop.fit`) and MCQ accuracy is measured
  on the *measured* half, whose facts the attack never shows. The adapter is removed unmerged afterwards, so the
  caller's model is unchanged bit for bit (`attacked`).
      recovery ratio = (after attack − after unlearning) / (before unlearning − after unlearning)   (measured half)
  0 = nothing comes back, 1 = back to the level before unlearning; undefined when unlearning did not lower accuracy.
  Control (method `never_learned`, `relearn_control`): the same attack on a model that never learned the measured
  people, so its gain is what the attack teaches without any hidden knowledge (answer priors, format):
  fine-tuned knowledge — the fine-tuning base (the `pretrained` checkpoint) on the same people; pre-trained knowledge —
  no model never learned the celebrities, so the base model on the celebrities it knows least (lowest base accuracy
  in selection.json, not selected, as many as D_unlearn, ties by ID), split the same way. A recovery well above the
  control's gain is knowledge that was hidden, not removed.
  Rows (probe `relearn`, modality image/text/all): request 0 on splits `relearn_measured` / `relearn_trained`
  (before unlearning); request R on the same splits (after unlearning) and on `relearn_measured_attacked` /
  `relearn_trained_attacked` (after the attack); the control, request 0, method `never_learned`, target = the
  attack's target, on the same four splits (its people).

routes — every fact asked four ways. A fact is one image-form MCQ i of a person (Full_Set); its routes:
  route_image      the image question with the portrait (Full_Set image MCQ i);
  route_text       the text question naming the person: the Full_Set text MCQ whose correct option text equals fact
                   i's (normalised: whitespace collapsed, case folded), index i preferred, else the lowest unused;
  route_test_set   MLLMU-Bench's Test_Set version: the same person's Test_Set image MCQ matched the same way, shown
                   with one transformed portrait (`choose_test_image(seed, ID, n)`, recorded). MLLMU-Bench evaluates
                   Test_Set questions on their own, with no link to Full_Set questions; matching by the correct
                   option text is our alignment rule. The mini world's Test_Set repeats the Full_Set questions
                   (transformed images only); Test_Set holds no celebrities, so the pre-trained scenario has no
                   route_test_set (recorded under `unavailable`);
  route_name_only  the image question without the image, the person named: `name_only_question` replaces the first
                   person phrase (PERSON_PHRASES, longest first, case-insensitive; "this person's" -> "<Name>'s") by
                   the name (whole words only); with no such phrase, or with `probes.name_only: prefix`, it is
                   "Question about <Name>. <image question>". Options and answer are fact i's (the image
                   MCQ's). In the mini world the substituted string equals the text question's (`What is the X of
                   <Name>?`), so there route_name_only differs from route_text only by the distractor options;
                   `prefix` gives a distinct wording.
  route_all        a fact counts as known if ANY route answers it correctly (the worst case for forgetting):
                   accuracy = mean over facts of max over routes of correct.
  A fact without a partner on some available route is dropped from every route (counted in `dropped`), and a
  fact is kept only where every route has a prediction at both stages (generate scoring does not score the demo
  person), so all route rows of a split are over the same facts: route_all >= every single route.
  Rows (modality `all`, n = facts): request 0 (the model before unlearning) and request R, splits unlearn/retain.

quant — re-evaluation with every Linear weight but lm_head quantized (eval/quant.py: RTN, symmetric, per output
  channel, simulated in float, exact restore), at each of `probes.quant_bits`; the same quantization of the request-0
  model is the baseline. Rows: probe quant<b>, request 0 and R, splits unlearn/retain, modality image/text/all.

All MCQ evaluations are per evaluated set with its demo people, exactly as the runner's (`sets` = the runner's
`_eval_sets`); image/text predictions already in the request-0 and request-R cells are reused, never recomputed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import random
import re
from pathlib import Path

from .. import progress
from ..data.mllmu import TEST_SET, choose_test_image
from ..data.records import FORMS, MCQ, Person
from ..errors import PulseError
from ..eval.mcq import evaluate_mcq
from ..eval.quant import SCHEME, quantized
from ..fsutil import atomic_write_json
from ..models.batches import forward
from ..unlearn.loop import batch_plan, finish, fit, prepare
from ..unlearn.losses import nll
from ..unlearn.recipe import FinetuneSection, Recipe
from . import claims, fingerprint, stored
from .plan import PHASE, stable_seed

ROUTES = ("image", "text", "test_set", "name_only")
ROUTE_PROBES = tuple(f"route_{r}" for r in ROUTES) + ("route_all",)
PERSON_PHRASES = ("the person in this picture", "the person in the picture", "the person in this image",
                  "the person in the image", "the person in this photo", "the person in the photo",
                  "the person shown", "the individual in this picture", "the individual in this image",
                  "this individual", "this person", "the person")
_PHRASE = re.compile(r"\b(" + "|".join(re.escape(p) for p in sorted(PERSON_PHRASES, key=len, reverse=True)) + r")\b",
                     re.IGNORECASE)


# --- shared helpers ---------------------------------------------------------------------------------------------

def _compact(p: dict) -> dict:
    return {"person_id": p["person_id"], "form": p["form"], "index": p["index"], "prediction": p["prediction"],
            "correct": bool(p["correct"])}


def _evaluate(ctx, lm, enc, people, n_demo, *, forms=FORMS, demo_source=None) -> list[dict]:
    """MCQ predictions on one evaluated set, with the run's eval settings (as Context.evaluate, without MMBench)."""
    e = ctx.cfg.eval
    res = evaluate_mcq(lm, people, scoring=e.scoring, forms=forms, enc=enc, demo_people=n_demo,
                       demo_seed=e.demo_seed, demo_source=demo_source, max_new_tokens=e.max_new_tokens,
                       batch_size=e.batch_size)
    return [_compact(p) for p in res.predictions]


def _evaluate_sets(ctx, lm, enc, sets) -> list[dict]:
    return [p for people, n_demo in sets.values() for p in _evaluate(ctx, lm, enc, people, n_demo)]


def _of(preds: list[dict], ids) -> list[dict]:
    ids = set(ids)
    return [p for p in preds if p["person_id"] in ids]


def accuracy(preds: list[dict], modality: str = "all") -> tuple[float, int]:
    """(percent correct, n) over predictions of one form ("image"/"text") or all; NaN when there are none."""
    rows = preds if modality == "all" else [p for p in preds if p["form"] == modality]
    return (100.0 * sum(p["correct"] for p in rows) / len(rows) if rows else float("nan")), len(rows)


def _row(meta: dict, split: str, modality: str, acc: float, acc0: float | None, n: int, probe: str,
         status: str = "ok") -> dict:
    ok = acc == acc and status == "ok"
    rel = round(100.0 * acc / acc0, 4) if ok and acc0 and acc0 == acc0 else None
    return {**meta, "split": split, "modality": modality, "accuracy": round(acc, 4) if ok else float("nan"),
            "relative": rel, "status": status, "n": n, "probe": probe, "step": None, "at": "budget"}


def _cache(ctx, scenario: str, name: str, seed: int) -> Path:
    return ctx.out / "cells" / scenario / f"{name}__seed{seed}.json"


def _ids(people) -> list[str]:
    return [p.id for p in people]


# --- relearning -------------------------------------------------------------------------------------------------

def relearn_halves(people: list[Person], seed: int) -> tuple[list[Person], list[Person]]:
    """Seeded split of D_unlearn into (attacked, measured): floor(n/2) people drawn with
    `random.Random(f"{seed}:relearn").sample` are attacked, the rest measured; both keep the input order."""
    if len(people) < 2:
        raise PulseError(f"relearn probe: needs at least 2 people to unlearn (one to attack, one to measure), "
                         f"got {len(people)}")
    chosen = set(random.Random(f"{seed}:relearn").sample(_ids(people), len(people) // 2))
    return [p for p in people if p.id in chosen], [p for p in people if p.id not in chosen]


def recovery_ratio(before: float, after_unlearning: float, after_attack: float) -> float | None:
    """(after_attack − after_unlearning) / (before − after_unlearning); None when a value is NaN or unlearning did
    not lower accuracy (denominator <= 0), where recovery has no meaning."""
    vals = (before, after_unlearning, after_attack)
    if any(v is None or v != v for v in vals) or before - after_unlearning <= 0:
        return None
    return (after_attack - after_unlearning) / (before - after_unlearning)


def attack_recipe(cfg, seed: int) -> FinetuneSection:
    """The unlearning recipe (every Recipe field of `unlearn`: LoRA rank/alpha/dropout/init, clipping, AdamW, fp32
    master layers) with the attack's budget: `probes.relearn.steps` full batches, lr and batch size from
    `probes.relearn` (null = unlearn's), constant lr, no warm-up, LoRA on `probes.relearn.target`, NLL on
    unlearn.mask tokens with unlearn.eos."""
    u, p = cfg.unlearn, cfg.probes.relearn
    base = {f.name: getattr(u, f.name) for f in dataclasses.fields(Recipe)}
    base.update(budget="steps", steps=p.steps, lr=p.lr or u.lr, batch_size=p.batch_size or u.batch_size,
                schedule="constant", warmup_steps=0, min_lr_ratio=0.0)
    return FinetuneSection(**base, mode="lora", target=p.target, mask=u.mask, eos=u.eos, sampler="shuffle",
                           seed=seed, save_every=0)


@contextlib.contextmanager
def attacked(model, enc, samples, recipe: FinetuneSection, desc: str = "relearn attack"):
    """Inside the block: `model` with a LoRA adapter trained on `samples` (NLL, `recipe`, through `loop.fit`), not
    merged; yields (peft model, info). On exit the adapter is removed unmerged (`unload`), fp32 master layers that
    the attack added are released, and the model's mode and attributes are restored: the caller's model is the same
    object with the same weights, bit for bit."""
    was_training = model.training
    had_peft_config = "peft_config" in vars(model)
    held_before = {n for n, m in model.named_modules() if getattr(m, "_pulse_fp32", None) is not None}
    grad_before = {n: q.requires_grad for n, q in model.named_parameters()}
    plan = batch_plan(len(samples), recipe, [recipe.seed, 0])
    peft_model, named, info = prepare(model, recipe.target, recipe, "lora", recipe.seed)
    try:
        def loss_fn(idx):
            batch = enc.batch([samples[i] for i in idx], mask=recipe.mask, eos=recipe.eos)
            loss = nll(forward(peft_model, batch), batch["labels"])
            return loss, {"loss": loss.item()}

        losses, status = fit(named, plan, loss_fn, recipe, desc=desc)
        peft_model = finish(peft_model, "full", recipe)  # frozen, eval mode, checkpointing off; nothing merged
        info.update({"status": status, "steps": len(plan), "samples": len(samples),
                     "losses": [round(x["loss"], 4) for x in losses]})
        yield peft_model, info
    finally:
        base = peft_model.unload()
        for name, m in base.named_modules():
            held = getattr(m, "_pulse_fp32", None)
            if held is not None and name not in held_before:
                dtype, pre, post = held
                pre.remove()
                post.remove()
                m.to(dtype)
                m._pulse_fp32 = None
        if not had_peft_config and "peft_config" in vars(base):
            del base.peft_config
        for n, q in base.named_parameters():
            q.requires_grad_(grad_before[n])
        base.train(was_training)


def _attack_and_measure(ctx, lm, enc, people, n_demo, attacked_half, forget_of, recipe, desc):
    """Predictions on `people` after the attack on `attacked_half`, and the attack's info (model restored)."""
    samples = forget_of(attacked_half, lm.template)
    with attacked(lm.model, enc, samples, recipe, desc=desc) as (model, info), progress.stage("after the attack"):
        preds = _evaluate(ctx, dataclasses.replace(lm, model=model), enc, people, n_demo)
    return preds, info


def never_known(celebrities: list[Person], selection: dict, n: int) -> list[Person]:
    """The `n` celebrities the base model knows least: not selected, lowest base accuracy, ties by ID."""
    chosen = set(selection["selected"])
    pool = sorted((p for p in celebrities if p.id not in chosen and p.id in selection["accuracy"]),
                  key=lambda p: (selection["accuracy"][p.id], p.id))
    if len(pool) < n:
        raise PulseError(f"selection.json: only {len(pool)} unselected celebrities for the relearn control, "
                         f"which needs {n} (as many as D_unlearn)")
    return sorted(pool[:n], key=lambda p: p.id)


def relearn_control(ctx, scenario: str, seed: int, sets: dict, forget_of) -> tuple[dict, list[dict]]:
    """The never-learned control of the relearn probe, once per scenario and seed (cached as
    cells/<scenario>/probe_control__seed<S>.json): the `pretrained` checkpoint, attacked exactly as the unlearned
    models (same recipe, same seed), on D_unlearn (fine-tuned knowledge) or on the least-known celebrities
    (pre-trained knowledge)."""
    path = _cache(ctx, scenario, "probe_control", seed)
    with claims.claim(path.with_suffix(".lock")):  # computed once, whichever cell gets there first
        return _relearn_control(ctx, path, scenario, seed, sets, forget_of)


def _relearn_control(ctx, path: Path, scenario: str, seed: int, sets: dict, forget_of) -> tuple[dict, list[dict]]:
    if path.is_file():
        payload = stored.read(path)
        with stored.reading(path):
            return payload, probe_rows(payload)
    people, n_demo = sets["unlearn"]
    if scenario == "pretrained":
        sel_path = ctx.out / "selection.json"
        if not sel_path.is_file():
            raise PulseError(f"{sel_path}: missing; the pre-trained relearn control needs the base accuracies")
        selection = stored.read(sel_path)
        people = never_known(ctx.celebrities, selection, len(people))
        rule = ("base model on the celebrities it knows least (lowest base accuracy in selection.json, not "
                "selected, as many as D_unlearn, ties by ID)")
        base_acc = {p.id: selection["accuracy"][p.id] for p in people}
    else:
        rule, base_acc = "the fine-tuning base (the pretrained checkpoint) on D_unlearn's people", None
    recipe = attack_recipe(ctx.cfg, stable_seed(seed, scenario, "relearn"))
    attacked_half, measured = relearn_halves(people, seed)
    ctx.log(f"relearn control: {scenario} seed {seed}")
    lm, enc = ctx.model("pretrained")
    with progress.stage(f"never-learned control {scenario} seed {seed}"):
        before = _evaluate(ctx, lm, enc, people, n_demo)
        after, info = _attack_and_measure(ctx, lm, enc, people, n_demo, attacked_half, forget_of, recipe,
                                          f"relearn control {scenario} seed {seed}")
    payload = {"probe": "relearn_control", "rule": rule, "base_accuracy": base_acc,
               "meta": {"scenario": scenario, "method": "never_learned", "target": recipe.target, "seed": seed,
                        "request": 0},
               "halves": {"attacked": _ids(attacked_half), "measured": _ids(measured)},
               "recipe": dataclasses.asdict(recipe), "training": info, "before": before, "after_attack": after}
    payload["gain"] = {m: accuracy(_of(after, payload["halves"]["measured"]), m)[0]
                       - accuracy(_of(before, payload["halves"]["measured"]), m)[0] for m in ("image", "text", "all")}
    payload = fingerprint.stamped(ctx, path, payload)
    atomic_write_json(path, payload)
    return payload, probe_rows(payload)


def relearn_probe(ctx, scenario: str, seed: int, lm, enc, sets: dict, ref: dict, meta: dict, forget_of,
                  cell: dict | None = None) -> tuple[dict, list[dict]]:
    """The relearn attack on the unlearned model `lm` (restored afterwards). `ref`: the request-0 cell (before
    unlearning); `cell`: the request-R cell whose predictions are reused (None: evaluate D_unlearn again);
    `forget_of(people, template)`: the scenario's unlearning-sample builder. Runs (or loads) the control too."""
    people, n_demo = sets["unlearn"]
    control, _ = relearn_control(ctx, scenario, seed, sets, forget_of)
    recipe = attack_recipe(ctx.cfg, stable_seed(seed, scenario, "relearn"))
    attacked_half, measured = relearn_halves(people, seed)
    ids = _ids(people)
    before = _of(ref["mcq"]["predictions"], ids)
    after_unlearning = _of(cell["mcq"]["predictions"], ids) if cell else _evaluate(ctx, lm, enc, people, n_demo)
    after, info = _attack_and_measure(ctx, lm, enc, people, n_demo, attacked_half, forget_of, recipe,
                                      f"relearn {meta['method']} {meta['target']} seed {seed}")
    payload = {"probe": "relearn", "meta": meta,
               "halves": {"attacked": _ids(attacked_half), "measured": _ids(measured)},
               "recipe": dataclasses.asdict(recipe), "training": info, "before": [_compact(p) for p in before],
               "after_unlearning": [_compact(p) for p in after_unlearning], "after_attack": after}
    m_ids = payload["halves"]["measured"]
    payload["recovery_ratio"] = {m: recovery_ratio(*(accuracy(_of(payload[k], m_ids), m)[0]
                                                     for k in ("before", "after_unlearning", "after_attack")))
                                 for m in ("image", "text", "all")}
    payload["control_gain"] = control["gain"]
    return payload, probe_rows(payload)


def _relearn_rows(payload: dict) -> list[dict]:
    meta, halves = payload["meta"], payload["halves"]
    attack_status = payload["training"]["status"]  # "diverged": attacked rows get an empty accuracy
    control = payload["probe"] == "relearn_control"
    base = payload["before"]
    stages = [(meta, "", base, "ok")] if control else \
        [({**meta, "request": 0}, "", base, "ok"), (meta, "", payload["after_unlearning"], "ok")]
    stages.append((meta, "_attacked", payload["after_attack"], attack_status))
    rows = []
    for m, suffix, preds, status in stages:
        for half, key in (("measured", "measured"), ("trained", "attacked")):
            for modality in ("image", "text", "all"):
                acc, n = accuracy(_of(preds, halves[key]), modality)
                acc0, _ = accuracy(_of(base, halves[key]), modality)
                rows.append(_row(m, f"relearn_{half}{suffix}", modality, acc, acc0, n, "relearn", status))
    return rows


# --- all routes -------------------------------------------------------------------------------------------------

def _norm(text: str) -> str:
    return " ".join(str(text).split()).casefold()


def name_only_question(question: str, name: str, rule: str = "substitute") -> str:
    """The image question asked without the image, the person named (see the module docstring)."""
    if rule == "substitute":
        match = _PHRASE.search(question)
        if match:
            return question[:match.start()] + name + question[match.end():]
    elif rule != "prefix":
        raise PulseError(f"probes.name_only must be substitute or prefix, got {rule!r}")
    return f"Question about {name}. {question}"


def _partner(mcq: MCQ, candidates: list[MCQ], used: set[int]) -> int | None:
    """Index of the candidate with the same correct option text (normalised), mcq.index preferred, else lowest."""
    want = _norm(mcq.options[mcq.answer])
    hits = [c.index for c in candidates if c.index not in used and _norm(c.options[c.answer]) == want]
    if not hits:
        return None
    return mcq.index if mcq.index in hits else min(hits)


def align_facts(person: Person, test_person: Person | None) -> list[dict]:
    """One fact per Full_Set image MCQ: {"index": i, "text": j | None, "test_set": k | None} (module docstring)."""
    used_text, used_test, facts = set(), set(), []
    for m in person.image_mcqs:
        j = _partner(m, person.text_mcqs, used_text)
        k = _partner(m, test_person.image_mcqs, used_test) if test_person is not None else None
        used_text.add(j)
        used_test.add(k)
        facts.append({"index": m.index, "text": j, "test_set": k})
    return facts


def route_all(correct_by_route: dict[str, dict[tuple, bool]]) -> dict[tuple, bool]:
    """A fact is correct on route_all if any route answers it correctly; only facts every route has are kept."""
    keys = set.intersection(*(set(v) for v in correct_by_route.values())) if correct_by_route else set()
    return {k: any(v[k] for v in correct_by_route.values()) for k in keys}


def _route_setup(ctx, scenario, seed, sets):
    """Facts per person, Test_Set partners and chosen images, and which routes are unavailable (and why)."""
    unavailable = {}
    test = None
    if scenario == "pretrained":
        unavailable["test_set"] = "Test_Set holds the fictional people only (no celebrities)"
    else:
        test = ctx.test_set
        if test is None:
            unavailable["test_set"] = f"{ctx.paths['mllmu']}/{TEST_SET}: not found"
    facts, test_images = {}, {}
    for people, _ in sets.values():
        for p in people:
            tp = test.get(p.id) if test is not None else None
            if test is not None and tp is None:
                raise PulseError(f"{ctx.paths['mllmu']}/{TEST_SET}: no row for ID {p.id}")
            facts[p.id] = align_facts(p, tp)
            if tp is not None:
                test_images[p.id] = choose_test_image(seed, p.id, len(tp.images))
    routes = [r for r in ROUTES if r not in unavailable]
    return facts, test, test_images, routes, unavailable


def _route_predictions(ctx, lm, enc, sets, facts, test, test_images, routes, reuse: list[dict] | None) -> dict:
    """{route: [[person_id, fact index, correct], ...]} for one model state. Image/text predictions are taken from
    `reuse` (a cell's predictions) when given."""
    rule = ctx.cfg.probes.name_only
    out = {r: [] for r in routes}
    for people, n_demo in sets.values():
        base = _of(reuse, _ids(people)) if reuse is not None else _evaluate(ctx, lm, enc, people, n_demo)
        got = {(p["person_id"], p["form"], p["index"]): p["correct"] for p in base}
        extra = []
        if "test_set" in routes:
            tpeople = []
            for p in people:
                tp = test[p.id]
                keep = {f["test_set"] for f in facts[p.id] if f["test_set"] is not None}
                tpeople.append(Person(id=p.id, name=p.name, image=tp.images[test_images[p.id]], biography={},
                                      image_mcqs=[m for m in tp.image_mcqs if m.index in keep], text_mcqs=[]))
            extra += [("test_set", q) for q in _evaluate(ctx, lm, enc, tpeople, n_demo, forms=("image",),
                                                         demo_source=people)]
        npeople = [Person(id=p.id, name=p.name, image=None, biography={}, image_mcqs=[],
                          text_mcqs=[MCQ(name_only_question(m.question, p.name, rule), dict(m.options), m.answer,
                                         "text", p.id, m.index) for m in p.image_mcqs]) for p in people]
        extra += [("name_only", q) for q in _evaluate(ctx, lm, enc, npeople, n_demo, forms=("text",),
                                                      demo_source=people)]
        got_extra = {(r, q["person_id"], q["index"]): q["correct"] for r, q in extra}
        for p in people:
            for f in facts[p.id]:
                i = f["index"]
                where = {"image": got.get((p.id, "image", i)),
                         "text": got.get((p.id, "text", f["text"])) if f["text"] is not None else None,
                         "test_set": got_extra.get(("test_set", p.id, f["test_set"]))
                         if f["test_set"] is not None else None,
                         "name_only": got_extra.get(("name_only", p.id, i))}
                for r in routes:
                    if where[r] is not None:
                        out[r].append([p.id, i, bool(where[r])])
    return out


def routes_probe(ctx, scenario: str, seed: int, lm, enc, sets: dict, ref: dict, meta: dict,
                 cell: dict | None = None) -> tuple[dict, list[dict]]:
    """Every fact of D_unlearn and D_retain through every available route, for the unlearned model `lm` and for the
    request-0 model (cached once per scenario and seed as cells/<scenario>/probe_routes_request0__seed<S>.json)."""
    facts, test, test_images, routes, unavailable = _route_setup(ctx, scenario, seed, sets)
    path = _cache(ctx, scenario, "probe_routes_request0", seed)
    with claims.claim(path.with_suffix(".lock")):  # computed once, whichever cell gets there first
        if path.is_file():
            request0 = fingerprint.unstamped(stored.read(path))
            if any(r not in request0 for r in routes):
                raise stored.damaged(path, f"no route {next(r for r in routes if r not in request0)!r}")
        else:
            ctx.log(f"routes probe: request-0 model, {scenario} seed {seed}")
            lm0, enc0 = ctx.model(PHASE[scenario])
            with progress.stage("request-0 model"):
                request0 = _route_predictions(ctx, lm0, enc0, sets, facts, test, test_images, routes,
                                              ref["mcq"]["predictions"])
            atomic_write_json(path, fingerprint.stamped(ctx, path, request0))
    after = _route_predictions(ctx, lm, enc, sets, facts, test, test_images, routes,
                               cell["mcq"]["predictions"] if cell else None)
    n_dropped = sum(1 for fs in facts.values() for f in fs
                    if ("text" in routes and f["text"] is None) or ("test_set" in routes and f["test_set"] is None))
    payload = {"probe": "routes", "meta": meta, "routes": routes, "unavailable": unavailable,
               "name_only_rule": ctx.cfg.probes.name_only,
               "splits": {name: _ids(people) for name, (people, _) in sets.items()},
               "facts": facts, "dropped": n_dropped, "test_images": test_images,
               "request0": request0, "after": after}
    return payload, probe_rows(payload)


def _routes_rows(payload: dict) -> list[dict]:
    meta, routes = payload["meta"], payload["routes"]
    stages = {"request0": {}, "after": {}}
    for stage in stages:
        for r in routes:
            stages[stage][r] = {(pid, i): c for pid, i, c in payload[stage][r]}
    keys = set.intersection(*(set(v) for s in stages.values() for v in s.values()))
    rows = []
    for split, ids in payload["splits"].items():
        ids = set(ids)
        kept = sorted(k for k in keys if k[0] in ids)
        acc0 = {}
        for stage, m in (("request0", {**meta, "request": 0}), ("after", meta)):
            by_route = {r: {k: stages[stage][r][k] for k in kept} for r in routes}
            by_route_all = route_all(by_route) if kept else {}
            for probe, values in [(f"route_{r}", by_route[r]) for r in routes] + [("route_all", by_route_all)]:
                acc = 100.0 * sum(values.values()) / len(values) if values else float("nan")
                if stage == "request0":
                    acc0[probe] = acc
                rows.append(_row(m, split, "all", acc, acc0[probe], len(values), probe))
    return rows


# --- quantization -----------------------------------------------------------------------------------------------

def _quant_predictions(ctx, lm, enc, sets, bits_list) -> dict:
    out = {}
    for bits in bits_list:
        with quantized(lm.model, bits), progress.stage(f"{bits}-bit"):
            out[str(bits)] = _evaluate_sets(ctx, lm, enc, sets)
    return out


def quant_probe(ctx, scenario: str, seed: int, lm, enc, sets: dict, ref: dict, meta: dict) -> tuple[dict, list[dict]]:
    """D_unlearn and D_retain re-evaluated with the weights of `lm` quantized to each of probes.quant_bits (restored
    after each); the request-0 model under the same quantization is the baseline (cached once per scenario and
    seed as cells/<scenario>/probe_quant_request0__seed<S>.json). `ref` is unused (kept for a uniform call)."""
    bits_list = list(ctx.cfg.probes.quant_bits)
    path = _cache(ctx, scenario, "probe_quant_request0", seed)
    with claims.claim(path.with_suffix(".lock")):  # computed once, whichever cell gets there first
        request0 = fingerprint.unstamped(stored.read(path)) if path.is_file() else {}
        missing = [b for b in bits_list if str(b) not in request0]
        if missing:
            ctx.log(f"quant probe: request-0 model, {scenario} seed {seed}")
            lm0, enc0 = ctx.model(PHASE[scenario])
            with progress.stage("request-0 model"):
                request0.update(_quant_predictions(ctx, lm0, enc0, sets, missing))
            atomic_write_json(path, fingerprint.stamped(ctx, path, request0))
    after = _quant_predictions(ctx, lm, enc, sets, bits_list)
    payload = {"probe": "quant", "meta": meta, "scheme": SCHEME, "layers": "every Linear except lm_head",
               "bits": bits_list, "splits": {name: _ids(people) for name, (people, _) in sets.items()},
               "request0": {str(b): request0[str(b)] for b in bits_list}, "after": after}
    return payload, probe_rows(payload)


def _quant_rows(payload: dict) -> list[dict]:
    meta, rows = payload["meta"], []
    for stage, m in (("request0", {**meta, "request": 0}), ("after", meta)):
        for bits in payload["bits"]:
            for split, ids in payload["splits"].items():
                for modality in ("image", "text", "all"):
                    acc, n = accuracy(_of(payload[stage][str(bits)], ids), modality)
                    acc0, _ = accuracy(_of(payload["request0"][str(bits)], ids), modality)
                    rows.append(_row(m, split, modality, acc, acc0, n, f"quant{bits}"))
    return rows


# --- payload -> rows; the runner's entry points -----------------------------------------------------------------

def probe_rows(payload: dict) -> list[dict]:
    """results.csv rows of one stored probe payload (relearn, relearn_control, routes or quant)."""
    kind = payload["probe"]
    if kind in ("relearn", "relearn_control"):
        return _relearn_rows(payload)
    if kind == "routes":
        return _routes_rows(payload)
    if kind == "quant":
        return _quant_rows(payload)
    raise PulseError(f"unknown probe payload {kind!r}")


def run_probes(ctx, scenario: str, seed: int, lm, enc, sets: dict, ref: dict, meta: dict, forget_of,
               cell: dict | None = None, folder: Path | None = None) -> dict:
    """Run `probes.run` for one cell (nothing when the scenario is not in `probes.scenarios`) and write
    `folder/probes.json` ({probe name: payload}); a completed probes.json is loaded instead. Returns the payloads."""
    p = ctx.cfg.probes
    if scenario not in p.scenarios or not p.run:
        return {}
    path = Path(folder) / "probes.json" if folder is not None else None
    if path is not None and path.is_file():
        return fingerprint.unstamped(stored.read(path))
    out = {}
    cell_label = f"{scenario} {meta['method']} {meta['target']} seed {seed}"
    if "relearn" in p.run:
        with progress.stage(f"relearn probe {cell_label}"):
            out["relearn"], _ = relearn_probe(ctx, scenario, seed, lm, enc, sets, ref, meta, forget_of, cell)
    if "routes" in p.run:
        with progress.stage(f"routes probe {cell_label}"):
            out["routes"], _ = routes_probe(ctx, scenario, seed, lm, enc, sets, ref, meta, cell)
    if "quant" in p.run:
        with progress.stage(f"quant probe {cell_label}"):
            out["quant"], _ = quant_probe(ctx, scenario, seed, lm, enc, sets, ref, meta)
    if path is not None:
        atomic_write_json(path, fingerprint.stamped(ctx, path, out))
    return out


def cell_rows(folder: Path) -> list[dict]:
    """Rows of a cell folder's probes.json (none if absent), for write_results."""
    path = Path(folder) / "probes.json"
    if not path.is_file():
        return []
    return [r for payload in fingerprint.unstamped(stored.read(path)).values() for r in probe_rows(payload)]


def control_rows(out: Path, scenario: str, seed: int) -> list[dict]:
    """Rows of the cached relearn control of a scenario and seed (none if absent) — emit once per scenario+seed."""
    path = Path(out) / "cells" / scenario / f"probe_control__seed{seed}.json"
    return probe_rows(stored.read(path)) if path.is_file() else []
