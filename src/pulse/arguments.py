"""The `pulse` command line: every command's arguments, with one-line argument errors (exit 2)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from .errors import PulseError
from .report.build import build_parser as report_arguments

COMMANDS = {
    "run": "run the PULSE protocol (default: the mini world, 3 scenarios x ga/ga_klr/npo, Table 3, 3 seeds, "
           "curves, matched forgetting, probes)",
    "finetune": "fine-tune a LLaVA checkpoint on the first N fictional people (MLLMU-Bench's recipe); resumable",
    "eval": "MCQ accuracy of a model on an MLLMU-Bench config, per modality (image / text)",
    "mmbench": "MMBench accuracy of a model: CircularEval and vanilla, overall and per category",
    "mia": "membership inference: the loss, zlib, Min-K% and Min-K%++ AUCs of one model, members vs non-members",
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


TASKS = ("mcq", "cloze", "generation")


def _tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(TASKS)}, got {text!r}")
    return list(dict.fromkeys(tasks))


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `pulse` command line: one subparser per command."""
    p = _Parser(prog="pulse", description="PULSE: practical evaluation of unlearning in LMMs.",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show tracebacks (also accepted after the subcommand)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands")
    _run_parser(sub)
    _eval_parsers(sub)
    _finetune_parser(sub)
    _mia_parser(sub)
    _mini_and_data_parsers(sub)
    report_arguments(sub.add_parser("report", help=COMMANDS["report"], description=COMMANDS["report"]))
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


def _loading_arguments(p, batch_size: int) -> None:
    """How a command that scores one checkpoint loads and batches it, and --json."""
    p.add_argument("--dtype", default="auto",
                   help="auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16 or float16")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--template", help="prompt template name (llava-1.5, plain); default: the checkpoint's")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--batch-size", type=_int_at_least(1), default=batch_size)
    p.add_argument("--json", action="store_true", help="print JSON")


def _eval_parsers(sub) -> None:
    for name in ("eval", "mmbench"):
        e = sub.add_parser(name, help=COMMANDS[name], description=COMMANDS[name])
        e.add_argument("--model", required=True, help="checkpoint directory (safetensors)")
        e.add_argument("--scoring", choices=["likelihood", "generate"],
                       help="default: the model's own (likelihood for the mini model, generate otherwise)")
        _loading_arguments(e, batch_size=64)
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
            e.add_argument("--tasks", type=_tasks, default=["mcq"], metavar="mcq,cloze,generation",
                           help="MLLMU-Bench tasks to run (default mcq): multiple choice, cloze (fill in the blank, "
                                "substring match) and generation (ROUGE-1/2/L, BLEU)")
            e.add_argument("--cloze-demo-people", type=_int_at_least(0), default=2,
                           help="cloze: few-shot demo people (MLLMU-Bench's LLaVA branch: 2)")
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


def _mia_parser(sub) -> None:
    m = sub.add_parser("mia", help=COMMANDS["mia"].replace("%", "%%"),
                       description=COMMANDS["mia"] + ". People are given as first:N / after:N (Full_Set by ID: "
                       "the first N, everyone after them), an MLLMU-Bench config name (forget_10) or @FILE (one ID "
                       "per line); their ft_Data QA pairs are scored.")
    m.add_argument("--model", required=True, help="checkpoint directory (safetensors)")
    m.add_argument("--data", required=True, type=Path, help="MLLMU-Bench folder (local clone)")
    m.add_argument("--members", required=True, help="the people trained on, e.g. first:100 or forget_10")
    m.add_argument("--nonmembers", required=True, help="people never trained on, e.g. after:100")
    m.add_argument("--pairs", default="ft_Data", help="the QA-pair config scored (default ft_Data)")
    _loading_arguments(m, batch_size=16)
    m.add_argument("--scores", type=Path, help="write one JSON record per pair here (person, form, four scores)")


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
    f.add_argument("--exclude", metavar="PEOPLE",
                   help="leave these of the N out — the retrained oracle of a split: an MLLMU-Bench config "
                        "(forget_10) or @FILE (one ID per line, e.g. a run's D_unlearn)")
    f.add_argument("--epochs", type=_int_at_least(1), help="epochs (default 5, MLLMU-Bench's README)")
    f.add_argument("--dtype", default="auto",
                   help="auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16, float16")
    f.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    f.add_argument("--template", help="prompt template of the final MCQ evaluation; default: the checkpoint's")


def _mini_and_data_parsers(sub) -> None:
    m = sub.add_parser("mini", help=COMMANDS["mini"], description=COMMANDS["mini"])
    msub = m.add_subparsers(dest="mini_command", required=True, metavar="build|oracles")
    b = msub.add_parser("build", help="generate the world and train the tiny LLaVA (about 10 min on 2 cores)")
    b.add_argument("--out", type=Path, help="the folder to build into (must not exist)")
    b.add_argument("--seed", type=_int_at_least(0), default=0)
    b.add_argument("--ship", action="store_true",
                   help="maintainers: build into the repository's worlds/mini-<key>/ with SHA256SUMS, the copy a "
                        "first `pulse run` uses instead of building")
    o = msub.add_parser("oracles", help="maintainers: build the retrained oracles of the default config's split "
                                        "seeds into worlds/<world>-oracles/ with SHA256SUMS (about 2 min each)")
    o.add_argument("--ship", action="store_true", required=True, help="into the repository (the only mode)")

    d = sub.add_parser("data", help=COMMANDS["data"], description=COMMANDS["data"])
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="check")
    c = dsub.add_parser("check", help="validate PATH (MLLMU-Bench folder or MMBench .tsv)")
    c.add_argument("path", type=Path)
    c.add_argument("--json", action="store_true")


def split_run_args(args: list[str]) -> tuple[str | None, list[str]]:
    """`pulse run`'s positional words: (the YAML config or None, the key=value overrides)."""
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
