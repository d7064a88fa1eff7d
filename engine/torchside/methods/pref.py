"""Preference tuning on chosen/rejected pairs: DPO (sigmoid or IPO loss) against a reference, and ORPO, which
needs none. Only each answer's tokens count (engine.prefdata masks the prompt).

The reference is the model training starts from - the base with the adapter switched off, or the adapter of
[model] adapter (an SFT run's) - and its log-probabilities are computed once, before the first step, for every
training and held-out pair, then kept in the run directory (reference_logps.json, with the data's fingerprint):
no second model in memory, no reference forward in each step, and --resume reads them back. Recomputing them
later needs the starting weights, which the trainer keeps from the load (run.initial_adapter). ORPO has no
reference: its odds-ratio term compares the policy's own average log-probabilities of the two answers.

Figures of each step (means over its pairs): rewards_chosen and rewards_rejected (beta x the policy's log-ratio
to the reference; for ORPO beta x the average log-probability), reward_margin (their difference) and
reward_accuracy (the share with a positive margin). Each eval: the held-out preference loss and pref_accuracy,
the share of held-out pairs whose chosen answer the policy finds more likely than the rejected one (the
probability of the whole answer: which of the two it would rather say);
the last one also base_pref_accuracy (the same for the starting model) and each held-out prompt's answer by the
starting model beside the tuned one."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

from ... import data as D
from .contract import Sizes

REFERENCE_FILE = "reference_logps.json"
SAMPLES = 8   # held-out prompts answered at the last eval by the tuned and by the starting model


@dataclass
class PairItem:
    """One training or held-out pair as the loop batches it: its index (into the reference cache) and the two
    encoded answers (engine.data.Encoded)."""
    index: int
    chosen: object
    rejected: object
    held_out: bool = False


@dataclass
class Scores:
    """Per pair: summed log-probabilities of each answer's tokens and their counts (tensors of shape [pairs])."""
    chosen: object
    rejected: object
    n_chosen: object
    n_rejected: object


# ---------------------------------------------------------------------------- log-probabilities

def answer_logps(model, items: list, pad_id: int, device, chunk_tokens: int = 0, head=None) -> Scores:
    """Forward chosen and rejected answers of `items` as one batch: each answer's summed token log-probability."""
    from .logps import per_row, token_logps
    logps, row, rows = token_logps(model, [p.chosen for p in items] + [p.rejected for p in items], pad_id, device,
                                   chunk_tokens, head)
    sums, counts = per_row(logps, row, rows)
    n = len(items)
    return Scores(sums[:n], sums[n:], counts[:n], counts[n:])


# ---------------------------------------------------------------------------- the losses

def dpo_loss(policy: Scores, ref: Scores, beta: float, loss_type: str = "sigmoid") -> tuple:
    """(per-pair loss, chosen reward, rejected reward). sigmoid: -log sigmoid(beta x ((pc - rc) - (pr - rr)))
    on summed log-probabilities; ipo: ((pc - rc) - (pr - rr) - 1 / (2 beta))^2 on per-token averages."""
    import torch.nn.functional as F
    pc, pr, rc, rr = policy.chosen, policy.rejected, ref.chosen, ref.rejected
    if loss_type == "ipo":
        pc, rc = pc / policy.n_chosen.clamp(min=1), rc / policy.n_chosen.clamp(min=1)
        pr, rr = pr / policy.n_rejected.clamp(min=1), rr / policy.n_rejected.clamp(min=1)
    logits = (pc - rc) - (pr - rr)
    losses = (logits - 1 / (2 * beta)) ** 2 if loss_type == "ipo" else -F.logsigmoid(beta * logits)
    return losses, beta * (pc - rc).detach(), beta * (pr - rr).detach()


def orpo_loss(policy: Scores, beta: float, lam: float) -> tuple:
    """(per-pair loss, chosen reward, rejected reward): the chosen answer's mean token cross-entropy minus
    lam x log sigmoid(log odds(chosen) - log odds(rejected)), with odds p / (1 - p) of the per-token average
    probability; rewards beta x the average log-probabilities."""
    import torch
    import torch.nn.functional as F
    ac = policy.chosen / policy.n_chosen.clamp(min=1)
    ar = policy.rejected / policy.n_rejected.clamp(min=1)
    log_odds = (ac - torch.log1p(-torch.exp(ac).clamp(max=1 - 1e-7))) - \
               (ar - torch.log1p(-torch.exp(ar).clamp(max=1 - 1e-7)))
    losses = -ac - lam * F.logsigmoid(log_odds)
    return losses, beta * ac.detach(), beta * ar.detach()


# ---------------------------------------------------------------------------- the method

class Preference:
    """DPO or ORPO, by [train] method."""

    def __init__(self, name: str):
        self.name = name
        self.reference: dict = {}   # pair index -> [chosen sum, rejected sum] of the starting model
        self.held_out = []          # the held-out pairs as read (engine.prefdata.Pair), for the samples
        self.tokenizer = None

    def prepare(self, run) -> None:
        from ... import prefdata
        train, evals, run.report, self.held_out, run.data_files = prefdata.prepare_for_run(run.cfg, run.tokenizer)
        run.seqs = [PairItem(i, p.chosen, p.rejected) for i, p in enumerate(train)]
        run.eval_seqs = [PairItem(len(train) + i, p.chosen, p.rejected, True) for i, p in enumerate(evals)]

    def sizes(self, group: list) -> Sizes:
        pairs = [p for mb in group for p in mb]
        return Sizes(tokens=sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in pairs),
                     trained_tokens=sum(p.chosen.trained + p.rejected.trained for p in pairs), units=len(pairs))

    def loss(self, run, items: list) -> tuple:
        self.ensure_reference(run)
        if not items:  # every rank returns the same figure names (each is an all-reduce)
            zero = sum(p.sum() for p in run.params) * 0.0
            return zero, dict.fromkeys(("rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy"), 0.0)
        _, losses, chosen, rejected = self.scored(run, items)
        margin = chosen - rejected
        return losses.sum(), {"rewards_chosen": float(chosen.sum()), "rewards_rejected": float(rejected.sum()),
                              "reward_margin": float(margin.sum()), "reward_accuracy": float((margin > 0).sum())}

    def scored(self, run, items: list) -> tuple:
        """(the policy's Scores, per-pair loss, chosen reward, rejected reward) of `items` on run.model."""
        tc, loaded = run.cfg.train, run.loaded
        policy = answer_logps(run.model, items, run.pad_id, run.device, tc.loss_chunk_tokens, loaded.head)
        if self.name == "orpo":
            return (policy, *orpo_loss(policy, tc.beta, tc.orpo_lambda))
        return (policy, *dpo_loss(policy, self.reference_scores(items, policy), tc.beta, tc.loss_type))

    def reference_scores(self, items: list, like: Scores) -> Scores:
        import torch
        ref = torch.tensor([self.reference[p.index] for p in items], dtype=torch.float32, device=like.chosen.device)
        return Scores(ref[:, 0], ref[:, 1], like.n_chosen, like.n_rejected)

    # -- the reference, once
    def ensure_reference(self, run) -> None:
        """The starting model's log-probabilities of every pair: read from the run directory, or computed now
        (every rank computes all of them, in the same order: a sharded model needs every rank in each forward)."""
        if self.name == "orpo" or self.reference:
            return
        path = run.run_dir / REFERENCE_FILE
        key = {"data": run.data_print, "adapter": run.cfg.model.adapter, "pairs": len(run.seqs) + len(run.eval_seqs)}
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                self.reference = {int(k): v for k, v in saved["logps"].items()}
                return
        except (OSError, ValueError, AttributeError):  # none yet, or from other data: compute it
            pass
        import torch
        with starting_model(run), torch.no_grad():
            run.model.eval()
            items = run.seqs + run.eval_seqs
            mbs = run.cfg.train.micro_batch_size
            for i in range(0, len(items), mbs):
                part = items[i:i + mbs]
                s = answer_logps(run.model, part, run.pad_id, run.device, run.cfg.train.loss_chunk_tokens,
                                 run.loaded.head)
                for p, c, r in zip(part, s.chosen.tolist(), s.rejected.tolist()):
                    self.reference[p.index] = [c, r]
            run.model.train()
        if run.main:
            from ... import checkpoint as C
            text = json.dumps({"key": key, "logps": self.reference})
            C.write_file_complete(path, lambda tmp: tmp.write_text(text), "the reference log-probabilities",
                                  C.AFTER_SAVE)

    # -- held-out
    def evaluate(self, run, step: int) -> None:
        """Held-out preference loss and pref_accuracy; at the last step also base_pref_accuracy and each sampled
        prompt answered by the starting model and by the tuned one."""
        fields = {}
        self.ensure_reference(run)
        if (run.main or run.sharded) and run.eval_seqs:
            run.status(state="evaluating", step=step, total_steps=run.total)
            loss, accuracy = self.held_out_scores(run)
            fields = {"eval_loss": round(loss, 6), "pref_accuracy": round(accuracy, 4)}
            if step == run.total:
                with starting_model(run):
                    fields["base_pref_accuracy"] = round(self.held_out_scores(run)[1], 4)
                fields.update(self.samples(run))
        if run.main:
            run.log.write("eval", step=step, **fields)
            if fields:
                print(f"[rigtune] eval step {step}: preference accuracy {fields['pref_accuracy']:.2f}"
                      + (f" (the starting model: {fields['base_pref_accuracy']:.2f})" if "base_pref_accuracy" in fields
                         else ""), flush=True)
        run.accelerator.wait_for_everyone()

    def held_out_scores(self, run) -> tuple[float, float]:
        """(mean preference loss, share of pairs whose chosen answer the model finds more likely - as a whole
        sequence, what it would say - than the rejected one) over the held-out pairs, with the model as it is."""
        import torch
        total, preferred, n = 0.0, 0, 0
        mbs = run.cfg.train.micro_batch_size
        run.model.eval()
        with torch.no_grad():
            for i in range(0, len(run.eval_seqs), mbs):
                part = run.eval_seqs[i:i + mbs]
                s, losses, _, _ = self.scored(run, part)
                preferred += int((s.chosen > s.rejected).sum())
                total += float(losses.sum())
                n += len(part)
        run.model.train()
        return total / max(1, n), preferred / max(1, n)

    def samples(self, run) -> dict:
        """The first held-out prompts answered greedily by the tuned and by the starting model, in the held-out
        check's form (engine.runview reads it): correct when a pair says what the preferred answer contains."""
        from ..loss import sample
        n, loaded, out = run.cfg.train.sample_max_new_tokens, run.loaded, []
        for pair in self.held_out[:SAMPLES]:
            ex = D.Example(messages=pair.prompt + [{"role": "assistant", "content": pair.chosen, "train": True}])
            tuned = sample(loaded.model, run.tokenizer, ex, n, run.device, head=loaded.head, fixed_length=run.sharded)
            with starting_model(run):
                base = sample(loaded.model, run.tokenizer, ex, n, run.device, head=loaded.head,
                              fixed_length=run.sharded)
            if tuned is None:
                return {}
            expect = getattr(pair, "expect", None)
            out.append({**tuned, "base_completion": base["completion"], "expect": expect, "chosen": pair.chosen,
                        "rejected": pair.rejected,
                        "correct": D.answered(tuned["completion"], expect) if expect else None,
                        "base_correct": D.answered(base["completion"], expect) if expect else None})
        if not out:
            return {}
        checked = [s for s in out if s["expect"]]
        return {"samples": out, "sample_total": len(checked) or None,
                "sample_correct": sum(bool(s["correct"]) for s in checked),
                "base_correct": sum(bool(s["base_correct"]) for s in checked)}


@contextlib.contextmanager
def starting_model(run):
    """The model as training started: the adapters switched off for a fresh adapter (the base), or the
    starting adapter's weights ([model] adapter) put back for the duration, then the current ones again."""
    if not run.cfg.model.adapter:
        with run.loaded.model.disable_adapter():
            yield
        return
    import torch

    from ..fsdp import local
    named = {n: p for n, p in run.loaded.model.named_parameters() if p.requires_grad}
    now = {n: local(p).detach().clone() for n, p in named.items()}
    with torch.no_grad():
        for n, p in named.items():
            local(p).copy_(run.initial_adapter[n].to(local(p).device))
    try:
        yield
    finally:
        with torch.no_grad():
            for n, p in named.items():
                local(p).copy_(now[n])
