"""MMBench TSV: read, write, check, and rotate options (shared/reference/mmbench.md §1).

One row per (question, option rotation); rotated copies have index `original + k * 1_000_000`. A row's `image` is
base64, or (64 characters or fewer) the index of another row whose image it shares. Options may be 2-4 (missing
ones empty); `answer` is absent on the test split. Errors are one PulseError line: file, TSV line (index), field.

Missing cells are decided as VLMEvalKit sees them: it reads the TSV with `pd.read_csv(f, sep="\t")` (pandas'
default NA strings, `vlmeval/smp/file.py` `load`) and keeps an option or hint only if `not pd.isna(...)`
(`build_choices`, `ImageMCQDataset.build_prompt`, its LLaVA wrapper). So an option, hint or answer cell reading
exactly "", "None", "NA", "N/A", "nan", "NaN", "NULL", ... (PANDAS_NA) is absent. The other columns (question,
category, image, index) keep their text, so a question reading "None" stays "None" (VLMEvalKit would show "nan"
and LLaVA's script would fail on such a row).
"""
from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from pulse.data.records import MMBenchItem
from pulse.errors import PulseError

LETTERS = ("A", "B", "C", "D")
GROUP = 1_000_000  # group key = index % GROUP; the row with index < GROUP is the original
REFERENCE_MAX_CHARS = 64  # an image value this short is another row's index (as VLMEvalKit does)
REQUIRED_COLUMNS = ("index", "question", "A", "B", "category", "l2-category", "image")
# pandas' default NA strings (`pandas._libs.parsers.STR_NA_VALUES`, pandas 2.x-3.x; the list in the read_csv docs)
PANDAS_NA = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
    "NULL", "NaN", "None", "n/a", "nan", "null",
})
NA_COLUMNS = (*LETTERS, "hint", "answer")  # cells VLMEvalKit tests with pd.isna; NA strings there mean "absent"


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _fail(loc: str, field: str, message: str):
    raise PulseError(f"{loc}, field {field}: {_one_line(message)}")


def _cell(rec: dict, column: str) -> str | None:
    """A cell's text; None for an empty cell or an absent column, and, in NA_COLUMNS, for any PANDAS_NA string."""
    value = rec.get(column)
    if not isinstance(value, str) or (column in NA_COLUMNS and value in PANDAS_NA):
        return None
    return value


def _decode_b64_image(text: str, loc: str) -> bytes:
    try:
        data = base64.b64decode(text)
    except (binascii.Error, ValueError) as e:
        _fail(loc, "image", f"not valid base64 ({e})")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (64, 64))
            im.load()
    except UnidentifiedImageError:
        _fail(loc, "image", "base64 does not decode to an image (not a recognised image format)")
    except Exception as e:  # PIL raises many types for truncated or corrupt data
        _fail(loc, "image", f"base64 does not decode to an image ({type(e).__name__}: {e})")
    return data


def read_mmbench(path) -> list[MMBenchItem]:
    """Read and validate an MMBench TSV; index-reference images are resolved to the referenced row's bytes.

    Accepts `l2-category` or `L2-category`; `hint`, `C`, `D` and `answer` are optional columns, and in them (and
    in A, B) an empty cell or a PANDAS_NA string means "absent", as VLMEvalKit reads the file. Options must be
    contiguous from A (2-4 of them); the answer, if any, must be one of them.
    """
    path = Path(path)
    rows = _read_rows(path)
    locs, parsed, row_of_index = [], [], {}
    for i, rec in enumerate(rows):
        loc = f"{path}, line {i + 2} (index {_cell(rec, 'index')})"
        locs.append(loc)
        index, options, answer = _parse_row(loc, rec)
        if index in row_of_index:
            _fail(loc, "index", f"duplicate index (first on line {row_of_index[index] + 2})")
        row_of_index[index] = i
        parsed.append((index, rec, options, answer))
    images = _row_images(rows, locs, row_of_index)
    return [MMBenchItem(index=index, question=rec["question"], hint=_cell(rec, "hint"), options=options,
                        answer=answer, category=rec["category"], l2_category=rec["l2-category"], image=images(i))
            for i, (index, rec, options, answer) in enumerate(parsed)]


def _read_rows(path: Path) -> list[dict]:
    """The TSV's rows as dicts of strings (absent cells NaN), with the required columns present."""
    if not path.is_file():
        raise PulseError(f"{path}: MMBench TSV not found")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as e:
        raise PulseError(f"{path}: not a readable TSV ({_one_line(e)})") from e
    df = df.rename(columns={"L2-category": "l2-category"})
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise PulseError(f"{path}, field {missing[0]}: missing column (MMBench needs {', '.join(REQUIRED_COLUMNS)})")
    return df.to_dict("records")


def _parse_row(loc: str, rec: dict) -> tuple[int, dict[str, str], str | None]:
    """(index, options, answer) of one row, every field checked."""
    try:
        index = int(_cell(rec, "index"))
    except (TypeError, ValueError):
        _fail(loc, "index", "not an integer")
    options = {}
    for letter in LETTERS:
        text = _cell(rec, letter)
        if text is not None:
            if len(options) != LETTERS.index(letter):
                _fail(loc, LETTERS[len(options)], f"option missing while option {letter} is present "
                      "(options must be contiguous from A)")
            options[letter] = text
    if len(options) < 2:
        _fail(loc, "B", "fewer than 2 options")
    answer = _cell(rec, "answer")
    if answer is not None and answer not in options:
        _fail(loc, "answer", f"{answer!r} is not one of {', '.join(options)}")
    for column in ("question", "category", "l2-category", "image"):
        if _cell(rec, column) is None:
            _fail(loc, column, "empty")
    return index, options, answer


def _row_images(rows: list[dict], locs: list[str], row_of_index: dict[int, int]):
    """row number -> image bytes: base64 decoded once per row; a short value is the index of the row holding it."""
    decoded: dict[int, bytes] = {}

    def of_row(i: int) -> bytes:
        if i not in decoded:
            decoded[i] = _decode_b64_image(rows[i]["image"], locs[i])
        return decoded[i]

    def image(i: int) -> bytes:
        value = rows[i]["image"]
        if len(value) > REFERENCE_MAX_CHARS:
            return of_row(i)
        try:
            target = row_of_index[int(value)]
        except (ValueError, KeyError):
            _fail(locs[i], "image", f"{value!r} is neither base64 nor the index of a row of this file")
        if len(rows[target]["image"]) <= REFERENCE_MAX_CHARS:
            _fail(locs[i], "image", f"refers to index {value}, whose image is itself a reference")
        return of_row(target)
    return image


def write_mmbench(path, items: list[MMBenchItem]) -> None:
    """Write items as an MMBench TSV (atomically). A rotated copy whose image equals its group's original row's
    image stores that row's index instead of base64, as the real MMBench does. No `answer` column if all are None.
    """
    path = Path(path)
    by_index = {}
    for item in items:
        loc = f"{path}, index {item.index}"
        if item.index in by_index:
            _fail(loc, "index", "duplicate index")
        by_index[item.index] = item
        if tuple(item.options) != LETTERS[: len(item.options)] or len(item.options) < 2:
            _fail(loc, "options", f"need 2-4 options contiguous from A (got {', '.join(item.options)})")
        empty = [k for k, v in item.options.items() if v in PANDAS_NA]
        if empty:
            _fail(loc, empty[0], f"option text {item.options[empty[0]]!r} cannot be written (it reads back as a "
                  "missing option, as pandas and VLMEvalKit read the TSV)")
        if item.hint is not None and item.hint != "" and item.hint in PANDAS_NA:
            _fail(loc, "hint", f"hint {item.hint!r} cannot be written (it reads back as no hint); use None")
        if item.answer is not None and item.answer not in item.options:
            _fail(loc, "answer", f"{item.answer!r} is not one of {', '.join(item.options)}")
    rows = []
    for item in items:
        original = by_index.get(item.group) if item.index >= GROUP else None
        shared = original is not None and original.image == item.image
        rows.append({"index": item.index, "question": item.question, "hint": item.hint or None,
                     **{k: item.options.get(k) for k in LETTERS}, "answer": item.answer,
                     "category": item.category, "l2-category": item.l2_category,
                     "image": str(original.index) if shared else base64.b64encode(item.image).decode("ascii")})
    columns = ["index", "question", "hint", *LETTERS, "answer", "category", "l2-category", "image"]
    if all(item.answer is None for item in items):
        columns.remove("answer")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        pd.DataFrame(rows, columns=columns).to_csv(tmp, sep="\t", index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


NO_ANSWER = ("PULSE scores MMBench locally, against the answers: use the dev split (e.g. MMBench_DEV_EN.tsv); "
             "the test split is scored only by the official server")


def require_answers(items: list[MMBenchItem], path) -> None:
    """Every row must carry its answer (CircularEval needs them); a PulseError naming the first row without one."""
    missing = [it for it in items if it.answer is None]
    if missing:
        raise PulseError(f"{path}, index {missing[0].index}, field answer: no answer ({len(missing)} of "
                         f"{len(items)} rows); {NO_ANSWER}")


def check_answers(path) -> int:
    """Cheap up-front check (only the index and answer columns are parsed, no image decoded): the TSV has an
    answer in every row. Returns the number of question groups (index % 1_000_000)."""
    path = Path(path)
    if not path.is_file():
        raise PulseError(f"{path}: MMBench TSV not found")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False,
                         usecols=lambda c: c in ("index", "answer"))
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as e:
        raise PulseError(f"{path}: not a readable TSV ({_one_line(e)})") from e
    if "answer" not in df.columns:
        raise PulseError(f"{path}, field answer: missing column; {NO_ANSWER}")
    empty = df.index[df["answer"].isin(PANDAS_NA)]
    if len(empty):
        i = int(empty[0])
        raise PulseError(f"{path}, line {i + 2} (index {df['index'].iloc[i] if 'index' in df else '?'}), "
                         f"field answer: empty ({len(empty)} of {len(df)} rows); {NO_ANSWER}")
    try:
        return len({int(v) % GROUP for v in df["index"]})
    except (KeyError, ValueError):
        raise PulseError(f"{path}, field index: missing column or not integers") from None


def check_mmbench(path) -> dict:
    """Read and validate a TSV; every group must contain its original row. Returns {"questions", "rows"}."""
    items = read_mmbench(path)
    indices = {item.index for item in items}
    for item in items:
        if item.group not in indices:
            _fail(f"{path}, index {item.index}", "index",
                  f"rotated copy of question {item.group}, but no row has index {item.group}")
    return {"questions": len({item.group for item in items}), "rows": len(items)}


def rotate(options: dict, answer: str | None, k: int) -> tuple[dict, str | None]:
    """Circularly shift option texts by k (MMBench CircularEval: ABCD -> BCDA -> CDAB -> DABC).

    New option i holds old option (i + k) mod n, so the answer letter moves back by k. `answer` may be None.
    """
    letters, texts = list(options), list(options.values())
    k %= len(texts)
    rotated = dict(zip(letters, texts[k:] + texts[:k]))
    if answer is None:
        return rotated, None
    if answer not in options:
        raise ValueError(f"answer {answer!r} is not one of {', '.join(letters)}")
    return rotated, letters[(letters.index(answer) - k) % len(letters)]
