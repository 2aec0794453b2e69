"""MLLMU-Bench readers/writers: round trips on tiny fixtures, then one corruption per error path."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pulse.data.mllmu import (
    EVAL_COLUMNS, check_mllmu, choose_test_image, detect_flavour, read_people, read_qa_pairs, write_people,
    write_qa_pairs,
)
from pulse.data.records import MCQ, OpenItem, Person, QAPair, encode_png
from pulse.errors import PulseError

SHARD = "train-00000-of-00001.parquet"


def png(color) -> bytes:
    return encode_png(Image.new("RGB", (16, 16), color))


def person(pid: str, n_images: int = 0, seed: int = 0) -> Person:
    name = f"Person {pid}"
    mcqs = {form: [MCQ(f"{form} q{i} about {pid}?", {"A": "a", "B": "b", "C": "c", "D": "None"}, "ABCD"[i % 4], form,
                       pid, i) for i in range(2)] for form in ("image", "text")}
    images = [png((int(pid) * 40 % 256, k * 60, 0)) for k in range(n_images)]
    image = images[choose_test_image(seed, pid, n_images)] if images else png((int(pid) * 40 % 256, 0, 0))
    return Person(id=pid, name=name, image=image, biography={"Name": name, "Born": "Town"},
                  image_mcqs=mcqs["image"], text_mcqs=mcqs["text"],
                  cloze=[OpenItem("This person works as a __.", "baker", "image"),
                         OpenItem(f"{name} was born in __.", "Town", "text")],
                  generation=[OpenItem("Where was this person born?", "In Town.", "image")], images=images)


def people(*ids, **kw):
    return [person(i, **kw) for i in ids]


def rewrite(file, edit, drop=None):
    """Rewrite a parquet file after `edit(rows)` mutates its rows (same schema unless a column is dropped)."""
    table = pq.read_table(file)
    rows = table.to_pylist()
    edit(rows)
    schema = table.schema if drop is None else table.schema.remove(table.schema.get_field_index(drop))
    if drop:
        for r in rows:
            del r[drop]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), file)


def assert_one_line(err, *parts):
    msg = str(err.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, (part, msg)


@pytest.fixture
def root(tmp_path):
    write_people(tmp_path, "Full_Set", people("001", "002", "003", "004"))
    write_people(tmp_path, "forget_5", people("001", "002"))
    write_people(tmp_path, "retain_95", people("003", "004"))
    return tmp_path


def test_round_trip_and_schema(root):
    assert read_people(root, "forget_5") == people("001", "002")
    table = pq.read_table(root / "forget_5" / SHARD)
    assert set(EVAL_COLUMNS) <= set(table.column_names)
    assert table.schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    row = table.to_pylist()[0]
    assert json.loads(row["biography"])["Name"] == "Person 001"
    assert row["Classification_Task"]["Pure_Text_Questions"][1]["Correct_Answer"] == "B"
    assert row["Mask_Task"][1]["Type"] == "Pure_Text"


def test_test_set_sharded_and_seeded_image(tmp_path):
    original = people("001", "002", "003", n_images=4, seed=7)
    write_people(tmp_path, "Test_Set", original, shards=2)
    files = sorted(p.name for p in (tmp_path / "Test_Set").iterdir())
    assert files == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert read_people(tmp_path, "Test_Set", test_image_seed=7) == original  # same seed, same (recorded) choice
    again = read_people(tmp_path, "Test_Set", test_image_seed=7)
    assert [p.images.index(p.image) for p in again] == [choose_test_image(7, p.id, 4) for p in again]
    choices = {tuple(p.images.index(p.image) for p in read_people(tmp_path, "Test_Set", test_image_seed=s))
               for s in range(6)}
    assert len(choices) > 1  # the seed matters
    write_people(tmp_path, "Test_Set", original[:1])  # rewriting with 1 shard removes the stale shards
    assert [p.name for p in (tmp_path / "Test_Set").iterdir()] == [SHARD]


def test_qa_pairs_round_trip_and_flavours(tmp_path):
    img = png((1, 2, 3))
    pairs = [QAPair("001", "What is this person's job?", "This person is a baker.", img),
             QAPair("001", "What is Person 001's job?", "Person 001 is a baker.", None, "text"),
             QAPair("002", "Where does this person live?", "This person lives in Town.", png((9, 9, 9)))]
    write_qa_pairs(tmp_path, "ft_Data", pairs)
    assert read_qa_pairs(tmp_path, "ft_Data") == pairs
    rows = pq.read_table(tmp_path / "ft_Data" / SHARD).to_pylist()
    assert list(rows[0]) == ["image", "metadata"]
    meta = json.loads(rows[0]["metadata"])
    assert "Type" not in meta[0] and meta[1]["Type"] == "Pure_Text"
    assert detect_flavour(tmp_path / "ft_Data") == "training"
    assert detect_flavour(tmp_path / "ft_Data" / SHARD) == "training"
    assert detect_flavour(EVAL_COLUMNS) == "evaluation"
    with pytest.raises(PulseError) as err:
        detect_flavour(["image", "ID"])
    assert_one_line(err, "columns", "metadata")


def test_check_mllmu_reports(root):
    write_people(root, "Test_Set", people("001", "002", n_images=2))
    write_people(root, "Retain_Set", people("101", "102", "103"))
    write_qa_pairs(root, "ft_Data", [QAPair("001", "q?", "a.", png((0, 0, 0))),
                                     QAPair("001", "q2?", "a2.", None, "text")])
    configs = check_mllmu(root)["configs"]
    assert configs["forget_5"] == {"people": 2, "image_mcq": 4, "text_mcq": 4, "mcq_counts": {"2+2": 2}}
    assert configs["Retain_Set"]["people"] == 3 and configs["Test_Set"]["people"] == 2
    assert configs["ft_Data"] == {"people": 1, "qa_pairs": 2}
    assert set(configs) == {"Full_Set", "forget_5", "retain_95", "Test_Set", "Retain_Set", "ft_Data"}


def _set(path, value):
    """An edit that sets rows[1][path...] = value (row 1 is person 002)."""
    def edit(rows):
        target = rows[1]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


CORRUPTIONS = {
    "bad answer": (_set(["Classification_Task", "Image_Textual_Questions", 1, "Correct_Answer"], "E"),
                   "Classification_Task.Image_Textual_Questions[1].Correct_Answer", "'E' is not one of A, B, C, D"),
    "missing option": (_set(["Classification_Task", "Pure_Text_Questions", 0, "Options", "C"], None),
                       "Classification_Task.Pure_Text_Questions[0].Options.C", "missing"),
    "empty option": (_set(["Classification_Task", "Pure_Text_Questions", 0, "Options", "A"], " "),
                     "Options.A", "empty"),
    "unknown Type": (_set(["Mask_Task", 0, "Type"], "Video"), "Mask_Task[0].Type", "'Video'"),
    "unknown Type gen": (_set(["Generation_Task", 0, "Type"], None), "Generation_Task[0].Type", "None"),
    "bad image": (_set(["image", "bytes"], b"not an image"), "field image", "does not decode"),
    "no image": (_set(["image"], None), "field image", "no embedded image bytes"),
    "bad biography": (_set(["biography"], "{Name: oops"), "field biography", "not valid JSON"),
    "biography no Name": (_set(["biography"], '{"Born": "Town"}'), "biography.Name", "missing"),
    "null task": (_set(["Classification_Task"], None), "field Classification_Task", "missing"),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_read_people_errors(root, name):
    edit, field, detail = CORRUPTIONS[name]
    rewrite(root / "forget_5" / SHARD, edit)
    with pytest.raises(PulseError) as err:
        read_people(root, "forget_5")
    assert_one_line(err, f"forget_5/{SHARD}", "row 1 (ID 002)", field, detail)
    with pytest.raises(PulseError):
        check_mllmu(root)


def test_duplicate_id(root):
    rewrite(root / "forget_5" / SHARD, _set(["ID"], "001"))
    with pytest.raises(PulseError) as err:
        read_people(root, "forget_5")
    assert_one_line(err, SHARD, "row 1 (ID 001)", "field ID", "duplicate", "row 0")


def test_test_set_bad_image_in_list(tmp_path):
    write_people(tmp_path, "Test_Set", people("001", "002", n_images=3))
    rewrite(tmp_path / "Test_Set" / SHARD, _set(["images", 2, "bytes"], b"\x89PNG broken"))
    with pytest.raises(PulseError) as err:
        read_people(tmp_path, "Test_Set")
    assert_one_line(err, SHARD, "row 1 (ID 002)", "field images[2]", "does not decode")


def test_missing_column(root):
    rewrite(root / "retain_95" / SHARD, lambda rows: None, drop="Mask_Task")
    with pytest.raises(PulseError) as err:
        read_people(root, "retain_95")
    assert_one_line(err, f"retain_95/{SHARD}", "field Mask_Task", "missing column")


def test_forget_retain_overlap(root):
    write_people(root, "retain_95", people("002", "003", "004"))
    with pytest.raises(PulseError) as err:
        check_mllmu(root)
    assert_one_line(err, f"forget_5/{SHARD}", "row 1 (ID 002)", "field ID", "retain_95", "disjoint")


def test_union_differs_from_full_set(root):
    write_people(root, "retain_95", people("003"))
    with pytest.raises(PulseError) as err:
        check_mllmu(root)
    assert_one_line(err, f"Full_Set/{SHARD}", "row 3 (ID 004)", "field ID", "neither forget_5 nor retain_95")
    write_people(root, "retain_95", people("003", "004", "005"))
    with pytest.raises(PulseError) as err:
        check_mllmu(root)
    assert_one_line(err, f"retain_95/{SHARD}", "row 2 (ID 005)", "field ID", "not in Full_Set")


def test_folder_and_file_errors(root, tmp_path_factory):
    with pytest.raises(PulseError) as err:
        read_people(root, "forget_10")
    assert_one_line(err, "forget_10", "config folder not found")
    (root / "forget_15").mkdir()
    with pytest.raises(PulseError) as err:
        read_people(root, "forget_15")
    assert_one_line(err, "forget_15", "no train-*.parquet")
    (root / "forget_15" / "train-00000-of-00002.parquet").write_bytes(b"garbage")
    with pytest.raises(PulseError) as err:
        read_people(root, "forget_15")
    assert_one_line(err, "forget_15", "incomplete or mixed shards")
    (root / "forget_15" / "train-00001-of-00002.parquet").write_bytes(b"garbage")
    with pytest.raises(PulseError) as err:
        read_people(root, "forget_15")
    assert_one_line(err, "train-00000-of-00002.parquet", "not a readable parquet file")
    with pytest.raises(PulseError) as err:
        check_mllmu(tmp_path_factory.mktemp("empty"))
    assert_one_line(err, "no MLLMU-Bench config folder")


def test_read_qa_pairs_on_evaluation_flavour(root):
    with pytest.raises(PulseError) as err:
        read_qa_pairs(root, "forget_5")
    assert_one_line(err, f"forget_5/{SHARD}", "field metadata", "evaluation flavour", "issue #19",
                    "baseline_train_split")


def test_read_people_on_training_flavour(tmp_path):
    write_qa_pairs(tmp_path, "forget_5", [QAPair("001", "q?", "a.", png((0, 0, 0)))])
    with pytest.raises(PulseError) as err:
        read_people(tmp_path, "forget_5")
    assert_one_line(err, SHARD, "missing column", "training flavour", "read_qa_pairs")


@pytest.mark.parametrize("meta, field, detail", [
    ("[{bad", "field metadata", "not valid JSON"),
    ('[{"ID": "001", "Question": "q?", "Answer": "a.", "Type": "Audio"}]', "metadata[0].Type", "'Audio'"),
    ('[{"ID": "001", "Question": "q?", "Answer": "a.", "Type": "Pure_Text"}, {"ID": "009", "Question": "q?", '
     '"Answer": "a.", "Type": "Pure_Text"}]', "metadata[1].ID", "'009'"),
    ('[{"ID": "001", "Question": "q?", "Type": "Pure_Text"}]', "metadata[0].Answer", "missing"),
    ('[{"ID": "001", "Question": "q?", "Answer": "a."}]', "field image", "metadata[0] is an Image_Textual pair"),
])
def test_training_flavour_errors(tmp_path, meta, field, detail):
    write_qa_pairs(tmp_path, "ft_Data", [QAPair("000", "q?", "a.", png((0, 0, 0))),
                                         QAPair("001", "q?", "a.", None, "text")])
    rewrite(tmp_path / "ft_Data" / SHARD, _set(["metadata"], meta))
    with pytest.raises(PulseError) as err:
        read_qa_pairs(tmp_path, "ft_Data")
    assert_one_line(err, SHARD, "row 1", field, detail)


def test_writer_rejects_non_mllmu_options(tmp_path):
    p = person("001")
    bad = Person(p.id, p.name, p.image, p.biography, [MCQ("q?", {"A": "x", "B": "y"}, "A", "image")], [])
    with pytest.raises(PulseError) as err:
        write_people(tmp_path, "forget_5", [bad])
    assert_one_line(err, "ID 001", "Image_Textual_Questions[0].Options")
