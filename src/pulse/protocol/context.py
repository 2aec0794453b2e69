"""The resolved run: its config, data, model paths and identity (for fingerprints), one encoder per phase, and
the evaluations every part of the protocol runs (MCQ per evaluated set, MMBench)."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

from ..config import RunConfig
from ..data.mllmu import TEST_SET, config_files, read_people, read_qa_pairs
from ..data.mmbench import read_mmbench, require_answers
from ..errors import PulseError
from ..eval.mcq import evaluate_mcq
from ..eval.mmbench import evaluate_mmbench, subset_groups
from ..mini.cache import ensure_mini
from ..models.batches import Encoder
from ..models.load import default_scoring, load_model, resolve_device, resolve_dtype
from ..provenance import git_commit, versions
from . import curves
from .fingerprint import run_identity
from .membership import mia_record
from .open_tasks import open_record

MCQ_SUMMARY = ("circular", "vanilla", "vanilla_all_rows", "z_share", "groups", "rows", "per_category")


class Context:
    """Everything a run needs, resolved once: config, data, model paths, output folder."""

    def __init__(self, cfg: RunConfig, out: Path, log):
        self.cfg, self.out, self.log = cfg, out, log
        self.shared = {}  # (scenario, seed) -> the cells' Baseline (protocol/baseline.py)
        self.encoders = {}  # phase -> Encoder (`model`)
        self.group = None  # process 0 of a process group: its accelerator (requests run sharded, unlearn/sharded.py)
        if cfg.uses_mini:
            world = ensure_mini(cfg.mini, log=log)
            mllmu, mmbench_tsv = world / "mllmu", world / "mmbench.tsv"
            self.models = {"pretrained": world / "models" / "pretrained", "finetuned": world / "models" / "finetuned"}
            self.world = world
        else:
            mllmu, mmbench_tsv = Path(cfg.data.mllmu).expanduser(), Path(cfg.data.mmbench).expanduser()
            self.models = {"pretrained": cfg.model.pretrained, "finetuned": cfg.model.finetuned}
            self.world = mllmu.parent if (mllmu.parent / "world.json").is_file() else None  # a mini world's copy
        self._read_people(mllmu)
        items = read_mmbench(mmbench_tsv)
        require_answers(items, mmbench_tsv)
        self.mmbench = subset_groups(items, cfg.eval.mmbench_groups, seed=0) if cfg.eval.mmbench_groups else items
        self.curve_mmbench = subset_groups(self.mmbench, cfg.eval.curve_mmbench_groups, seed=cfg.eval.half_seed)
        self.paths = {"mllmu": str(mllmu), "mmbench": str(mmbench_tsv)}
        self.scoring = cfg.eval.scoring or default_scoring(self.models["finetuned"])
        device = resolve_device(cfg.model.device)
        self.device = {"device": str(device), "dtype": str(resolve_dtype(cfg.model.dtype, device)).split(".")[-1]}
        self.identity = run_identity(cfg, self.models, mllmu, mmbench_tsv, self.device, self.scoring, versions(),
                                     git_commit())  # fingerprints (protocol/fingerprint.py); inputs hashed once

    def _read_people(self, mllmu: Path) -> None:
        """The fictional people of the fine-tuned scenario, the celebrities, the training-flavour QA pairs."""
        cfg, ft = self.cfg, self.cfg.scenario.finetuned
        fictional = read_people(mllmu, cfg.data.fictional)
        if len(fictional) < ft.people:
            raise PulseError(f"{mllmu}/{cfg.data.fictional}: {len(fictional)} people, "
                             f"scenario.finetuned.people asks for {ft.people}")
        self.fictional = sorted(fictional, key=lambda p: p.id)[: ft.people]
        needs = set(cfg.scenarios)
        self.celebrities = read_people(mllmu, cfg.data.celebrities) if "pretrained" in needs else []
        fictional_scenarios = needs & {"finetuned", "sustainability"}
        self.train_pairs = read_qa_pairs(mllmu, cfg.data.train) \
            if fictional_scenarios and cfg.unlearn.data == "ft_data" else []

    @cached_property
    def holdout(self) -> list:
        """Fictional people never fine-tuned on: Full_Set after the first scenario.finetuned.people by ID (at most
        eval.mia_nonmembers), membership inference's non-members."""
        people = sorted(read_people(Path(self.paths["mllmu"]), self.cfg.data.fictional), key=lambda p: p.id)
        return people[self.cfg.scenario.finetuned.people:][: self.cfg.eval.mia_nonmembers]

    @cached_property
    def ft_data(self) -> list:
        """Every training-flavour QA pair (data.train): the fine-tuning data membership inference scores."""
        return self.train_pairs or read_qa_pairs(Path(self.paths["mllmu"]), self.cfg.data.train)

    @cached_property
    def test_set(self):
        """Test_Set people by ID (read once), or None when the data has no Test_Set folder."""
        root = Path(self.paths["mllmu"])
        try:
            config_files(root, TEST_SET)
        except PulseError:
            return None
        return {p.id: p for p in read_people(root, TEST_SET)}

    def model(self, phase: str):
        """A fresh copy of the phase's checkpoint from disk (every cell starts from the saved weights), and the
        phase's encoder: one per process, so its caches (token ids, pixel values) serve every cell."""
        m = self.cfg.model
        lm = load_model(self.models[phase], dtype=m.dtype, device=m.device, template=m.template,
                        trust_remote_code=m.trust_remote_code)
        if phase not in self.encoders:
            self.encoders[phase] = Encoder(lm.processor, device=lm.device, dtype=next(lm.model.parameters()).dtype,
                                           eos=self.cfg.unlearn.eos)
        return lm, self.encoders[phase]

    def evaluate(self, lm, enc, sets: dict[str, tuple[list, int]]) -> tuple[dict, dict]:
        """MCQ on each evaluated set (`mcq`, with its membership inference under "mia" when eval.mia), MMBench
        once; the MMBench record keeps every row's letter in row order ("letters"), from which subsets (curve
        points) are scored without another pass."""
        mcq = Context.measures(self, lm, enc, sets)
        mmb = Context.mmbench_eval(self, lm, enc, self.mmbench)
        return mcq, {**{k: mmb[k] for k in MCQ_SUMMARY + ("scoring",)}, "letters": mmb["letters"]}

    def measures(self, lm, enc, sets: dict[str, tuple[list, int]]) -> dict:
        """`mcq` on every question, with membership inference under "mia" when eval.mia, MLLMU-Bench's cloze
        and generation under "open" when eval.tasks asks for them, and — generate scoring with an oracle — the
        D_unlearn options' likelihoods under "option_scores" (forget quality)."""
        mcq = Context.mcq(self, lm, enc, sets)
        if self.cfg.eval.mia:
            mcq["mia"] = mia_record(self, lm, enc, sets)
        if set(self.cfg.eval.tasks) - {"mcq"}:
            mcq["open"] = open_record(self, lm, enc, sets)
        unlearn = sets["unlearn"][0]
        if self.cfg.scenario.finetuned.oracle and (self.cfg.eval.scoring or lm.scoring) == "generate" \
                and {p.id for p in unlearn} <= {p.id for p in self.fictional}:  # forget quality: option probabilities
            mcq["option_scores"] = evaluate_mcq(lm, unlearn, scoring="likelihood", enc=enc,
                                                batch_size=self.cfg.eval.batch_size).predictions
        return mcq

    def mcq(self, lm, enc, sets: dict[str, tuple[list, int]], questions: set | None = None) -> dict:
        """MCQ on each evaluated set {name: (people, demo people)} separately — as MLLMU-Bench's eval.py, one ID
        list per call, so each set draws its own demo people (seeded by eval.demo_seed) from its own IDs — merged
        into one predictions list (rows carry person_id); demo IDs and counts recorded per set. `questions`: score
        only these (person_id, form, index) keys (one half)."""
        e = self.cfg.eval
        generate = (e.scoring or lm.scoring) == "generate"
        preds, demo_ids, demo_people = [], {}, {}
        for name, (people, n_demo) in sets.items():
            res = evaluate_mcq(lm, people, scoring=e.scoring, enc=enc, demo_people=n_demo, demo_seed=e.demo_seed,
                               max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, questions=questions)
            preds += res.predictions
            demo_ids[name], demo_people[name] = res.demo_ids, n_demo if generate else 0
        return {"predictions": preds, "demo_ids": demo_ids, "demo_people": demo_people}

    def mmbench_eval(self, lm, enc, items) -> dict:
        """`evaluate_mmbench` on `items` plus "letters": the extracted letter of every row, in row order."""
        e = self.cfg.eval
        mmb = evaluate_mmbench(lm, items, scoring=e.scoring, enc=enc, batch_size=e.batch_size,
                               max_new_tokens=e.mmbench_max_new_tokens, image=e.mmbench_image)
        mmb["letters"] = "".join(r["prediction"] for r in mmb.get("records") or [])
        return mmb


def eval_sets(ctx: Context, scenario: str, unlearn, retain) -> dict[str, tuple[list, int]]:
    """The evaluated sets with their few-shot demo people: the pre-trained scenario's celebrities zero-shot (as
    MLLMU-Bench evaluates Retain_Set, and as the selection does), the fictional sets eval.demo_people each."""
    n = 0 if scenario == "pretrained" else ctx.cfg.eval.demo_people
    return {"unlearn": (unlearn, n), "retain": (retain, n)}


def sub_point(ctx: Context, mmb: dict) -> dict:
    """The MMBench-subset record of a full evaluation (its letters restricted to the curve subset)."""
    by_index = dict(zip((it.index for it in ctx.mmbench), mmb["letters"]))
    return curves.mmbench_point(ctx.curve_mmbench, "".join(by_index[it.index] for it in ctx.curve_mmbench))
