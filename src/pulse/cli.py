"""The `pulse` command. User errors (PulseError) print as one line, exit code 2; `--debug` shows the traceback."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .errors import PulseError

COMMANDS = {
    "run": "run the PULSE protocol (default: the mini world, 3 scenarios x ga/ga_klr/npo, Table 3, 2 seeds)",
    "finetune": "fine-tune a LLaVA checkpoint on the first N fictional people (MLLMU-Bench's recipe); resumable",
    "eval": "MCQ accuracy of a model on an MLLMU-Bench config, per modality (image / text)",
    "mmbench": "MMBench accuracy of a model: CircularEval and vanilla, overall and per category",
    "mini": "build the embedded mini world (synthetic people, mini-MMBench, tiny LLaVA in two phases)",
    "data": "validate an MLLMU-Bench folder or an MMBench TSV and print a summary",
    "report": "figures 4 and 5, table 3, findings and report.html from run directories",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pulse", description="PULSE: practical evaluation of unlearning in LMMs.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands")

    r = sub.add_parser("run", help=COMMANDS["run"], description=COMMANDS["run"])
    r.add_argument("args", nargs="*", metavar="[CONFIG] [key=value ...]",
                   help="a YAML config (default: the built-in mini config) and dotted overrides, e.g. seeds=[0]")
    r.add_argument("--out", type=Path, help="run directory (default runs/<config name>); rerun to resume")
    r.add_argument("--no-report", action="store_true", help="do not build the report at the end")

    for name in ("eval", "mmbench"):
        e = sub.add_parser(name, help=COMMANDS[name], description=COMMANDS[name])
        e.add_argument("--model", required=True, help="checkpoint directory (safetensors)")
        e.add_argument("--scoring", choices=["likelihood", "generate"],
                       help="default: the model's own (likelihood for the mini model, generate otherwise)")
        e.add_argument("--dtype", default="auto",
                       help="auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16 or float16")
        e.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
        e.add_argument("--template", help="prompt template name (llava-1.5, plain); default: the checkpoint's")
        e.add_argument("--trust-remote-code", action="store_true")
        e.add_argument("--batch-size", type=int, default=64)
        e.add_argument("--json", action="store_true", help="print JSON")
        if name == "eval":
            e.add_argument("--data", required=True, type=Path, help="MLLMU-Bench folder (local clone)")
            e.add_argument("--config", required=True, help="config name, e.g. forget_10, Retain_Set, Test_Set")
            e.add_argument("--demo-people", type=int,
                           help="generate mode: few-shot demo people (0 = zero-shot); default 1, Retain_Set 0")
            e.add_argument("--forget", metavar="CONFIG",
                           help="evaluate only the people of this config (e.g. forget_10), as MLLMU-Bench's test "
                                "mode does with Test_Set; demo people are drawn from these IDs")
            e.add_argument("--seed", type=int, default=0, help="demo-person and Test_Set image draws")
            e.add_argument("--predictions", type=Path, help="write per-question predictions (JSON) here")
        else:
            e.add_argument("--tsv", required=True, type=Path)
            e.add_argument("--groups", type=int, help="seeded subset of N question groups (labelled)")
            e.add_argument("--max-new-tokens", type=int, default=1024,
                           help="generate scoring: at most N new tokens, stopping at EOS (LLaVA-1.5: 1024)")
            e.add_argument("--predictions", type=Path,
                           help="write one JSON line per TSV row here: index, prompt, output, prediction")
            e.add_argument("--image", choices=["pad", "processor"], default="pad",
                           help="pad: LLaVA-1.5's pad-to-square (mean colour) before the processor (default); "
                                "processor: the checkpoint's processor alone")

    f = sub.add_parser("finetune", help=COMMANDS["finetune"], description=COMMANDS["finetune"])
    f.add_argument("args", nargs="*", metavar="key=value",
                   help="recipe overrides (finetune section), e.g. lr=1e-4 save_every=500 gradient_checkpointing=true")
    f.add_argument("--model", required=True, help="base checkpoint directory (e.g. a copy of llava-hf/llava-1.5-13b-hf)")
    f.add_argument("--data", required=True, type=Path, help="MLLMU-Bench folder (local clone; Full_Set, ft_Data)")
    f.add_argument("--out", required=True, type=Path, help="output checkpoint directory, must not exist (an interrupted run resumes from OUT.partial)")
    f.add_argument("--people", type=int, help="the first N Full_Set people by ID (default 100, as the paper)")
    f.add_argument("--epochs", type=int, help="epochs (default 5, MLLMU-Bench's README)")
    f.add_argument("--dtype", default="auto", help="auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16, float16")
    f.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    f.add_argument("--template", help="prompt template of the final MCQ evaluation; default: the checkpoint's")

    m = sub.add_parser("mini", help=COMMANDS["mini"], description=COMMANDS["mini"])
    msub = m.add_subparsers(dest="mini_command", required=True)
    b = msub.add_parser("build", help="generate the world and train the tiny LLaVA (about 10 min on 2 cores)")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--seed", type=int, default=0)

    d = sub.add_parser("data", help=COMMANDS["data"], description=COMMANDS["data"])
    dsub = d.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("check", help="validate PATH (MLLMU-Bench folder or MMBench .tsv)")
    c.add_argument("path", type=Path)
    c.add_argument("--json", action="store_true")

    from .report.build import build_parser
    build_parser(sub.add_parser("report", help=COMMANDS["report"], description=COMMANDS["report"]))
    return p


def _split_run_args(args: list[str]) -> tuple[str | None, list[str]]:
    config = None
    overrides = []
    for a in args:
        if "=" in a:
            overrides.append(a)
        elif config is None:
            config = a
        else:
            raise PulseError(f"unexpected argument {a!r}: give one config file and key=value overrides")
    return config, overrides


def cmd_run(a) -> int:
    from .config import load_config
    from .protocol.runner import run

    config, overrides = _split_run_args(a.args)
    cfg = load_config(config, overrides)
    out = a.out or Path("runs") / cfg.name
    run_dir = run(cfg, out)
    df = __import__("pandas").read_csv(run_dir / "results.csv")
    print(f"results: {run_dir / 'results.csv'} ({len(df)} rows)")
    if not a.no_report:
        from .report import build_report
        print(f"report:  {build_report([run_dir], run_dir / 'report')}")
    return 0


def _load(a):
    from .models.load import load_model
    return load_model(a.model, dtype=a.dtype, device=a.device, template=a.template,
                      trust_remote_code=a.trust_remote_code)


def cmd_eval(a) -> int:
    """MLLMU-Bench classification on one ID list: demos drawn from that list (seeded), records from Full_Set;
    the celebrities (Retain_Set) zero-shot, as eval.py."""
    from .data.mllmu import CELEBRITY_SET, FULL_SET, read_people
    from .eval.mcq import evaluate_mcq

    people = read_people(a.data, a.config, test_image_seed=a.seed)
    if a.forget:  # eval.py test mode: id_list = the forget config's IDs, rows from the evaluated config
        ids = [p.id for p in read_people(a.data, a.forget)]
        by_id = {p.id: p for p in people}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise PulseError(f"{a.data}/{a.config}: no person {missing[0]!r} of --forget {a.forget} "
                             f"({len(missing)} of its {len(ids)} IDs missing)")
        people = [by_id[i] for i in ids]
    demo_people = a.demo_people if a.demo_people is not None else (0 if a.config == CELEBRITY_SET else 1)
    lm = _load(a)
    demo_source = None
    if (a.scoring or lm.scoring) == "generate" and demo_people and a.config not in (FULL_SET, CELEBRITY_SET):
        try:
            demo_source = read_people(a.data, FULL_SET)
        except PulseError as e:
            raise PulseError(f"{e} (few-shot demos take their records from {FULL_SET}; "
                             f"--demo-people 0 for zero-shot)") from None
    res = evaluate_mcq(lm, people, scoring=a.scoring, demo_people=demo_people, demo_seed=a.seed,
                       demo_source=demo_source, batch_size=a.batch_size)
    out = {"image": round(res.accuracy["image"], 2), "text": round(res.accuracy["text"], 2), "n": res.n,
           "scoring": a.scoring or lm.scoring, "demo_ids": res.demo_ids, "demo_people": demo_people,
           "config": a.config, "forget": a.forget, "device": str(lm.device),
           "dtype": str(next(lm.model.parameters()).dtype).removeprefix("torch.")}
    if a.predictions:
        from .fsutil import atomic_write_json
        atomic_write_json(a.predictions, res.predictions)
    if a.json:
        print(json.dumps(out))
    else:
        name = f"{a.config} ({a.forget} people)" if a.forget else a.config
        print(f"{name}: image {out['image']:.1f}% ({res.n['image']} questions), "
              f"text {out['text']:.1f}% ({res.n['text']} questions) [{out['scoring']} scoring]")
    return 0


def cmd_mmbench(a) -> int:
    from .data.mmbench import read_mmbench
    from .eval.mmbench import evaluate_mmbench, subset_groups

    items = read_mmbench(a.tsv)
    if a.groups:
        items = subset_groups(items, a.groups, seed=0)
    res = evaluate_mmbench(_load(a), items, scoring=a.scoring, batch_size=a.batch_size,
                           max_new_tokens=a.max_new_tokens, image=a.image)
    res.pop("predictions")
    records = res.pop("records")
    if a.predictions:
        from .fsutil import atomic_write_text
        atomic_write_text(a.predictions, "".join(json.dumps(r) + "\n" for r in records))
    res["subset_groups"] = a.groups
    if a.json:
        print(json.dumps(res))
        return 0
    label = "" if res["scoring"] == "generate" else " (likelihood variant: non-standard, not comparable to published MMBench)"
    print(f"MMBench{label}: circular {res['circular']:.1f}%, vanilla {res['vanilla']:.1f}% "
          f"({res['groups']} questions, {res['rows']} rows, {res['z_share']:.1f}% unanswered)")
    for cat, v in sorted(res["per_category"].items()):
        print(f"  {cat:32} circular {v['circular']:5.1f}%  vanilla {v['vanilla']:5.1f}%  (n={v['n']})")
    return 0


def cmd_finetune(a) -> int:
    from .config import load_finetune
    from .unlearn.finetune import RECORD, run_finetune

    overrides = list(a.args)
    for item in overrides:
        if "=" not in item:
            raise PulseError(f"unexpected argument {item!r}: give key=value recipe overrides")
    overrides += [f"{k}={v}" for k, v in (("people", a.people), ("epochs", a.epochs)) if v is not None]
    ft = load_finetune(overrides)
    try:
        rec = run_finetune(a.model, a.data, a.out, ft, device=a.device, dtype=a.dtype, template=a.template)
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun the same command to resume from the last checkpoint in "
              f"{a.out.with_name(a.out.name + '.partial')}", file=sys.stderr)
        return 130
    acc = rec["mcq_accuracy"]
    print(f"fine-tuned model: {a.out} ({rec['training']['steps']} steps, final loss {rec['losses']['last']:.3f}; "
          f"{a.out / RECORD})")
    print(f"MCQ accuracy on the {len(rec['people'])} people: image {acc['image']:.1f}%, text {acc['text']:.1f}% "
          f"[{acc['scoring']} scoring]")
    return 0


def cmd_mini(a) -> int:
    from .mini.build import BuildConfig, build_mini
    from .mini.world import WorldConfig

    build_mini(a.out, BuildConfig(world=WorldConfig(seed=a.seed), seed=a.seed))
    print(f"mini world: {a.out}")
    return 0


def cmd_data(a) -> int:
    path: Path = a.path
    if path.suffix.lower() == ".tsv":
        from .data.mmbench import check_mmbench
        res = check_mmbench(path)
        text = f"{path}: MMBench TSV, {res['questions']} questions, {res['rows']} rows"
    else:
        from .data.mllmu import check_mllmu
        res = check_mllmu(path)
        lines = [f"{path}: MLLMU-Bench folder, {len(res['configs'])} configs"]
        for name, c in res["configs"].items():
            lines.append(f"  {name:12} " + ", ".join(f"{k} {v}" for k, v in c.items()))
        text = "\n".join(lines)
    print(json.dumps(res) if a.json else text)
    return 0


def cmd_report(a) -> int:
    from .report.build import run_from_args
    print(run_from_args(a))
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # peft's merge calls a transformers property deprecated in v5; harmless, and noise for users
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    parser = _parser()
    a, extra = parser.parse_known_args(argv)
    if extra and (a.command not in ("run", "finetune") or any(x.startswith("-") for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # overrides given after options, e.g. `pulse run cfg.yaml --out D seeds=[0]`
        a.args += extra
    handler = {"run": cmd_run, "finetune": cmd_finetune, "eval": cmd_eval, "mmbench": cmd_mmbench, "mini": cmd_mini,
               "data": cmd_data, "report": cmd_report}[a.command]
    try:
        return handler(a)
    except PulseError as e:
        if a.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
