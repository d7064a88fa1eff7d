"""Preset data shipped with rigtune, and a small loader. Presets are partial run files: their values are laid
over the run-file defaults. Two placeholders stand for things built or shipped locally:
  rigtune:tiny-demo  the tiny demo model, built once into the cache (engine.demo)
  rigtune:demo-data  the bundled demo dataset (demo.jsonl here)
  rigtune:demo-eval  its held-out questions (demo-eval.jsonl), each with the words a right answer contains
  rigtune:demo-pref, rigtune:demo-pref-eval  the preference demo's pairs (demo-pref*.jsonl)
  rigtune:demo-adapter  the CPU demo's SFT adapter, which the preference demo starts from
  rigtune:demo-grpo, rigtune:demo-grpo-eval  the GRPO demo's sum prompts and held-out sums (demo-grpo*.jsonl)
"""
from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HERE = Path(__file__).parent
DEMO_DATA = HERE / "demo.jsonl"
DEMO_EVAL = HERE / "demo-eval.jsonl"
DEMO_PREF = HERE / "demo-pref.jsonl"
DEMO_PREF_EVAL = HERE / "demo-pref-eval.jsonl"
DEMO_GRPO = HERE / "demo-grpo.jsonl"
DEMO_GRPO_EVAL = HERE / "demo-grpo-eval.jsonl"
TIERS = HERE / "tiers.toml"
MODELS = HERE / "models.toml"
PARTS = HERE / "parts.toml"
CARDS = HERE / "cards.toml"
RUN_PRESETS = {"cpu-demo": HERE / "cpu-demo.toml", "cpu-demo-dpo": HERE / "cpu-demo-dpo.toml",
               "cpu-demo-grpo": HERE / "cpu-demo-grpo.toml"}


def preset_ids() -> list:
    return sorted(RUN_PRESETS)


def load_run_preset(preset_id: str) -> dict:
    """The preset's values, {section: {key: value}} and top-level keys. KeyError for an unknown id."""
    with open(RUN_PRESETS[preset_id], "rb") as f:
        return tomllib.load(f)


def load_models() -> dict:
    """{name: architecture facts} from models.toml."""
    with open(MODELS, "rb") as f:
        return tomllib.load(f)["models"]


def load_parts() -> dict:
    """Parts `rigtune build` knows, with sourced prices: {"rules", "gpus", "nvlink_bridge", "ram_kits", "nvme"}."""
    with open(PARTS, "rb") as f:
        return tomllib.load(f)


def load_cards() -> dict:
    """{name: {"aliases", "vram_gib", "bf16_tflops", "mem_gbps", "class", and where known "rent_usd_per_hour",
    "rent_offer", "rent_source", "rent_date"}} from cards.toml."""
    with open(CARDS, "rb") as f:
        return tomllib.load(f)["cards"]


def load_tiers() -> dict:
    """{"tiers": {id: {...}}, "rules": {...}} from tiers.toml."""
    with open(TIERS, "rb") as f:
        return tomllib.load(f)
