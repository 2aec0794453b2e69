"""The mini world generator: determinism, counts, content rules, and that the written folder reads back."""
import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from pulse.data.mllmu import check_mllmu, read_people, read_qa_pairs
from pulse.data.mmbench import GROUP, read_mmbench, rotate
from pulse.data.records import decode_image
from pulse.errors import PulseError
from pulse.mini import portraits as pics
from pulse.mini.world import ATTRIBUTES, WorldConfig, forget_splits, make_world, question, write_world

SMALL = WorldConfig(seed=3, n_fictional=6, n_celebrities=8, n_famous=3, n_mmbench=20, n_mmbench_train=60)
CONFIGS = ("Full_Set", "forget_5", "forget_10", "forget_15", "retain_95", "retain_90", "retain_85", "Test_Set",
           "Retain_Set", "ft_Data")


@pytest.fixture(scope="module")
def world():
    return make_world(SMALL)


@pytest.fixture(scope="module")
def written(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    write_world(world, out)
    return out


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(written, tmp_path):
    write_world(make_world(SMALL), tmp_path / "again")
    first, second = hashes(written), hashes(tmp_path / "again")
    assert first == second
    expected = {f"mllmu/{c}/train-00000-of-00001.parquet" for c in CONFIGS if c != "Test_Set"}
    expected |= {f"mllmu/Test_Set/train-0000{i}-of-00002.parquet" for i in (0, 1)}
    expected |= {"mmbench.tsv", "world.json", "pretrain/Celebrities/train-00000-of-00001.parquet",
                 "pretrain/mmbench_train.tsv"}
    assert set(first) == expected


def test_different_seed_gives_different_files(written, tmp_path):
    write_world(make_world(WorldConfig(**{**SMALL.__dict__, "seed": 4})), tmp_path / "other")
    first, other = hashes(written), hashes(tmp_path / "other")
    for name in ("mllmu/Full_Set/train-00000-of-00001.parquet", "mmbench.tsv", "pretrain/mmbench_train.tsv"):
        assert first[name] != other[name]


def test_counts_and_ids(world):
    assert [p.id for p in world.fictional] == ["001", "002", "003", "004", "005", "006"]
    assert [p.id for p in world.celebrities] == [f"C{i:03d}" for i in range(1, 9)]
    names = [p.name for p in world.fictional + world.celebrities]
    assert len(set(names)) == len(names)
    for p in world.fictional + world.celebrities:
        assert len(p.image_mcqs) == len(p.text_mcqs) == 5
        assert [q.form for q in p.cloze] == [q.form for q in p.generation] == ["image"] * 2 + ["text"] * 2
        assert all("__" in q.question and q.answer in p.biography.values() for q in p.cloze)
        bio = p.biography
        assert bio["Name"] == p.name and bio["Born"] == bio["birthplace"] and bio["Employment"] == bio["occupation"]
        assert set(ATTRIBUTES) <= set(bio) and set(bio["appearance_detail"]) == {"question", "answer"}
    assert [p.id for p in world.test_set] == [p.id for p in world.fictional]
    for p in world.test_set:
        assert len(p.images) == SMALL.n_test_images and p.image == p.images[0]
    assert len(world.ft_pairs) == 6 * 10 and len(world.pretrain_pairs) == 8 * 10
    assert len({x.group for x in world.mmbench}) == 20 and len(world.mmbench_train) == 60


def test_held_out_people_follow_the_fine_tuned_ones_and_change_nothing_before_them(world, written):
    held = world.holdout
    assert [p.id for p in held] == [f"{i:03d}" for i in range(7, 7 + SMALL.n_holdout)]
    names = [p.name for p in world.fictional + world.celebrities + held]
    assert len(set(names)) == len(names)
    portraits = np.stack([pics.pixels(decode_image(p.image)) for p in world.fictional + world.celebrities + held])
    d = np.sqrt(((portraits[:, None] - portraits[None]) ** 2).mean(-1))
    np.fill_diagonal(d, np.inf)
    assert d.min() >= pics.MIN_PORTRAIT_DISTANCE
    # Full_Set and ft_Data hold them after the fine-tuned people (as MLLMU-Bench's people after the first 100);
    # the splits and Test_Set do not
    assert [p.id for p in read_people(written / "mllmu", "Full_Set")] == [p.id for p in world.fictional + held]
    assert {q.person_id for q in read_qa_pairs(written / "mllmu", "ft_Data")} == {p.id for p in world.fictional + held}
    for config, ids in world.splits.items():  # never forgotten: in every retain_* config, no forget_* one
        assert ({p.id for p in held} <= set(ids)) == config.startswith("retain")
        assert not config.startswith("forget") or not {p.id for p in held} & set(ids)
    # the same world without them: every other person, pair and split is unchanged
    without = make_world(WorldConfig(**{**SMALL.__dict__, "n_holdout": 0}))
    assert without.fictional == world.fictional and without.celebrities == world.celebrities
    assert without.ft_pairs == world.ft_pairs and without.holdout == []
    assert {k: v[:len(without.splits[k])] for k, v in world.splits.items()} == without.splits


def test_splits_are_seeded_disjoint_complements():
    ids = [f"{i:03d}" for i in range(1, 41)]
    splits = forget_splits(ids, 0)
    assert [len(splits[f"forget_{r}"]) for r in (5, 10, 15)] == [2, 4, 6]
    for r in (5, 10, 15):
        forget, retain = set(splits[f"forget_{r}"]), set(splits[f"retain_{100 - r}"])
        assert not forget & retain and forget | retain == set(ids)
    assert splits == forget_splits(ids, 0) and splits != forget_splits(ids, 1)
    small = forget_splits(ids[:6], 0)
    assert all(len(small[f"forget_{r}"]) == 1 for r in (5, 10, 15))


def test_mcqs_match_profiles_and_training_pairs(world):
    for group, pairs in ((world.fictional, world.ft_pairs), (world.celebrities, world.pretrain_pairs)):
        expected = []
        for p in group:
            asked = world.asked[p.id]
            assert len(set(asked)) == 5
            for form in ("image", "text"):
                for i, (q, attr) in enumerate(zip(p.mcqs(form), asked)):
                    assert (q.index, q.person_id, q.form) == (i, p.id, form)
                    assert list(q.options) == list("ABCD") and len(set(q.options.values())) == 4
                    assert q.options[q.answer] == p.biography[attr]
                    assert all(v in ATTRIBUTES[attr][4] for v in q.options.values())
                    assert q.question == question(attr, form, p.name)
                    assert (p.name in q.question) == (form == "text")
                    expected.append((p.id, q.question, q.options[q.answer], p.image if form == "image" else None))
        assert [(x.person_id, x.question, x.answer, x.image) for x in pairs] == expected
        assert all((x.image is None) == (x.form == "text") for x in pairs)
    # the image-form wording is the same for everyone
    assert question("pet", "image", "A B") == question("pet", "image", "C D") == "What is the pet of this person?"


def test_portraits_distinct_and_test_images_recognisable(world):
    people = world.fictional + world.celebrities
    originals = np.stack([pics.pixels(decode_image(p.image)) for p in people])
    assert decode_image(people[0].image).size == (SMALL.image_size, SMALL.image_size)
    d = np.sqrt(((originals[:, None] - originals[None]) ** 2).mean(-1))
    np.fill_diagonal(d, np.inf)
    assert d.min() >= pics.MIN_PORTRAIT_DISTANCE
    for k, p in enumerate(world.test_set):
        assert len(set(p.images)) == len(p.images) and p.images[0] != world.fictional[k].image
        for image in p.images:
            x = pics.pixels(decode_image(image))
            assert int(np.argmin(((originals - x) ** 2).mean(-1))) == k


def test_exposure_is_uneven():
    cfg = WorldConfig(n_fictional=2, n_celebrities=60, n_famous=24, n_mmbench=1, n_mmbench_train=0)
    exposure = make_world(cfg).exposure
    assert list(exposure) == [f"C{i:03d}" for i in range(1, 61)]
    values = sorted(exposure.values(), reverse=True)
    assert values[:24] == [1.0] * 24 and values[24] == pytest.approx(0.3) and values[-1] == pytest.approx(0.02)
    assert all(a > b for a, b in zip(values[24:], values[25:]))
    famous = [k for k, v in exposure.items() if v == 1.0]
    assert famous != [f"C{i:03d}" for i in range(1, 25)]  # a seeded order, not simply the first IDs


def test_mmbench_groups_are_circular(world):
    groups = defaultdict(list)
    for item in world.mmbench:
        groups[item.group].append(item)
    assert sorted(groups) == list(range(20))
    for g, rows in groups.items():
        rows.sort(key=lambda x: x.index)
        original = rows[0]
        n = len(original.options)
        assert 2 <= n <= 4 and len(rows) == n
        assert [x.index for x in rows] == [g + k * GROUP for k in range(n)]
        for k, row in enumerate(rows):
            assert (row.options, row.answer) == rotate(original.options, original.answer, k)
            assert (row.image, row.question, row.hint, row.category) == (original.image, original.question,
                                                                          original.hint, original.category)
    assert {len(rows) for rows in groups.values()} == {2, 3, 4}  # left/right, largest of 3, the others


def test_mmbench_mix_hints_and_answers():
    items = make_world(WorldConfig(n_fictional=2, n_celebrities=1, n_famous=0, n_mmbench=240,
                                   n_mmbench_train=0)).mmbench
    originals = [x for x in items if x.index < GROUP]
    assert len(originals) == 240
    hinted = sum(x.hint is not None for x in originals)
    assert 0 < hinted < 240 / 2
    assert {x.l2_category for x in originals} == {"finegrained_perception (instance-level)",
                                                       "finegrained_perception (cross-instance)"}
    assert len({x.category for x in originals}) == 6
    for x in originals:  # the drawn shapes really are where / what the answer says
        a = np.asarray(decode_image(x.image), dtype=int)
        colours, counts = np.unique(a.reshape(-1, 3), axis=0, return_counts=True)
        fg = np.abs(a - colours[counts.argmax()]).sum(-1) > 30  # not the backdrop (the most frequent colour)
        ys, xs = np.nonzero(fg)
        cells = {(y // 8, x // 8) for y, x in zip(ys, xs)}
        answer = x.options[x.answer]
        if x.category == "object_localization":
            assert len(cells) == 1, x.question  # one small shape inside one 8 px patch
            (row, col), = cells
            assert {"left": col < 2, "right": col >= 2, "top left": row < 2 and col < 2,
                    "top right": row < 2 and col >= 2, "bottom left": row >= 2 and col < 2,
                    "bottom right": row >= 2 and col >= 2}[answer]
        if x.category == "object_counting":  # every shape in its own patch
            assert len(cells) == int(answer)
        if x.category == "spatial_relationship":  # one row (left?) or one column (top?), one shape per half
            (r1, c1), (r2, c2) = sorted(cells)
            first = np.zeros((32, 32), bool)
            if x.question == "What colour is the shape on the left?":
                assert r1 == r2 and c1 < 2 <= c2
                first[:, :16] = True
            else:
                assert x.question == "What colour is the shape at the top?" and c1 == c2 and r1 < 2 <= r2
                first[:16] = True
            target = np.array(pics.COLOURS[answer])
            assert (np.abs(a[fg & first] - target).sum(-1) < 30).sum() >= 6  # that shape has the answer's colour
            assert (np.abs(a[fg & ~first] - target).sum(-1) < 30).sum() == 0  # the other one does not


def test_mmbench_train_is_fresh(world):
    assert all(x.index < GROUP and x.answer in x.options for x in world.mmbench_train)
    assert not {x.image for x in world.mmbench_train} & {x.image for x in world.mmbench}
    assert {x.category for x in world.mmbench_train} == {x.category for x in world.mmbench}


def test_written_folder_reads_back(world, written):
    root = written / "mllmu"
    report = check_mllmu(root)["configs"]
    assert set(report) == set(CONFIGS)
    n = 6 + SMALL.n_holdout
    assert report["Full_Set"]["mcq_counts"] == {"5+5": n} and report["ft_Data"]["qa_pairs"] == 10 * n
    assert read_people(root, "Full_Set") == world.fictional + world.holdout
    assert read_people(root, "Retain_Set") == world.celebrities
    test_set = read_people(root, "Test_Set")
    assert [p.images for p in test_set] == [p.images for p in world.test_set]
    for config, ids in world.splits.items():
        assert [p.id for p in read_people(root, config)] == ids
    assert read_qa_pairs(root, "ft_Data")[:len(world.ft_pairs)] == world.ft_pairs
    assert read_qa_pairs(written / "pretrain", "Celebrities") == world.pretrain_pairs
    assert read_mmbench(written / "mmbench.tsv") == world.mmbench
    assert read_mmbench(written / "pretrain" / "mmbench_train.tsv") == world.mmbench_train


def test_bad_config_is_one_line_error():
    with pytest.raises(PulseError, match="n_famous"):
        make_world(WorldConfig(n_celebrities=4, n_famous=5))
