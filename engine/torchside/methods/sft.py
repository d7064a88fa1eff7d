"""Supervised fine-tuning: the cross-entropy of the trained tokens (the answers, and the prompts too with
train_on_prompt) of tokenized, optionally packed, examples. Its eval is the held-out loss and one greedy
sample; at the last step, every held-out example that says what a right answer contains (`expect`) is
answered by the fine-tune and by the base model (adapter off), and counted."""
from __future__ import annotations

from ... import data as D
from ..batches import collate, to_device
from ..loss import evaluate, loss_sum, sample
from .contract import Sizes


class SFT:
    def __init__(self):
        self.held_out = []          # the held-out examples, as read (for the final check)
        self.sample_example = None  # the one whose greedy sample each eval shows

    def prepare(self, run) -> None:
        """The same on every rank: tokenized, packed sequences and the eval split."""
        from ... import prefdata
        cfg = run.cfg
        examples, fmt, run.data_files = prefdata.load_for_method(cfg)  # preference pairs under sft: refused
        train_ex, eval_ex, run.report = D.prepare(cfg, run.tokenizer, examples, fmt)
        run.seqs = D.as_sequences(train_ex, cfg.data.max_seq_len, cfg.data.packing)
        run.eval_seqs = D.as_sequences(eval_ex, cfg.data.max_seq_len, cfg.data.packing)
        self.held_out = D.split(cfg, examples)[1]
        self.sample_example = self.held_out[0] if self.held_out else examples[0]

    def sizes(self, group: list) -> Sizes:
        trained = sum(s.trained for mb in group for s in mb)
        return Sizes(tokens=sum(len(s.input_ids) for mb in group for s in mb), trained_tokens=trained, units=trained)

    def loss(self, run, items: list) -> tuple:
        """The micro-batch's token cross-entropies, summed over its trained tokens; no figures of its own."""
        tc, loaded = run.cfg.train, run.loaded
        batch = to_device(collate(items, run.pad_id, run.cfg.data.packing), run.device)
        return loss_sum(run.model, batch, tc.loss_chunk_tokens, loaded.head, loaded.fused_loss), {}

    def evaluate(self, run, step: int) -> None:
        """Held-out loss and one greedy sample; at the last step, the held-out check."""
        eval_loss, smp, checked = None, None, {}
        if run.main or run.sharded:
            run.status(state="evaluating", step=step, total_steps=run.total)
            loaded = run.loaded
            eval_loss = evaluate(loaded.model, run.eval_seqs, run.cfg, run.pad_id, run.device, loaded.head,
                                 loaded.fused_loss)
            checked = self.check_held_out(run) if step == run.total else {}
            smp = checked.get("samples", [None])[0] or sample(
                loaded.model, run.tokenizer, self.sample_example, run.cfg.train.sample_max_new_tokens, run.device,
                head=loaded.head, fixed_length=run.sharded)
        if run.main:
            run.log.write("eval", step=step, eval_loss=None if eval_loss is None else round(eval_loss, 6), sample=smp,
                          **checked)
            if run.tracking and eval_loss is not None:
                run.accelerator.log({"eval/loss": eval_loss}, step=step)
            if checked:
                print(f"[rigtune] held-out check: {checked['sample_correct']} of {checked['sample_total']} answered "
                      f"right (the base model: {checked['base_correct']})", flush=True)
        run.accelerator.wait_for_everyone()

    def check_held_out(self, run) -> dict:
        """{sample_correct, sample_total, base_correct, samples: [{question, prompt, completion, base_completion,
        expect, correct, base_correct}]} for the held-out examples with `expect`; {} when none has it."""
        loaded, n = run.loaded, run.cfg.train.sample_max_new_tokens
        samples = []
        for ex in (e for e in self.held_out if e.expect):
            tuned = sample(loaded.model, run.tokenizer, ex, n, run.device, head=loaded.head, fixed_length=run.sharded)
            base = sample(loaded.model, run.tokenizer, ex, n, run.device, head=loaded.head, fixed_length=run.sharded,
                          adapter=False)
            if tuned is None:
                return {}
            samples.append({**tuned, "base_completion": base["completion"], "expect": ex.expect,
                            "correct": D.answered(tuned["completion"], ex.expect),
                            "base_correct": D.answered(base["completion"], ex.expect)})
        if not samples:
            return {}
        return {"sample_correct": sum(s["correct"] for s in samples), "sample_total": len(samples),
                "base_correct": sum(s["base_correct"] for s in samples), "samples": samples}
