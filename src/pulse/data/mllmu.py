"""MLLMU-Bench on disk: read, write and validate its parquet configs (shared/reference/mllmu_bench.md §3-§5, §7).

Layout: `<root>/<Config>/train-XXXXX-of-YYYYY.parquet`; one row per person; a config may have several shards.
Two flavours share that layout:

- evaluation: `ID`, `image` ({bytes, path}), `biography` (JSON string), `Classification_Task`, `Generation_Task`,
  `Mask_Task`; `Test_Set` adds `images` (a list of image structs).
- training: `image` + `metadata` (JSON string: a list of {"ID", "Question", "Answer"} and, our documented extension,
  an optional "Type": "Image_Textual" (default) or "Pure_Text" (trained without the image)).

Every problem is one PulseError line naming the file, the row (and ID) and the field. Rows are never dropped.
"""
from __future__ import annotations

import io
import json
import os
import random
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from pulse.data.records import MCQ, MLLMU_TYPE, MLLMU_TYPE_OF, OpenItem, Person, QAPair
from pulse.errors import PulseError, where

FULL_SET = "Full_Set"
FORGET_CONFIGS = ("forget_5", "forget_10", "forget_15")
RETAIN_CONFIGS = ("retain_95", "retain_90", "retain_85")
RETAIN_OF = dict(zip(FORGET_CONFIGS, RETAIN_CONFIGS))  # forget_r pairs with retain_{100-r}
TEST_SET = "Test_Set"
CELEBRITY_SET = "Retain_Set"  # the 153 real celebrities; NOT a retain_* split
FT_DATA = "ft_Data"  # training flavour
CONFIGS = (FULL_SET, *FORGET_CONFIGS, *RETAIN_CONFIGS, TEST_SET, CELEBRITY_SET, FT_DATA)

EVAL_COLUMNS = ("ID", "image", "biography", "Classification_Task", "Generation_Task", "Mask_Task")
TRAIN_COLUMNS = ("image", "metadata")
LETTERS = ("A", "B", "C", "D")
MCQ_KEYS = {"image": "Image_Textual_Questions", "text": "Pure_Text_Questions"}  # our form -> struct field

_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_MCQ = pa.struct([("Question", pa.string()), ("Options", pa.struct([(k, pa.string()) for k in LETTERS])),
                  ("Correct_Answer", pa.string())])
_OPEN = pa.struct([("Question", pa.string()), ("Ground_Truth", pa.string()), ("Type", pa.string())])
_CLASSIFICATION = pa.struct([(key, pa.list_(_MCQ)) for key in MCQ_KEYS.values()])
_SHARD = re.compile(r"train-(\d+)-of-(\d+)\.parquet")


# ---------------------------------------------------------------- small helpers

def _show(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _fail(loc: str, field: str, message: str):
    raise PulseError(f"{loc}, field {field}: {_one_line(message)}")


def _text(value, loc: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail(loc, field, f"missing or empty text (got {_show(value)})")
    return value


def _list(value, loc: str, field: str) -> list:
    if not isinstance(value, list):
        _fail(loc, field, f"missing list (got {_show(value)})")
    return value


def _image_bytes(value, loc: str, field: str) -> bytes:
    """Encoded bytes of an image struct {bytes, path} (or raw bytes), checked to decode with PIL."""
    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, bytes) or not data:
        _fail(loc, field, "no embedded image bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still reads the whole stream
            im.load()
    except UnidentifiedImageError:
        _fail(loc, field, "image does not decode (not a recognised image format)")
    except Exception as e:  # PIL raises many types for truncated or corrupt data
        _fail(loc, field, f"image does not decode ({type(e).__name__}: {e})")
    return data


def _row_loc(file, row: int, person_id=None) -> str:
    return where(file, row if person_id is None else f"{row} (ID {person_id})")


def _person_id(value, loc: str, field: str = "ID") -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _text(value, loc, field)


def choose_test_image(seed: int, person_id: str, n_images: int) -> int:
    """Which of a person's Test_Set images is used: `random.Random(f"{seed}:{ID}").randrange(n)`.

    Seeded and reproducible per person (the official evaluation draws it unseeded). Record it in the run manifest.
    """
    return random.Random(f"{seed}:{person_id}").randrange(n_images)


# ---------------------------------------------------------------- files

def config_files(root, config: str) -> list[Path]:
    """The config's `train-*.parquet` files, sorted; errors for a missing folder, no files or missing shards."""
    folder = Path(root) / config
    if not folder.is_dir():
        raise PulseError(f"{folder}: config folder not found (expected {folder}/train-XXXXX-of-YYYYY.parquet)")
    files = sorted(folder.glob("train-*.parquet"))
    if not files:
        raise PulseError(f"{folder}: no train-*.parquet files in the config folder")
    shards = [_SHARD.fullmatch(f.name) for f in files]
    if all(shards):
        totals = {int(m.group(2)) for m in shards}
        numbers = sorted(int(m.group(1)) for m in shards)
        if len(totals) != 1 or numbers != list(range(totals.pop())):
            raise PulseError(f"{folder}: incomplete or mixed shards ({', '.join(f.name for f in files)})")
    return files


def _read_file(file: Path) -> tuple[list[str], list[dict]]:
    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise PulseError(f"{file}: not a readable parquet file ({_one_line(e)})") from e
    try:
        return table.column_names, table.to_pylist()
    except UnicodeDecodeError:  # a string column holding bytes that are not UTF-8 (Arrow checks only on use)
        _fail_utf8(file, table)


def _fail_utf8(file: Path, table) -> None:
    """PulseError naming the row (and ID) and column of the first string that is not valid UTF-8."""
    for name in table.column_names:
        column = table.column(name)
        for i in range(len(column)):
            try:
                column.slice(i, 1).to_pylist()
            except UnicodeDecodeError as e:
                try:
                    person_id = table.column("ID").slice(i, 1).to_pylist()[0] if "ID" in table.column_names else None
                except UnicodeDecodeError:
                    person_id = None
                _fail(_row_loc(file, i, person_id), name, f"text is not valid UTF-8 (byte 0x{e.object[e.start]:02x} "
                      f"at position {e.start}); re-export the file with UTF-8 strings")
    raise PulseError(f"{file}: text is not valid UTF-8; re-export the file with UTF-8 strings")


def _columns_of(file: Path) -> list[str]:
    try:
        return pq.read_schema(file).names
    except (pa.ArrowException, OSError, ValueError) as e:
        raise PulseError(f"{file}: not a readable parquet file ({_one_line(e)})") from e


def _flavour(columns) -> str | None:
    if "Classification_Task" in columns:
        return "evaluation"
    if "metadata" in columns:
        return "training"
    return None


def detect_flavour(path_or_columns) -> str:
    """"evaluation" or "training", from a parquet file, a config folder, or an iterable of column names."""
    if isinstance(path_or_columns, (str, os.PathLike)):
        path = Path(path_or_columns)
        file = path if path.is_file() else config_files(path.parent, path.name)[0]
        columns, label = _columns_of(file), str(file)
    else:
        columns, label = list(path_or_columns), "columns"
    flavour = _flavour(columns)
    if flavour is None:
        raise PulseError(f"{label}: neither MLLMU-Bench flavour (columns {', '.join(columns)}; evaluation needs "
                         "Classification_Task, training needs metadata)")
    return flavour


def _write_shards(folder: Path, rows: list[dict], schema: pa.Schema, shards: int) -> None:
    """Write rows as `shards` files train-0000i-of-0000N.parquet, each atomically; drop stale train-*.parquet."""
    if shards < 1:
        raise PulseError(f"{folder}: shards must be >= 1 (got {shards})")
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for s in range(shards):
        chunk = rows[s * len(rows) // shards: (s + 1) * len(rows) // shards]
        name = f"train-{s:05d}-of-{shards:05d}.parquet"
        tmp = folder / f".{name}.tmp{os.getpid()}"
        try:
            pq.write_table(pa.Table.from_pylist(chunk, schema=schema), tmp)
            os.replace(tmp, folder / name)
        finally:
            tmp.unlink(missing_ok=True)
        names.append(name)
    for old in folder.glob("train-*.parquet"):
        if old.name not in names:
            old.unlink()


# ---------------------------------------------------------------- evaluation flavour

def _biography(value, loc: str) -> dict:
    if not isinstance(value, str):
        _fail(loc, "biography", f"expected a JSON string (got {_show(value)})")
    try:
        bio = json.loads(value)
    except json.JSONDecodeError as e:
        _fail(loc, "biography", f"not valid JSON ({e})")
    if not isinstance(bio, dict):
        _fail(loc, "biography", f"expected a JSON object (got {type(bio).__name__})")
    _text(bio.get("Name"), loc, "biography.Name")
    return bio


def _mcq(q, loc: str, field: str, person_id: str, form: str, index: int) -> MCQ:
    if not isinstance(q, dict):
        _fail(loc, field, f"missing question (got {_show(q)})")
    question = _text(q.get("Question"), loc, f"{field}.Question")
    options = q.get("Options")
    if not isinstance(options, dict):
        _fail(loc, f"{field}.Options", f"missing options (got {_show(options)})")
    for letter in LETTERS:
        _text(options.get(letter), loc, f"{field}.Options.{letter}")
    extra = [k for k, v in options.items() if k not in LETTERS and v is not None]
    if extra:
        _fail(loc, f"{field}.Options.{extra[0]}", "unexpected option; MLLMU-Bench MCQs have exactly A, B, C, D")
    answer = q.get("Correct_Answer")
    if answer not in LETTERS:
        _fail(loc, f"{field}.Correct_Answer", f"{_show(answer)} is not one of A, B, C, D")
    return MCQ(question, {k: options[k] for k in LETTERS}, answer, form, person_id, index)


def _open_item(item, loc: str, field: str) -> OpenItem:
    if not isinstance(item, dict):
        _fail(loc, field, f"missing item (got {_show(item)})")
    kind = item.get("Type")
    if kind not in MLLMU_TYPE:
        _fail(loc, f"{field}.Type", f"{_show(kind)} is not one of {', '.join(MLLMU_TYPE)}")
    return OpenItem(_text(item.get("Question"), loc, f"{field}.Question"),
                    _text(item.get("Ground_Truth"), loc, f"{field}.Ground_Truth"), MLLMU_TYPE[kind])


def _person(rec: dict, loc: str, person_id: str, test_image_seed: int) -> Person:
    bio = _biography(rec.get("biography"), loc)
    classification = rec.get("Classification_Task")
    if not isinstance(classification, dict):
        _fail(loc, "Classification_Task", f"missing (got {_show(classification)})")
    mcqs = {}
    for form, key in MCQ_KEYS.items():
        field = f"Classification_Task.{key}"
        mcqs[form] = [_mcq(q, loc, f"{field}[{i}]", person_id, form, i)
                      for i, q in enumerate(_list(classification.get(key), loc, field))]
    cloze = [_open_item(x, loc, f"Mask_Task[{i}]") for i, x in enumerate(_list(rec.get("Mask_Task"), loc, "Mask_Task"))]
    generation = [_open_item(x, loc, f"Generation_Task[{i}]")
                  for i, x in enumerate(_list(rec.get("Generation_Task"), loc, "Generation_Task"))]
    images = []
    if "images" in rec:  # Test_Set: pick one seeded image, keep them all
        images = [_image_bytes(x, loc, f"images[{k}]") for k, x in enumerate(_list(rec["images"], loc, "images"))]
        if not images:
            _fail(loc, "images", "empty list of images")
        if rec.get("image") is not None:
            _image_bytes(rec["image"], loc, "image")
        image = images[choose_test_image(test_image_seed, person_id, len(images))]
    else:
        image = _image_bytes(rec.get("image"), loc, "image")
    return Person(id=person_id, name=bio["Name"], image=image, biography=bio, image_mcqs=mcqs["image"],
                  text_mcqs=mcqs["text"], cloze=cloze, generation=generation, images=images)


def _read_people_located(root, config: str, test_image_seed: int) -> list[tuple[Person, str]]:
    out, seen = [], {}
    for file in config_files(root, config):
        columns, rows = _read_file(file)
        needed = [c for c in EVAL_COLUMNS if c != "image"] + ([] if "images" in columns else ["image"])
        missing = [c for c in needed if c not in columns]
        if missing:
            found = _flavour(columns)
            hint = ("this is the training flavour (image + metadata): read it with read_qa_pairs"
                    if found == "training" else f"the evaluation flavour needs {', '.join(EVAL_COLUMNS)}")
            raise PulseError(f"{where(file, field=missing[0])}: missing column ({hint})")
        for i, rec in enumerate(rows):
            person_id = _person_id(rec.get("ID"), _row_loc(file, i))
            loc = _row_loc(file, i, person_id)
            if person_id in seen:
                _fail(loc, "ID", f"duplicate ID within {config} (first at {seen[person_id]})")
            seen[person_id] = loc
            out.append((_person(rec, loc, person_id, test_image_seed), loc))
    return out


def read_people(root, config: str, *, test_image_seed: int = 0) -> list[Person]:
    """Read an evaluation-flavour config (all shards, in file order) into validated Person records.

    Where the config has an `images` column (Test_Set), Person.images holds them all and Person.image is the one
    chosen by `choose_test_image(test_image_seed, ID, len(images))`.
    """
    return [person for person, _ in _read_people_located(root, config, test_image_seed)]


def _person_row(p: Person, folder: Path, with_images: bool) -> dict:
    loc = f"{folder}, ID {p.id}"
    bio = dict(p.biography)
    bio.setdefault("Name", p.name)
    if bio["Name"] != p.name:
        _fail(loc, "biography.Name", f"{_show(bio['Name'])} differs from Person.name {_show(p.name)}")

    def mcq(q: MCQ, field: str) -> dict:
        if tuple(q.options) != LETTERS:
            _fail(loc, f"{field}.Options", f"MLLMU-Bench needs options A, B, C, D (got {', '.join(q.options)})")
        return {"Question": q.question, "Options": dict(q.options), "Correct_Answer": q.answer}

    def item(x: OpenItem) -> dict:
        return {"Question": x.question, "Ground_Truth": x.answer, "Type": MLLMU_TYPE_OF[x.form]}

    row = {
        "ID": p.id,
        "image": None if p.image is None else {"bytes": p.image, "path": None},
        "biography": json.dumps(bio, ensure_ascii=False),
        "Classification_Task": {key: [mcq(q, f"Classification_Task.{key}[{i}]") for i, q in enumerate(p.mcqs(form))]
                                for form, key in MCQ_KEYS.items()},
        "Generation_Task": [item(x) for x in p.generation],
        "Mask_Task": [item(x) for x in p.cloze],
    }
    if with_images:
        row["images"] = [{"bytes": b, "path": None} for b in p.images]
    return row


def write_people(root, config: str, people: list[Person], *, shards: int = 1) -> None:
    """Write people in MLLMU-Bench's evaluation schema to `<root>/<config>/train-0000i-of-0000N.parquet`.

    An `images` column is written for Test_Set (or whenever a person has `images`), beside `image`. A biography
    without "Name" gets Person.name. Image `path` is written as null. Each file is written atomically.
    """
    folder = Path(root) / config
    with_images = config == TEST_SET or any(p.images for p in people)
    fields = [("ID", pa.string()), ("image", _IMAGE)] + ([("images", pa.list_(_IMAGE))] if with_images else [])
    fields += [("biography", pa.string()), ("Classification_Task", _CLASSIFICATION),
               ("Generation_Task", pa.list_(_OPEN)), ("Mask_Task", pa.list_(_OPEN))]
    rows = [_person_row(p, folder, with_images) for p in people]
    _write_shards(folder, rows, pa.schema(fields), shards)


# ---------------------------------------------------------------- training flavour

def _qa_row(rec: dict, file: Path, row: int) -> tuple[str, str, list[QAPair]]:
    loc = _row_loc(file, row)
    text = rec.get("metadata")
    if not isinstance(text, str):
        _fail(loc, "metadata", f"expected a JSON string (got {_show(text)})")
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        _fail(loc, "metadata", f"not valid JSON ({e})")
    if not isinstance(items, list) or not items:
        _fail(loc, "metadata", "expected a non-empty JSON list of {ID, Question, Answer}")
    first = items[0] if isinstance(items[0], dict) else {}
    person_id = _person_id(first.get("ID"), loc, "metadata[0].ID")
    loc = _row_loc(file, row, person_id)
    image = None if rec.get("image") is None else _image_bytes(rec["image"], loc, "image")
    pairs = []
    for i, item in enumerate(items):
        field = f"metadata[{i}]"
        if not isinstance(item, dict):
            _fail(loc, field, f"expected an object (got {_show(item)})")
        if _person_id(item.get("ID"), loc, f"{field}.ID") != person_id:
            _fail(loc, f"{field}.ID", f"{_show(item.get('ID'))} differs from the row's first ID {person_id!r}")
        kind = item.get("Type", "Image_Textual")
        if kind not in MLLMU_TYPE:
            _fail(loc, f"{field}.Type", f"{_show(kind)} is not one of {', '.join(MLLMU_TYPE)}")
        form = MLLMU_TYPE[kind]
        if form == "image" and image is None:
            _fail(loc, "image", f"missing, but {field} is an Image_Textual pair")
        pairs.append(QAPair(person_id, _text(item.get("Question"), loc, f"{field}.Question"),
                            _text(item.get("Answer"), loc, f"{field}.Answer"),
                            image if form == "image" else None, form))
    return person_id, loc, pairs


def _read_qa_located(root, config: str) -> list[tuple[str, str, list[QAPair]]]:
    out, seen = [], {}
    for file in config_files(root, config):
        columns, rows = _read_file(file)
        if "metadata" not in columns:
            found = _flavour(columns) or "unknown"
            raise PulseError(
                f"{where(file, field='metadata')}: missing column; found the {found} flavour, but training QA needs "
                "the training flavour (image + metadata). MLLMU-Bench's evaluation forget_X/retain_Y have no metadata "
                "(issue #19): use the training splits from MLLMMU/baseline_train_split")
        if "image" not in columns:
            raise PulseError(f"{where(file, field='image')}: missing column (the training flavour is image + metadata)")
        for i, rec in enumerate(rows):
            person_id, loc, pairs = _qa_row(rec, file, i)
            if person_id in seen:
                _fail(loc, "metadata.ID", f"duplicate ID within {config} (first at {seen[person_id]})")
            seen[person_id] = loc
            out.append((person_id, loc, pairs))
    return out


def read_qa_pairs(root, config: str) -> list[QAPair]:
    """Read a training-flavour config (`image` + `metadata`) as one QAPair per metadata item, in file order.

    "Pure_Text" pairs get form "text" and image None. An evaluation-flavour config is a PulseError (issue #19).
    """
    return [pair for _, _, pairs in _read_qa_located(root, config) for pair in pairs]


def write_qa_pairs(root, config: str, pairs: list[QAPair]) -> None:
    """Write pairs in the training flavour (`image` + `metadata`), one row per person in first-seen order.

    "Type" is emitted only for text-form pairs. All image-form pairs of a person must share one image.
    """
    folder = Path(root) / config
    people: dict[str, list[QAPair]] = {}
    for pair in pairs:
        people.setdefault(pair.person_id, []).append(pair)
    rows = []
    for person_id, group in people.items():
        images = {p.image for p in group if p.form == "image"}
        if len(images) > 1 or None in images:
            _fail(f"{folder}, ID {person_id}", "image", "image-form pairs of one person must share one image")
        meta = [{"ID": p.person_id, "Question": p.question, "Answer": p.answer}
                | ({"Type": MLLMU_TYPE_OF["text"]} if p.form == "text" else {}) for p in group]
        image = next(iter(images), None)
        rows.append({"image": None if image is None else {"bytes": image, "path": None},
                     "metadata": json.dumps(meta, ensure_ascii=False)})
    _write_shards(folder, rows, pa.schema([("image", _IMAGE), ("metadata", pa.string())]), 1)


# ---------------------------------------------------------------- whole dataset

def check_mllmu(root) -> dict:
    """Read and validate every known config under root; check forget/retain splits against each other.

    Returns {"configs": {NAME: {"people", "image_mcq", "text_mcq", "mcq_counts"}}} for the evaluation flavour
    ("mcq_counts" maps "image+text" per-person counts to how many people have them) and {"people", "qa_pairs"}
    for the training flavour.
    """
    root = Path(root)
    present = [c for c in CONFIGS if (root / c).is_dir()]
    if not present:
        raise PulseError(f"{root}: no MLLMU-Bench config folder found (expected one of {', '.join(CONFIGS)})")
    report, ids = {}, {}
    for config in present:
        if detect_flavour(root / config) == "evaluation":
            located = _read_people_located(root, config, 0)
            people = [p for p, _ in located]
            report[config] = {"people": len(people),
                              "image_mcq": sum(len(p.image_mcqs) for p in people),
                              "text_mcq": sum(len(p.text_mcqs) for p in people),
                              "mcq_counts": dict(Counter(f"{len(p.image_mcqs)}+{len(p.text_mcqs)}" for p in people))}
            ids[config] = {p.id: loc for p, loc in located}
        else:
            located = _read_qa_located(root, config)
            report[config] = {"people": len(located), "qa_pairs": sum(len(pairs) for _, _, pairs in located)}
            ids[config] = {person_id: loc for person_id, loc, _ in located}
    for forget, retain in RETAIN_OF.items():
        if forget in ids and retain in ids:
            _check_split(ids, forget, retain)
    return {"configs": report}


def _check_split(ids: dict, forget: str, retain: str) -> None:
    for person_id, loc in ids[forget].items():
        if person_id in ids[retain]:
            _fail(loc, "ID", f"also in {retain} ({ids[retain][person_id]}); forget and retain must be disjoint")
    if FULL_SET in ids:
        union = ids[forget] | ids[retain]
        for person_id, loc in ids[FULL_SET].items():
            if person_id not in union:
                _fail(loc, "ID", f"in {FULL_SET} but in neither {forget} nor {retain}")
        for person_id, loc in union.items():
            if person_id not in ids[FULL_SET]:
                _fail(loc, "ID", f"not in {FULL_SET}; {forget} and {retain} must together equal {FULL_SET}")
