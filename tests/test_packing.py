"""Packing never leaks between examples, for every family rigtune trains (engine.torchside.tiny.FAMILIES): full
and sliding-window attention, attention sinks (gpt-oss), Gemma 4's layers with their own head sizes, and the
linear-attention layers of Qwen3.5 (engine.torchside.linear_attention), through rigtune's own loading, batches
and loss."""
from __future__ import annotations

import json
import random

import pytest

from engine.torchside.tiny import FAMILIES
from tests.conftest import DEMO, run_file
from tests.test_families import build

LENGTHS = (70, 23, 41, 9, 30, 17, 50)  # across the tiny windows (16) and the delta rule's 64-token chunks


# every family on the default attention, and Qwen3.5 with the run file asking for eager: its linear-attention
# layers still learn where each example starts
@pytest.mark.parametrize("model_type,attn", [(m, "sdpa") for m in sorted(FAMILIES)] + [("qwen3_5", "eager")])
def test_a_packed_batch_has_the_loss_of_its_examples_run_one_by_one(tmp_path, model_type, attn):
    import torch
    from transformers import AutoModelForCausalLM

    from engine import data as D
    from engine import runfile
    from engine.torchside.batches import collate
    from engine.torchside.loss import loss_sum
    from engine.torchside.model import load_base

    folder = build(tmp_path, [json.loads(line)["output"] for line in DEMO.read_text().splitlines()], model_type)
    cfg = runfile.load(run_file(tmp_path, folder, DEMO, name=model_type,
                                model={"base": str(folder), "compute_dtype": "float32", "quantization": "none",
                                       "attn_implementation": attn},
                                data={"max_seq_len": 128, "packing": True}))
    model = load_base(cfg, "cpu").eval()
    # transformers' own eager attention, one example at a time: the reference for what the model computes
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():  # random weights this small barely mix tokens; scaled up, a leak shows
        for m in (model, reference):
            for name, p in m.named_parameters():
                if p.dim() >= 2 and "embed" not in name:
                    p.mul_(4)
    rng = random.Random(0)
    examples = []
    for n in LENGTHS:
        ids = [rng.randrange(5, 300) for _ in range(n)]
        examples.append(D.Encoded(ids, list(ids)))
    rows = D.pack(examples, 128)
    assert len(rows) > 1 and all(r.position_ids.count(0) > 1 for r in rows)  # several examples share each row

    def only(seqs, r, a, b):  # the rows with only row r's tokens a..b trained: one example's loss
        return [D.Sequence(s.input_ids, [t if i == r and a <= k < b else D.IGNORE for k, t in enumerate(s.labels)],
                           s.position_ids) for i, s in enumerate(seqs)]

    def loss(seqs, packing, on=model):
        return float(loss_sum(on, collate(seqs, 0, packing)))
    got = []
    with torch.no_grad():
        for r, row in enumerate(rows):
            starts = [k for k, p in enumerate(row.position_ids) if p == 0] + [len(row.input_ids)]
            for a, b in zip(starts, starts[1:]):
                alone = D.Sequence(row.input_ids[a:b], row.labels[a:b], list(range(b - a)))
                # the same row as one example, what a leak would give: to show that this model can tell
                leaky = D.Sequence(row.input_ids, row.labels, list(range(len(row.input_ids))))
                got.append((loss(only(rows, r, a, b), True), loss([alone], False, reference),
                            loss(only([leaky], 0, a, b), False, reference)))
    assert len(got) == len(LENGTHS)
    for packed, alone, _ in got:  # each example's loss, in the packed micro-batch and on its own
        assert packed == pytest.approx(alone, rel=1e-4), (model.config._attn_implementation, got)
    assert max(abs(leaky - alone) / alone for _, alone, leaky in got) > 1e-3, got
