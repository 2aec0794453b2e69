"""MCQ evaluation on the (small, really trained) mini world: both scoring modes, predictions kept; the early stop
and the shared few-shot prefix against a scripted stand-in model."""
import json
import types

import pytest
import torch
from transformers import LlamaConfig
from transformers.cache_utils import DynamicCache

from pulse.data.mllmu import read_people
from pulse.data.mmbench import read_mmbench
from pulse.eval.mcq import evaluate_mcq
from pulse.eval.mmbench import evaluate_mmbench
from pulse.models.batches import Sample
from pulse.models.load import load_model


def test_likelihood_scoring_learned_fictional_people(small_world):
    lm = load_model(small_world / "models" / "finetuned")
    held = set(json.loads((small_world / "world.json").read_text())["holdout"])  # never trained on
    people = [p for p in read_people(small_world / "mllmu", "Full_Set") if p.id not in held]
    res = evaluate_mcq(lm, people)
    assert res.n == {"image": 5 * len(people), "text": 5 * len(people)}
    assert len(res.predictions) == 10 * len(people)
    assert all(len(p["scores"]) == 4 for p in res.predictions)
    # chance is 25%: the fine-tuned tiny model has learned the people in both forms
    assert res.accuracy["image"] > 50 and res.accuracy["text"] > 50
    sub = res.for_people([people[0].id])
    assert sub.n == {"image": 5, "text": 5}


def test_generate_scoring_faithful_protocol(small_world):
    lm = load_model(small_world / "models" / "finetuned")
    people = read_people(small_world / "mllmu", "forget_15")
    res = evaluate_mcq(lm, people, scoring="generate", demo_people=1, demo_seed=3)
    demo = res.demo_ids["image"]
    assert len(demo) == 1 and demo == res.demo_ids["text"]
    # the demo person's questions are excluded from scoring
    assert {p["person_id"] for p in res.predictions}.isdisjoint(demo)
    assert res.n["image"] == 5 * (len(people) - 1)
    assert all(p["prediction"] in (None, "A", "B", "C", "D") for p in res.predictions)
    again = evaluate_mcq(lm, people, scoring="generate", demo_people=1, demo_seed=3)
    assert again.predictions == res.predictions  # seeded and greedy: reproducible


def test_mmbench_both_scorings(small_world):
    lm = load_model(small_world / "models" / "pretrained")
    items = read_mmbench(small_world / "mmbench.tsv")
    like = evaluate_mmbench(lm, items)
    assert like["scoring"] == "likelihood" and "non-standard" in like["note"].lower() or "never" in like["note"]
    assert like["groups"] == len({i.group for i in items}) and like["rows"] == len(items)
    assert 0 <= like["circular"] <= like["vanilla"] + 1e-9 or like["circular"] <= 100
    gen = evaluate_mmbench(lm, items[:12], scoring="generate", max_new_tokens=4)
    assert gen["scoring"] == "generate" and set(gen["predictions"]) == {str(i.index) for i in items[:12]}


def test_shared_prefix_scoring_equals_full_sequences(small_world):
    """The KV-cache-sharing scorer (one image's shared prompt prefix, then each prompt's rest, then the options)
    gives the same option log-probs as scoring every option as a full sequence, whatever the batch boundaries."""
    from pulse.eval.likelihood import option_logps, option_logps_full
    from pulse.eval.mmbench import mmbench_message
    from pulse.models.batches import Encoder

    lm = load_model(small_world / "models" / "finetuned")
    enc = Encoder(lm.processor)
    rows = read_mmbench(small_world / "mmbench.tsv")
    groups = list(dict.fromkeys(it.group for it in rows))[:6]
    items = [it for it in rows if it.group in groups]  # 2-, 3- and 4-option rows with every circular rotation
    assert len(items) > len(groups)
    qs = [(lm.template.prompt(mmbench_message(it), True), it.image, list(it.options.values())) for it in items]
    people = read_people(small_world / "mllmu", "Full_Set")[:2]
    qs += [(lm.template.prompt(m.question, m.form == "image"), p.image if m.form == "image" else None,
            list(m.options.values())) for p in people for m in p.image_mcqs + p.text_mcqs]
    full = option_logps_full(lm.model, enc, qs)
    ids = [enc.token_ids(Sample(prompt, o, image), eos=False) for prompt, image, opts in qs for o in opts]
    assert any(len(full_ids) - n > 1 for full_ids, n in ids)  # multi-token options run as continuations
    for batch_size in (16, 7, 4):  # 4 and 1 question(s) per batch: groups split across batches, single rows
        shared = option_logps(lm.model, enc, qs, batch_size=batch_size)
        assert [len(s) for s in shared] == [len(f) for f in full]
        for s, f in zip(shared, full):
            assert s == pytest.approx(f, abs=1e-4)


def test_prefix_groups_hold_the_image():
    """A group's shared prefix holds every image token of its rows and leaves each row one token; otherwise its
    rows are scored alone."""
    from pulse.eval.likelihood import _groups

    img = 9
    prompts = [[1, 2, img, img, 5, 6], [1, 2, img, img, 5, 7, 8], [1, 2, img, img, 5],  # one image: prefix 4
               [1, 3, 4], [1, 3, 5],  # text only: prefix 2
               [1, img, 4], [2, img, 4],  # same image, no common prefix: scored alone
               [1, 2]]
    keys = ["a", "a", "a", None, None, "b", "b", "c"]
    assert _groups(prompts, keys, img) == [([0, 1, 2], 4), ([3, 4], 2), ([5], 2), ([6], 2), ([7], 1)]
    with pytest.raises(ValueError, match="at least two tokens"):
        _groups([[1, img]], ["a"], img)


def test_shared_demo_prefix_generation_equals_full_prompts(small_world):
    """Generating after a cached demo prefix gives the same text as generating from the full faithful prompts."""
    from pulse.eval import prompts as P
    from pulse.eval.generate import generate, generate_shared_prefix
    from pulse.models.batches import Encoder

    lm = load_model(small_world / "models" / "finetuned")
    enc = Encoder(lm.processor)
    people = sorted(read_people(small_world / "mllmu", "Full_Set"), key=lambda p: p.id)[:4]
    for form in ("image", "text"):
        demos, demo_imgs = P.demo_mcqs(people[:1], form), P.demo_images(people[:1], form)
        mcqs = P.scored_mcqs(people, form, [people[0].id], demos)
        q_imgs = [[next(p.image for p in people if p.id == m.person_id)] if form == "image" else [] for m in mcqs]
        shared = generate_shared_prefix(lm.model, enc, "".join(P.demo_string(d, form) for d in demos), demo_imgs,
                                        [P.mcq_prompt(m, []) for m in mcqs], q_imgs, max_new_tokens=6,
                                        batch_size=4, stop_at_first_char=False)
        full = generate(lm.model, enc, [P.mcq_prompt(m, demos) for m in mcqs],
                        [demo_imgs + q for q in q_imgs], max_new_tokens=6, batch_size=4)
        assert shared == full


# ---------------------------------------------------------------- early stop and shared prefix with a scripted model

PAD, EOS, PART1, PART2 = 0, 1, 2, 3  # PART1 (+ PART2): a character split over two byte-fallback tokens


class CharTok:
    """One token per character (id = ord + 10); PART1 alone decodes to U+FFFD, PART1 PART2 to U+3000 (a space)."""
    pad_token_id, eos_token_id = PAD, EOS

    def __call__(self, text):
        return {"input_ids": [ord(c) + 10 for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        ids, out, i = [int(t) for t in ids], [], 0
        while i < len(ids):
            t = ids[i]
            if t == PART1:
                both = i + 1 < len(ids) and ids[i + 1] == PART2
                out.append("\u3000" if both else "\ufffd")
                i += 2 if both else 1
                continue
            if t >= 10:
                out.append(chr(t - 10))
            i += 1
        return "".join(out)

    def batch_decode(self, rows, skip_special_tokens=True):
        return [self.decode(r) for r in rows]

    def ids(self, text):
        return self(text)["input_ids"]


class Scripted(torch.nn.Module):
    """A 2-layer stand-in for a LLaVA model: each row emits its scripted tokens greedily, then EOS. It writes
    per-layer K/V into the cache and checks that attention receives prefix + row tokens for every row."""

    def __init__(self, tok, scripts: dict[str, list[int]]):
        super().__init__()
        self.tok, self.scripts = tok, scripts
        self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.bfloat16))
        self.config = LlamaConfig(num_hidden_layers=2, num_attention_heads=1, num_key_value_heads=1, hidden_size=4,
                                  intermediate_size=8, vocab_size=200_000)
        self.calls, self.rows, self.step = 0, None, 0

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True,
                logits_to_keep=0, **kw):
        self.calls += 1
        b, t = input_ids.shape
        prefix_call = cache is None
        if prefix_call:
            cache = DynamicCache()
        elif self.rows is None or cache.layers[0].keys is None:  # first call of a batch: the rows' suffixes
            texts = [self.tok.decode([i for i, m in zip(r, mk) if m]) for r, mk in
                     zip(input_ids.tolist(), attention_mask[:, -t:].tolist())]
            self.rows, self.step = [self.scripts[x] for x in texts], 0
        else:
            self.step += 1
        for layer in range(2):
            k, v = cache.update(torch.ones(b, 1, t, 4), torch.ones(b, 1, t, 4), layer)
            assert k.shape[0] == b and k.shape[-2] == attention_mask.shape[1]
        logits = torch.zeros(b, 1, 200_000)
        if not prefix_call:
            for j, script in enumerate(self.rows):
                logits[j, 0, script[self.step] if self.step < len(script) else EOS] = 1
        return types.SimpleNamespace(logits=logits, cache=cache)


def fake_encoder(tok):
    return types.SimpleNamespace(tok=tok, image_token="<image>", n_image_tokens=lambda b: 1, device="cpu",
                                 dtype=torch.float32, pixels=None)


def test_early_stop_gives_the_full_decode_parse():
    """Scripted continuations (the hard ones begin with ASSISTANT:): the early-stopped continuation parses as
    eval.py parses the full 50-token decode, and easy rows stop after their first character."""
    from pulse.eval import prompts as P
    from pulse.eval.generate import generate_shared_prefix

    tok = CharTok()
    conts = {"B": "B", " B": " B", "A.": "A.", "ASS": "ASS", "ASSISTANT: B": "ASSISTANT: B",
             "\nASSISTANT:": "\nASSISTANT:", "Assistant": "Assistant", "": "", "ASSISTANT B": "ASSISTANT B",
             "ASSISTANTASSISTANT:": "ASSISTANTASSISTANT:", "The answer is B": "The answer is B", "b": "b"}
    scripts = {f"USER:\nQ{i}?\nASSISTANT:": tok.ids(c) for i, c in enumerate(conts)}
    scripts["USER:\nQpart?\nASSISTANT:"] = [PART1, PART2, *tok.ids("C")]  # U+3000 then C: "C"
    scripts["USER:\nQeos?\nASSISTANT:"] = [EOS]
    suffixes = list(scripts)
    prefix = "USER:\nQuestion: demo?\nA: a\nB: b\nC: c\nD: d\nCorrect Answer: A\n"
    enc = fake_encoder(tok)
    runs = {}
    for stop in (True, False):
        model = Scripted(tok, scripts)
        runs[stop] = generate_shared_prefix(model, enc, prefix, [], suffixes, [[] for _ in suffixes],
                                            max_new_tokens=50, batch_size=5, stop_at_first_char=stop,
                                            return_first_token=True)
    keys = {"A": 0, "B": 0, "C": 0, "D": 0}
    for s, (early, first), (full, first_full) in zip(suffixes, runs[True], runs[False]):
        assert first == first_full == (scripts[s] or [EOS])[0]  # the raw first generated token
        assert full == tok.decode(scripts[s])  # no stop: the whole script
        assert P.parse_mcq_answer(prefix + s + early, keys) == P.parse_mcq_answer(prefix + s + full, keys), s
    early = dict(zip(suffixes, (t for t, _ in runs[True])))
    assert early[suffixes[0]] == "B" and early[suffixes[1]] == " B" and early[suffixes[2]] == "A."
    assert early[suffixes[3]] == "ASS"  # still a prefix of ASSISTANT: at EOS
    assert early[suffixes[4]] == "ASSISTANT:"  # settled on None
    assert early[suffixes[6]] == "As"  # "As" is no prefix of "ASSISTANT:": A stands
    assert early[suffixes[8]] == "ASSISTANT "
    assert early["USER:\nQpart?\nASSISTANT:"] == "\u3000C"  # U+FFFD alone did not stop it
    assert P.parse_mcq_answer(prefix + "USER:\nQpart?\nASSISTANT:" + "\ufffd", keys) is None  # it would have


def test_first_character_criterion_for_hf_generate():
    from pulse.eval.generate import FirstCharacter
    from pulse.eval.prompts import answer_settled

    tok = CharTok()
    prompt = tok.ids("ASSISTANT:")
    rows = [tok.ids(" B"), tok.ids("ASS"), tok.ids("ASSISTANT:"), [PART1], [PART1, PART2], tok.ids(" ") + [EOS],
            tok.ids("As")]
    width = max(map(len, rows))
    ids = torch.tensor([prompt + r + [PAD] * (width - len(r)) for r in rows])
    done = FirstCharacter(tok, len(prompt))(ids, None).tolist()
    assert done == [True, False, True, False, False, True, True]
    assert done[:5] == [answer_settled(tok.decode(r)) for r in rows[:5]]


def test_shared_prefix_cache_is_not_copied_per_row():
    """The prefix K/V are held once (batch 1) and broadcast; rows store only their own tokens."""
    from pulse.eval.generate import SharedPrefixLayer, shared_prefix_cache

    pre = DynamicCache()
    k = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    pre.update(k, k + 1, 0)
    c1, c2 = shared_prefix_cache(pre), shared_prefix_cache(pre)
    assert isinstance(c1.layers[0], SharedPrefixLayer) and c1.layers[0].prefix_keys is pre.layers[0].keys
    new = torch.full((5, 2, 2, 4), -1.0)
    keys, values = c1.update(new, new, 0)
    assert keys.shape == (5, 2, 5, 4) and torch.equal(keys[3, :, :3], k[0]) and torch.equal(values[4, :, :3], k[0] + 1)
    assert c1.layers[0].keys.shape == (5, 2, 2, 4)  # only the rows' own tokens are stored
    assert c1.get_seq_length() == 5 and c1.get_mask_sizes(1, 0) == (6, 0)
    assert c2.get_seq_length() == 3 and pre.layers[0].keys.shape == (1, 2, 3, 4)  # the prefix is untouched
    keys, _ = c1.update(torch.zeros(5, 2, 1, 4), torch.zeros(5, 2, 1, 4), 0)
    assert keys.shape == (5, 2, 6, 4) and c1.get_seq_length() == 6


def test_kv_bytes_and_rows_from_free_memory():
    """LLaVA-1.5-7B/13B bf16: 2 x layers x kv_heads x head_dim x 2 bytes per token; a 3,500-token prefix copy is
    1.8 / 2.9 GB. Rows are capped by 0.7 x free memory / bytes per row."""
    from pulse.eval.generate import MEMORY_FRACTION, kv_bytes_per_token, row_bytes, rows_that_fit

    def shaped(layers, hidden, heads, ffn):
        m = types.SimpleNamespace(config=LlamaConfig(num_hidden_layers=layers, hidden_size=hidden,
                                                     num_attention_heads=heads, intermediate_size=ffn))
        m.parameters = lambda: iter([torch.zeros(1, dtype=torch.bfloat16)])
        return m

    m7, m13 = shaped(32, 4096, 32, 11008), shaped(40, 5120, 40, 13824)
    assert kv_bytes_per_token(m7) == 2 * 32 * 32 * 128 * 2 == 524_288
    assert kv_bytes_per_token(m13) == 2 * 40 * 40 * 128 * 2 == 819_200
    assert round(kv_bytes_per_token(m7) * 3500 / 1e9, 1) == 1.8
    assert round(kv_bytes_per_token(m13) * 3500 / 1e9, 1) == 2.9
    per_row = row_bytes(m13, stored=700, attended=4200, queries=650)
    # stored rows' KV + one layer's prefix view + fp32 scores + activations
    assert per_row == 819_200 * 700 + 819_200 // 40 * 4200 + 40 * 650 * 4200 * 4 + 650 * (5120 * 4 + 13824 * 3) * 4
    assert rows_that_fit(16, per_row, "cpu", free=40 * 10**9) == min(16, int(40e9 * MEMORY_FRACTION) // per_row)
    assert rows_that_fit(16, 10**9, "cpu", free=5 * 10**9) == 3
    assert rows_that_fit(16, 10**12, "cpu", free=10**9) == 1  # never below one row
    assert rows_that_fit(16, 10**9, "meta", free=None) == 16  # unknown free memory: no cap


def test_row_cap_keeps_predictions(monkeypatch):
    """No free memory (one row per batch) and unknown free memory (all rows) give the same continuations."""
    from pulse.eval import generate as G

    tok = CharTok()
    scripts = {f"USER:\nQ{i}?\nASSISTANT:": tok.ids(c) for i, c in enumerate(["B", "ASS", " C", "x", "ASSISTANT:"])}
    outs = []
    for cap in (1, 5):
        monkeypatch.setattr(G, "free_memory", lambda device, cap=cap: None if cap == 5 else 0)
        outs.append(G.generate_shared_prefix(Scripted(tok, scripts), fake_encoder(tok), "P\n", [], list(scripts),
                                             [[] for _ in scripts], batch_size=5))
    assert outs[0] == outs[1] == ["B", "ASS", " C", "x", "ASSISTANT:"]


# ---------------------------------------------------------------- per-set demo people (runner) and `pulse eval`


def test_runner_draws_each_sets_demo_person_from_its_own_ids(small_world, monkeypatch):
    """MLLMU-Bench evaluates one ID list per call: the unlearn set's demo person comes from the unlearn IDs, the
    retain set's from the retain IDs; celebrities (pre-trained scenario) are zero-shot. Rows still split by ID."""
    import collections

    from pulse.config import EvalSection
    from pulse.eval.prompts import select_demo_people
    from pulse.models.batches import Encoder
    from pulse.protocol import context, results

    monkeypatch.setattr(context, "evaluate_mmbench", lambda *a, **k: collections.defaultdict(float))
    ev = EvalSection(scoring="generate", demo_people=1, demo_seed=5, max_new_tokens=3, batch_size=16, mia=False,
                     tasks=["mcq"])
    no_oracle = types.SimpleNamespace(finetuned=types.SimpleNamespace(oracle=None))
    ctx = types.SimpleNamespace(cfg=types.SimpleNamespace(eval=ev, scenario=no_oracle), mmbench=[])
    lm = load_model(small_world / "models" / "finetuned")
    enc = Encoder(lm.processor)
    people = sorted(read_people(small_world / "mllmu", "Full_Set"), key=lambda p: p.id)[:5]
    unlearn, retain = people[:2], people[2:]
    sets = context.eval_sets(ctx, "finetuned", unlearn, retain)
    mcq, _ = context.Context.evaluate(ctx, lm, enc, sets)
    for name, group in (("unlearn", unlearn), ("retain", retain)):
        ids = [p.id for p in group]
        assert mcq["demo_ids"][name] == {f: select_demo_people(ids, 1, 5) for f in ("image", "text")}
        scored = {p["person_id"] for p in mcq["predictions"] if p["person_id"] in ids}
        assert scored == set(ids) - set(mcq["demo_ids"][name]["image"])
    assert mcq["demo_people"] == {"unlearn": 1, "retain": 1}
    assert len(mcq["predictions"]) == 10 * (len(people) - 2)
    assert all({"output", "first_token"} <= set(p) for p in mcq["predictions"])
    splits = {"unlearn": [p.id for p in unlearn], "retain": [p.id for p in retain]}
    rows = results.budget_rows({"request": 0}, splits, mcq, collections.defaultdict(float), None, "ok")
    n = {(r["split"], r["modality"]): r["n"] for r in rows}
    assert n[("unlearn", "image")] == 5 * 1 and n[("retain", "text")] == 5 * (len(retain) - 1)

    zero = context.eval_sets(ctx, "pretrained", unlearn, retain)
    assert {k: v[1] for k, v in zero.items()} == {"unlearn": 0, "retain": 0}
    mcq0, _ = context.Context.evaluate(ctx, lm, enc, zero)
    assert mcq0["demo_ids"] == {s: {"image": [], "text": []} for s in ("unlearn", "retain")}
    assert len(mcq0["predictions"]) == 10 * len(people) and mcq0["demo_people"] == {"unlearn": 0, "retain": 0}


def test_eval_test_set_restricted_to_a_forget_list(small_world, tmp_path, capsys):
    """`pulse eval --config Test_Set --forget forget_15`: only the forget IDs, demo person among them (its
    Full_Set record), its questions not scored; per-question predictions written."""
    import json

    from pulse.cli import main

    mllmu = small_world / "mllmu"
    forget = [p.id for p in read_people(mllmu, "forget_15")]
    pred = tmp_path / "pred.json"
    args = ["eval", "--model", str(small_world / "models" / "finetuned"), "--data", str(mllmu), "--config",
            "Test_Set", "--forget", "forget_15", "--scoring", "generate", "--json", "--predictions", str(pred)]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    demo = out["demo_ids"]["image"]
    assert len(demo) == 1 and demo[0] in forget and out["demo_people"] == 1 and out["forget"] == "forget_15"
    assert out["n"] == {"image": 5 * (len(forget) - 1), "text": 5 * (len(forget) - 1)}
    rows = json.loads(pred.read_text())
    assert {r["person_id"] for r in rows} == set(forget) - set(demo) and len(rows) == sum(out["n"].values())
    if not torch.cuda.is_available():  # --device auto / --dtype auto on a CPU machine
        assert (out["device"], out["dtype"]) == ("cpu", "float32")
    # celebrities: zero-shot by default
    assert main(["eval", "--model", str(small_world / "models" / "finetuned"), "--data", str(mllmu), "--config",
                 "Retain_Set", "--scoring", "generate", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["demo_people"] == 0 and out["demo_ids"] == {"image": [], "text": []}
    # forget IDs absent from the evaluated config: a one-line error
    bad = ["eval", "--model", str(small_world / "models" / "finetuned"), "--data", str(mllmu), "--config",
           "forget_5", "--forget", "forget_15"]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert "--forget forget_15" in err and "\n" not in err


def test_device_and_dtype_auto_and_errors(small_world, capsys):
    from pulse.cli import main
    from pulse.errors import PulseError
    from pulse.models.load import check_device_dtype, resolve_device, resolve_dtype

    cuda = torch.cuda.is_available()
    assert resolve_device("auto").type == ("cuda" if cuda else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    for bad in ("gpu", "cuda:x", "", "meta"):
        with pytest.raises(PulseError, match="unknown device"):
            resolve_device(bad)
    with pytest.raises(PulseError, match="unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))
    check_device_dtype("cuda:1", "auto")  # spelling only: configs are validated before reaching the GPU box
    if not cuda:
        with pytest.raises(PulseError, match="CUDA is not available"):
            resolve_device("cuda")
    model = str(small_world / "models" / "finetuned")
    for flags, message in ((["--device", "gpu"], "unknown device 'gpu'"), (["--dtype", "fp8"], "unknown dtype")):
        assert main(["mmbench", "--model", model, "--tsv", str(small_world / "mmbench.tsv"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
