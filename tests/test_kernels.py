"""[train] kernels and activation_offload. Liger's Triton kernels need a CUDA GPU, so the wiring is tested with
tests/fakes/liger_kernel (Liger's entry points, the same mathematics in PyTorch); the CPU fallback and the
refusal are tested for real."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import DEMO, events, rigtune, run_file

FAKES = str(Path(__file__).parent / "fakes")


@pytest.fixture
def fake_liger(monkeypatch):
    monkeypatch.syspath_prepend(FAKES)
    for name in [m for m in sys.modules if m.startswith("liger_kernel")]:
        monkeypatch.delitem(sys.modules, name)
    import liger_kernel.transformers.monkey_patch as mp
    mp.APPLIED.clear()
    return mp


def _loaded(tmp_path, tiny_model, kernels):
    import torch

    from engine import data as D
    from engine import runfile
    from engine.torchside.model import load_model, load_tokenizer
    cfg = runfile.load(run_file(tmp_path, tiny_model, DEMO, name=f"k-{kernels}", train={"kernels": kernels}))
    tok = load_tokenizer(cfg)
    examples, fmt, _ = D.load_examples(cfg.data.path, cfg.data.format)
    train_ex, _, _ = D.prepare(cfg, tok, examples, fmt)
    seqs = D.as_sequences(train_ex, cfg.data.max_seq_len, True)[:4]
    torch.manual_seed(0)
    from engine.torchside.batches import collate
    return cfg, load_model(cfg, "cpu"), collate(seqs, tok.pad_token_id, True)


def test_liger_is_patched_in_and_gives_the_same_loss_and_gradients(tmp_path, tiny_model, fake_liger, monkeypatch):
    import torch

    from engine.torchside import kernels
    from engine.torchside.loss import loss_sum
    real_apply = kernels.apply
    monkeypatch.setattr(kernels, "apply", lambda s, m, d: real_apply(s, m, torch.device("cuda")))  # "on a GPU"
    _, liger, batch = _loaded(tmp_path, tiny_model, "auto")
    monkeypatch.setattr(kernels, "apply", real_apply)
    _, plain, _ = _loaded(tmp_path, tiny_model, "none")
    assert liger.kernels == "liger" and plain.kernels == "none"
    assert fake_liger.APPLIED == [dict(kernels.PATCHES)]  # Liger's own loss patch stays off
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    before = LigerFusedLinearCrossEntropyLoss.calls
    results = []
    for loaded in (liger, plain):
        model = loaded.model
        torch.manual_seed(1)  # the same LoRA dropout masks
        loss = loss_sum(model, dict(batch), 4096, loaded.head, loaded.fused_loss)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.item(), grads))
    assert LigerFusedLinearCrossEntropyLoss.calls == before + 1  # the fused loss replaced the chunked one
    norms = [m for m in liger.model.modules() if type(m).__name__.endswith("RMSNorm")]
    assert norms and all(getattr(m, "liger_calls", 0) > 0 for m in norms)  # the patched norms ran
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for name, g in results[0][1].items():
        assert torch.allclose(g, results[1][1][name], rtol=1e-4, atol=1e-6), name


def test_a_failing_patch_falls_back_under_auto_and_stops_under_liger(tmp_path, tiny_model, fake_liger):
    import torch
    from transformers import AutoModelForCausalLM

    from engine.torchside import kernels
    from engine.errors import BadInput
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.fake_liger_fail = True
    running, loss = kernels.apply("auto", model, torch.device("cuda"))
    assert running.startswith("none: Liger failed to patch this model (AttributeError") and loss is None
    with pytest.raises(BadInput) as e:
        kernels.apply("liger", model, torch.device("cuda"))
    assert e.value.key == "train.kernels" and "auto" in str(e.value)
    assert kernels.apply("auto", model, torch.device("cpu"))[0] == "none: no CUDA GPU (Liger's kernels are Triton, GPU only)"


def test_on_the_cpu_auto_trains_without_kernels_and_liger_is_refused(tmp_path, tiny_model):
    rf = run_file(tmp_path, tiny_model, DEMO, name="auto", train={"max_steps": 2, "activation_offload": True})
    res = rigtune("train", rf, "--no-tui")
    assert res.returncode == 0, res.stderr
    start = next(e for e in events(tmp_path / "runs" / "auto") if e["event"] == "start")
    assert start["kernels"].startswith("none: ") and start["activation_offload"] is True
    rf = run_file(tmp_path, tiny_model, DEMO, name="liger", train={"max_steps": 2, "kernels": "liger"})
    res = rigtune("train", rf, "--no-tui")
    assert res.returncode == 2 and "kernels" in res.stderr and "Traceback" not in res.stderr


def test_activation_offload_changes_where_activations_wait_not_the_result(tmp_path, tiny_model):
    losses = {}
    for offload in (False, True):
        name = f"off-{offload}".lower()
        rf = run_file(tmp_path, tiny_model, DEMO, name=name, train={"max_steps": 4, "activation_offload": offload,
                                                                  "gradient_checkpointing": True})
        assert rigtune("train", rf, "--no-tui").returncode == 0
        losses[offload] = [e["loss"] for e in events(tmp_path / "runs" / name) if e["event"] == "step"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-6) and len(losses[True]) == 4
