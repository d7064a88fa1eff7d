"""What `rigtune probe` trains (engine.probe): rows of random token ids, each exactly max_seq_len long, every
token trained - the heaviest micro-batch the run file allows, so a trial's peak is the run's worst case. No
dataset and no tokenizer are read, and there is no eval: a trial measures memory and speed, not learning."""
from __future__ import annotations

import json
import random
from pathlib import Path

from ... import data as D
from .sft import SFT


class ProbeReport:
    format = "probe"

    def __init__(self, rows: int, seq_len: int):
        self.rows, self.seq_len = rows, seq_len

    def summary(self) -> str:
        return f"probe: {self.rows} rows of {self.seq_len} random tokens (no dataset)"


class Probe(SFT):
    needs_tokenizer = False

    def prepare(self, run) -> None:
        cfg, tc = run.cfg, run.cfg.train
        seq = cfg.data.max_seq_len
        vocab = json.loads((Path(run.load_cfg.model.base) / "config.json").read_text())
        vocab = (vocab.get("text_config") or vocab).get("vocab_size") or 32000
        rows = max(1, tc.max_steps) * tc.micro_batch_size * tc.gradient_accumulation_steps * run.world
        rng = random.Random(tc.seed)
        run.seqs = []
        for _ in range(rows):
            ids = [rng.randrange(vocab) for _ in range(seq)]
            run.seqs.append(D.Sequence(input_ids=ids, labels=list(ids), position_ids=list(range(seq))))
        run.eval_seqs, run.data_files, run.report = [], [], ProbeReport(rows, seq)

    def evaluate(self, run, step: int) -> None:
        run.accelerator.wait_for_everyone()
