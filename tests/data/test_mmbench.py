"""MMBench TSV reader/writer: rotations, index-reference images, 2-4 options, test split, and every error path."""
import pandas as pd
import pytest
from PIL import Image

from pulse.data.mmbench import check_mmbench, read_mmbench, rotate, write_mmbench
from pulse.data.records import MMBenchItem, encode_png
from pulse.errors import PulseError


def png(color) -> bytes:
    return encode_png(Image.new("RGB", (16, 16), color))


def group(index, options, answer, hint=None, image=None, question="What is shown?"):
    """The original row and its rotations (one per option), as the real MMBench stores them."""
    image = image or png((index * 50 % 256, 10, 10))
    items = []
    for k in range(len(options)):
        opts, ans = rotate(options, answer, k)
        items.append(MMBenchItem(index + k * 1_000_000, question, hint, opts, ans, "cat", "l2", image))
    return items


def sample():
    return (group(0, {"A": "cat", "B": "dog", "C": "None of them", "D": "none"}, "C", hint="Look closely.")
            + group(1, {"A": "yes", "B": "no"}, "B")
            + group(2, {"A": "red", "B": "green", "C": "blue"}, "A"))


def raw(path):
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def assert_one_line(err, *parts):
    msg = str(err.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, (part, msg)


def test_round_trip_with_references(tmp_path):
    path = tmp_path / "dev.tsv"
    items = sample()
    write_mmbench(path, items)
    table = raw(path)
    copy = table[table["index"] == "1000001"].iloc[0]
    assert copy["image"] == "1" and len(table[table["index"] == "1"].iloc[0]["image"]) > 64
    assert table[table["index"] == "1"].iloc[0]["C"] == ""  # 2-option question: C, D empty
    back = read_mmbench(path)
    assert back == items
    # not pandas NA strings: text (lower-case "none" is not in pandas' list; VLMEvalKit keeps it as an option)
    assert back[0].options["C"] == "None of them" and back[0].options["D"] == "none"
    assert back[4].hint is None and list(back[4].options) == ["A", "B"]
    assert list(back[-1].options) == ["A", "B", "C"]
    assert back[5].image is back[4].image  # reference resolved to the original's bytes
    assert check_mmbench(path) == {"questions": 3, "rows": 9}
    assert {item.group for item in back} == {0, 1, 2}


def test_copy_with_different_image_keeps_base64(tmp_path):
    items = group(5, {"A": "x", "B": "y"}, "A")
    items[1] = MMBenchItem(**{**items[1].__dict__, "image": png((1, 1, 1))})
    write_mmbench(tmp_path / "d.tsv", items)
    assert len(raw(tmp_path / "d.tsv")["image"][1]) > 64
    assert read_mmbench(tmp_path / "d.tsv") == items


def test_test_split_without_answer_and_L2_spelling(tmp_path):
    path = tmp_path / "test.tsv"
    items = group(3, {"A": "a", "B": "b", "C": "c"}, None)
    write_mmbench(path, items)
    table = raw(path)
    assert "answer" not in table.columns
    table.rename(columns={"l2-category": "L2-category"}).to_csv(path, sep="\t", index=False)
    back = read_mmbench(path)
    assert [item.answer for item in back] == [None] * 3 and back[0].l2_category == "l2"


def test_rotate():
    opts = {"A": "w", "B": "x", "C": "y", "D": "z"}
    assert rotate(opts, "B", 1) == ({"A": "x", "B": "y", "C": "z", "D": "w"}, "A")
    assert rotate(opts, "A", 1)[1] == "D" and rotate(opts, "C", 4) == (opts, "C")
    assert rotate({"A": "p", "B": "q", "C": "r"}, None, 2) == ({"A": "r", "B": "p", "C": "q"}, None)
    with pytest.raises(ValueError):
        rotate(opts, "E", 1)


def corrupt(tmp_path, edit):
    """Write the sample, apply `edit(table)` to its raw string table, write it back; return the path."""
    path = tmp_path / "dev.tsv"
    write_mmbench(path, sample())
    table = raw(path)
    edit(table)
    table.to_csv(path, sep="\t", index=False)
    return path


def _cell(index, column, value):
    def edit(table):
        table.loc[table["index"] == index, column] = value
    return edit


ERRORS = {
    "missing reference": (_cell("1000001", "image", "77"), "line 7 (index 1000001)", "field image", "'77'"),
    "reference to reference": (_cell("1000000", "image", "1000001"), "line 3 (index 1000000)", "field image",
                               "itself a reference"),
    "bad base64": (_cell("2", "image", "@" * 100), "line 8 (index 2)", "field image", "does not decode"),
    "not base64 at all": (_cell("2", "image", "abc" * 30 + "="), "line 8 (index 2)", "field image", "base64"),
    "answer not an option": (_cell("1", "answer", "C"), "line 6 (index 1)", "field answer", "'C' is not one of A, B"),
    "gap in options": (_cell("0", "B", ""), "line 2 (index 0)", "field B", "contiguous"),
    "one option": (_cell("1", "B", ""), "line 6 (index 1)", "field B", "fewer than 2"),
    "duplicate index": (_cell("2", "index", "1"), "line 8 (index 1)", "field index", "duplicate"),
    "bad index": (_cell("2", "index", "two"), "line 8 (index two)", "field index", "not an integer"),
    "empty question": (_cell("2", "question", ""), "line 8 (index 2)", "field question", "empty"),
    "missing column": (lambda t: t.pop("category"), "dev.tsv", "field category",
                       "missing column"),
}


@pytest.mark.parametrize("name", ERRORS)
def test_read_errors(tmp_path, name):
    edit, *parts = ERRORS[name]
    path = corrupt(tmp_path, edit)
    with pytest.raises(PulseError) as err:
        read_mmbench(path)
    assert_one_line(err, "dev.tsv", *parts)


def test_check_needs_original_row(tmp_path):
    path = tmp_path / "dev.tsv"
    write_mmbench(path, sample()[1:])  # group 0 without its original row (copies now keep base64)
    with pytest.raises(PulseError) as err:
        check_mmbench(path)
    assert_one_line(err, "dev.tsv", "index 1000000", "field index", "no row has index 0")


def test_missing_file_and_writer_checks(tmp_path):
    with pytest.raises(PulseError) as err:
        read_mmbench(tmp_path / "nope.tsv")
    assert_one_line(err, "nope.tsv", "not found")
    bad = MMBenchItem(9, "q", None, {"A": "x", "C": "y"}, "A", "c", "l2", png((0, 0, 0)))
    with pytest.raises(PulseError) as err:
        write_mmbench(tmp_path / "w.tsv", [bad])
    assert_one_line(err, "w.tsv", "index 9", "field options")
    assert not (tmp_path / "w.tsv").exists()


# --- missing cells exactly as VLMEvalKit sees them -------------------------------------------------------------
# VLMEvalKit (open-compass/VLMEvalKit @ e8e78f05) reads a TSV with `vlmeval/smp/file.py` load_tsv and keeps an
# option only if `not pd.isna(...)`; these two functions are copied verbatim as the oracle.

def vlmeval_load_tsv(f):  # vlmeval/smp/file.py, load() -> load_tsv
    return pd.read_csv(f, sep='\t')


def vlmeval_build_choices(item):  # vlmeval/dataset/utils/multiple_choice.py
    import string
    ret = {}
    for ch in string.ascii_uppercase:
        if ch in item and (not pd.isna(item[ch])):
            ret[ch] = item[ch]
    return ret


NA_TEXTS = ["", "None", "NA", "N/A", "nan", "NaN", "NULL", "null", "n/a", "<NA>", "#N/A", "-nan"]


def test_pandas_na_list_is_pandas_own():
    from pandas._libs.parsers import STR_NA_VALUES

    from pulse.data.mmbench import PANDAS_NA
    assert PANDAS_NA == set(STR_NA_VALUES)


def na_table(tmp_path):
    """Rows 0..n-1: a 3-option question whose D cell is one of NA_TEXTS (and hint the same text); then rows whose
    options/hint are near-misses that pandas keeps as text."""
    path = tmp_path / "na.tsv"
    write_mmbench(path, [MMBenchItem(i, "What is shown?", None, {"A": "x", "B": "y", "C": "z", "D": "w"}, "A",
                                     "cat", "l2", png((i, 0, 0))) for i in range(len(NA_TEXTS) + 3)])
    table = raw(path)
    for i, text in enumerate(NA_TEXTS):
        table.loc[i, "D"] = text
        table.loc[i, "hint"] = text
    near = len(NA_TEXTS)
    for j, text in enumerate(["none", " None", "NONE"]):
        table.loc[near + j, "D"] = text
        table.loc[near + j, "hint"] = text
    table.to_csv(path, sep="\t", index=False)
    return path


def test_na_cells_are_missing_options_as_in_vlmevalkit(tmp_path):
    path = na_table(tmp_path)
    items = read_mmbench(path)
    oracle = vlmeval_load_tsv(path)
    assert len(items) == len(oracle) == len(NA_TEXTS) + 3
    for item, (_, row) in zip(items, oracle.iterrows()):
        choices = vlmeval_build_choices(row)
        assert item.options == {k: str(v) for k, v in choices.items()}, (item.index, choices)
        assert (item.hint is None) == bool(pd.isna(row["hint"])), item.index
    # hand-checked: "N/A" (row 3) is a missing D -> a 3-option question; "none" (lower case) stays an option
    assert list(items[3].options) == ["A", "B", "C"] and items[3].hint is None
    assert items[len(NA_TEXTS)].options["D"] == "none" and items[len(NA_TEXTS)].hint == "none"
    assert items[len(NA_TEXTS) + 1].options["D"] == " None"


def test_na_hint_gives_no_hint_line_in_the_prompt(tmp_path):
    from pulse.eval.mmbench import mmbench_message
    items = read_mmbench(na_table(tmp_path))
    for item in items[:len(NA_TEXTS)] + [items[len(NA_TEXTS)], items[len(NA_TEXTS) + 2]]:
        # pandas NA strings, and "none"/"NONE" (LLaVA's is_none lower-cases): no hint line
        assert mmbench_message(item).startswith("What is shown?\nA. x"), item.index
    # " None" is kept by pandas and by LLaVA's is_none (no strip): a hint line
    assert mmbench_message(items[len(NA_TEXTS) + 1]).startswith(" None\nWhat is shown?")


def test_writer_refuses_texts_that_read_back_as_missing(tmp_path):
    for field, bad in (("C", MMBenchItem(1, "q", None, {"A": "x", "B": "y", "C": "N/A"}, "A", "c", "l", png(1))),
                       ("hint", MMBenchItem(1, "q", "None", {"A": "x", "B": "y"}, "A", "c", "l", png(1)))):
        with pytest.raises(PulseError) as err:
            write_mmbench(tmp_path / "w.tsv", [bad])
        assert_one_line(err, "w.tsv", "index 1", f"field {field}")


def test_question_reading_none_keeps_its_text(tmp_path):
    path = tmp_path / "q.tsv"
    write_mmbench(path, group(4, {"A": "x", "B": "y"}, "A", question="None"))
    assert [item.question for item in read_mmbench(path)] == ["None", "None"]
