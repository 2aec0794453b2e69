"""The `pulse` command. Every user error (PulseError, a bad argument, a file system error such as a full disk)
prints as one line on stderr, exit code 2; `--debug` (before or after the subcommand) shows the traceback. Ctrl-C
exits 130 with one line. Checks that need no model run before any build or evaluation (`_preflight_run`).
"""
from __future__ import annotations

import errno
import json
import os
import sys
import warnings
from pathlib import Path

from . import progress
from .arguments import COMMANDS, build_parser, split_run_args  # noqa: F401 (COMMANDS: public)
from .errors import PulseError

INTERRUPTED = "interrupted — rerun the same command to resume"
INTERRUPTED_BY_COMMAND = {"run": INTERRUPTED, "finetune": INTERRUPTED,
                          "mini": "interrupted — rerun the same command to build again"}
DISK_FULL = "free some space and rerun the same command to resume (files written before are intact)"

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

    config, overrides = split_run_args(a.args)
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
    """MLLMU-Bench's tasks on one ID list (`--tasks`, default classification): demos drawn from that list
    (seeded), records from Full_Set; the celebrities (Retain_Set) zero-shot, as eval.py."""
    from .data.mllmu import CELEBRITY_SET, FULL_SET, read_people
    from .eval.parallel import evaluate_mcq, is_main, state

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
    open_tasks = [t for t in a.tasks if t != "mcq"]
    if open_tasks and state() is not None:
        raise PulseError(f"--tasks {','.join(open_tasks)}: runs in one process; launch pulse eval without "
                         f"accelerate / torchrun for these tasks")
    res = None
    if "mcq" in a.tasks:
        res = evaluate_mcq(lm, people, scoring=a.scoring, demo_people=demo_people, demo_seed=a.seed,
                           demo_source=demo_source, batch_size=a.batch_size)
    if not is_main():  # a data-parallel launch (eval/parallel.py): the main process reports
        return 0
    out = {"config": a.config, "forget": a.forget, "device": str(lm.device),
           "dtype": str(next(lm.model.parameters()).dtype).removeprefix("torch.")}
    if res is not None:
        out.update({"image": round(res.accuracy["image"], 2), "text": round(res.accuracy["text"], 2), "n": res.n,
                    "scoring": a.scoring or lm.scoring, "demo_ids": res.demo_ids, "demo_people": demo_people})
    records = _open_tasks(a, lm, people, open_tasks, out)
    if a.predictions:
        from .fsutil import atomic_write_json
        mcq_records = res.predictions if res is not None else []
        atomic_write_json(a.predictions, mcq_records if not open_tasks
                          else [{"task": "mcq", **r} for r in mcq_records] + records)
    _print_eval(a, out)
    return 0


def _people_ids(data: Path, spec: str, flag: str) -> list[str]:
    """The person IDs of a --members / --nonmembers value (arguments.py: first:N, after:N, a config, @FILE)."""
    from .data.mllmu import FULL_SET, read_people
    if spec.startswith("@"):
        path = Path(spec[1:]).expanduser()
        if not path.is_file():
            raise PulseError(f"{flag} {spec}: {path} not found")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    where, _, n = spec.partition(":")
    if where in ("first", "after"):
        if not n.isdigit():
            raise PulseError(f"{flag} {spec}: expected {where}:N with N a whole number")
        ids = sorted(p.id for p in read_people(data, FULL_SET))
        return ids[: int(n)] if where == "first" else ids[int(n):]
    return [p.id for p in read_people(data, spec)]


def cmd_mia(a) -> int:
    """Membership inference of one model (eval/mia.py): the four AUCs per form and overall."""
    from .data.mllmu import read_qa_pairs
    from .eval.mia import ATTACKS, aucs, pair_scores
    from .models.batches import Encoder

    _check_output_file(a.scores, "--scores")
    _check_device(a)
    members, nonmembers = _people_ids(a.data, a.members, "--members"), _people_ids(a.data, a.nonmembers, "--nonmembers")
    if both := sorted(set(members) & set(nonmembers)):
        raise PulseError(f"--members and --nonmembers share {len(both)} people (e.g. {both[0]!r})")
    pairs = [q for q in read_qa_pairs(a.data, a.pairs) if q.person_id in set(members) | set(nonmembers)]
    for flag, ids in (("--members", members), ("--nonmembers", nonmembers)):
        if not ids or not any(q.person_id in set(ids) for q in pairs):
            raise PulseError(f"{flag} {getattr(a, flag[2:])}: no {a.pairs} QA pairs for these {len(ids)} people")
    lm = _load(a)
    enc = Encoder(lm.processor, device=lm.device, dtype=next(lm.model.parameters()).dtype)
    records = pair_scores(lm.model, enc, lm.template, pairs, batch_size=a.batch_size)
    out = {"members": len(members), "nonmembers": len(nonmembers), "pairs": len(pairs),
           "auc": {name: {k: round(v, 4) for k, v in aucs(records, set(members), set(nonmembers), forms).items()}
                   for name, forms in (("image", ("image",)), ("text", ("text",)), ("all", ("image", "text")))}}
    if a.scores:
        from .fsutil import atomic_write_json
        atomic_write_json(a.scores, records)
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{len(members)} members vs {len(nonmembers)} non-members, {len(pairs)} {a.pairs} pairs; AUC (0.5 = "
          f"indistinguishable, 1 = every member exposed)")
    for name, got in out["auc"].items():
        print(f"  {name:5s} " + "  ".join(f"{k} {got[k]:.3f}" for k in ATTACKS))
    return 0


def _open_tasks(a, lm, people, tasks: list[str], out: dict) -> list[dict]:
    """MLLMU-Bench's cloze and generation on `people` (eval/open_tasks.py): their summaries into `out`; their
    per-question records returned."""
    from .data.mllmu import FULL_SET, read_people
    from .eval.open_tasks import evaluate_cloze, evaluate_generation
    from .models.batches import Encoder

    enc = Encoder(lm.processor, device=lm.device, dtype=next(lm.model.parameters()).dtype)
    records = []
    for task in tasks:
        if task == "cloze":
            source = people if a.config == FULL_SET or not a.cloze_demo_people else read_people(a.data, FULL_SET)
            res = evaluate_cloze(lm, people, enc=enc, demo_people=a.cloze_demo_people, demo_seed=a.seed,
                                 demo_source=source, batch_size=a.batch_size)
        else:
            res = evaluate_generation(lm, people, enc=enc, batch_size=a.batch_size)
        out[task] = {"scores": {f: {k: round(v, 4) for k, v in s.items()} for f, s in res.scores.items()},
                     "n": res.n, "demo_ids": res.demo_ids}
        records += res.records
    return records


def _print_eval(a, out: dict) -> None:
    if a.json:
        print(json.dumps(out))
        return
    name = f"{a.config} ({a.forget} people)" if a.forget else a.config
    if "image" in out:
        print(f"{name}: image {out['image']:.1f}% ({out['n']['image']} questions), "
              f"text {out['text']:.1f}% ({out['n']['text']} questions) [{out['scoring']} scoring]")
    if "cloze" in out:
        c = out["cloze"]
        print(f"{name} cloze: image {c['scores']['image']['accuracy']:.1f}% ({c['n']['image']} questions), "
              f"text {c['scores']['text']['accuracy']:.1f}% ({c['n']['text']} questions)")
    if "generation" in out:
        g = out["generation"]
        for form in ("image", "text"):
            s = g["scores"][form]
            print(f"{name} generation ({form}, {g['n'][form]} questions): ROUGE-1 {s['rouge1']:.3f}, "
                  f"ROUGE-2 {s['rouge2']:.3f}, ROUGE-L {s['rougeL']:.3f}, BLEU {s['bleu']:.3f}")


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
        exclude = _people_ids(Path(a.data), a.exclude, "--exclude") if a.exclude else ()
        rec = run_finetune(a.model, a.data, a.out, ft, device=a.device, dtype=a.dtype, template=a.template,
                           exclude=exclude)
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

    if a.mini_command == "oracles":
        from .config import load_config
        from .protocol.oracle import ship_oracles
        for path in ship_oracles(load_config(None), log=progress.write):
            print(f"oracle: {path}")
        return 0
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
    parser = build_parser()
    a, extra = parser.parse_known_args(argv)
    if extra and (a.command not in ("run", "finetune") or any(x.startswith("-") for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # overrides given after options, e.g. `pulse run cfg.yaml --out D seeds=[0]`
        a.args += extra
    a.debug = debug
    handler = {"run": cmd_run, "finetune": cmd_finetune, "eval": cmd_eval, "mmbench": cmd_mmbench, "mini": cmd_mini,
               "data": cmd_data, "report": cmd_report, "mia": cmd_mia}[a.command]
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
