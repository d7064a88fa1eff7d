"""Every family rigtune trains, end to end on a tiny random-init copy built from its transformers config class
with a local tokenizer (engine.torchside.tiny.FAMILIES): `check` passes, NF4 QLoRA training lowers the loss,
the adapter loads with peft, and the planner counts the model's parameters exactly."""
from __future__ import annotations

import json

import pytest

from engine import planner as P
from engine.torchside.tiny import FAMILIES
from tests.conftest import DEMO, events, rigtune, run_file
from tests.test_catalog import published_active

TIED = {"llama", "gemma2", "gemma3", "gemma3_text", "gemma4", "gemma4_text"}  # Llama 3.2 and Gemma tie the embeddings


@pytest.fixture(scope="module")
def texts():
    return [json.loads(line)["output"] for line in DEMO.read_text().splitlines()]


def build(tmp_path, texts, model_type):
    from engine.torchside.tiny import build_model
    return build_model(tmp_path / model_type, texts, vocab_size=320, hidden=64, layers=2, heads=4, kv_heads=2,
                       intermediate=96, model_type=model_type, tied=model_type in TIED)


def test_the_planner_knows_every_family_the_engine_trains():
    assert set(FAMILIES) == set(P.FAMILIES)


# the 2026 families (issue 25): beyond training, their tuned model chats and exports merged here
NEW = {"qwen3_5", "qwen3_5_moe", "gemma4", "gemma4_text", "gpt_oss"}


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_the_planner_counts_what_each_family_loads(tmp_path, texts, model_type):
    from transformers import AutoModelForCausalLM
    folder = build(tmp_path, texts, model_type)
    arch = P.resolve_model(str(folder))
    assert arch.model_type == model_type
    base = AutoModelForCausalLM.from_pretrained(folder)
    # what AutoModelForCausalLM loads: experts included, and a vision tower where it loads one (Gemma 3/4, not Qwen3.5)
    assert arch.loaded_params == sum(p.numel() for p in base.parameters())


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_family_trains_and_its_adapter_loads(tmp_path, texts, model_type):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    folder = build(tmp_path, texts, model_type)
    base = AutoModelForCausalLM.from_pretrained(folder)
    arch = P.resolve_model(str(folder))
    path = run_file(tmp_path, folder, DEMO, name=model_type,
                    train={"max_steps": 8, "eval_every_steps": 0, "save_every_steps": 0, "sample_max_new_tokens": 0,
                           "learning_rate": 5e-3, "micro_batch_size": 4})  # packed rows (the default)
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
    if model_type in NEW:
        chats_and_exports_merged(run_dir, tmp_path / "merged")


def chats_and_exports_merged(run_dir, out):
    """The tuned model answers in the chat backend (what `rigtune chat` runs), and its merged export (what
    `rigtune export --to merged --merge-into original` writes) gives the logits of the 16-bit base with the
    adapter."""
    import contextlib
    import io

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engine import runfile
    from engine.torchside import chat, export
    from engine.torchside.model import load_base
    model, tok, device, cfg = chat.load(run_dir, None)
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        chat.answer(model, tok, device, {"id": 1, "messages": [{"role": "user", "content": "Who are you?"}],
                                         "max_new_tokens": 6})
    done = [json.loads(line) for line in said.getvalue().splitlines()][-1]
    assert done["event"] == "done" and done["tokens"] <= 6, done

    export.merged(run_dir, out, into="original", progress=lambda line: None)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    values = cfg.to_dict()
    values["model"]["quantization"] = "none"  # the reference: the adapter on the base it merged into
    ref = PeftModel.from_pretrained(load_base(runfile.RunConfig(values), "cpu"), run_dir / "adapter").eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "Tell me who trained you, and why."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        a, b = merged(ids).logits, ref(input_ids=ids).logits
        assert torch.allclose(a, b, atol=1e-4, rtol=0), (a - b).abs().max()  # fp32 rounding only
        with ref.disable_adapter():
            assert (ref(input_ids=ids).logits - b).abs().max() > 1e-3  # the adapter changed the model


def test_gemma2_chunked_loss_applies_the_final_softcap(tmp_path, texts):
    """Gemma 2 caps its logits (30 tanh(x / 30)); the chunked loss, which applies the lm_head itself, must too."""
    import torch
    from transformers import AutoModelForCausalLM

    from engine.torchside.loss import loss_sum
    from engine.torchside.head import detach_head
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
    from engine.torchside.head import full_head
    with full_head(wrapped, head):  # generation gets the capped logits back
        assert float(loss_sum(wrapped, dict(batch))) == pytest.approx(float(whole), rel=1e-5)


def test_check_refuses_what_this_stack_cannot_train_before_any_download(tmp_path, tiny_model):
    import shutil
    cases = {
        "prequantized": ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "single",
                         "already quantized (gptq)"),
        "encdec": ({"model_type": "t5", "is_encoder_decoder": True}, "single", "encoder-decoder"),
        "moe-fsdp": ({"model_type": "qwen3_moe", "num_experts": 4}, "fsdp", "FSDP with a mixture-of-experts"),
        "remote": ({"model_type": "newthing", "auto_map": {"AutoModelForCausalLM": "x.Y"}}, "single",
                   "trust_remote_code = true"),
    }
    for name, (change, strategy, said) in cases.items():
        folder = tmp_path / name
        shutil.copytree(tiny_model, folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        hardware = {"strategy": strategy, "num_processes": 2 if strategy == "fsdp" else 1}
        res = rigtune("check", run_file(tmp_path, folder, DEMO, name=name, hardware=hardware))
        assert res.returncode == 2 and said in res.stderr and "Traceback" not in res.stderr, (name, res.stderr)
        assert f"{name}.toml" in res.stderr and "model.base" in res.stderr
    folder = tmp_path / "untested"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "olmo2"}))
    res = rigtune("check", run_file(tmp_path, folder, DEMO, name="untested"))
    assert res.returncode == 0 and "'olmo2' is not one rigtune has tested" in res.stderr


def test_catalog_counts_match_the_published_figures():
    for name in P.load_models():
        res = rigtune("plan", "--model", name, "--gpus", "1x24", "--json") if name in ("Qwen3-30B-A3B", "Phi-4") else None
        arch = P.load_models()[name]
        out = json.loads(res.stdout) if res else {"params_b": arch.total_params / 1e9,
                                                  "active_params_b": arch.active_params / 1e9}
        assert out["params_b"] == pytest.approx(arch.params_b, rel=0.02), name
        if arch.active_params_b:  # counted as its publisher counts it (models.toml's published_* notes)
            active, published, tolerance = published_active(name, P.replace(arch, name=name))
            assert abs(out["active_params_b"] - arch.active_params / 1e9 + active - published) <= tolerance, name
        else:
            assert out["active_params_b"] == pytest.approx(out["params_b"]), name
    assert {"Llama-3.1-8B", "Llama-3.2-1B", "Llama-3.2-3B", "Llama-3.3-70B", "Qwen3-4B", "Qwen3-8B", "Qwen3-14B",
            "Qwen3-32B", "Qwen3-30B-A3B", "Gemma-3-4B", "Gemma-3-12B", "Gemma-3-27B", "Mistral-7B",
            "Mistral-Small-24B", "Phi-4"} <= set(P.load_models())
    moe = P.load_models()["Qwen3-30B-A3B"]
    inp = P.PlanInput(arch=moe, gpus=[24.0], quantization="none")
    # every expert resident in bf16 without quantization: about 54 GiB of experts; 4-bit experts (the default)
    # fit one 24 GB card (tests/test_experts.py)
    assert P.breakdown(inp)["weights"] > 50 and not P.fits(inp)
    assert P.fits(P.replace(inp, gpus=[80.0]))
    res = rigtune("plan", "--model", "Mixtral-8x7B", "--gpus", "1x4090")
    assert res.returncode == 0, res.stderr  # a plan that does not fit is still a plan, and says why
    assert "DOES NOT FIT" in res.stdout and "mixture of experts" in res.stdout and "4-bit like the linear" in res.stdout
    assert "no sequence length fits at this micro-batch" in res.stdout  # not "longest sequence ...: 0"
