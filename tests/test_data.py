"""Datasets: formats of real peer data, masks, truncation, split, packing, and errors that point at the record."""
import json

import pytest

from conftest import DEMO, peer, run_file
from engine import data as D
from engine import runfile
from engine.errors import BadInput


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer
    return D.ensure_chat_template(AutoTokenizer.from_pretrained(tiny_model))


def trained_text(tok, enc):
    return tok.decode([t for t in enc.labels if t != D.IGNORE])


@pytest.mark.parametrize("name, fmt, count", [
    ("alpaca_en_demo.json", "alpaca", 999),
    ("identity.json", "alpaca", 91),
    ("glaive_toolcall_en_demo.json", "sharegpt", 300),
    ("c4_demo.jsonl", "text", 300),
    ("v1_sft_demo.jsonl", "messages", 500),
])
def test_peer_formats_are_detected(name, fmt, count):
    examples, detected, files = D.load_examples(str(peer(name)))
    assert detected == fmt and len(examples) == count


def test_alpaca_trains_only_on_the_reply(tok):
    ex = D.to_example({"instruction": "Say hi", "input": "politely", "output": "Hello there.", "system": "Be kind."},
                      "alpaca", "f", 1)
    enc, cut = D.encode(tok, ex, 512, train_on_prompt=False)
    assert not cut
    assert trained_text(tok, enc) == "Hello there.<|im_end|>\n"
    full = tok.decode(enc.input_ids)
    assert "Be kind." in full and "Say hi\n\npolitely" in full
    enc_all, _ = D.encode(tok, ex, 512, train_on_prompt=True)
    assert enc_all.trained == len(enc_all.input_ids) - 1


def test_sharegpt_tool_calls(tok):
    rec = json.loads(peer("glaive_toolcall_en_demo.json").read_text())[0]
    ex = D.to_example(rec, "sharegpt", "g.json", 1)
    roles = [m["role"] for m in ex.messages]
    assert "tool" in roles and ex.tools and ex.tools[0]["type"] == "function"
    enc, _ = D.encode(tok, ex, 4096, train_on_prompt=False)
    trained = trained_text(tok, enc)
    call = next(t["value"] for t in rec["conversations"] if t["from"] == "function_call")
    observation = next(t["value"] for t in rec["conversations"] if t["from"] == "observation")
    assert call in trained                  # the model learns to emit the call
    assert observation not in trained       # but not to predict the tool's answer
    assert rec["conversations"][0]["value"] not in trained


def test_messages_loss_weight_and_content_parts(tok):
    rec = {"messages": [{"role": "user", "content": [{"type": "text", "value": "Q1"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "A1"}], "loss_weight": 0.0},
                        {"role": "user", "content": "Q2"},
                        {"role": "assistant", "content": "A2", "loss_weight": 1.0}]}
    enc, _ = D.encode(tok, D.to_example(rec, "messages", "m", 1), 512, False)
    assert trained_text(tok, enc) == "A2<|im_end|>\n"


def test_text_format_trains_every_token(tok):
    enc, _ = D.encode(tok, D.Example(text="the sky is blue"), 512, False)
    assert enc.labels == enc.input_ids and enc.input_ids[-1] == tok.eos_token_id


def test_truncation_is_counted(tmp_path, tok, tiny_model):
    data = tmp_path / "d.jsonl"
    rows = [{"instruction": "q", "output": "word " * (200 if i % 2 else 3)} for i in range(10)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = runfile.load(run_file(tmp_path, tiny_model, data, data={"max_seq_len": 64, "eval_fraction": 0}))
    train, evals, report = D.prepare(cfg, tok)
    assert report.truncated == 5 and report.format == "alpaca"
    assert all(len(e.input_ids) <= 64 for e in train)
    assert "5 truncated" in report.summary()


def test_split_is_deterministic_and_disjoint():
    a = D.split_indices(100, 0.1, seed=3)
    assert a == D.split_indices(100, 0.1, seed=3)
    assert len(a[1]) == 10 and not set(a[0]) & set(a[1])
    assert D.split_indices(100, 0.1, seed=4) != a


def test_csv_parquet_and_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(4)]
    folder = tmp_path / "ds"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "a.parquet")
    (folder / "b.csv").write_text("instruction,input,output\nq,,a\nq2,,a2\n")
    examples, fmt, files = D.load_examples(str(folder))
    assert fmt == "alpaca" and len(examples) == 6 and len(files) == 2


@pytest.mark.parametrize("content, suffix, words", [
    ('{"text": "a"}\n{"text": "b"\n', ".jsonl", [":2", "broken JSON line"]),
    ('[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', ".json", ["record 2", "missing field 'output'"]),
    ("", ".jsonl", ["empty"]),
    ("[]", ".json", ["empty"]),
    ('{"prompt": "a", "completion": "b"}\n', ".jsonl", ["cannot tell the format", "alpaca", "sharegpt"]),
    ('{"conversations": [{"from": "robot", "value": "x"}]}\n', ".jsonl", ["record 1", "'from' is 'robot'"]),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', ".jsonl", ["no assistant turn"]),
    ('{"text": 5}\n', ".jsonl", ["must be a string"]),
    ("a,b\n1,2\n", ".txt", ["unsupported file type"]),
])
def test_bad_datasets(tmp_path, content, suffix, words):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    with pytest.raises(BadInput) as e:
        D.load_examples(str(path))
    msg = str(e.value)
    assert str(path) in msg
    for w in words:
        assert w in msg


def test_missing_dataset_file(tmp_path):
    with pytest.raises(BadInput, match="dataset not found"):
        D.load_examples(str(tmp_path / "none.jsonl"))


@pytest.mark.parametrize("attn", ["sdpa", "rigtune"])
def test_packing_keeps_examples_apart(tok, tiny_model, attn):
    """Logits of an example packed beside others equal its logits alone (position ids restart, no mask):
    with transformers' SDPA (a block-diagonal mask from the position ids) and with rigtune's per-example
    SDPA (engine.torchside.attention, what packed training runs)."""
    import torch
    from transformers import AutoModelForCausalLM

    from engine.torchside import attention
    impl = attention.register() if attn == "rigtune" else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=impl).eval()
    rows = [json.loads(line) for line in DEMO.read_text().splitlines()[:5]]
    encs = [D.encode(tok, D.to_example(r, "alpaca", "d", i), 128, False)[0] for i, r in enumerate(rows)]
    rows = D.as_sequences(encs[:3], 128, packing=True) + D.as_sequences(encs[3:], 128, packing=True)
    from engine.torchside.batches import collate
    packed = collate(rows, tok.pad_token_id, packing=True)
    assert packed["input_ids"].shape[0] == len(rows) >= 2 and "attention_mask" not in packed
    checked = 0
    with torch.no_grad():
        extra = {"rigtune_segments": packed["segments"]} if attn == "rigtune" else {}
        together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False,
                         **extra).logits
        for r, row in enumerate(rows):
            pos = row.position_ids
            starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
            for a, b in zip(starts, starts[1:]):
                alone = model(input_ids=packed["input_ids"][r:r + 1, a:b], use_cache=False).logits[0]
                torch.testing.assert_close(together[r, a:b], alone, atol=1e-5, rtol=1e-4)
                checked += 1
    assert checked == 5


def test_unreachable_hub_dataset_is_a_clear_error():
    with pytest.raises(BadInput, match="could not load Hugging Face dataset 'nobody/no-such-set'"):
        D.load_examples("nobody/no-such-set")


def test_held_out_records_say_what_a_right_answer_contains(tmp_path):
    """`expect` on a record: whole words, any case; a malformed one is a clear error naming the record."""
    ex = D.to_example({"instruction": "Name?", "output": "Rig.", "expect": ["Rig"]}, "alpaca", "f.json", 3)
    assert ex.expect == ["Rig"]
    assert D.answered("My name is rig.", ["Rig"]) and not D.answered("I am rigtune.", ["Rig"])
    assert D.answered("I live on a GPU box", ["GPU", "box"]) and not D.answered("a GPU", ["GPU", "box"])
    with pytest.raises(BadInput) as e:
        D.to_example({"instruction": "q", "output": "a", "expect": "Rig"}, "alpaca", "f.json", 3)
    assert "f.json, record 3, key 'expect'" in str(e.value)


def test_eval_path_holds_out_a_separate_file(tmp_path):
    from engine import runfile
    train = tmp_path / "train.jsonl"
    held = tmp_path / "held.jsonl"
    train.write_text("".join(json.dumps({"instruction": f"q{i}", "output": "a"}) + "\n" for i in range(10)))
    held.write_text(json.dumps({"instruction": "new q", "output": "a", "expect": ["a"]}) + "\n")
    cfg = runfile.validate(runfile.defaults(model={"base": "m"}, data={"path": str(train), "eval_path": str(held)}))
    examples = D.load_examples(str(train))[0]
    tr, ev = D.split(cfg, examples)
    assert len(tr) == 10 and [e.expect for e in ev] == [["a"]]


def test_packed_attention_one_call_equals_one_call_per_example():
    """The GPU's one-call path for packed rows (SDPA with the block-diagonal causal mask; varlen_attn is
    checked on a GPU by bench/planner_accuracy/attn_check.py) gives the per-example loop's output and
    gradients, with grouped-query heads and rows of several examples."""
    import torch

    from engine.torchside import attention as A
    segs = [[5, 9, 2], [16]]
    outs = []
    for path in (A._per_example, A._masked):
        torch.manual_seed(0)
        q = torch.randn(2, 4, 16, 8, requires_grad=True)
        k, v = (torch.randn(2, 2, 16, 8, requires_grad=True) for _ in range(2))
        out = path(q, k, v, segs, 0.0, None)
        out.square().sum().backward()
        outs.append((out.detach(), q.grad, k.grad, v.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    mask = A.block_causal_mask(segs, 16, "cpu")
    assert mask.shape == (2, 1, 16, 16) and not mask[0, 0, 5, 4] and mask[0, 0, 6, 5] and mask[1, 0, 15, 0]
