"""Every family rigtune trains, end to end on a tiny random-init copy built from its transformers config class
with a local tokenizer (engine.torchside.tiny.FAMILIES): `check` passes, NF4 QLoRA training lowers the loss,
the adapter loads with peft, and the planner counts the model's parameters exactly."""
from __future__ import annotations

import json

import pytest

from engine import planner as P
from engine.torchside.tiny import FAMILIES
from tests.conftest import DEMO, events, rigtune, run_file

TIED = {"llama", "gemma2", "gemma3", "gemma3_text"}  # Llama 3.2 and Gemma tie the embeddings


@pytest.fixture(scope="module")
def texts():
    return [json.loads(line)["output"] for line in DEMO.read_text().splitlines()]


def build(tmp_path, texts, model_type):
    from engine.torchside.tiny import build_model
    return build_model(tmp_path / model_type, texts, vocab_size=320, hidden=64, layers=2, heads=4, kv_heads=2,
                       intermediate=96, model_type=model_type, tied=model_type in TIED)


def test_the_planner_knows_every_family_the_engine_trains():
    assert set(FAMILIES) == set(P.FAMILIES)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_family_trains_and_its_adapter_loads(tmp_path, texts, model_type):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    folder = build(tmp_path, texts, model_type)
    base = AutoModelForCausalLM.from_pretrained(folder)
    arch = P.resolve_model(str(folder))
    assert arch.model_type == model_type
    assert arch.total_params == sum(p.numel() for p in base.parameters())  # vision tower and experts included

    path = run_file(tmp_path, folder, DEMO, name=model_type,
                    train={"max_steps": 8, "eval_every_steps": 0, "save_every_steps": 0, "sample_max_new_tokens": 0,
                           "learning_rate": 5e-3, "micro_batch_size": 4})
    res = rigtune("check", path)
    assert res.returncode == 0, res.stderr
    res = rigtune("train", path, "--no-tui", timeout=600)
    run_dir = tmp_path / "runs" / model_type
    assert res.returncode == 0, res.stderr + (run_dir / "train.log").read_text()[-3000:]
    losses = [e["loss"] for e in events(run_dir) if e["event"] == "step"]
    assert len(losses) == 8 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses

    adapter = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    trained = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert trained and all(v.abs().sum() > 0 for v in trained.values())
    targets = {k.split(".lora_B")[0].rsplit(".", 1)[-1] for k in trained}
    assert targets == set(arch.linears()), targets  # all-linear is what the planner counts (no experts, no router)
    peft_model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    got = {n: p for n, p in peft_model.named_parameters() if "lora_B" in n}
    assert len(got) == len(trained)
    assert all(torch.equal(got[n], trained[n.replace(".default", "")]) for n in got)


def test_gemma2_chunked_loss_applies_the_final_softcap(tmp_path, texts):
    """Gemma 2 caps its logits (30 tanh(x / 30)); the chunked loss, which applies the lm_head itself, must too."""
    import torch
    from transformers import AutoModelForCausalLM

    from engine.torchside.loss import loss_sum
    from engine.torchside.model import detach_head
    folder = build(tmp_path, texts, "gemma2")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.config.final_logit_softcapping = 0.05  # small, so that capping changes the loss clearly
    ids = torch.randint(5, 300, (1, 24))
    batch = {"input_ids": ids, "labels": ids.clone()}
    whole = loss_sum(model, dict(batch))

    class Wrap(torch.nn.Module):  # detach_head wants a peft-style get_base_model()
        def __init__(self, m):
            super().__init__()
            self.m, self.config = m, m.config

        def get_base_model(self):
            return self.m

        def forward(self, **kw):
            return self.m(**kw)
    wrapped = Wrap(model)
    head = detach_head(wrapped)
    chunked = loss_sum(wrapped, dict(batch), chunk_tokens=8, head=head)
    assert float(chunked) == pytest.approx(float(whole), rel=1e-5)
    uncapped = torch.nn.functional.cross_entropy(head(model(input_ids=ids).logits[0, :-1]), ids[0, 1:], reduction="sum")
    assert abs(float(uncapped) - float(whole)) > 0.3  # the cap matters at this scale
    from engine.torchside.model import full_head
    with full_head(wrapped, head):  # generation gets the capped logits back
        assert float(loss_sum(wrapped, dict(batch))) == pytest.approx(float(whole), rel=1e-5)
