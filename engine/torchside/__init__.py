"""The torch side of the engine: everything that imports torch, transformers, peft, bitsandbytes or accelerate
(training loop, model loading, FSDP, kernels, attention, saving, tiny models). It runs only in its own
processes - the trainer, and the demo-model build - never in the terminal UI's. The plain-Python core in
engine/ starts those processes with argument lists and talks to them through files (the run directory).
import-linter contracts in pyproject.toml hold the line."""
