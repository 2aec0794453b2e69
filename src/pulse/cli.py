"""The `pulse` command. Every user error (PulseError, a bad argument, a file system error such as a full disk)
prints as one line on stderr, exit code 2; `--debug` (before or after the subcommand) shows the traceback. Ctrl-C
exits 130 with one line. Checks that need no model run before any build or evaluation (`_preflight_run`).
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
import warnings
from pathlib import Path

from . import progress
from .errors import PulseError

INTERRUPTED = "interrupted — rerun the same command to resume"
INTERRUPTED_BY_COMMAND = {"run": INTERRUPTED, "finetune": INTERRUPTED,
                          "mini": "interrupted — rerun the same command to build again"}
DISK_FULL = "free some space and rerun the same command to resume (files written before are intact)"

COMMANDS = {
    "run": "run the PULSE protocol (default: the mini world, 3 scenarios x ga/ga_klr/npo, Table 3, 3 seeds, "
           "curves, matched forgetting, probes)",
    "finetune": "fine-tune a LLaVA checkpoint on the first N fictional people (MLLMU-Bench's recipe); resumable",
    "eval": "MCQ accuracy of a model on an MLLMU-Bench config, per modality (image / text)",
    "mmbench": "MMBench accuracy of a model: CircularEval and vanilla, overall and per category",
    "mini": "build the embedded mini world (synthetic people, mini-MMBench, tiny LLaVA in two phases)",
    "data": "validate an MLLMU-Bench folder or an MMBench TSV and print a summary",
    "report": "figures 4 and 5, table 3, findings and report.html from run directories",
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), like every other user error."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def _int_at_least(low: int):
    """argparse type: an integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pulse", description="PULSE: practical evaluation of unlearning in LMMs.",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show tracebacks (also accepted after the subcommand)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands")
    _run_parser(sub)
    _eval_parsers(sub)
    _finetune_parser(sub)
    _mini_and_data_parsers(sub)
    from .report.build import build_parser
    build_parser(sub.add_parser("report", help=COMMANDS["report"], description=COMMANDS["report"]))
    return p


def _run_parser(sub) -> None:
    r = sub.add_parser("run", help=COMMANDS["run"], description=COMMANDS["run"])
    r.add_argument("args", nargs="*", metavar="[CONFIG] [key=value ...]",
                   help="a YAML config (default: the built-in mini config) and dotted overrides, e.g. seeds=[0]")
    r.add_argument("--out", type=Path, help="run directory (default runs/<config name>); rerun to resume")
    r.add_argument("--no-report", action="store_true", help="do not build the report at the end")
    g = r.add_argument_group("where the cells run (docs/cluster.md)")
    g.add_argument("--launcher", choices=["serial", "local", "slurm"], default="serial",
                   help="serial: this process (default); local: --workers processes on this machine, one GPU each "
                        "when there are GPUs; slurm: a submitit job array, one task per cell")
    g.add_argument("--workers", type=_int_at_least(1), help="--launcher local: worker processes (default: one per "
                   "GPU, else 2)")
    g.add_argument("--cell", type=_int_at_least(0), help="run only the cell at this plan index (an array task; "
                   "rerun without it to finish the run)")
    g.add_argument("--print-sbatch", action="store_true", help="print a plain sbatch array script and exit")
    for flag, kind, text in (("--partition", str, "SLURM partition"), ("--account", str, "SLURM account"),
                             ("--gpus-per-task", _int_at_least(0), "GPUs per array task (default 1)"),
                             ("--cpus-per-task", _int_at_least(1), "CPUs per array task"),
                             ("--mem-gb", _positive_float, "memory per array task (GB)"),
                             ("--time", _int_at_least(1), "time limit per array task, minutes (default 1440)"),
                             ("--array-parallelism", _int_at_least(1), "array tasks running at once (default 32)")):
        g.add_argument(flag, type=kind, help=text)
    g.add_argument("--slurm-cluster", choices=["slurm", "local", "debug"], default="slurm",
                   help="submitit executor: slurm, or its local/debug executors (tests, dry runs)")


def _eval_parsers(sub) -> None:
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
        e.add_argument("--batch-size", type=_int_at_least(1), default=64)
        e.add_argument("--json", action="store_true", help="print JSON")
        if name == "eval":
            e.add_argument("--data", required=True, type=Path, help="MLLMU-Bench folder (local clone)")
            e.add_argument("--config", required=True, help="config name, e.g. forget_10, Retain_Set, Test_Set")
            e.add_argument("--demo-people", type=_int_at_least(0),
                           help="generate mode: few-shot demo people (0 = zero-shot); default 1, Retain_Set 0")
            e.add_argument("--forget", metavar="CONFIG",
                           help="evaluate only the people of this config (e.g. forget_10), as MLLMU-Bench's test "
                                "mode does with Test_Set; demo people are drawn from these IDs")
            e.add_argument("--seed", type=_int_at_least(0), default=0, help="demo-person and Test_Set image draws")
            e.add_argument("--predictions", type=Path, help="write per-question predictions (JSON) here")
        else:
            e.add_argument("--tsv", required=True, type=Path)
            e.add_argument("--groups", type=_int_at_least(1), help="seeded subset of N question groups (labelled)")
            e.add_argument("--max-new-tokens", type=_int_at_least(1), default=1024,
                           help="generate scoring: at most N new tokens, stopping at EOS (LLaVA-1.5: 1024)")
            e.add_argument("--predictions", type=Path,
                           help="write one JSON line per TSV row here: index, prompt, output, prediction")
            e.add_argument("--image", choices=["pad", "processor"], default="pad",
                           help="pad: LLaVA-1.5's pad-to-square (mean colour) before the processor (default); "
                                "processor: the checkpoint's processor alone")


def _finetune_parser(sub) -> None:
    f = sub.add_parser("finetune", help=COMMANDS["finetune"], description=COMMANDS["finetune"])
    f.add_argument("args", nargs="*", metavar="key=value",
                   help="recipe overrides (finetune section), e.g. lr=1e-4 save_every=500 gradient_checkpointing=true")
    f.add_argument("--model", required=True,
                   help="base checkpoint directory (e.g. a copy of llava-hf/llava-1.5-13b-hf)")
    f.add_argument("--data", required=True, type=Path, help="MLLMU-Bench folder (local clone; Full_Set, ft_Data)")
    f.add_argument("--out", required=True, type=Path,
                   help="output checkpoint directory, must not exist (an interrupted run resumes from OUT.partial)")
    f.add_argument("--people", type=_int_at_least(1),
                   help="the first N Full_Set people by ID (default 100, as the paper)")
    f.add_argument("--epochs", type=_int_at_least(1), help="epochs (default 5, MLLMU-Bench's README)")
    f.add_argument("--dtype", default="auto",
                   help="auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16, float16")
    f.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    f.add_argument("--template", help="prompt template of the final MCQ evaluation; default: the checkpoint's")


def _mini_and_data_parsers(sub) -> None:
    m = sub.add_parser("mini", help=COMMANDS["mini"], description=COMMANDS["mini"])
    msub = m.add_subparsers(dest="mini_command", required=True, metavar="build")
    b = msub.add_parser("build", help="generate the world and train the tiny LLaVA (about 10 min on 2 cores)")
    b.add_argument("--out", type=Path, help="the folder to build into (must not exist)")
    b.add_argument("--seed", type=_int_at_least(0), default=0)
    b.add_argument("--ship", action="store_true",
                   help="maintainers: build into the repository's worlds/mini-<key>/ with SHA256SUMS, the copy a "
                        "first `pulse run` uses instead of building")

    d = sub.add_parser("data", help=COMMANDS["data"], description=COMMANDS["data"])
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="check")
    c = dsub.add_parser("check", help="validate PATH (MLLMU-Bench folder or MMBench .tsv)")
    c.add_argument("path", type=Path)
    c.add_argument("--json", action="store_true")


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


def _check_output_dir(path: Path, label: str) -> None:
    """`path` will be created if missing and written into: refused if it (or a parent) is a file, or if the first
    existing folder on its way is not writable (read-only file system, permissions). `label` names it for the user
    (e.g. `--out runs/x`)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise PulseError(f"{label}: exists and is not a directory")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PulseError(f"{label}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PulseError(f"{label}: {existing} is not writable")


def _check_output_file(path: Path | None, flag: str) -> None:
    """A file to be written at the end of a command, checked before the work starts."""
    if path is None:
        return
    if path.is_dir():
        raise PulseError(f"{flag} {path}: is a directory; give a file name (e.g. {path / 'predictions.json'})")
    _check_output_dir(path.parent, f"{flag} {path}")


def _mini_key(cfg) -> str:
    """The cache key of the config's mini world (as ensure_mini computes it)."""
    from .mini.cache import build_config, world_key
    return world_key(build_config(cfg.mini))


def _mini_world_built(cfg, root: Path) -> bool:
    """Whether ensure_mini would find this config's world already built under `root` (so nothing is written)."""
    return (root / f"mini-{_mini_key(cfg)}" / "build.json").is_file()


def _mini_world_shipped(cfg) -> bool:
    """Whether the repository ships this config's world built (mini/cache.py; verified when it is used)."""
    from .mini.cache import SHIPPED, SUMS
    return (SHIPPED / f"mini-{_mini_key(cfg)}" / SUMS).is_file()


def _preflight_run(cfg, out: Path, out_label: str) -> None:
    """Everything `pulse run` can check before building the mini world or loading a model: the device, the run
    directory, the mini-world cache, and for real data the checkpoints (config, sidecar, safetensors headers) and
    the MMBench TSV (answers present, eval.mmbench_groups within its groups)."""
    from .models.load import check_checkpoint, resolve_device, resolve_dtype

    try:
        device = resolve_device(cfg.model.device)
    except PulseError as e:
        raise PulseError(f"model.device: {e}") from None
    try:
        resolve_dtype(cfg.model.dtype, device)
    except PulseError as e:
        raise PulseError(f"model.dtype: {e}") from None
    _check_output_dir(out, out_label)
    if cfg.uses_mini:
        env = os.environ.get("PULSE_CACHE")
        label = f"PULSE_CACHE={env}" if env else f"mini.cache {cfg.mini.cache}"
        root = Path(env or cfg.mini.cache).expanduser()
        if root.exists() and not root.is_dir():
            raise PulseError(f"{label}: {root} is a file, not a directory (the mini world's cache folder)")
        if not _mini_world_built(cfg, root) and not _mini_world_shipped(cfg):
            _check_output_dir(root, label)
        from .mini.build import PRESETS
        groups = PRESETS[cfg.mini.size].world.n_mmbench
        if cfg.eval.mmbench_groups is not None and cfg.eval.mmbench_groups > groups:
            raise PulseError(f"eval.mmbench_groups={cfg.eval.mmbench_groups}: the {cfg.mini.size} mini world's "
                             f"MMBench has only {groups} question groups (null = all)")
        return
    from .data.mmbench import check_answers
    for key in ("pretrained", "finetuned"):
        path = Path(getattr(cfg.model, key)).expanduser()
        if path.exists():  # else a hub ID (config validation)
            try:
                check_checkpoint(path)
            except PulseError as e:
                raise PulseError(f"model.{key}: {e}") from None
    groups = check_answers(Path(cfg.data.mmbench).expanduser())
    if cfg.eval.mmbench_groups is not None and cfg.eval.mmbench_groups > groups:
        raise PulseError(f"eval.mmbench_groups={cfg.eval.mmbench_groups}: {cfg.data.mmbench} has only {groups} "
                         f"question groups (null = all)")


def cmd_run(a) -> int:
    from .config import load_config
    from .protocol.runner import run

    config, overrides = _split_run_args(a.args)
    cfg = load_config(config, overrides)
    out = a.out or Path("runs") / cfg.name
    _preflight_run(cfg, out, f"--out {out}" if a.out else f"run directory {out}")
    opts = _launch_options(a, cfg)
    if _group_size() > 1:
        _check_group(a, cfg)
    if a.print_sbatch:
        from .launch import print_sbatch
        print(print_sbatch(cfg, out, a.args, opts), end="")
        return 0
    if a.cell is not None:
        run(cfg, out, only=[a.cell], finish=False)
        print(f"cell {a.cell} done in {out}; rerun without --cell to finish the run")
        return 0
    if _group_size() > 1:
        run_dir = _run_group(cfg, out)
        if run_dir is None:
            return 0  # not process 0: it only joined the sharded requests
    elif a.launcher == "local":
        from .launch import local
        run_dir = local(cfg, out, a.workers or _default_workers())
    elif a.launcher == "slurm":
        from .launch import slurm
        run_dir = slurm(cfg, out, opts)
    else:
        run_dir = run(cfg, out, launcher={"name": "serial"})
    df = __import__("pandas").read_csv(run_dir / "results.csv")
    print(f"results: {run_dir / 'results.csv'} ({len(df)} rows)")
    if not a.no_report:
        from .report import build_report
        print(f"report:  {build_report([run_dir], run_dir / 'report')}")
    return 0


SLURM_FLAGS = ("partition", "account", "gpus_per_task", "cpus_per_task", "mem_gb", "time", "array_parallelism")


def _launch_options(a, cfg):
    """The launcher's options, checked against each other and the plan before anything runs."""
    from .launch import Slurm
    from .protocol.runner import cells

    slurm_given = [f"--{k.replace('_', '-')}" for k in SLURM_FLAGS if getattr(a, k) is not None]
    if a.workers is not None and a.launcher != "local":
        raise PulseError(f"--workers: only with --launcher local (this run: --launcher {a.launcher})")
    if slurm_given and a.launcher != "slurm" and not a.print_sbatch:
        raise PulseError(f"{slurm_given[0]}: only with --launcher slurm or --print-sbatch")
    if a.cell is not None:
        n = len(cells(cfg))
        if a.launcher != "serial" or a.print_sbatch:
            raise PulseError("--cell: runs one cell in this process; not with --launcher or --print-sbatch")
        if a.cell >= n:
            raise PulseError(f"--cell {a.cell}: this run has {n} cells (0 to {n - 1})")
    given = {k: getattr(a, k) for k in SLURM_FLAGS if getattr(a, k) is not None}
    if "time" in given:
        given["time_min"] = given.pop("time")
    return Slurm(**given, cluster=a.slurm_cluster)


def _group_size() -> int:
    """WORLD_SIZE, set by `accelerate launch` / torchrun for every process of a process group (1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _check_group(a, cfg) -> None:
    """A process group runs full-parameter requests sharded (unlearn/sharded.py): the rest must fit that."""
    where = f"a process group (WORLD_SIZE={_group_size()}, accelerate launch / torchrun)"
    if a.launcher != "serial" or a.cell is not None or a.print_sbatch:
        raise PulseError(f"{where} is its own launcher: drop --launcher, --cell and --print-sbatch")
    modes = {cfg.unlearn.mode} | ({cfg.scenario.pretrained.mode or cfg.unlearn.mode}
                                  if "pretrained" in cfg.scenarios else set())
    if modes != {"full"}:
        raise PulseError(f"{where} shards full-parameter requests, but unlearn.mode is {cfg.unlearn.mode!r}"
                         + (f" (scenario.pretrained.mode {cfg.scenario.pretrained.mode!r})"
                            if cfg.scenario.pretrained.mode else "")
                         + ": set unlearn.mode=full, or run LoRA cells one per GPU with --launcher local")
    if cfg.eval.every:  # (matched forgetting needs them too: config validation ties unlearn.stop to eval.every)
        raise PulseError(f"eval.every: {where} has no in-request evaluations (trade-off curves, matched "
                         f"forgetting); set eval.every=0 and unlearn.stop.rule=none")


def _run_group(cfg, out: Path) -> Path | None:
    """Process 0 runs the protocol (serially, on its own GPU) and every process joins its requests, sharded;
    the run directory (process 0) or None (the others)."""
    from .protocol.runner import run
    from .unlearn.sharded import end_group, follow, make_accelerator

    acc = make_accelerator()
    if acc.process_index != 0:
        follow(acc)
        return None
    run_dir = run(cfg, out, launcher={"name": "process group", "processes": acc.num_processes,
                                      "engine": "FSDP2 through accelerate (requests only)"}, group=acc)
    end_group()
    return run_dir


def _default_workers() -> int:
    import torch
    return torch.cuda.device_count() or 2


def _check_device(a) -> None:
    """--device and --dtype exist on this machine, before any data is read."""
    from .models.load import resolve_device, resolve_dtype
    resolve_dtype(a.dtype, resolve_device(a.device))


def _load(a):
    from .eval.parallel import rank_device
    from .models.load import load_model
    return load_model(a.model, dtype=a.dtype, device=rank_device(a.device), template=a.template,
                      trust_remote_code=a.trust_remote_code)


def cmd_eval(a) -> int:
    """MLLMU-Bench classification on one ID list: demos drawn from that list (seeded), records from Full_Set;
    the celebrities (Retain_Set) zero-shot, as eval.py."""
    from .data.mllmu import CELEBRITY_SET, FULL_SET, read_people
    from .eval.parallel import evaluate_mcq, is_main

    _check_output_file(a.predictions, "--predictions")
    _check_device(a)
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
    if not is_main():  # a data-parallel launch (eval/parallel.py): the main process reports
        return 0
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
    from .data.mmbench import read_mmbench, require_answers
    from .eval.mmbench import subset_groups
    from .eval.parallel import evaluate_mmbench, is_main

    _check_output_file(a.predictions, "--predictions")
    _check_device(a)
    items = read_mmbench(a.tsv)
    require_answers(items, a.tsv)
    if a.groups:
        n = len({it.group for it in items})
        if a.groups > n:
            raise PulseError(f"--groups {a.groups}: {a.tsv} has only {n} question groups")
        items = subset_groups(items, a.groups, seed=0)
    res = evaluate_mmbench(_load(a), items, scoring=a.scoring, batch_size=a.batch_size,
                           max_new_tokens=a.max_new_tokens, image=a.image)
    if not is_main():  # a data-parallel launch (eval/parallel.py): the main process reports
        return 0
    res.pop("predictions")
    records = res.pop("records")
    if a.predictions:
        from .fsutil import atomic_write_text
        atomic_write_text(a.predictions, "".join(json.dumps(r) + "\n" for r in records))
    res["subset_groups"] = a.groups
    if a.json:
        print(json.dumps(res))
        return 0
    label = "" if res["scoring"] == "generate" else \
        " (likelihood variant: non-standard, not comparable to published MMBench)"
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
    if a.out.exists() and not a.out.is_dir():
        raise PulseError(f"--out {a.out}: exists and is not a directory")
    _check_output_dir(a.out.parent, f"--out {a.out}")
    try:
        rec = run_finetune(a.model, a.data, a.out, ft, device=a.device, dtype=a.dtype, template=a.template)
    except KeyboardInterrupt:
        _fresh_line()
        print(f"{INTERRUPTED} from the last checkpoint in {a.out.with_name(a.out.name + '.partial')}",
              file=sys.stderr)
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

    cfg = BuildConfig(world=WorldConfig(seed=a.seed), seed=a.seed)
    if a.ship == (a.out is not None):
        raise PulseError("pulse mini build: give either --out DIR or --ship")
    if a.ship:
        from .mini.cache import ship
        print(f"mini world: {ship(cfg, log=progress.write)}")
        return 0
    if a.out.exists():
        raise PulseError(f"--out {a.out}: already exists; choose a new --out or delete it")
    _check_output_dir(a.out.parent, f"--out {a.out}")
    build_mini(a.out, cfg, log=progress.write)
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


def _fresh_line() -> None:
    """Close the progress bars an exception left open (inner ones clear their line, the outer one stays as its last
    state and ends its line), so the message that follows is a line of its own."""
    progress.close_all()
    sys.stderr.flush()


def _os_message(e: OSError) -> str:
    """One line for an OSError that reached the top: file, reason, and for a full disk what to do."""
    text = " ".join((e.strerror or str(e)).split())
    if e.filename is not None:
        text = f"{e.filename}: {text}"
    return text


def _disk_full(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__
    return False


def _split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """`--debug` anywhere before a `--` (before or after the subcommand): removed, and reported."""
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [x for x in argv[:end] if x != "--debug"] + argv[end:]
    return kept, len(kept) != len(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # peft's merge calls a transformers property deprecated in v5; harmless, and noise for users
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    argv, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    parser = _parser()
    a, extra = parser.parse_known_args(argv)
    if extra and (a.command not in ("run", "finetune") or any(x.startswith("-") for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # overrides given after options, e.g. `pulse run cfg.yaml --out D seeds=[0]`
        a.args += extra
    a.debug = debug
    handler = {"run": cmd_run, "finetune": cmd_finetune, "eval": cmd_eval, "mmbench": cmd_mmbench, "mini": cmd_mini,
               "data": cmd_data, "report": cmd_report}[a.command]
    try:
        progress.disabled()  # a bad PULSE_PROGRESS is an error now, not after a build
        return handler(a)
    except KeyboardInterrupt:
        if debug:
            raise
        _fresh_line()
        print(INTERRUPTED_BY_COMMAND.get(a.command, "interrupted"), file=sys.stderr)
        return 130
    except (PulseError, OSError) as e:
        if debug:
            raise
        _fresh_line()
        text = str(e) if isinstance(e, PulseError) else _os_message(e)
        if _disk_full(e) and "free some space" not in text:
            text += f"; {DISK_FULL}"
        print(f"error: {' '.join(text.split())}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # torch's out-of-memory errors (CUDA, MPS) subclass RuntimeError
        if debug or "out of memory" not in str(e).lower():
            raise
        _fresh_line()
        print("error: out of memory on the device: lower eval.batch_size / unlearn.batch_size (or --batch-size), "
              "or use a smaller dtype; rerun the same command to resume", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
