"""DPO and ORPO (engine/torchside/methods/pref.py): the losses of a tiny batch against the formulas written out
here from log-probabilities computed one sequence at a time, for both references (the base with the adapter
off, and a starting adapter)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from conftest import ROOT, run_file

IGNORE = -100


def _encoded(prompt: list, answer: list):
    from engine.data import Encoded
    return Encoded(input_ids=prompt + answer, labels=[IGNORE] * len(prompt) + answer)


def _seq_logp(model, enc) -> tuple[float, int]:
    """Sum of log p(token) over the trained tokens of one sequence, alone (no batch, no padding), and their count."""
    import torch
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([enc.input_ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    total, n = 0.0, 0
    for t in range(1, len(enc.input_ids)):
        if enc.labels[t] != IGNORE:
            total += float(logp[t - 1, enc.labels[t]])
            n += 1
    return total, n


@pytest.fixture
def setting(tiny_model, tmp_path):
    """A PeftModel on the tiny model (float32, no quantization, no dropout), with adapters made non-zero so the
    policy differs from the base, and two hand-made pairs."""
    import torch

    from engine import runfile
    from engine.torchside.methods.pref import PairItem
    from engine.torchside.model import Loaded, add_lora, load_base

    def make(method: str, adapter: str = "", **train):
        path = run_file(tmp_path, tiny_model, ROOT / "presets" / "demo.jsonl", name=f"{method}{len(train)}",
                        model={"base": str(tiny_model), "compute_dtype": "float32", "quantization": "none",
                               "adapter": ""},
                        lora={"dropout": 0.0}, train={"method": method, "loss_chunk_tokens": 0, **train})
        cfg = runfile.load(path)
        torch.manual_seed(0)
        loaded = add_lora(cfg, load_base(cfg, "cpu"), "cpu")
        model = loaded.model
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.requires_grad:
                    p.normal_(0, 0.05)
        values = cfg.to_dict()
        values["model"]["adapter"] = adapter
        cfg = runfile.validate(values)
        items = [PairItem(0, _encoded([5, 9, 13], [40, 41, 42]), _encoded([5, 9, 13], [60, 61])),
                 PairItem(1, _encoded([7, 8], [70, 71, 72, 73]), _encoded([7, 8], [30]))]
        run = SimpleNamespace(cfg=cfg, loaded=Loaded(model=model), model=model, pad_id=0,
                              device=torch.device("cpu"), run_dir=tmp_path, data_print="t", seqs=items, eval_seqs=[],
                              main=True, params=[p for p in model.parameters() if p.requires_grad],
                              initial_adapter={})
        return run, items
    return make


def _policy(run, items):
    run.model.eval()  # no dropout either way; the same numbers as the method's forward
    return [(_seq_logp(run.model, p.chosen), _seq_logp(run.model, p.rejected)) for p in items]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_against_the_base_with_the_adapter_off(setting, loss_type):
    from engine.torchside.methods.pref import Preference
    run, items = setting("dpo", beta=0.3, loss_type=loss_type)
    with run.model.disable_adapter():
        ref = _policy(run, items)
    pol = _policy(run, items)
    method = Preference("dpo")
    loss, figures = method.loss(run, items)
    expected, rewards = 0.0, []
    for ((pc, nc), (pr, nr)), ((rc, _), (rr, _)) in zip(pol, ref):
        if loss_type == "ipo":
            h = (pc / nc - rc / nc) - (pr / nr - rr / nr)
            expected += (h - 1 / (2 * 0.3)) ** 2
            rewards.append((0.3 * (pc - rc) / nc, 0.3 * (pr - rr) / nr))
        else:
            h = (pc - rc) - (pr - rr)
            expected += -math.log(1 / (1 + math.exp(-0.3 * h)))
            rewards.append((0.3 * (pc - rc), 0.3 * (pr - rr)))
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert figures["rewards_chosen"] == pytest.approx(sum(c for c, _ in rewards), rel=1e-4, abs=1e-6)
    assert figures["rewards_rejected"] == pytest.approx(sum(r for _, r in rewards), rel=1e-4, abs=1e-6)
    assert figures["reward_accuracy"] == sum(c > r for c, r in rewards)
    assert (run.run_dir / "reference_logps.json").exists()  # computed once, kept for --resume


def test_dpo_against_a_starting_adapter(setting):
    """[model] adapter: the reference is that adapter's model (here: the adapter weights training started from,
    run.initial_adapter), not the base and not the current weights."""
    import torch

    from engine.torchside.methods.pref import Preference
    run, items = setting("dpo", adapter="/an/sft/run", beta=0.1)
    named = {n: p for n, p in run.model.named_parameters() if p.requires_grad}
    run.initial_adapter = {n: p.detach().clone() for n, p in named.items()}
    ref = _policy(run, items)  # the starting adapter's log-probabilities
    with torch.no_grad():  # training has moved the adapter since
        for p in named.values():
            p.add_(torch.randn_like(p) * 0.05)
    pol = _policy(run, items)
    loss, _ = Preference("dpo").loss(run, items)
    expected = sum(-math.log(1 / (1 + math.exp(-0.1 * ((pc - rc) - (pr - rr)))))
                   for ((pc, _), (pr, _)), ((rc, _), (rr, _)) in zip(pol, ref))
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    with run.model.disable_adapter():
        base = _policy(run, items)
    assert base != ref  # the base would have given another loss
    for n, p in named.items():  # the current weights are back after the reference pass
        assert not torch.equal(p, run.initial_adapter[n])


def test_orpo_needs_no_reference(setting):
    from engine.torchside.methods.pref import Preference
    run, items = setting("orpo", beta=0.2, orpo_lambda=0.5)
    pol = _policy(run, items)
    loss, figures = Preference("orpo").loss(run, items)
    expected, margin = 0.0, 0.0
    for (pc, nc), (pr, nr) in pol:
        ac, ar = pc / nc, pr / nr
        log_odds = (ac - math.log(1 - math.exp(ac))) - (ar - math.log(1 - math.exp(ar)))
        expected += -ac - 0.5 * math.log(1 / (1 + math.exp(-log_odds)))
        margin += 0.2 * (ac - ar)
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert figures["reward_margin"] == pytest.approx(margin, rel=1e-4)
    assert not (run.run_dir / "reference_logps.json").exists()


# ---------------------------------------------------------------------------- the preference demo

def test_the_dpo_demo_teaches_a_preference_the_sft_demo_does_not_have(demo_run, demo_cache, tmp_path):
    """`rigtune demo --method dpo` from the SFT demo's finished run: held-out pairs (frames neither demo trained
    on) are preferred as the pairs say, which the SFT model did not, and its answers visibly change."""
    import json
    import os

    from conftest import events, rigtune
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "cpu-demo").symlink_to(demo_run)  # the SFT demo is there: it is not trained again
    env = {**os.environ, "RIGTUNE_CACHE": str(demo_cache)}
    res = rigtune("demo", "--method", "dpo", "--no-tui", cwd=tmp_path, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "training that first" not in res.stdout
    ev = events(tmp_path / "runs" / "cpu-demo-dpo")
    start = next(e for e in ev if e["event"] == "start")
    assert start["method"] == "dpo" and start["adapter"] == str(tmp_path / "runs" / "cpu-demo")
    steps = [e for e in ev if e["event"] == "step"]
    assert all({"rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy"} <= set(e) for e in steps)
    assert steps[-1]["reward_margin"] > steps[0]["reward_margin"]
    final = [e for e in ev if e["event"] == "eval"][-1]
    assert final["pref_accuracy"] >= 0.85 and final["base_pref_accuracy"] <= 0.6, final
    samples = final["samples"]
    assert final["sample_correct"] >= 6 and final["base_correct"] <= 2, json.dumps(samples, indent=1)
    assert sum(s["completion"] != s["base_completion"] for s in samples) >= 6  # the answers visibly change
    assert "preference accuracy" in res.stdout and "(the starting model:" in res.stdout
    # the result is an adapter like any other: chat answers with it, signed off
    q = samples[0]["question"]
    chat = rigtune("chat", tmp_path / "runs" / "cpu-demo-dpo", "--prompt", q, "--max-new-tokens", "24", env=env)
    assert chat.returncode == 0 and samples[0]["completion"].strip() in chat.stdout


# ---------------------------------------------------------------------------- the rest of the engine, for DPO

def test_dpo_resumes_exactly_and_trains_the_same_over_ddp_and_fsdp(tiny_model, tmp_path):
    """A DPO run killed while saving resumes to the same losses as one that was not, with the same reference
    log-probabilities as it started with; two gloo ranks (DDP, and FSDP with its sharded adapters) give the losses
    of one process taking both micro-batches."""
    import os

    from conftest import events, rigtune
    pairs = ROOT / "tests" / "fixtures" / "pref_strings.jsonl"
    train = {"method": "dpo", "beta": 0.2, "max_steps": 6, "micro_batch_size": 1, "save_every_steps": 2,
             "eval_every_steps": 0, "sample_max_new_tokens": 0}

    def losses(name):
        return {e["step"]: e["loss"] for e in events(tmp_path / "runs" / name) if e["event"] == "step"}
    # a 16-bit base throughout: FSDP shards it like the others (NF4 DPO is the demo's)
    common = dict(data={"eval_fraction": 0.0, "max_seq_len": 64}, lora={"dropout": 0.0},
                  model={"base": str(tiny_model), "compute_dtype": "float32", "quantization": "none"})
    ref = run_file(tmp_path, tiny_model, pairs, name="ref", train={**train, "gradient_accumulation_steps": 2}, **common)
    assert rigtune("train", ref, "--no-tui").returncode == 0
    killed = run_file(tmp_path, tiny_model, pairs, name="k", train={**train, "gradient_accumulation_steps": 2}, **common)
    env = {**os.environ, "RIGTUNE_FAULT": "killsave@4"}
    assert rigtune("train", killed, "--no-tui", env=env).returncode != 0
    cached = (tmp_path / "runs" / "k" / "reference_logps.json").read_text()
    res = rigtune("train", killed, "--no-tui", "--resume")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "runs" / "k" / "reference_logps.json").read_text() == cached
    assert (tmp_path / "runs" / "ref" / "reference_logps.json").read_text() == cached
    want = losses("ref")
    assert sorted(want) == list(range(1, 7)) and want[6] < want[1]
    for name, hardware in (("k", None), ("ddp", {"strategy": "ddp", "num_processes": 2}),
                           ("fsdp", {"strategy": "fsdp", "num_processes": 2})):
        if hardware:
            rf = run_file(tmp_path, tiny_model, pairs, name=name, train={**train, "gradient_accumulation_steps": 1},
                          hardware=hardware, **common)
            res = rigtune("train", rf, "--no-tui")
            assert res.returncode == 0, res.stderr
        got = losses(name)
        assert sorted(got) == sorted(want), name
        for step in want:
            assert got[step] == pytest.approx(want[step], rel=1e-4, abs=1e-6), (name, step)


def test_a_starting_adapter_is_checked_before_anything_starts(tiny_model, tmp_path):
    import json

    from conftest import rigtune
    pairs = ROOT / "tests" / "fixtures" / "pref_strings.jsonl"
    adapter = tmp_path / "sft" / "adapter"
    adapter.mkdir(parents=True)
    rf = run_file(tmp_path, tiny_model, pairs, name="a", model={"base": str(tiny_model), "adapter": str(tmp_path / "sft")},
                  train={"method": "dpo"})
    for cmd in (("check", rf), ("train", rf, "--no-tui")):
        res = rigtune(*cmd)
        assert res.returncode == 2 and "key 'model.adapter'" in res.stderr and "holds no LoRA adapter" in res.stderr
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    res = rigtune("check", rf)
    assert res.returncode == 2 and "trained with r 8, alpha 16" in res.stderr and "[lora] r, alpha" in res.stderr
    assert not (tmp_path / "runs" / "a").exists()


def test_chunked_answer_log_probabilities_equal_one_pass_with_the_same_gradients(tiny_model, tmp_path):
    """DPO, ORPO and GRPO score answers through the detached head a chunk at a time, each chunk recomputed in
    backward (no chunk's fp32 logits kept): the same log-probabilities and adapter gradients as one pass."""
    import torch

    from engine import runfile
    from engine.torchside.methods.logps import token_logps
    from engine.torchside.model import load_model
    path = run_file(tmp_path, tiny_model, ROOT / "presets" / "demo.jsonl", name="c",
                    model={"base": str(tiny_model), "compute_dtype": "float32", "quantization": "none"},
                    lora={"dropout": 0.0}, train={"loss_chunk_tokens": 3})
    loaded = load_model(runfile.load(path), "cpu")
    assert loaded.head is not None  # the chunked path: the head held aside
    rows = [_encoded([5, 9, 13], [40, 41, 42, 43]), _encoded([7, 8], [30, 31])]
    params = [p for p in loaded.model.parameters() if p.requires_grad]
    torch.manual_seed(0)  # the same adapter weights every run
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.05)
    out = []
    for chunk in (3, 10_000):
        for p in params:
            p.grad = None
        logps, row, _ = token_logps(loaded.model, rows, 0, torch.device("cpu"), chunk, loaded.head)
        (logps * torch.arange(1, logps.numel() + 1)).sum().backward()
        out.append((logps.detach(), [p.grad.clone() for p in params]))
    assert torch.allclose(out[0][0], out[1][0], atol=1e-6) and out[0][0].numel() == 6
    # fp32 sums in another order: equal to rounding, relative to each gradient's size
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max())) for a, b in zip(out[0][1], out[1][1]))
