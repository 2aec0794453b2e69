"""Inside one request: the in-request evaluations (trade-off curve points every `eval.every` steps), the budget's
evaluation and the matched point of matched forgetting, as the training loop's after_step hook.

Every `eval.every` optimizer steps, and at step 0 and the end, a cheap evaluation — the selection half of
D_unlearn's and D_retain's questions (protocol/halves.py) and a seeded MMBench subset — gives the trade-off curve.
Step 0 is read from the evaluation before the request and the budget step from the request's full evaluation, so
neither is evaluated twice. With `unlearn.stop` (single-request scenarios), the first checkpoint whose
selection-half D_unlearn accuracy is <= the never-learned reference + margin gets a full evaluation (held-out half
+ full MMBench; its selection half and subset are the checkpoint's), recorded as the matched point; training goes on
to the budget (fixed-budget rows) and, if the target is still unmet, up to `unlearn.stop.max_steps` — one
trajectory. Each evaluation is saved with a checkpoint (LoRA, optimizer, scheduler, RNG: loop.Checkpoints), so a
killed request resumes from its last checkpoint and writes the same files.
"""
from __future__ import annotations

from .. import progress
from ..eval.mmbench import circular_eval
from . import curves
from .context import MCQ_SUMMARY, sub_point


class Track:
    """The in-request evaluations of one request, as `fit`'s after_step hook; `state` (JSON) is saved with every
    in-request checkpoint: {"curve": [points], "budget": full evaluation at the budget, "matched": record}.

    Points: step 0 (from `before`, the evaluation the request starts from), every `eval.every` steps, the budget
    (from its full evaluation) and the last planned step. Training stops after the budget once the target is
    reached (or without a target), else at the cap. When training ends at the budget, the budget's evaluation
    runs after the merge (`at_budget`), as a run without curves evaluates; only a request that goes on past the
    budget evaluates it in place (the adapter unmerged)."""

    def __init__(self, ctx, lm, enc, sets, halves, before, budget, end, cap, stop, keep_lora=False):
        self.ctx, self.lm, self.enc, self.sets, self.halves, self.before = ctx, lm, enc, sets, halves, before
        self.budget, self.end, self.cap, self.stop = budget, end, cap, stop
        self.keep_lora, self.lora_at_budget = keep_lora, None  # the trainable LoRA weights at the budget
        self.every = ctx.cfg.eval.every
        self.unlearn_ids = {p.id for p in sets["unlearn"][0]}
        self.state = {"curve": [], "budget": None, "matched": None}

    def _point(self, step: int, mcq: dict, mmb: dict) -> dict:
        return {"step": step, "sel": curves.encode(self.halves["sel"], mcq["predictions"]),
                "mmbench": sub_point(self.ctx, mmb)}

    def _full(self, step: int, mcq: dict, mmb: dict, point: dict) -> dict:
        return {"reached": True, "status": "ok", "step": step, "sel": point["sel"],
                "held": curves.encode(self.halves["held"], mcq["predictions"]),
                "mmbench": {k: mmb[k] for k in MCQ_SUMMARY},
                **{k: self.stop[k] for k in ("reference", "margin", "target")}, "cap": self.cap}

    def after_step(self, k: int, in_eval):
        st, ctx = self.state, self.ctx
        point, evaluated = None, False
        if k == 0:
            if self.every:
                point = self._point(0, self.before["mcq"], self.before["mmbench"])
        elif k == self.budget:
            if self.stop is None or st["matched"] is not None or self.cap <= self.budget:
                return "stop"  # the budget is evaluated after the merge: `at_budget`
            with in_eval() as m, progress.stage(f"step {k} (budget)"):
                self.lm.model = m
                mcq, mmb = ctx.evaluate(self.lm, self.enc, self.sets)
                if self.keep_lora:  # for the probes, which measure the model at its budget (no replay needed)
                    self.lora_at_budget = [p.detach().clone() for p in m.parameters() if p.requires_grad]
            st["budget"] = {"mcq": mcq, "mmbench": mmb}
            point, evaluated = self._point(k, mcq, mmb), True
        elif self.every and (k % self.every == 0 or k == self.end):
            keys = {curves.parse_key(q) for q in self.halves["sel"]}
            with in_eval() as m, progress.stage(f"checkpoint step {k}"):
                self.lm.model = m
                mcq = ctx.mcq(self.lm, self.enc, self.sets, questions=keys)
                letters = ctx.mmbench_eval(self.lm, self.enc, ctx.curve_mmbench)["letters"]
            point = {"step": k, "sel": curves.encode(self.halves["sel"], mcq["predictions"]),
                     "mmbench": curves.mmbench_point(ctx.curve_mmbench, letters)}
            evaluated = True
        if point is not None and self.every:
            st["curve"].append(point)
        if point is not None and self._reaches(k):
            st["matched"] = self._matched(k, point, in_eval)
            evaluated = True
        done = k >= self.budget and (self.stop is None or st["matched"] is not None or k >= self.cap)
        return "stop" if done else ("checkpoint" if evaluated else None)

    def at_budget(self, mcq: dict, mmb: dict) -> None:
        """Record the budget's full evaluation made after training ended there: its curve point and, if it is the
        first to reach the target, the matched point."""
        st, k = self.state, self.budget
        st["budget"] = {"mcq": mcq, "mmbench": mmb}
        point = self._point(k, mcq, mmb)
        if self.every:
            st["curve"].append(point)
        if self._reaches(k):
            st["matched"] = self._full(k, mcq, mmb, point)

    def _reaches(self, k: int) -> bool:
        """Is the checkpoint at step k (the newest curve point) the matched one — the first to reach the target?"""
        if not self.stop or self.state["matched"] is not None:
            return False
        points = [(p["step"], curves.accuracy(curves.decode(self.halves["sel"], p["sel"]), self.unlearn_ids))
                  for p in self.state["curve"]]
        return curves.first_reaching(points, self.stop["target"], self.cap) == k

    def _matched(self, k: int, point: dict, in_eval) -> dict:
        """The full evaluation at the matched step: reused at step 0 (before) and at the budget; otherwise the
        held-out half and the MMBench rows outside the subset are evaluated, the rest is the checkpoint's."""
        if k == 0:
            return self._full(0, self.before["mcq"], self.before["mmbench"], point)
        if k == self.budget:
            return self._full(k, self.state["budget"]["mcq"], self.state["budget"]["mmbench"], point)
        ctx = self.ctx
        sub = {it.index for it in ctx.curve_mmbench}
        rest = [it for it in ctx.mmbench if it.index not in sub]
        with in_eval() as m, progress.stage(f"matched step {k}"):
            self.lm.model = m
            held = ctx.mcq(self.lm, self.enc, self.sets, questions={curves.parse_key(q) for q in self.halves["held"]})
            letters = ctx.mmbench_eval(self.lm, self.enc, rest)["letters"] if rest else ""
        by_index = {**dict(zip((it.index for it in rest), letters)),
                    **dict(zip((it.index for it in ctx.curve_mmbench), point["mmbench"]["letters"]))}
        mmb = circular_eval(ctx.mmbench, by_index)
        return self._full(k, held, mmb, point)
