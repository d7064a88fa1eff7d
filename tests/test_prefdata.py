"""Preference pairs (engine.prefdata): each layout read into the same Pair, both answers encoded with only their
tokens trained, truncation and dropping counted, bad records named, the method refused on data it cannot train
on (by `rigtune check` too), and the wizard's preview of a pair."""
import json
from pathlib import Path

import pytest

from conftest import DEMO, peer, rigtune, run_file
from test_wizard import home  # noqa: F401  (the fixture: a cache where the demo model counts as built)
from engine import data as D
from engine import prefdata as PD
from engine import runfile
from engine.errors import BadInput
from engine.preview import preview

FIXTURES = Path(__file__).parent / "fixtures"
FIRST = ("What is the boiling point of water at sea level?",
         "Water boils at 100 °C (212 °F) at sea level, where the air pressure is one standard atmosphere.",
         "It boils at around 90 degrees.")


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer
    return D.ensure_chat_template(AutoTokenizer.from_pretrained(tiny_model))


def trained_text(tok, enc):
    return tok.decode([t for t in enc.labels if t != D.IGNORE])


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("name, layout", [
    ("pref_strings.jsonl", "prompt"), ("pref_conversational.jsonl", "conversational"),
    ("pref_implicit.jsonl", "implicit"), ("pref_ultrafeedback.jsonl", "ultrafeedback"),
])
def test_each_layout_reads_into_the_same_pairs(name, layout):
    pairs, fmt, files = PD.load(str(FIXTURES / name), "auto", "dpo")
    assert fmt == "preference" and files == [str(FIXTURES / name)] and len(pairs) == 6
    assert {p.layout for p in pairs} == {layout}
    first = pairs[0]
    assert first.prompt[-1] == {"role": "user", "content": FIRST[0], "train": False}
    assert (first.chosen, first.rejected) == FIRST[1:]
    assert first.source == f"{FIXTURES / name}:1"
    if layout == "prompt":  # the optional system string becomes the first turn
        assert first.prompt[0] == {"role": "system", "content": "You are a careful science teacher.", "train": False}
    assert [p.chosen for p in pairs] == [p.chosen for p in PD.load(str(FIXTURES / "pref_strings.jsonl"), "auto",
                                                                  "orpo")[0]]


def test_llama_factory_layouts():
    """LLaMA-Factory's preference data: conversations of {from, value} with chosen/rejected single turns (its
    dpo_en_demo.json layout; a record with "conversations" would otherwise read as SFT sharegpt) and alpaca's
    instruction/input with chosen/rejected strings."""
    sharegpt = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Capital of France?"}],
                "chosen": {"from": "gpt", "value": "Paris."}, "rejected": {"from": "gpt", "value": "Lyon."}}
    alpaca = {"instruction": "Name a prime number.", "input": "below ten", "chosen": "Seven.", "rejected": "Nine."}
    assert PD.detect_format([("f", 1, sharegpt)]) == "preference"
    p = PD.to_pair(sharegpt, "f", 1)
    assert p.layout == "sharegpt" and [m["role"] for m in p.prompt] == ["system", "user"]
    assert (p.prompt[1]["content"], p.chosen, p.rejected) == ("Capital of France?", "Paris.", "Lyon.")
    p = PD.to_pair(alpaca, "f", 2)
    assert p.layout == "alpaca" and p.prompt == [{"role": "user", "content": "Name a prime number.\n\nbelow ten",
                                                   "train": False}]


def test_real_peer_records_as_pairs(tmp_path, tok, tiny_model):
    """No peer-data file holds preference pairs, so real records make them: each alpaca_en_demo instruction with its
    own answer chosen and the next record's answer rejected (LLaMA-Factory's alpaca preference layout). The SFT peer
    files themselves are refused for dpo."""
    rows = json.loads(peer("alpaca_en_demo.json").read_text())[:60]
    pairs = [{"instruction": r["instruction"], "input": r["input"], "chosen": r["output"],
              "rejected": rows[(i + 1) % len(rows)]["output"]} for i, r in enumerate(rows)]
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(pairs))
    cfg = runfile.load(run_file(tmp_path, tiny_model, data, data={"max_seq_len": 4096, "eval_fraction": 0.1},
                                train={"method": "dpo"}))
    train, evals, report = PD.prepare_pairs(cfg, tok)
    assert (report.pairs, report.train_pairs, report.eval_pairs, report.truncated, report.dropped) == (60, 54, 6, 0, 0)
    assert len(report.lengths) == 120
    enc = next(e for e in train if e.source == f"{data}:1")
    assert trained_text(tok, enc.chosen) == rows[0]["output"] + "<|im_end|>\n"
    assert trained_text(tok, enc.rejected) == rows[1]["output"] + "<|im_end|>\n"
    for name in ("alpaca_en_demo.json", "v1_sft_demo.jsonl"):
        with pytest.raises(BadInput) as e:
            PD.load(str(peer(name)), "auto", "dpo")
        assert e.value.key == "train.method" and name in str(e.value) and "preference" in str(e.value)


def test_implicit_prompt_is_the_shared_conversation():
    pairs = PD.load(str(FIXTURES / "pref_implicit.jsonl"), "auto", "dpo")[0]
    third = pairs[2]
    assert [(m["role"], m["content"]) for m in third.prompt] == [
        ("user", "I'm learning French."), ("assistant", "Great! Ask me anything."),
        ("user", "Translate 'good morning' into French.")]
    assert not any(m["train"] for m in third.prompt)
    assert (third.chosen, third.rejected) == ("\"Good morning\" in French is \"bonjour\".", "Buenos días.")


def test_encoded_pair_trains_only_each_answer(tok):
    pair = PD.load(str(FIXTURES / "pref_conversational.jsonl"), "auto", "dpo")[0][1]  # system, 3 prompt turns
    enc, cut = PD.encode_pair(tok, pair, 512)
    assert not cut and not enc.empty
    assert trained_text(tok, enc.chosen) == "Put the one thing you need from the reader in the first sentence.<|im_end|>\n"
    assert trained_text(tok, enc.rejected) == "Use lots of exclamation marks so people notice!!!<|im_end|>\n"
    # the same prompt tokens before either answer, none of them trained
    start = enc.chosen.labels.index(next(t for t in enc.chosen.labels if t != D.IGNORE))
    assert enc.chosen.input_ids[:start] == enc.rejected.input_ids[:start]
    prompt = tok.decode(enc.chosen.input_ids[:start])
    assert prompt.endswith("<|im_start|>assistant\n") and "Happy to help. What would you like to improve?" in prompt
    assert "You are a concise writing coach." in prompt
    assert enc.chosen.trained == len([t for t in enc.chosen.labels if t != D.IGNORE])


def test_truncation_and_dropping_are_counted(tmp_path, tok, tiny_model):
    long_answer = "the answer goes on " * 40
    records = [{"prompt": f"Question {i}?", "chosen": f"Yes {i}.", "rejected": f"No {i}."} for i in range(6)]
    records.append({"prompt": "Short?", "chosen": long_answer, "rejected": "No."})       # cut, still trained
    records.append({"prompt": "word " * 200, "chosen": "Yes.", "rejected": "No."})         # answers cut off: dropped
    data = write_jsonl(tmp_path / "p.jsonl", records)
    cfg = runfile.load(run_file(tmp_path, tiny_model, data, data={"max_seq_len": 48, "eval_fraction": 0},
                                train={"method": "orpo"}))
    train, evals, report = PD.prepare_pairs(cfg, tok)
    assert (report.train_pairs, report.eval_pairs, report.truncated, report.dropped) == (7, 0, 2, 1)
    assert all(len(e.chosen.input_ids) <= 48 and len(e.rejected.input_ids) <= 48 for e in train)
    cut = next(e for e in train if e.source.endswith(":7"))
    assert len(cut.chosen.input_ids) == 48 and trained_text(tok, cut.chosen).startswith("the answer goes on")
    assert "8 pairs (7 train, 0 eval)" in report.summary() and "1 dropped" in report.summary()


@pytest.mark.parametrize("record, key, words", [
    ({"prompt": "Hi", "chosen": "Hello."}, "rejected", ["missing field 'rejected'", "prompt/chosen/rejected"]),
    ({"prompt": "Hi", "rejected": "Go."}, "chosen", ["missing field 'chosen'"]),
    ({"prompt": "Hi", "chosen": 3, "rejected": "Go."}, "chosen", ["must be a string"]),
    ({"prompt": "Hi", "chosen": "Same.", "rejected": "Same."}, "rejected", ["identical pair teaches nothing"]),
    ({"chosen": "Hello.", "rejected": "Go."}, "prompt", ["missing field 'prompt'"]),
    ({"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
      "rejected": [{"role": "user", "content": "Hey"}, {"role": "assistant", "content": "Go."}]},
     "chosen[0]", ["share no prompt"]),
    ({"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
      "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go."},
                   {"role": "user", "content": "Why?"}]},
     "rejected[2].role", ["must end with the assistant's answer"]),
    ({"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
      "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
     "rejected", ["same conversation"]),
    ({"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello."}],
      "rejected": [{"role": "robot", "content": "Go."}]}, "rejected[0].role", ["role is 'robot'"]),
    ({"prompt": "Hi", "chosen": "Hello.", "rejected": "Go.", "expect": "hello"}, "expect", ["non-empty list"]),
])
def test_bad_records_name_the_file_record_and_key(tmp_path, record, key, words):
    good = {"prompt": "Fine?", "chosen": "Yes.", "rejected": "No."}
    data = write_jsonl(tmp_path / "bad.jsonl", [good, record])
    with pytest.raises(BadInput) as e:
        PD.load(str(data), "auto", "dpo")
    msg = str(e.value)
    assert msg.startswith(f"{data}, record 2, key '{key}': ") and "\n" not in msg
    for w in words:
        assert w in msg


def test_the_method_must_suit_the_data(tmp_path):
    with pytest.raises(BadInput) as e:
        PD.load(str(DEMO), "auto", "orpo")
    assert e.value.key == "train.method" and "alpaca data" in str(e.value) and str(DEMO) in str(e.value)
    with pytest.raises(BadInput) as e:
        PD.load(str(FIXTURES / "pref_strings.jsonl"), "auto", "sft")
    assert e.value.key == "train.method" and 'set [train] method = "dpo" or "orpo"' in str(e.value)
    with pytest.raises(BadInput) as e:  # the format named outright is held to the method as well
        PD.load(str(FIXTURES / "pref_strings.jsonl"), "preference", "sft")
    assert e.value.key == "train.method"
    examples, fmt, _ = PD.load(str(DEMO), "auto", "sft")
    assert fmt == "alpaca" and isinstance(examples[0], D.Example)
    unknown = write_jsonl(tmp_path / "unknown.jsonl", [{"question": "Hi", "good": "Hello."}])
    with pytest.raises(BadInput) as e:  # keys that are no format at all: the preference format is named beside SFT's
        PD.load(str(unknown), "auto", "dpo")
    assert str(e.value).startswith(f"{unknown}, record 1: cannot tell the format")
    assert "'chosen' and 'rejected' (format preference)" in str(e.value)


def test_eval_path_is_read_as_pairs(tmp_path, tok, tiny_model):
    cfg = runfile.load(run_file(tmp_path, tiny_model, FIXTURES / "pref_strings.jsonl", train={"method": "dpo"},
                                data={"eval_path": str(FIXTURES / "pref_ultrafeedback.jsonl")}))
    train, evals, report, held_out, files = PD.prepare_for_run(cfg, tok)
    assert (len(train), len(evals), report.format) == (6, 6, "preference")
    assert [p.layout for p in held_out] == ["ultrafeedback"] * 6 and files == [str(FIXTURES / "pref_strings.jsonl")]


def test_check_a_dpo_run_file(tmp_path, tiny_model):
    rf = run_file(tmp_path, tiny_model, FIXTURES / "pref_ultrafeedback.jsonl", train={"method": "dpo"},
                  data={"eval_fraction": 0.2, "max_seq_len": 512})
    res = rigtune("check", rf)
    assert res.returncode == 0, res.stderr
    assert "format: preference" in res.stdout
    assert "format preference: 6 pairs (5 train, 1 eval); tokens per sequence (prompt + one answer): median" in res.stdout
    assert "0 pairs truncated to max_seq_len" in res.stdout

    rf = run_file(tmp_path, tiny_model, DEMO, name="sftdata", train={"method": "dpo"})
    res = rigtune("check", rf)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{DEMO}, key 'train.method': [train] method = \"dpo\" trains on preference pairs" in res.stderr

    rf = run_file(tmp_path, tiny_model, FIXTURES / "pref_strings.jsonl", name="sftpairs")
    res = rigtune("check", rf)
    assert res.returncode == 2 and 'set [train] method = "dpo" or "orpo"' in res.stderr


def test_preview_of_a_pair(tiny_model):
    p = preview(str(FIXTURES / "pref_strings.jsonl"), "auto", str(tiny_model), 512, method="dpo")
    assert (p.format, p.records, p.per_record, len(p.lengths), p.exact, p.truncated) == ("preference", 6, 2, 12, True, 0)
    prompt = "".join(t for t, _ in p.pair["prompt"])
    assert not any(trained for _, trained in p.pair["prompt"])
    assert "You are a careful science teacher." in prompt and FIRST[0] in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    for side, answer in (("chosen", FIRST[1]), ("rejected", FIRST[2])):
        assert "".join(t for t, trained in p.pair[side] if trained) == answer + "<|im_end|>\n"
    with pytest.raises(BadInput, match="train.method"):
        preview(str(FIXTURES / "pref_strings.jsonl"), "auto", str(tiny_model), 96)  # method sft



async def test_wizard_previews_a_pair_once_the_method_takes_pairs(home):
    """Preference data in the setup step: refused under method sft with what to set, then shown as one pair
    (prompt masked, each answer trained) once the method select says dpo."""
    from textual.widgets import Select, Static

    from test_wizard import RecordingLauncher, fixed_machine, settle, shown
    from tui.app import RigtuneApp
    from tui.screens import wizard as W
    app = RigtuneApp(preset="cpu-demo", machine=fixed_machine(), launcher=RecordingLauncher())

    async with app.run_test(size=(100, 40)) as pilot:
        setup = await settle(pilot, W.SetupStep)
        setup.query_one("#f-data").value = str(FIXTURES / "pref_implicit.jsonl")
        await shown(pilot, setup, "#e-data", ['set [train] method = "dpo" or "orpo"'])
        assert setup.valid is False
        setup.query_one("#f-method", Select).value = "dpo"
        text = await shown(pilot, setup, "#data-example", ["first pair", "rejected: "])
        assert " ".join(text.split()).startswith("first pair - trained / masked: prompt: <|im_start|>user")
        assert FIRST[1] in text and FIRST[2] in text
        assert str(setup.query_one("#e-data", Static).render()) == ""
        assert "6 records, format preference" in str(setup.query_one("#data-info", Static).render())
        assert setup.valid is True
