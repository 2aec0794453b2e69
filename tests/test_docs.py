"""The documentation against the code: README.md and docs/*.md.

- every relative link (and image) resolves to a file, and a `#anchor` into a .md page to one of its headings;
- every repository path shown in inline code (`tests/...`, `configs/...`, `benchmarks/...`) exists;
- every `pulse ...` command shown (code blocks and inline code; also `make run ARGS=...` and the pulse part of
  `accelerate launch ... -m pulse.cli ...` / `torchrun ... -m pulse.cli ...`) parses with the real CLI parser;
- every config key shown (overrides in commands, dotted keys in inline code, YAML code blocks) exists in the
  config schema (`pulse.config.RunConfig`, a dataclass tree), and values given with `=` have the field's type;
- `mkdocs build --strict` builds the site.

No model, no training: seconds. Synopsis notation is read as a usage line: `[...]` optional groups are taken as
given, `a|b` as `a`, upper-case words (`DIR`, `CONFIG`, `F.json`), `<...>` and `$VAR` as placeholder values; `...`
or `…` means "more arguments", so required options may be missing from that line (as from a bare `pulse eval`).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re
import shlex
import subprocess
import sys
import typing
import unicodedata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
IDS = [p.relative_to(ROOT).as_posix() for p in DOCS]

ELLIPSIS = {"...", "…"}
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*(\.[a-z]+)?|<[^<>]*>|\$\{?\w+\}?")
PLACEHOLDER_KEYS = {"key"}  # `key=value` in a usage line
KEY = r"[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*"
FILE_SUFFIXES = {"py", "md", "json", "jsonl", "csv", "yaml", "yml", "png", "svg", "html", "tsv", "log", "lock",
                 "parquet", "txt", "safetensors", "sh", "toml"}
REPO_PATH = re.compile(r"(src|tests|configs|benchmarks|examples|worlds|docs)/\S+")
MISSING = object()


# ---------------------------------------------------------------------------------------------- markdown reading

def split_markdown(text: str):
    """(prose, blocks): the text with fenced code blocks blanked (line numbers kept), and [(lang, code, line)]."""
    prose, blocks, fence, lang, code, start = [], [], None, "", [], 0
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"\s*(```+|~~~+)\s*([\w+-]*)", line)
        if fence is None and m:
            fence, lang, code, start = m.group(1), m.group(2).lower(), [], n
            prose.append("")
        elif fence is not None and line.strip().startswith(fence) and not line.strip()[len(fence):].strip():
            blocks.append((lang, "\n".join(code), start + 1))
            fence = None
            prose.append("")
        elif fence is not None:
            code.append(line)
            prose.append("")
        else:
            prose.append(line)
    assert fence is None, f"unclosed code block from line {start}"
    return "\n".join(prose), blocks


def code_spans(prose: str):
    """[(span text with whitespace collapsed, line)] of the inline code in `prose` (spans stop at a blank line)."""
    out = []
    for m in re.finditer(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", prose, re.S):
        out.append((" ".join(m.group(2).split()), prose.count("\n", 0, m.start()) + 1))
    return out


def without_code_spans(prose: str) -> str:
    return re.sub(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", lambda m: " " * len(m.group(0)), prose,
                  flags=re.S)


def slug(heading: str) -> str:
    """A heading's anchor as Python-Markdown's toc (MkDocs) makes it; GitHub's agrees for plain headings."""
    text = re.sub(r"[`*]", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose, re.M)}


# ---------------------------------------------------------------------------------------------- config schema

def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _optional(hint) -> tuple[object, bool]:
    """(the hint without None, whether None is allowed)."""
    args = typing.get_args(hint)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return hint, False


def _value_problem(hint, value) -> str | None:
    base, nullable = _optional(hint)
    if value is None:
        return None if nullable else "must not be null"
    origin = typing.get_origin(base)
    if origin is list:
        item = typing.get_args(base)[0] if typing.get_args(base) else object
        for v in value if isinstance(value, list) else [value]:
            problem = _value_problem(item, v)
            if problem:
                return problem
        return None
    if base is dict or origin is dict:
        return None if isinstance(value, dict) else f"expected a mapping, got {value!r}"
    if base is bool:
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if base is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else f"expected int, got {value!r}"
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return None
        try:
            float(value)
            return None
        except (TypeError, ValueError):
            return f"expected float, got {value!r}"
    if base is str:
        return None if isinstance(value, (str, int, float)) and not isinstance(value, bool) else \
            f"expected str, got {value!r}"
    return None


def key_problem(parts: list[str], value=MISSING, root=None, check_values: bool = True) -> str | None:
    """Why the dotted key `parts` (with `value`, a parsed YAML value, unless MISSING) does not fit the config
    schema, or None. Free-form mappings (`unlearn.params`, `sweep`) accept any key below them."""
    from pulse.config import RunConfig

    cls = root or RunConfig
    for i, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(cls)}
        where = ".".join(parts[:i]) or "the top level"
        if part not in names:
            return f"unknown key {part!r} in {where} (known: {', '.join(sorted(names))})"
        hint = _hints(cls)[part]
        base, _ = _optional(hint)
        last = i == len(parts) - 1
        if dataclasses.is_dataclass(base):
            cls = base
            if last and isinstance(value, dict):
                for k, v in value.items():
                    problem = key_problem([str(k)], v, cls, check_values)
                    if problem:
                        return f"{'.'.join(parts)}: {problem}"
            elif last and check_values and value is not MISSING and value is not None:
                return f"{'.'.join(parts)} is a section, not a value (got {value!r})"
            continue
        if base is dict or typing.get_origin(base) is dict:
            return None
        if not last:
            return f"{'.'.join(parts[:i + 1])} is a value, not a section"
        if check_values and value is not MISSING:
            problem = _value_problem(hint, value)
            return f"{'.'.join(parts)}: {problem}" if problem else None
    return None


def top_level_keys() -> set[str]:
    from pulse.config import RunConfig
    return {f.name for f in dataclasses.fields(RunConfig)}


def override_problem(item: str) -> str | None:
    """A `pulse run` override `key=value` (the value read as YAML, as the config loader reads it)."""
    key, _, raw = item.partition("=")
    if key in PLACEHOLDER_KEYS:
        return None
    if not re.fullmatch(KEY, key):
        return f"override {item!r}: not a dotted key"
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return f"override {item!r}: invalid YAML value"
    problem = key_problem(key.split("."), value)
    return f"override {item}: {problem}" if problem else None


def finetune_override_problem(item: str) -> str | None:
    """A `pulse finetune` recipe override: a field of the finetune section."""
    from pulse.config import FinetuneSection as section
    key, eq, raw = item.partition("=")
    if not eq:
        return f"{item!r}: pulse finetune takes key=value recipe overrides"
    if key in PLACEHOLDER_KEYS:
        return None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return f"override {item!r}: invalid YAML value"
    problem = key_problem(key.split("."), value, root=section)
    return f"pulse finetune {item}: {problem}" if problem else None


# ---------------------------------------------------------------------------------------------- commands

def _unbracket(line: str) -> str:
    """Drop the brackets of optional groups (`[--out DIR]`), keep value brackets (`seeds=[0]`)."""
    out, stack = [], []
    for i, ch in enumerate(line):
        if ch == "[":
            optional = i == 0 or line[i - 1].isspace()
            stack.append(optional)
            if optional:
                continue
        elif ch == "]" and stack:
            if stack.pop():
                continue
        out.append(ch)
    return "".join(out)


def _first_alternatives(line: str) -> str:
    """`serial|local|slurm` -> `serial` (a shell pipe has spaces around it and is kept)."""
    return re.sub(r"(?<=\S)\|[^\s\[\]|]+(?:\|[^\s\[\]|]+)*", "", line)


def pulse_invocations(line: str) -> list[tuple[list[str], bool]]:
    """The pulse argument lists in one shell line: [(args after `pulse`, lenient)]."""
    tokens = shlex.split(_first_alternatives(_unbracket(line)), comments=True)
    segments, current, skip = [], [], False
    for t in tokens:
        if skip:
            skip = False
        elif t in ("&&", "||", ";", "|"):
            segments.append(current)
            current = []
        elif t in (">", ">>", "<", "2>", "&>"):
            skip = True
        elif re.fullmatch(r"\d?>>?&?\S*|<\S+", t):
            pass
        else:
            current.append(t)
    segments.append(current)
    found = []
    for seg in segments:
        while seg and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", seg[0]):  # PULSE_PROGRESS=0 pulse ...
            seg = seg[1:]
        if seg[:1] == ["pulse"]:
            args = seg[1:]
        elif seg[:2] == ["make", "run"]:
            given = dict(t.split("=", 1) for t in seg[2:] if "=" in t)
            args = ["run", *shlex.split(given.get("ARGS", "")), "--out", given.get("OUT", "runs/mini"),
                    "--launcher", "local", "--workers", given.get("WORKERS", "2")]
        elif "-m" in seg and seg.index("-m") + 1 < len(seg) and seg[seg.index("-m") + 1] == "pulse.cli":
            args = seg[seg.index("-m") + 2:]
        else:
            continue
        lenient = any(a in ELLIPSIS for a in args)
        args = [a for a in args if a not in ELLIPSIS]
        args = ["1" if PLACEHOLDER.fullmatch(a) else a for a in args]
        if args:
            found.append((args, lenient))
    return found


def _relax(parser: argparse.ArgumentParser) -> None:
    """Required options and positionals become optional (for lines that say `...`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _relax(sub)
        elif action.required:
            action.required = False


def command_problems(args: list[str], lenient: bool) -> list[str]:
    """Parse `pulse args` as `pulse.cli.main` does (argparse, then `pulse run`'s config + overrides)."""
    import pulse.arguments as arguments

    parser = arguments.build_parser()
    words = {"run", "finetune", "eval", "mmbench", "mini", "build", "data", "check", "report"}
    if lenient or all(a in words for a in args):  # `pulse eval ...` or a bare `pulse eval`: a mention
        _relax(parser)
    end = args.index("--") if "--" in args else len(args)
    args = [a for a in args[:end] if a != "--debug"] + args[end:]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            ns, extra = parser.parse_known_args(args)
    except SystemExit as e:
        return [] if e.code == 0 else [" ".join(err.getvalue().split()) or f"argparse exit {e.code}"]
    if extra and (ns.command not in ("run", "finetune") or any(x.startswith("-") for x in extra)):
        return [f"unrecognized arguments: {' '.join(extra)}"]
    problems = []
    if ns.command == "run":
        try:
            config, overrides = arguments.split_run_args(list(ns.args) + extra)
        except Exception as e:  # PulseError: two config files
            return [str(e)]
        if config and config != "1" and config.endswith((".yaml", ".yml")) and not Path(config).is_absolute() \
                and not (ROOT / config).is_file():
            problems.append(f"config file {config} is not in the repository")
        problems += [p for p in map(override_problem, overrides) if p]
    elif ns.command == "finetune":
        problems += [p for p in map(finetune_override_problem, list(ns.args) + extra) if p]
    return problems


def _is_command_span(span: str) -> bool:
    return bool(re.match(r"(pulse|make run)(\s|$)", span) or re.search(r"-m pulse\.cli(\s|$)", span))


def commands(path: Path):
    """[(line, text, [(args, lenient)])] of every pulse invocation shown in `path`."""
    prose, blocks = split_markdown(path.read_text(encoding="utf-8"))
    found = []
    for lang, code, start in blocks:
        if lang in ("python", "toml", "yaml", "yml", "json"):
            continue
        variables = {}
        lines = code.replace("\\\n", " ").split("\n")
        for offset, line in enumerate(lines):
            for name, value in variables.items():
                line = line.replace("${" + name + "}", value).replace("$" + name, value)
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:
                tokens = []
            if len(tokens) == 1 and re.fullmatch(r"[A-Za-z_]\w*=.*", tokens[0]):  # P="a=1 b=2"
                name, value = tokens[0].split("=", 1)
                variables[name] = value
                continue
            if re.search(r"(^|[\s;&|(])(pulse|make run)(\s|$)|-m pulse\.cli", line):
                found.append((start + offset, line.strip(), pulse_invocations(line)))
    for span, line in code_spans(prose):
        if _is_command_span(span):
            found.append((line, span, pulse_invocations(span)))
    return found


# ---------------------------------------------------------------------------------------------- the checks

@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_relative_links_resolve(path):
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    text = without_code_spans(prose)
    problems = []
    for m in re.finditer(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text):
        target, line = m.group(1), text.count("\n", 0, m.start()) + 1
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            problems.append(f"line {line}: {target}: {file} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"line {line}: {target}: no heading #{anchor} in {dest.name}")
        elif file and path.parent == ROOT / "docs" and ROOT / "docs" not in dest.parents:
            problems.append(f"line {line}: {target}: leaves docs/ (the mkdocs site would not have it)")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_repository_paths_exist(path):
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    problems = []
    for span, line in code_spans(prose):
        first = span.split()[0] if span.split() else ""
        if not REPO_PATH.fullmatch(first) or "<" in first:
            continue
        rel = first.rstrip("/").rstrip(".,;:")
        hits = list(ROOT.glob(rel)) if "*" in rel else [ROOT / rel] if (ROOT / rel).exists() else []
        if not hits:
            problems.append(f"line {line}: `{span}`: {rel} is not in the repository")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_pulse_commands_parse(path):
    problems = []
    for line, text, invocations in commands(path):
        for args, lenient in invocations:
            problems += [f"line {line}: {text}\n    -> {p}" for p in command_problems(args, lenient)]
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_config_keys_exist(path):
    prose, blocks = split_markdown(path.read_text(encoding="utf-8"))
    top = top_level_keys()
    problems = []
    for lang, code, start in blocks:
        if lang not in ("yaml", "yml"):
            continue
        tree = yaml.safe_load(code)
        if not isinstance(tree, dict):
            problems.append(f"line {start}: a YAML block that is not a mapping of config keys")
            continue
        for key, value in tree.items():
            problem = key_problem([str(key)], value)
            if problem:
                problems.append(f"line {start}: YAML block: {problem}")
    for span, line in code_spans(prose):
        if _is_command_span(span):
            continue  # checked with its command
        m = re.fullmatch(rf"({KEY})=(?!=)(.*)", span, re.S)
        if m:
            key = m.group(1)
            if "." in key or key in top:
                problem = override_problem(span)
                if problem:
                    problems.append(f"line {line}: `{span}`: {problem}")
            continue
        m = re.fullmatch(rf"({KEY})(?::\s*(.*))?", span, re.S)
        if not m or m.group(1).split(".")[0] not in top or m.group(1).rsplit(".", 1)[-1] in FILE_SUFFIXES:
            continue
        value = MISSING
        if m.group(2) is not None:
            try:
                value = yaml.safe_load(m.group(2))
            except yaml.YAMLError:
                value = MISSING
        # prose writes `key: value` with placeholders (`eval.every: k`): keys only, values are not checked
        problem = key_problem(m.group(1).split("."), value, check_values=False)
        if problem:
            problems.append(f"line {line}: `{span}`: {problem}")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_no_ticket_numbers(path):
    """The docs say what a thing is ("the goal of <= 10 min"), never which ticket asked for it."""
    hits = re.findall(r".{0,30}(?:\bissues?\s*#?\d+|(?<![\w&/])#\d+\b|§\s*\d+).{0,30}", path.read_text(encoding="utf-8"),
                      re.I)
    assert not hits, hits


def test_the_checks_see_the_docs():
    """The extractors find what the docs show (a checker that finds nothing would pass anything)."""
    found = [(text, args) for p in DOCS for _, text, inv in commands(p) for args, _ in inv]
    assert len(found) >= 40, found
    firsts = {args[0] for _, args in found}
    assert {"run", "finetune", "eval", "mmbench", "mini", "data", "report"} <= firsts, firsts
    assert any("unlearn.mode=full" in args for _, args in found)  # accelerate launch ... -m pulse.cli run ...
    assert any("model.finetuned=/ckpt/llava-1.5-13b-ft-100" in args for _, args in found)  # $P expanded
    assert any(lang in ("yaml", "yml") for p in DOCS for lang, _, _ in split_markdown(p.read_text())[1])


@pytest.mark.parametrize("line,bad", [
    ("pulse run configs/mini/default.yaml --workerz 2", "unrecognized arguments"),
    ("pulse run --launcher cluster", "invalid choice"),
    ("pulse report --mmbench vanilla", "required"),
    ("pulse eval --model m --data d", "required"),
    ("pulse run unlearn.lrr=0.1", "unknown key 'lrr' in unlearn"),
    ("pulse run eval.every=null", "must not be null"),
    ("pulse run seeds=[a]", "expected int"),
    ("pulse run configs/mini/nope.yaml", "not in the repository"),
    ("pulse run a.yaml b.yaml", "unexpected argument"),
    ("make run ARGS='seed=[0]'", "unknown key 'seed'"),
    ("accelerate launch --num_processes 2 -m pulse.cli run --cell x", "--cell"),
])
def test_the_checks_catch_wrong_lines(line, bad):
    problems = [p for args, lenient in pulse_invocations(line) for p in command_problems(args, lenient)]
    assert any(bad in p for p in problems), problems


def test_usage_lines_are_read_as_usage():
    line = "pulse eval --model DIR --data DIR --config NAME [--forget CONFIG] [--scoring likelihood|generate]"
    ((args, lenient),) = pulse_invocations(line)
    assert args == ["eval", "--model", "1", "--data", "1", "--config", "1", "--forget", "1", "--scoring",
                    "likelihood"] and not lenient
    assert command_problems(*pulse_invocations("pulse finetune ... lr=1e-4 epochs=6")[0]) == []
    assert command_problems(["finetune"], False) == []  # a bare mention


def test_mkdocs_site_builds_strict(tmp_path):
    # no -q: it hides the warnings that --strict turns into a failure
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "site" / "index.html").is_file()
