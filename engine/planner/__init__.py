"""The planner: what a QLoRA run needs per GPU, before anything downloads, and what to change when it does
not fit. Plain Python, one module per concern, each importing only the ones above it:

  arch        a model's shape (Arch) from presets/models.toml or a config.json, and whether rigtune trains it
  memory      the per-GPU memory terms (weights, adapters, gradients, optimizer, activations, logits,
              overhead), what fits, the longest sequence and largest micro-batch that do
  throughput  the card table, the --gpus flag, tokens/s and the cost of the link between cards
  strategy    single, DDP or FSDP (with or without CPU offload): the fastest that fits, and why
  advice      the set of run-file changes that makes a run fit in the least training time
  runplan     plan(): all of it together as a Plan (`rigtune plan --json`), from a run file's values

Callers import from here (`from engine import planner as P`); the names below are the package's API.
"""
from dataclasses import replace  # callers write P.replace(inp, ...) for a changed PlanInput

from .advice import RUN_KEYS, SHORTEST_SEQ, keep_effective_batch, suggest
from .arch import (FAMILIES, GIB, Arch, arch_from_config, catalog_model, config_path, family_shape, load_models,
                   model_config, read_config, resolve_model, trainable, vision_params)
from .memory import (ALL_LINEAR, CUDA_CONTEXT_GIB, DTYPE_BYTES, FIT_MARGIN, FRAGMENTATION, LOSS_BYTES, NF4_BITS,
                     PROCESS_RAM_GIB, PlanInput, adapter_params, adapters_sharded, breakdown, fits, headroom,
                     liger_loss_bytes, linear_bytes, max_micro_batch, max_seq_len, peak, processes, ram_needed, verdict)
from .runplan import Plan, input_from_run, plan, tight_words
from .strategy import StrategyRow, choose_strategy, strategy_table
from .throughput import (ACHIEVED, DEFAULT_CARD, DEQUANT_BYTES, LINK_GBPS, PCIE_GBPS, Card, card_named, card_of_size,
                         flops_per_token, fmt_estimate, link_cost, link_note, link_seconds, load_cards,
                         micro_batch_seconds, parse_gpus, tokens_per_s)
