"""GRPO: reinforcement learning from rewards rigtune can check ([rewards], engine.rewards), on the same QLoRA engine.

Each micro-batch item is one prompt. For it the policy samples num_generations answers (transformers' generate
with a KV cache, from the weights being trained: no second copy of the model and no server), the rewards score
them, and each answer's advantage is its reward against its group's: (r - mean) / (std + 1e-4). The loss of an
answer is the mean over its tokens of

    -min(ratio x A, clip(ratio, 1 - epsilon, 1 + epsilon) x A) + beta x KL

with ratio the policy's probability of the token over the one it was sampled with (one update per sampling,
so the ratio is 1 and only its gradient acts; the clip matters once a batch is reused) and KL the k3 estimate
exp(ref - logp) - (ref - logp) - 1 against the reference, the base with the adapter switched off (none when beta
is 0). The loop takes the mean over the step's answers (units).

Step events carry reward_mean, reward_std (the mean of the groups' spreads), each reward's own mean
(reward_<name>), completion_length and kl; a `completions` event keeps the answers of the step's first prompt
with their rewards, for the dashboard. Held-out prompts are answered greedily: eval events carry reward_mean and
solved (the share given full reward), the last one also base_reward_mean and base_solved (the base) and each
held-out prompt's answers by both, in the held-out check's form."""
from __future__ import annotations

from dataclasses import dataclass

from ... import data as D
from .contract import Sizes

SAMPLES = 8   # held-out prompts whose answers the last eval shows


@dataclass
class PromptItem:
    index: int
    ids: list          # the prompt's token ids, generation prompt included
    record: dict       # the raw record, for the rewards
    question: str = ""


@dataclass
class Rollout:
    """One micro-batch's sampled answers: rows to score (prompt + answer, answer tokens trained), their texts,
    token counts, rewards and advantages."""
    rows: list
    texts: list
    lengths: list
    totals: list
    parts: dict
    advantages: list
    spreads: list


def group_advantages(totals: list, group: int) -> tuple[list, list]:
    """Each answer's reward against its group's (consecutive runs of `group` answers): (advantages, the group's
    standard deviation for each answer)."""
    import statistics
    adv, spread = [], []
    for g in range(0, len(totals), group):
        r = totals[g:g + group]
        mean, std = statistics.fmean(r), statistics.pstdev(r)
        adv += [(x - mean) / (std + 1e-4) for x in r]
        spread += [std] * len(r)
    return adv, spread


def grpo_token_loss(logps, old_logps, ref_logps, advantages, epsilon: float, beta: float):
    """Per token: -min(ratio A, clip(ratio) A) + beta KL(k3); `advantages` already per token."""
    import torch
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    loss = -torch.minimum(ratio * advantages, clipped * advantages)
    kl = torch.zeros_like(logps)
    if ref_logps is not None:
        d = ref_logps - logps
        kl = torch.exp(d) - d - 1
        loss = loss + beta * kl
    return loss, kl


class GRPO:
    def __init__(self):
        self.rewards = None
        self.held_out: list = []
        self.generated = 0      # answer tokens this rank sampled in the current step (sizes() adds them up)
        self.calls = 0

    def prepare(self, run) -> None:
        from ... import promptdata, rewards
        cfg = run.cfg
        self.rewards = rewards.Rewards.from_config(cfg)
        train, evals, run.report, run.data_files = promptdata.prepare_for_run(cfg, run.tokenizer)
        limit = cfg.data.max_seq_len - cfg.train.max_completion_length
        run.seqs = [PromptItem(i, promptdata.prompt_ids(run.tokenizer, p, limit), p.record, p.question)
                    for i, p in enumerate(train)]
        run.eval_seqs = [PromptItem(len(train) + i, promptdata.prompt_ids(run.tokenizer, p, limit), p.record,
                                    p.question) for i, p in enumerate(evals)]
        self.run = run

    def sizes(self, group: list) -> Sizes:
        """Units: the step's answers. Tokens: its prompts once per answer, plus the answer tokens sampled so far
        in this step on every rank (the loop asks again after the forward, when they are known)."""
        g = self.run.cfg.train.num_generations
        items = [p for mb in group for p in mb]
        prompts = sum(len(p.ids) for p in items) * g
        answers = int(self.run.gather_sum(float(self.generated)))
        self.generated = 0
        return Sizes(tokens=prompts + answers, trained_tokens=answers, units=len(items) * g)

    # -- sampling
    def rollout(self, run, items: list, greedy: bool = False, adapter: bool = True) -> Rollout:
        """Sample num_generations answers per prompt (one, greedy, for an eval) and score them."""
        import contextlib

        import torch

        from ..head import full_head
        tc, loaded = run.cfg.train, run.loaded
        n = 1 if greedy else tc.num_generations
        prompts = [p for p in items for _ in range(n)]
        width = max(len(p.ids) for p in prompts)
        pad = run.pad_id
        ids = torch.tensor([[pad] * (width - len(p.ids)) + p.ids for p in prompts], device=run.device)
        mask = torch.tensor([[0] * (width - len(p.ids)) + [1] * len(p.ids) for p in prompts], device=run.device)
        model = loaded.model
        model.eval()
        switch = contextlib.nullcontext() if adapter else model.disable_adapter()
        sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=tc.temperature, top_k=0,
                                                              top_p=1.0)
        with torch.no_grad(), full_head(model, loaded.head), switch:
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tc.max_completion_length,
                                 min_new_tokens=tc.max_completion_length if run.sharded else None,
                                 pad_token_id=pad, use_cache=True, **sampling)
        model.train()
        eos = run.tokenizer.eos_token_id
        rows, texts, lengths = [], [], []
        for p, seq in zip(prompts, out[:, width:].tolist()):
            answer = seq[:seq.index(eos) + 1] if eos in seq else seq  # the end-of-turn token is part of it
            rows.append(D.Encoded(input_ids=p.ids + answer, labels=[D.IGNORE] * len(p.ids) + answer))
            texts.append(run.tokenizer.decode([t for t in answer if t != eos], skip_special_tokens=True))
            lengths.append(len(answer))
        totals, parts = self.rewards.score(texts, lengths, [p.record for p in prompts])
        advantages, spreads = group_advantages(totals, n)
        return Rollout(rows, texts, lengths, totals, parts, advantages, spreads)

    # -- the loss
    def loss(self, run, items: list) -> tuple:
        import torch

        from .logps import per_row, token_logps
        tc = run.cfg.train
        names = self.figure_names()
        if not items:  # every rank returns the same figure names (each is an all-reduce)
            return sum(p.sum() for p in run.params) * 0.0, dict.fromkeys(names, 0.0)
        ro = self.rollout(run, items)
        self.generated += sum(ro.lengths)
        logps, row, rows = token_logps(run.model, ro.rows, run.pad_id, run.device, tc.loss_chunk_tokens, run.loaded.head)
        ref = None
        if tc.beta > 0:
            with torch.no_grad(), run.loaded.model.disable_adapter():
                ref, _, _ = token_logps(run.model, ro.rows, run.pad_id, run.device, tc.loss_chunk_tokens,
                                        run.loaded.head)
        adv = torch.tensor(ro.advantages, dtype=logps.dtype, device=logps.device)[row]
        per_token, kl = grpo_token_loss(logps, logps.detach(), ref, adv, tc.epsilon, tc.beta)
        sums, counts = per_row(per_token, row, rows)
        kl_sums, _ = per_row(kl.detach(), row, rows)
        loss = (sums / counts.clamp(min=1)).sum()
        figures = {"reward_mean": sum(ro.totals), "reward_std": sum(ro.spreads),
                   **{f"reward_{k}": sum(v) for k, v in ro.parts.items()},
                   "completion_length": float(sum(ro.lengths)), "kl": float((kl_sums / counts.clamp(min=1)).sum())}
        self.keep_completions(run, items[0], ro)
        return loss, figures

    def figure_names(self) -> list:
        return ["reward_mean", "reward_std", *(f"reward_{k}" for k in self.rewards.names), "completion_length", "kl"]

    def keep_completions(self, run, item: PromptItem, ro: Rollout) -> None:
        """The `completions` event: the first prompt's answers of each logged step, with their rewards."""
        self.calls += 1
        if not run.main or (self.calls - 1) % run.layout.accum:
            return
        step = run.start_step + (self.calls - 1) // run.layout.accum + 1
        if step % run.cfg.train.log_every_steps and step != run.total:
            return
        g = run.cfg.train.num_generations
        run.log.write("completions", step=step, question=item.question,
                      answers=[{"text": t, "reward": round(r, 4), "tokens": n}
                               for t, r, n in zip(ro.texts[:g], ro.totals[:g], ro.lengths[:g])])

    # -- held-out
    def evaluate(self, run, step: int) -> None:
        fields = {}
        if (run.main or run.sharded) and run.eval_seqs:
            run.status(state="evaluating", step=step, total_steps=run.total)
            tuned = self.answer_held_out(run, adapter=True)
            fields = {"reward_mean": round(sum(tuned.totals) / len(tuned.totals), 4),
                      "solved": round(sum(map(self.rewards.solved, tuned.totals)) / len(tuned.totals), 4)}
            if step == run.total:
                base = self.answer_held_out(run, adapter=False)
                fields.update(base_reward_mean=round(sum(base.totals) / len(base.totals), 4),
                              base_solved=round(sum(map(self.rewards.solved, base.totals)) / len(base.totals), 4))
                fields.update(self.samples(run, tuned, base))
        if run.main:
            run.log.write("eval", step=step, **fields)
            if fields:
                print(f"[rigtune] eval step {step}: held-out reward {fields['reward_mean']:.3f}, solved "
                      f"{fields['solved']:.2f}" + (f" (the base: {fields['base_reward_mean']:.3f}, solved "
                                                   f"{fields['base_solved']:.2f})" if "base_solved" in fields else ""),
                      flush=True)
        run.accelerator.wait_for_everyone()

    def answer_held_out(self, run, adapter: bool) -> Rollout:
        """Every held-out prompt answered greedily (by the base when adapter is False), micro-batch by micro-batch."""
        mbs, out = run.cfg.train.micro_batch_size, None
        for i in range(0, len(run.eval_seqs), mbs):
            ro = self.rollout(run, run.eval_seqs[i:i + mbs], greedy=True, adapter=adapter)
            if out is None:
                out = ro
                continue
            for field in ("rows", "texts", "lengths", "totals", "advantages", "spreads"):
                getattr(out, field).extend(getattr(ro, field))
            for k, v in ro.parts.items():
                out.parts[k].extend(v)
        return out

    def samples(self, run, tuned: Rollout, base: Rollout) -> dict:
        out = []
        for i, item in enumerate(run.eval_seqs[:SAMPLES]):
            out.append({"question": item.question, "completion": tuned.texts[i], "base_completion": base.texts[i],
                        "reward": round(tuned.totals[i], 4), "base_reward": round(base.totals[i], 4),
                        "correct": self.rewards.solved(tuned.totals[i]),
                        "base_correct": self.rewards.solved(base.totals[i])})
        return {"samples": out, "sample_total": len(out), "sample_correct": sum(s["correct"] for s in out),
                "base_correct": sum(s["base_correct"] for s in out)}
