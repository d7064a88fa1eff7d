"""The chunked cross-entropy gives the same loss and the same LoRA gradients as full logits."""
import json

import pytest
import torch

from conftest import DEMO, run_file
from engine import data as D
from engine import runfile
from engine.torchside.head import full_head
from engine.torchside.model import load_model, load_tokenizer
from engine.torchside.batches import collate
from engine.torchside.loss import loss_sum


def batch_for(tok, packing):
    rows = [json.loads(line) for line in DEMO.read_text().splitlines()[:6]]
    encs = [D.encode(tok, D.to_example(r, "alpaca", "d", i), 128, False)[0] for i, r in enumerate(rows)]
    return collate(D.as_sequences(encs, 128, packing), tok.pad_token_id, packing)


@pytest.mark.parametrize("quantization, packing", [("none", True), ("none", False), ("nf4", True)])
def test_chunked_loss_matches_full_logits(tmp_path, tiny_model, quantization, packing):
    results = []
    for chunk in (0, 7):
        rf = run_file(tmp_path, tiny_model, DEMO, name=f"c{chunk}",
                      model={"base": str(tiny_model), "compute_dtype": "float32", "quantization": quantization},
                      lora={"dropout": 0.0}, train={"loss_chunk_tokens": chunk})
        cfg = runfile.load(rf)
        torch.manual_seed(0)
        loaded = load_model(cfg, "cpu")
        model = loaded.model
        with torch.no_grad():  # non-zero B so that the adapters change the output and get gradients everywhere
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.02)
        tok = load_tokenizer(cfg)
        batch = batch_for(tok, packing)
        loss = loss_sum(model, dict(batch), chunk, loaded.head)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads, loaded))
    (full, g_full, _), (chunked, g_chunked, loaded) = results
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    assert g_full.keys() == g_chunked.keys() and len(g_full) > 0
    for name in g_full:
        torch.testing.assert_close(g_chunked[name], g_full[name], rtol=1e-4, atol=1e-6)
    # the chunked model returns hidden states; with its head back it returns vocabulary logits again
    with torch.no_grad(), full_head(loaded.model, loaded.head):
        logits = loaded.model(input_ids=batch["input_ids"][:, :5]).logits
    assert logits.shape[-1] == len(tok)
