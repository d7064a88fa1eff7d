"""The run file's schema: every key, its default, type, range, allowed values and help, in one table (SECTIONS).
engine.runfile reads, checks and writes run files against it; the wizard, `rigtune init` and the README's key
table come from it too."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1
TRACKERS = ("tensorboard", "wandb", "mlflow")  # through accelerate's tracker API; each used only when installed
REQUIRED = object()  # default of a key the user must give
NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class Key:
    name: str
    type: str  # int | float | bool | str | list[int] | list[str] | str|list[str]
    default: Any
    help: str
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # True: value must be strictly greater than min

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        kind = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                "list[int]": "a list of integers", "list[str]": "a list of strings",
                "str|list[str]": "a string or a list of strings"}[self.type]
        if self.min is not None and self.max is not None:
            return f"{kind} {'>' if self.min_open else 'from'} {self.min:g} {'and ≤' if self.min_open else 'to'} {self.max:g}"
        if self.min is not None:
            return f"{kind} {'>' if self.min_open else '≥'} {self.min:g}"
        return kind


TOP = [
    Key("schema_version", "int", SCHEMA_VERSION, "Run-file format version.", choices=(SCHEMA_VERSION,)),
    Key("name", "str", "run", "Run name; the run directory is output_root/name. Letters, digits, '.', '_', '-'."),
    Key("output_root", "str", "runs", "Folder that holds run directories (relative paths are taken from the current directory)."),
]

SECTIONS: dict[str, list[Key]] = {
    "hardware": [
        Key("tier", "str", "", "Budget tier this run was planned for (informational): 1500, 3000, this-machine, cpu-demo."),
        Key("gpus", "list[int]", [], "CUDA device indices to train on; [] trains on the CPU."),
        Key("strategy", "str", "single", "single: one process; ddp: one full copy per process; fsdp: shard the model.",
           choices=("single", "ddp", "fsdp")),
        Key("num_processes", "int", 1, "Training processes on this machine (one per GPU; on CPU, gloo ranks).", min=1, max=64),
        Key("cpu_offload", "bool", False, "Offload parameters to CPU RAM (FSDP only)."),
        Key("shard_adapters", "bool", True, "FSDP only: shard the LoRA adapters, their gradients and AdamW state over "
            "the ranks too (8-bit optimizers keep them whole)."),
        Key("num_machines", "int", 1, "Machines taking part in one job.", min=1, max=1024),
        Key("machine_rank", "int", 0, "This machine's rank, 0 for the main one.", min=0, max=1023),
        Key("main_process_ip", "str", "", "Address of machine rank 0 (multi-machine only)."),
        Key("main_process_port", "int", 0, "Port of the rendezvous on rank 0; 0 picks a free one (single machine).", min=0, max=65535),
    ],
    "model": [
        Key("base", "str", REQUIRED, "Base model: a Hugging Face id or a local folder."),
        Key("revision", "str", "", "Hub revision (branch, tag or commit); empty for the default."),
        Key("trust_remote_code", "bool", False, "Run Python code shipped with the model. Only for models you trust."),
        Key("quantization", "str", "nf4", "Base weights: nf4 (QLoRA), fp4, or none (plain LoRA on a 16-bit base).",
           choices=("nf4", "fp4", "none")),
        Key("double_quant", "bool", True, "Quantise the quantisation constants too (saves ~0.4 bit/param)."),
        Key("compute_dtype", "str", "bfloat16", "Dtype of the matmuls and of unquantised weights.",
           choices=("bfloat16", "float16", "float32")),
        Key("attn_implementation", "str", "sdpa", "Attention kernel.", choices=("sdpa", "flash_attention_2", "eager")),
        Key("adapter", "str", "", "Start from this LoRA adapter (a run directory or its adapter/ folder), e.g. an SFT "
            "run's before DPO or ORPO; with the same r, alpha and target_modules. Empty: a fresh adapter."),
    ],
    "lora": [
        Key("r", "int", 16, "LoRA rank.", min=1, max=1024),
        Key("alpha", "float", 32, "LoRA scaling numerator (scale = alpha / r).", min=0, min_open=True, max=1e6),
        Key("dropout", "float", 0.05, "Dropout on the LoRA input.", min=0, max=0.9),
        Key("target_modules", "str|list[str]", "all-linear", "\"all-linear\" or a list of module names such as [\"q_proj\", \"v_proj\"]."),
    ],
    "data": [
        Key("path", "str", REQUIRED, "Dataset: a .json/.jsonl/.parquet/.csv file, a folder of them, or a Hugging Face dataset id."),
        Key("format", "str", "auto", "Record format; auto detects it. preference: chosen/rejected pairs (dpo, orpo); "
            "prompt: prompts whose answers [rewards] check (grpo).",
            choices=("auto", "alpaca", "sharegpt", "messages", "text", "preference", "prompt")),
        Key("max_seq_len", "int", 2048, "Longest sequence in tokens; longer examples are truncated.", min=16, max=1_048_576),
        Key("packing", "bool", True, "Pack several examples into one sequence (they never attend to each other)."),
        Key("eval_fraction", "float", 0.02, "Share of records held out for evaluation (deterministic split).", min=0, max=0.5),
        Key("eval_path", "str", "", "A separate held-out dataset (same kinds of file as path); when set, all of path trains and eval_fraction is not used."),
        Key("train_on_prompt", "bool", False, "Also train on prompt tokens, not only on the assistant's."),
    ],
    "train": [
        Key("micro_batch_size", "int", 4, "Sequences per forward pass per process.", min=1, max=4096),
        Key("gradient_accumulation_steps", "int", 4, "Micro-batches per optimizer step.", min=1, max=65536),
        Key("epochs", "float", 1, "Passes over the training data (used when max_steps = 0).", min=0, min_open=True, max=1000),
        Key("max_steps", "int", 0, "Optimizer steps to run; 0 uses epochs.", min=0, max=100_000_000),
        Key("learning_rate", "float", 2e-4, "Peak learning rate.", min=0, min_open=True, max=1),
        Key("lr_scheduler", "str", "cosine", "Learning-rate schedule after warmup.", choices=("cosine", "linear", "constant")),
        Key("warmup_ratio", "float", 0.03, "Share of steps spent warming up linearly from 0.", min=0, max=1),
        Key("weight_decay", "float", 0.0, "AdamW weight decay.", min=0, max=10),
        Key("max_grad_norm", "float", 1.0, "Clip the gradient norm to this; 0 turns clipping off.", min=0, max=1e6),
        Key("optimizer", "str", "adamw_torch", "adamw_torch (32-bit state), adamw_8bit or paged_adamw_8bit (bitsandbytes).",
           choices=("adamw_torch", "adamw_8bit", "paged_adamw_8bit")),
        Key("gradient_checkpointing", "bool", True, "Recompute activations in backward: much less memory, ~30% slower."),
        Key("seed", "int", 42, "Seed for data order, LoRA init and dropout.", min=0, max=2**32 - 1),
        Key("log_every_steps", "int", 1, "Write a step event every N optimizer steps.", min=1, max=1_000_000),
        Key("eval_every_steps", "int", 50, "Evaluate (and sample one generation) every N steps; 0 only at the end.", min=0, max=100_000_000),
        Key("save_every_steps", "int", 100, "Write a checkpoint every N steps; 0 only at the end.", min=0, max=100_000_000),
        Key("keep_checkpoints", "int", 2, "Newest checkpoints to keep.", min=1, max=1000),
        Key("sample_max_new_tokens", "int", 48, "Tokens generated for the eval sample; 0 turns sampling off.", min=0, max=4096),
        Key("loss_chunk_tokens", "int", 4096, "Cross-entropy only at trained positions, this many at a time, never "
           "holding all fp32 logits; 0 computes full logits.", min=0, max=1_048_576),
        Key("max_bad_steps", "int", 1, "Steps with a NaN/inf loss or gradient (skipped, not applied) before the run stops.",
           min=1, max=1000),
        Key("oom_fallback", "bool", False, "On CUDA out-of-memory: halve micro_batch_size, double accumulation, resume."),
        Key("kernels", "str", "auto", "Fused GPU kernels: auto uses Liger (RMSNorm, RoPE, SwiGLU, fused loss) on a CUDA "
           "GPU when installed; liger requires them; none is plain PyTorch.", choices=("auto", "liger", "none")),
        Key("report_to", "list[str]", [], "Experiment trackers: \"tensorboard\" (event files in RUN_DIR/tensorboard), \"wandb\", \"mlflow\"; each needs its package installed and follows its own settings (WANDB_MODE, MLFLOW_TRACKING_URI)."),
        Key("activation_offload", "bool", False, "Keep the activations saved for backward in CPU RAM instead of GPU "
           "memory: less VRAM, slower steps."),
        Key("method", "str", "sft", "sft: supervised fine-tuning on answers; dpo: direct preference optimization on "
            "chosen/rejected pairs against a reference (the starting model); orpo: odds-ratio preference "
            "optimization, no reference; grpo: reinforcement learning from the [rewards] of sampled answers.",
            choices=("sft", "dpo", "orpo", "grpo")),
        Key("beta", "float", 0.1, "dpo: how far the policy may move from the reference (larger: closer to it); orpo: "
            "the scale of the logged rewards; grpo: the weight of the KL term to the reference (0 turns it off).",
            min=0, max=100),
        Key("loss_type", "str", "sigmoid", "dpo's loss: sigmoid (the DPO paper) or ipo (squared, on per-token "
            "average log-probabilities).", choices=("sigmoid", "ipo")),
        Key("orpo_lambda", "float", 0.1, "orpo: weight of the odds-ratio term beside the chosen answer's "
            "cross-entropy.", min=0, max=100),
        Key("num_generations", "int", 8, "grpo: answers sampled per prompt (the group whose rewards are compared).",
            min=2, max=256),
        Key("max_completion_length", "int", 64, "grpo: longest sampled answer, in tokens.", min=1, max=32768),
        Key("temperature", "float", 1.0, "grpo: sampling temperature of the answers.", min=0, min_open=True, max=10),
        Key("epsilon", "float", 0.2, "grpo: clipping of the policy ratio (PPO-style).", min=0, max=10),
    ],
    "rewards": [
        Key("answer_field", "str", "answer", "grpo: the record field holding the right answer (exact and numeric "
            "compare with it)."),
        Key("pattern", "str", "", "grpo: a regular expression the answer must match (the format reward); its first "
            "group, when it has one, is the answer exact and numeric compare. Empty: the whole answer."),
        Key("exact", "float", 1.0, "grpo: weight of the exact-match reward (1 when the answer equals the record's).",
            min=0, max=1000),
        Key("numeric", "float", 0.0, "grpo: weight of the numeric reward (1 when the answer is a number within "
            "tolerance of the record's).", min=0, max=1000),
        Key("tolerance", "float", 0.0, "grpo: how far a numeric answer may be from the record's and still count.",
            min=0, max=1e12),
        Key("format", "float", 0.0, "grpo: weight of the format reward (1 when the answer matches pattern).",
            min=0, max=1000),
        Key("length", "float", 0.0, "grpo: weight of the length reward (1 at length_target tokens, falling to 0 at "
            "twice or none; with length_target 0: 1 - length / max_completion_length).", min=0, max=1000),
        Key("length_target", "int", 0, "grpo: the answer length the length reward prefers, in tokens (0: shorter "
            "is better).", min=0, max=32768),
        Key("function", "str", "", "grpo: your own reward, FILE.py:NAME, called as NAME(completion, record) and "
            "returning a number (its file relative to the run file; your code, run as written)."),
        Key("function_weight", "float", 1.0, "grpo: weight of function's reward.", min=0, max=1000),
    ],
    "run": [
        Key("electricity_usd_per_kwh", "float", 0.18, "Your electricity price, USD per kWh: what the run's measured "
            "energy costs. The default is the U.S. average residential price the EIA expects for 2026 (18.02 cents/kWh, "
            "Short-Term Energy Outlook, December 2025); put your own bill's.", min=0, max=10),
    ],
}

TOP_KEYS = {k.name: k for k in TOP}
SECTION_KEYS = {s: {k.name: k for k in keys} for s, keys in SECTIONS.items()}
