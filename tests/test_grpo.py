"""GRPO (engine/torchside/methods/grpo.py): the advantages and the loss of a tiny fixed group against the formula
written out here, with log-probabilities computed one sequence at a time."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from conftest import ROOT, run_file

IGNORE = -100


def test_group_advantages_are_each_reward_against_its_group():
    from engine.torchside.methods.grpo import group_advantages
    totals = [1.0, 0.0, 0.5, 0.5, 2.0, 2.0, 2.0, 0.0]
    adv, spread = group_advantages(totals, 4)
    for g in (0, 4):
        r = totals[g:g + 4]
        mean = sum(r) / 4
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / 4)
        for i in range(4):
            assert adv[g + i] == pytest.approx((r[i] - mean) / (std + 1e-4))
            assert spread[g + i] == pytest.approx(std)
    assert group_advantages([3.0, 3.0], 2)[0] == [0.0, 0.0]  # a group that all scored alike teaches nothing


def test_the_clipped_objective_and_the_k3_kl():
    import torch

    from engine.torchside.methods.grpo import grpo_token_loss
    logp = torch.tensor([-1.0, -2.0, -0.5])
    old = torch.tensor([-1.5, -1.0, -0.5])
    ref = torch.tensor([-1.2, -2.5, -0.1])
    adv = torch.tensor([1.0, -2.0, 0.5])
    loss, kl = grpo_token_loss(logp, old, ref, adv, 0.2, 0.04)
    for i in range(3):
        ratio = math.exp(float(logp[i] - old[i]))
        clipped = min(max(ratio, 0.8), 1.2)
        d = float(ref[i] - logp[i])
        want_kl = math.exp(d) - d - 1
        want = -min(ratio * float(adv[i]), clipped * float(adv[i])) + 0.04 * want_kl
        assert float(loss[i]) == pytest.approx(want, rel=1e-5)
        assert float(kl[i]) == pytest.approx(want_kl, rel=1e-5)


def _seq_logps(model, ids, labels):
    import torch
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[t - 1, labels[t]]) for t in range(1, len(ids)) if labels[t] != IGNORE]


def test_grpo_loss_of_a_fixed_group_matches_the_formula(tiny_model, tmp_path):
    """A fixed group of four sampled answers to one prompt (the rollout replaced by known answers and rewards):
    the method's loss equals sum over answers of mean over tokens of (-A + beta x KL), with A the group-relative
    advantage and KL against the base with the adapter off; its figures are the rewards' and lengths' sums."""
    import torch

    from engine import runfile
    from engine.data import Encoded
    from engine.torchside.methods.grpo import GRPO, PromptItem, Rollout, group_advantages
    from engine.torchside.model import Loaded, add_lora, load_base
    path = run_file(tmp_path, tiny_model, ROOT / "presets" / "demo.jsonl", name="g",
                    model={"base": str(tiny_model), "compute_dtype": "float32", "quantization": "none"},
                    lora={"dropout": 0.0}, train={"method": "grpo", "beta": 0.05, "num_generations": 4,
                                                  "loss_chunk_tokens": 0})
    cfg = runfile.load(path)
    torch.manual_seed(0)
    loaded = add_lora(cfg, load_base(cfg, "cpu"), "cpu")
    model = loaded.model
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    model.eval()
    prompt = [5, 9, 13, 21]
    answers = [[40, 41, 42, 2], [60, 61, 2], [70, 71, 72, 73, 2], [30, 2]]
    totals = [1.0, 0.0, 1.0, 0.5]
    adv, spread = group_advantages(totals, 4)
    rows = [Encoded(input_ids=prompt + a, labels=[IGNORE] * len(prompt) + a) for a in answers]
    fixed = Rollout(rows, ["a", "b", "c", "d"], [len(a) for a in answers], totals, {"exact": totals}, adv, spread)
    method = GRPO()
    method.rewards = SimpleNamespace(names=["exact"])
    method.rollout = lambda run, items, greedy=False, adapter=True: fixed
    run = SimpleNamespace(cfg=cfg, loaded=Loaded(model=model), model=model, pad_id=0, device=torch.device("cpu"),
                          main=False, params=[p for p in model.parameters() if p.requires_grad])
    loss, figures = method.loss(run, [PromptItem(0, prompt, {"answer": "x"})])
    want, want_kl = 0.0, 0.0
    for a, row in zip(adv, rows):
        pol = _seq_logps(model, row.input_ids, row.labels)
        with model.disable_adapter():
            ref = _seq_logps(model, row.input_ids, row.labels)
        kl = [math.exp(r - p) - (r - p) - 1 for p, r in zip(pol, ref)]
        want += sum(-a + 0.05 * k for k in kl) / len(pol)
        want_kl += sum(kl) / len(kl)
    assert float(loss) == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert figures["kl"] == pytest.approx(want_kl, rel=1e-4, abs=1e-8) and want_kl > 0
    assert figures["reward_mean"] == sum(totals) and figures["reward_exact"] == sum(totals)
    assert figures["completion_length"] == sum(len(a) for a in answers)
    loss.backward()  # the gradient is the advantage-weighted one: it reaches the adapters
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in run.params)


def test_the_planner_counts_a_prompts_sampled_answers():
    """A GRPO micro-batch item is num_generations sequences: micro-batch 1 of prompts at 8 answers plans like
    micro-batch 8 of SFT examples, and the note gives the sampling's KV cache."""
    from dataclasses import replace

    from engine import planner as P
    from engine import runfile
    arch = P.resolve_model("Llama-3.1-8B")
    values = runfile.defaults(name="g", model={"base": "x"}, data={"path": "d", "max_seq_len": 1024},
                              train={"method": "grpo", "num_generations": 8, "micro_batch_size": 1})
    inp = P.input_from_run(runfile.validate(values), arch, [24.0], 64.0)
    assert (inp.rows_per_item, inp.method) == (8, "grpo")
    assert P.breakdown(inp) == P.breakdown(replace(inp, micro_batch=8, rows_per_item=1, method="sft"))
    kv = 2 * arch.layers * arch.kv_dim * 1024 * 8 * 2 / 2**30
    assert any(f"KV cache of {kv:.2f} GiB" in n for n in P.plan(inp).notes)



def test_the_grpo_demo_raises_the_share_of_held_out_prompts_solved(demo_cache, tmp_path):
    """`rigtune demo --method grpo`: the tiny base model, rewarded for the right sum in its sampled answers, solves
    at least 0.3 more of the held-out prompts (its sums in wordings training never used) than the base does; the
    final eval carries both, the step events the rewards, and the completions events the sampled answers."""
    import os

    from conftest import events, rigtune
    env = {**os.environ, "RIGTUNE_CACHE": str(demo_cache)}  # the demo model, built
    res = rigtune("demo", "--method", "grpo", "--no-tui", cwd=tmp_path, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    ev = events(tmp_path / "runs" / "cpu-demo-grpo")
    steps = [e for e in ev if e["event"] == "step"]
    assert all({"reward_mean", "reward_std", "reward_exact", "completion_length", "kl"} <= set(e) for e in steps)
    assert all(e["tokens"] > 0 and e["trained_tokens"] > 0 for e in steps)
    answers = [e for e in ev if e["event"] == "completions"]
    assert answers and len(answers[-1]["answers"]) == 8
    final = [e for e in ev if e["event"] == "eval"][-1]
    assert final["solved"] >= final["base_solved"] + 0.3, final
    assert final["reward_mean"] > final["base_reward_mean"]
    assert "held-out reward" in res.stdout and "(the base:" in res.stdout


def test_grpo_resumes_exactly_and_runs_over_two_ranks(tiny_model, tmp_path):
    """Sampling is reseeded from (seed, step, rank) like everything else: a GRPO run killed while saving resumes to
    the same rewards and losses, step for step, as one that was not; two gloo ranks (DDP) train it too, each
    sampling for its own prompts."""
    import os

    from conftest import events, rigtune
    prompts = ROOT / "tests" / "fixtures" / "prompts.jsonl"
    common = dict(data={"eval_fraction": 0.0, "max_seq_len": 64}, lora={"dropout": 0.0},
                  rewards={"length": 1.0, "length_target": 4, "exact": 0.0})
    train = {"method": "grpo", "num_generations": 4, "max_completion_length": 8, "beta": 0.04, "max_steps": 6,
             "micro_batch_size": 1, "gradient_accumulation_steps": 2, "save_every_steps": 2, "eval_every_steps": 0,
             "sample_max_new_tokens": 0, "learning_rate": 5e-3}

    def figures(name):
        return {e["step"]: (e["loss"], e["reward_mean"], e["completion_length"])
                for e in events(tmp_path / "runs" / name) if e["event"] == "step"}
    ref = run_file(tmp_path, tiny_model, prompts, name="ref", train=train, **common)
    assert rigtune("train", ref, "--no-tui").returncode == 0
    killed = run_file(tmp_path, tiny_model, prompts, name="k", train=train, **common)
    assert rigtune("train", killed, "--no-tui", env={**os.environ, "RIGTUNE_FAULT": "killsave@4"}).returncode != 0
    res = rigtune("train", killed, "--no-tui", "--resume")
    assert res.returncode == 0, res.stderr
    want, got = figures("ref"), figures("k")
    assert sorted(got) == sorted(want) == list(range(1, 7))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-4, abs=1e-6), step
    ddp = run_file(tmp_path, tiny_model, prompts, name="ddp", hardware={"strategy": "ddp", "num_processes": 2},
                   train={**train, "gradient_accumulation_steps": 1}, **common)
    res = rigtune("train", ddp, "--no-tui")
    assert res.returncode == 0, res.stderr
    ev = events(tmp_path / "runs" / "ddp")
    assert [e["world_size"] for e in ev if e["event"] == "start"] == [2]
    steps = [e for e in ev if e["event"] == "step"]
    assert len(steps) == 6 and all(0 <= e["reward_mean"] <= 1 and e["tokens"] > 0 for e in steps)
