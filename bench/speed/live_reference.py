"""Bench only (bench/speed/dpo_reference.py): rigtune's trainer with DPO's reference held the other way - the
starting model's forward on each micro-batch's pairs inside the step, instead of log-probabilities computed once
before the first step and kept. Everything else is the engine's own code, unchanged: this module swaps the
"dpo" entry of engine.torchside.methods.METHODS for a subclass of Preference, then runs the trainer's entry point.

The starting model is pref.starting_model (the base with the adapter off, or the starting adapter's weights put
back for the call), the same as the precomputed reference uses. The reference forward runs right before the
policy's forward of the same pairs: in the middle of a step's graph, putting the starting weights back in place
would change tensors the policy's backward still needs.

Usage: python bench/speed/live_reference.py RUN_DIR   (a run directory prepared by engine.launch.prepare_run_dir)
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.torchside import methods  # noqa: E402
from engine.torchside.methods import pref  # noqa: E402


class LiveReference(pref.Preference):
    """DPO whose reference log-probabilities are computed in every step (and at every eval) for the pairs at
    hand, never kept beyond them."""

    def ensure_reference(self, run) -> None:
        """Nothing is computed ahead of the steps."""

    def scored(self, run, items: list) -> tuple:
        import torch
        with pref.starting_model(run), torch.no_grad():
            s = pref.answer_logps(run.model, items, run.pad_id, run.device, run.cfg.train.loss_chunk_tokens,
                                  run.loaded.head)
        self.reference = {p.index: [c, r] for p, c, r in zip(items, s.chosen.tolist(), s.rejected.tolist())}
        return super().scored(run, items)


methods.METHODS["dpo"] = lambda: LiveReference("dpo")

if __name__ == "__main__":
    from engine.torchside import trainer
    sys.exit(trainer.main())
