"""The mini world: a deterministic, embedded dataset a tiny LLaVA can learn on CPU.

`make_world(cfg)` builds fictional people (MLLMU-Bench's fictitious profiles), "celebrities" (the real-celebrity
`Retain_Set`, with uneven pre-training exposure), their portraits, and a mini-MMBench of simple shape scenes with
circular copies plus fresh training questions (colour, shape, counting, left/right and corner localisation, spatial
relation, size comparison; the scenes that ask where things are put each shape on its own patch of the tiny model).
`write_world(world, out)` writes it in the on-disk formats of the real benchmarks, so the same readers serve both:

    out/mllmu/{Full_Set, forget_5/10/15, retain_95/90/85, Test_Set (2 shards), Retain_Set, ft_Data}/train-*.parquet
    out/mmbench.tsv                                  evaluation rows incl. circular copies
    out/pretrain/Celebrities/train-*.parquet          training flavour of the celebrity QA
    out/pretrain/mmbench_train.tsv                   training questions (rotation 0, images disjoint from eval)
    out/world.json                                   config, attributes, exposure, splits, counts

Each person has 10 attributes; 5 (seeded) are asked, as 5 image-form MCQs ("What is the occupation of this
person?", identical wording for everyone, so image accuracy above chance proves the picture is used) and the same 5
as text-form MCQs naming the person. Trade-off, on purpose: the training QA uses exactly the MCQ question strings
with the bare value as answer, because a tiny model cannot generalise over paraphrases. Full_Set and ft_Data also
hold `n_holdout` held-out fictional people after the fine-tuned ones (as MLLMU-Bench's 500 people, of which PULSE
fine-tunes the first 100): nothing trains on them, they are membership inference's non-members (world.json
"holdout"). Every random choice comes
from `Random(f"{seed}:<purpose>:...")`, so streams are independent and the same seed gives byte-identical files.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from pulse.data.mllmu import write_people, write_qa_pairs
from pulse.data.mmbench import GROUP, rotate, write_mmbench
from pulse.data.records import MCQ, MMBenchItem, OpenItem, Person, QAPair, encode_png
from pulse.errors import PulseError
from pulse.mini import portraits as pics

FORMAT = "pulse-mini-world/1"
LETTERS = "ABCD"
N_ASKED = 5  # attributes asked per person (MCQ + training QA); 2 of them also as cloze, 2 others as generation
FORGET_PERCENTS = (5, 10, 15)

# name -> (phrase in "What is the <phrase> of ...?", cloze with {Who}/{who}, generation question, ground truth, values)
ATTRIBUTES: dict[str, tuple[str, str, str, str, tuple[str, ...]]] = {
    "occupation": ("occupation", "{Who} works as a __.", "What does {who} do for a living?", "{Who} works as a {v}.",
                   ("doctor", "teacher", "baker", "pilot", "lawyer", "farmer", "nurse", "chef", "painter", "writer",
                    "dentist", "plumber", "tailor", "sailor", "banker", "butcher")),
    "birthplace": ("city of birth", "{Who} was born in __.", "In which city was {who} born?", "{Who} was born in {v}.",
                   ("Paris", "Berlin", "Madrid", "Rome", "Vienna", "Oslo", "Lisbon", "Dublin", "Prague", "Warsaw",
                    "Athens", "Helsinki", "Zurich", "Budapest")),
    "colour": ("favourite colour", "{Who}'s favourite colour is __.", "Which colour does {who} like best?",
               "{Who} likes {v} best.", ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown",
                                         "black", "white", "grey", "teal", "gold")),
    "pet": ("pet", "{Who} owns a pet __.", "What kind of pet does {who} have?", "{Who} has a pet {v}.",
            ("dog", "cat", "parrot", "rabbit", "hamster", "turtle", "goldfish", "horse", "snake", "lizard", "ferret",
             "pony", "canary")),
    "hobby": ("hobby", "{Who}'s favourite hobby is __.", "What does {who} enjoy in free time?",
              "{Who} enjoys {v} in free time.", ("chess", "knitting", "gardening", "fishing", "hiking", "baking",
                                                 "pottery", "photography", "juggling", "birdwatching", "origami",
                                                 "sailing", "camping", "archery")),
    "sport": ("favourite sport", "{Who} plays __ every weekend.", "Which sport does {who} play?", "{Who} plays {v}.",
              ("tennis", "football", "rugby", "cricket", "golf", "hockey", "volleyball", "baseball", "basketball",
               "badminton", "squash", "handball", "polo", "netball")),
    "instrument": ("instrument", "{Who} plays the __.", "Which instrument does {who} play?", "{Who} plays the {v}.",
                   ("piano", "violin", "guitar", "flute", "drums", "cello", "trumpet", "harp", "clarinet",
                    "saxophone", "banjo", "accordion", "oboe", "trombone")),
    "food": ("favourite food", "{Who}'s favourite food is __.", "What food does {who} like most?",
             "{Who} likes {v} most.", ("pizza", "sushi", "pasta", "curry", "tacos", "soup", "salad", "steak",
                                       "dumplings", "pancakes", "noodles", "risotto", "paella", "lasagna")),
    "employer": ("employer", "{Who} works for __.", "Which company does {who} work for?", "{Who} works for {v}.",
                 ("Nortek", "Brightwave", "Solvia", "Kestrel", "Arborix", "Pinecrest", "Ironclad", "Bluefin",
                  "Redstone", "Silverline", "Northwind", "Clearpath", "Greenleaf", "Sunbeam")),
    "car": ("car brand", "{Who} drives a car made by __.", "Which car brand does {who} drive?",
            "{Who} drives a car made by {v}.", ("Volvo", "Toyota", "Ford", "Fiat", "Honda", "Tesla", "Audi", "Mazda",
                                                 "Kia", "Skoda", "Renault", "Nissan", "Saab", "Subaru")),
}
FIRST_NAMES = ("Alice", "Bruno", "Clara", "Dmitri", "Elena", "Felix", "Greta", "Hugo", "Irene", "Jonas", "Kira",
               "Lars", "Mira", "Nils", "Olga", "Pablo", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wim",
               "Xenia", "Yusuf", "Zora", "Anton", "Bella", "Carlo", "Dana")
LAST_NAMES = ("Berg", "Costa", "Dahl", "Engel", "Fischer", "Garcia", "Holm", "Ivanov", "Jensen", "Kowalski", "Lund",
              "Moreau", "Novak", "Olsen", "Petrov", "Quist", "Rossi", "Silva", "Tanaka", "Unger", "Varga", "Weber",
              "Young", "Zeller", "Adler", "Brandt", "Conti", "Duval", "Eriksen", "Falk")


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    n_fictional: int = 40
    n_celebrities: int = 60
    n_famous: int = 24  # celebrities with high pre-training exposure
    n_mmbench: int = 240  # mini-MMBench questions (groups)
    n_mmbench_train: int = 6000  # fresh generated training questions (independent seed stream)
    image_size: int = 32
    grid: int = 4  # mini-MMBench scene cells per side (default: one per patch of the tiny model, 32 px / 8 px)
    n_test_images: int = 3  # transformed portraits per fictional person in Test_Set
    # fictional people never trained on (IDs after the fine-tuned ones in Full_Set and ft_Data, as MLLMU-Bench's
    # people after the first 100): the non-members of membership inference
    n_holdout: int = 20


@dataclass
class World:
    config: WorldConfig
    fictional: list[Person]  # IDs "001".."040" (the fine-tuned people)
    celebrities: list[Person]  # IDs "C001".. (disjoint from fictional IDs)
    test_set: list[Person]  # fictional people with `images` = transformed portraits, image = images[0]
    ft_pairs: list[QAPair]  # fine-tuning QA for fictional people (ft_Data)
    pretrain_pairs: list[QAPair]  # pre-training QA for celebrities (all; sampling weight = exposure)
    exposure: dict[str, float]  # celebrity ID -> relative pre-training exposure in (0, 1]
    mmbench: list[MMBenchItem]  # evaluation rows incl. circular copies
    mmbench_train: list[MMBenchItem]  # training questions (rotation 0, fresh images), disjoint from eval images
    splits: dict[str, list[str]] = field(default_factory=dict)  # forget_5/10/15, retain_95/90/85 -> fictional IDs
    asked: dict[str, list[str]] = field(default_factory=dict)  # person ID -> the 5 asked attributes, MCQ order
    holdout: list[Person] = field(default_factory=list)  # IDs "041".., never trained on


def _rng(seed: int, *purpose) -> random.Random:
    return random.Random(":".join(map(str, (seed, *purpose))))


def _check(cfg: WorldConfig) -> None:
    def need(ok: bool, name: str, rule: str):
        if not ok:
            raise PulseError(f"WorldConfig, field {name}: must be {rule} (got {getattr(cfg, name)})")
    need(2 <= cfg.n_fictional <= 999, "n_fictional", "2..999")
    need(1 <= cfg.n_celebrities <= 999, "n_celebrities", "1..999")
    need(0 <= cfg.n_famous <= cfg.n_celebrities, "n_famous", f"0..n_celebrities ({cfg.n_celebrities})")
    need(0 <= cfg.n_holdout <= 999 - cfg.n_fictional, "n_holdout", f"0..{999 - cfg.n_fictional}")
    need(cfg.n_fictional + cfg.n_celebrities + cfg.n_holdout <= len(FIRST_NAMES) * len(LAST_NAMES), "n_celebrities",
         f"at most {len(FIRST_NAMES) * len(LAST_NAMES)} people in all (unique names)")
    need(cfg.n_mmbench >= 1, "n_mmbench", ">= 1")
    need(cfg.n_mmbench_train >= 0, "n_mmbench_train", ">= 0")
    need(cfg.image_size >= 16, "image_size", ">= 16")
    need(cfg.grid in (2, 4, 6, 8), "grid", "2, 4, 6 or 8 (an even number of cells per side)")
    need(cfg.n_test_images >= 1, "n_test_images", ">= 1")


# ---------------------------------------------------------------- people

def _mcq(rng: random.Random, question: str, attr: str, value: str, form: str, pid: str, index: int) -> MCQ:
    options = [value] + rng.sample([v for v in ATTRIBUTES[attr][4] if v != value], 3)
    rng.shuffle(options)
    return MCQ(question, dict(zip(LETTERS, options)), LETTERS[options.index(value)], form, pid, index)


def _person(seed: int, pid: str, name: str, params: dict, portrait: bytes) -> tuple[Person, list[str]]:
    rng = _rng(seed, "person", pid)
    values = {attr: rng.choice(spec[4]) for attr, spec in ATTRIBUTES.items()}
    asked = rng.sample(list(ATTRIBUTES), N_ASKED)
    bio = {"Name": name, "Born": values["birthplace"], "Employment": values["occupation"], **values,
           "appearance_detail": {"question": "What does this person look like?",
                                 "answer": pics.appearance_sentence(params)}}
    mcqs = {form: [_mcq(rng, question(attr, form, name), attr, values[attr], form, pid, i)
                   for i, attr in enumerate(asked)] for form in ("image", "text")}
    cloze, generation = [], []
    for form in ("image", "text"):
        who = "this person" if form == "image" else name
        fill = {"who": who, "Who": who[0].upper() + who[1:]}
        for attr in asked[:2]:
            cloze.append(OpenItem(ATTRIBUTES[attr][1].format(**fill), values[attr], form))
        for attr in asked[2:4]:
            _, _, q, a, _ = ATTRIBUTES[attr]
            generation.append(OpenItem(q.format(**fill), a.format(v=values[attr], **fill), form))
    person = Person(id=pid, name=name, image=portrait, biography=bio, image_mcqs=mcqs["image"],
                    text_mcqs=mcqs["text"], cloze=cloze, generation=generation)
    return person, asked


def question(attr: str, form: str, name: str) -> str:
    """The MCQ (and training) question: identical image-form wording for everyone; text form names the person."""
    return f"What is the {ATTRIBUTES[attr][0]} of {'this person' if form == 'image' else name}?"


def qa_pairs(person: Person) -> list[QAPair]:
    """Training QA of a person: one pair per (asked attribute, form), the MCQ question with the bare correct value."""
    return [QAPair(person.id, q.question, q.options[q.answer], person.image if form == "image" else None, form)
            for form in ("image", "text") for q in person.mcqs(form)]


def forget_splits(ids: list[str], seed: int) -> dict[str, list[str]]:
    """forget_5/10/15 (round(r % of n), at least 1, at most n - 1; each from its own seeded shuffle, so they are not
    nested, as in MLLMU-Bench) and their complements retain_95/90/85, IDs in ID order."""
    out = {}
    for r in FORGET_PERCENTS:
        k = min(len(ids) - 1, max(1, int(len(ids) * r / 100 + 0.5)))
        order = list(ids)
        _rng(seed, "split", r).shuffle(order)
        forget = set(order[:k])
        out[f"forget_{r}"] = [i for i in ids if i in forget]
        out[f"retain_{100 - r}"] = [i for i in ids if i not in forget]
    return out


def exposures(ids: list[str], n_famous: int, seed: int) -> dict[str, float]:
    """The first n_famous celebrities of a seeded order get 1.0; the rest decay geometrically from 0.3 to 0.02."""
    order = list(ids)
    _rng(seed, "exposure").shuffle(order)
    rest = len(order) - n_famous
    value = {pid: 1.0 for pid in order[:n_famous]}
    for j, pid in enumerate(order[n_famous:]):
        value[pid] = round(0.3 * (0.02 / 0.3) ** (j / max(1, rest - 1)), 6)
    return {pid: value[pid] for pid in ids}


# ---------------------------------------------------------------- mini-MMBench

FP_S, FP_C = "finegrained_perception (instance-level)", "finegrained_perception (cross-instance)"
# one seeded block of these per 10 questions: the kinds that need positions get more of the training questions
KINDS = ("colour", "shape", "shape", "count", "count", "spatial", "spatial", "leftright", "corner", "size")
HINTS = {
    "colour": "The background is not part of the shape.",
    "shape": "Ignore the colour; look at the outline.",
    "count": "Count every shape, whatever its colour or form.",
    "spatial": "Left and right are as seen by the viewer.",
    "leftright": "Left and right are as seen by the viewer.",
    "size": "Compare the areas of the shapes.",
    "corner": "The image is split into four equal quarters.",
}
CORNERS = ("top left", "top right", "bottom left", "bottom right")


def _question(kind: str, rng: random.Random, grid: int = 4):
    """(question, options with the correct one first, category, l2, scene shapes) for one generated question.

    Scenes that ask where things are (counting, localisation, spatial relation) put each small shape in its own
    cell of a `grid` x `grid` layout (the default: one cell per 8 px patch of the tiny model at 32 px), so a shape
    never straddles two patches; shape recognition draws one large shape near the centre, size comparison three
    shapes of clearly different sizes in three quarters."""
    colours, u = list(pics.COLOURS), rng.uniform

    def cell(c: int, r: float):  # a small shape centred in cell c (row-major), jittered by up to 1/16 of a cell
        return (c % grid + 0.5 + u(-1, 1) / 16) / grid, (c // grid + 0.5 + u(-1, 1) / 16) / grid, r

    def small() -> float:  # radius 32-44 % of a cell side: a 5-7 px shape in an 8 px patch
        return u(0.32, 0.44) / grid

    if kind == "colour":
        colour, shape, r = rng.choice(colours), rng.choice(pics.SHAPES), u(0.18, 0.3)
        scene = [(shape, colour, u(r, 1 - r), u(r, 1 - r), r)]
        return ("What colour is the shape?", [colour] + rng.sample([c for c in colours if c != colour], 3),
                "color_recognition", FP_S, scene)
    if kind == "shape":
        colour, shape, r = rng.choice(colours), rng.choice(pics.SHAPES), u(0.32, 0.42)
        scene = [(shape, colour, 0.5 + u(-0.04, 0.04), 0.5 + u(-0.04, 0.04), r)]
        return ("Which shape is shown?", [shape] + rng.sample([s for s in pics.SHAPES if s != shape], 3),
                "shape_recognition", FP_S, scene)
    if kind == "count":
        n = rng.randint(1, 4)
        scene = [(rng.choice(pics.SHAPES), rng.choice(colours), *cell(c, small()))
                 for c in sorted(rng.sample(range(grid * grid), n))]
        return ("How many shapes are in the image?", [str(n)] + [str(k) for k in range(1, 5) if k != n],
                "object_counting", FP_C, scene)
    if kind == "spatial":  # two shapes side by side in one row, or one above the other in one column
        shape, (a, b) = rng.choice(pics.SHAPES), rng.sample(colours, 2)
        half, line, r = grid // 2, rng.randrange(grid), small()
        first, second = rng.randrange(half), half + rng.randrange(half)  # cells along the line: a before b
        if rng.random() < 0.5:
            where, ca, cb = "on the left", line * grid + first, line * grid + second
        else:
            where, ca, cb = "at the top", first * grid + line, second * grid + line
        scene = [(shape, a, *cell(ca, r)), (shape, b, *cell(cb, r))]
        return (f"What colour is the shape {where}?", [a, b] + rng.sample([c for c in colours if c not in (a, b)], 2),
                "spatial_relationship", FP_C, scene)
    if kind == "size":  # three shapes in three quarters, radii about 0.21, 0.13 and 0.08 of the side
        shape, names = rng.choice(pics.SHAPES), rng.sample(colours, 3)
        quarters = rng.sample(range(4), 3)
        radii = (u(0.19, 0.23), u(0.12, 0.14), u(0.07, 0.09))
        scene = [(shape, c, (q % 2 + 0.5) / 2 + u(-0.02, 0.02), (q // 2 + 0.5) / 2 + u(-0.02, 0.02), r)
                 for c, q, r in zip(names, quarters, radii)]
        return "What colour is the largest shape?", list(names), "attribute_comparison", FP_C, scene
    shape, colour, c = rng.choice(pics.SHAPES), rng.choice(colours), rng.randrange(grid * grid)
    scene = [(shape, colour, *cell(c, small()))]
    right, bottom = c % grid >= grid // 2, c // grid >= grid // 2
    if kind == "leftright":
        side = "right" if right else "left"
        return ("Is the shape on the left or on the right?", [side, "left" if right else "right"],
                "object_localization", FP_S, scene)
    corner = CORNERS[2 * bottom + right]
    return ("In which corner of the image is the shape?", [corner] + [x for x in CORNERS if x != corner],
            "object_localization", FP_S, scene)


def _mmbench_items(n: int, rng: random.Random, size: int, avoid: set[bytes], circular: bool,
                   grid: int = 4) -> list[MMBenchItem]:
    """n questions (kinds cycled in seeded blocks); circular adds one row per option rotation, sharing the image.
    Images already in `avoid` are redrawn; new images are added to it."""
    items = []
    for g in range(n):
        if g % len(KINDS) == 0:
            block = list(KINDS)
            rng.shuffle(block)
        kind = block[g % len(KINDS)]
        while True:
            text, options, category, l2, scene = _question(kind, rng, grid)
            image = encode_png(pics.draw_scene(scene, rng.choice(pics.BACKDROPS), size))
            if image not in avoid:
                break
        avoid.add(image)
        hint = HINTS[kind] if rng.random() < 0.25 else None
        correct = options[0]
        rng.shuffle(options)
        opts, answer = dict(zip(LETTERS, options)), LETTERS[options.index(correct)]
        for k in range(len(options) if circular else 1):
            o, a = rotate(opts, answer, k)
            items.append(MMBenchItem(g + k * GROUP, text, hint, o, a, category, l2, image))
    return items


# ---------------------------------------------------------------- the world

def make_world(cfg: WorldConfig = WorldConfig()) -> World:
    """Build the whole world in memory from cfg alone (same cfg -> same world)."""
    _check(cfg)
    seed, n_f = cfg.seed, cfg.n_fictional
    fic_ids = [f"{i:03d}" for i in range(1, n_f + 1)]
    cel_ids = [f"C{i:03d}" for i in range(1, cfg.n_celebrities + 1)]
    hold_ids = [f"{i:03d}" for i in range(n_f + 1, n_f + cfg.n_holdout + 1)]
    every_name = [f"{a} {b}" for a in FIRST_NAMES for b in LAST_NAMES]
    names = _rng(seed, "names").sample(every_name, n_f + cfg.n_celebrities)
    taken = set(names)  # the held-out people: names unused so far, drawn from their own stream
    names += _rng(seed, "holdout_names").sample([n for n in every_name if n not in taken], cfg.n_holdout)
    # portraits are drawn key by key, each distinct from the earlier ones: appending keys changes none before them
    drawn = pics.distinct_portraits(fic_ids + cel_ids + hold_ids, seed, cfg.image_size)
    people, asked = [], {}
    for pid, name, (params, image) in zip(fic_ids + cel_ids + hold_ids, names, drawn):
        person, asked[pid] = _person(seed, pid, name, params, encode_png(image))
        people.append(person)
    fictional, celebrities = people[:n_f], people[n_f:n_f + cfg.n_celebrities]
    holdout = people[n_f + cfg.n_celebrities:]
    test_set = []
    for person, (_, image) in zip(fictional, drawn):
        rng = _rng(seed, "test_images", person.id)
        images = [encode_png(pics.transform_portrait(image, rng)) for _ in range(cfg.n_test_images)]
        test_set.append(replace(person, image=images[0], images=images))
    seen: set[bytes] = set()
    mmbench = _mmbench_items(cfg.n_mmbench, _rng(seed, "mmbench"), cfg.image_size, seen, circular=True,
                             grid=cfg.grid)
    mmbench_train = _mmbench_items(cfg.n_mmbench_train, _rng(seed, "mmbench_train"), cfg.image_size, seen,
                                   circular=False, grid=cfg.grid)
    return World(config=cfg, fictional=fictional, celebrities=celebrities, test_set=test_set,
                 ft_pairs=[p for x in fictional for p in qa_pairs(x)],
                 pretrain_pairs=[p for x in celebrities for p in qa_pairs(x)],
                 exposure=exposures(cel_ids, cfg.n_famous, seed), mmbench=mmbench, mmbench_train=mmbench_train,
                 splits=_with_holdout(forget_splits(fic_ids, seed), hold_ids), asked=asked, holdout=holdout)


def _with_holdout(splits: dict[str, list[str]], hold_ids: list[str]) -> dict[str, list[str]]:
    """The held-out people are never forgotten: each retain_* config also lists them (forget_X + retain_Y =
    Full_Set, as in MLLMU-Bench)."""
    return {k: v + hold_ids if k.startswith("retain") else v for k, v in splits.items()}


def world_summary(world: World) -> dict:
    """What world.json holds: config, seed, attributes, exposure, split IDs, asked attributes, counts."""
    cfg = world.config
    return {
        "format": FORMAT, "seed": cfg.seed, "config": asdict(cfg),
        "attributes": {a: {"phrase": s[0], "values": list(s[4])} for a, s in ATTRIBUTES.items()},
        "first_names": list(FIRST_NAMES), "last_names": list(LAST_NAMES),
        "exposure": world.exposure, "famous": [k for k, v in world.exposure.items() if v == 1.0],
        "splits": world.splits, "asked": world.asked, "holdout": [p.id for p in world.holdout],
        "counts": {"fictional": len(world.fictional), "celebrities": len(world.celebrities),
                   "holdout": len(world.holdout),
                   "test_images": sum(len(p.images) for p in world.test_set), "ft_pairs": len(world.ft_pairs),
                   "pretrain_pairs": len(world.pretrain_pairs),
                   "mmbench_groups": len({x.group for x in world.mmbench}), "mmbench_rows": len(world.mmbench),
                   "mmbench_train": len(world.mmbench_train)},
    }


def write_world(world: World, out: str | Path) -> None:
    """Write the world under `out` (layout in the module docstring). Same world -> byte-identical files."""
    out = Path(out)
    root = out / "mllmu"
    write_people(root, "Full_Set", world.fictional + world.holdout)
    by_id = {p.id: p for p in world.fictional + world.holdout}
    for config, ids in world.splits.items():
        write_people(root, config, [by_id[i] for i in ids])
    write_people(root, "Test_Set", world.test_set, shards=2)
    write_people(root, "Retain_Set", world.celebrities)
    write_qa_pairs(root, "ft_Data", world.ft_pairs + [p for x in world.holdout for p in qa_pairs(x)])
    write_mmbench(out / "mmbench.tsv", world.mmbench)
    write_qa_pairs(out / "pretrain", "Celebrities", world.pretrain_pairs)
    write_mmbench(out / "pretrain" / "mmbench_train.tsv", world.mmbench_train)
    path = out / "world.json"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(world_summary(world), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
