"""The catalog against the published config.json files stored in tests/fixtures/configs (SOURCES.md says where
each was read): the planner's parameter count equals the real model's, built by transformers on the meta
device from the same file; its params_b is within 2% of the published total and its active_params_b within 5%
of the published active count (each publisher's convention, from models.toml's published_* notes); each
models.toml entry plans exactly as its stored config; and reading configs as transformers does keeps torch out."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import presets
from engine import planner as P
from tests.conftest import ROOT, rigtune

CONFIGS = ROOT / "tests" / "fixtures" / "configs"
STORED = sorted(p.stem for p in CONFIGS.glob("*.json"))
# Gemma-3-12B's config.json as the issue quotes it: a wrapper whose text_config leaves out vocab_size and
# head_dim (Gemma3TextConfig's defaults fill them). A test input shaped like the published file, not a copy of it.
GEMMA3_WRAPPER = {
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "mm_tokens_per_image": 256,
    "text_config": {"hidden_size": 3840, "intermediate_size": 15360, "model_type": "gemma3_text",
                    "num_attention_heads": 16, "num_hidden_layers": 48, "num_key_value_heads": 8,
                    "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
    "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                      "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
                      "patch_size": 14, "vision_use_head": False}}


def stored(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def real_count(config: dict) -> int:
    """Parameters of the model transformers builds from `config` (the class its architectures names), on the
    meta device: no memory, no weights."""
    import torch
    import transformers
    from transformers import AutoConfig
    config = {k: v for k, v in config.items() if k != "quantization_config"}  # describes weights, not the shape
    with torch.device("meta"):
        model = getattr(transformers, config["architectures"][0])._from_config(AutoConfig.for_model(**config))
    return sum(p.numel() for p in model.parameters())


def published_active(name: str, arch: P.Arch) -> tuple:
    """(the planner's active count counted as the publisher counts it, the published figure, tolerance)."""
    entry = presets.load_models()[name]
    active = arch.active_params / 1e9
    if entry.get("published_active_without_input_embedding"):  # OpenAI's gpt-oss card
        active -= arch.vocab * arch.hidden / 1e9
    rounded = entry.get("published_active_rounded_b")
    return active, entry["active_params_b"], (rounded / 2 if rounded else 0.05 * entry["active_params_b"])


@pytest.mark.parametrize("name", STORED)
def test_the_planner_counts_the_parameters_transformers_builds(name):
    config = stored(name)
    arch = P.arch_from_config(config, name)
    assert arch.total_params == real_count(config), name  # vision towers, experts, Gated DeltaNet layers included


@pytest.mark.parametrize("name", STORED)
def test_counts_match_the_published_figures_and_the_catalog_entry_plans_the_same(name):
    from_file = P.resolve_model(str(CONFIGS / f"{name}.json"))
    entry = P.load_models()[name]
    assert entry.total_params / 1e9 == pytest.approx(entry.params_b, rel=0.02), name
    if entry.experts:
        active, published, tolerance = published_active(name, from_file)
        assert abs(active - published) <= tolerance, (name, active, published)
    shape = {k: getattr(from_file, k) for k in from_file.__dataclass_fields__
             if k not in ("name", "hf_id", "size", "params_b", "active_params_b", "gated", "source")}
    assert {k: getattr(entry, k) for k in shape} == shape, name
    for seq_len in (2048, 8192):
        inp = P.PlanInput(arch=entry, gpus=[24.0], seq_len=seq_len)
        assert P.breakdown(inp) == P.breakdown(P.replace(inp, arch=from_file)), name


def test_plan_reads_a_config_json_path_and_its_folder_end_to_end(tmp_path):
    folder = tmp_path / "qwen35"
    folder.mkdir()
    (folder / "config.json").write_text((CONFIGS / "Qwen3.5-27B.json").read_text())
    outs = []
    for spec in (CONFIGS / "Qwen3.5-27B.json", folder):
        res = rigtune("plan", "--json", "--model", spec, "--gpus", "1x24", env={**os.environ, "HF_HUB_OFFLINE": "0",
                      "HF_ENDPOINT": "http://127.0.0.1:9"})
        assert res.returncode == 0, res.stderr  # a path is never taken for a hub id (no listing is asked for)
        outs.append(json.loads(res.stdout))
    assert outs[0] == outs[1]
    arch = P.resolve_model(str(folder))
    assert outs[0]["params_b"] == pytest.approx(arch.total_params / 1e9, rel=1e-4)
    assert outs[0]["params_b"] == pytest.approx(P.load_models()["Qwen3.5-27B"].params_b, rel=0.02)


def test_qwen35_layers_are_planned_as_gated_deltanet_and_full_attention():
    arch = P.resolve_model(str(CONFIGS / "Qwen3.5-27B.json"))
    assert arch.layer_count("linear_attention") == 48 and arch.layer_count("full_attention") == 16
    assert set(arch.layer_linears("linear_attention")) >= {"in_proj_qkv", "in_proj_z", "out_proj", "gate_proj"}
    as_if_all_full = P.replace(arch, layer_types=())
    assert arch.total_params != as_if_all_full.total_params  # what planning every layer as attention got wrong
    moe = P.resolve_model(str(CONFIGS / "Qwen3.5-35B-A3B.json"))  # its text_config has no intermediate_size
    assert moe.shared_expert_intermediate == 512 and moe.experts == 256


def test_a_multimodal_wrapper_takes_its_text_config_class_defaults():
    arch = P.arch_from_config(GEMMA3_WRAPPER, "gemma-3-12b")
    assert (arch.vocab, arch.head_dim, arch.tied) == (262208, 256, True)  # Gemma3TextConfig's defaults
    assert arch.total_params == real_count(GEMMA3_WRAPPER)
    assert arch.total_params / 1e9 == pytest.approx(P.load_models()["Gemma-3-12B"].params_b, rel=0.02)


def test_reading_configs_as_transformers_does_keeps_torch_out():
    code = ("import json, sys\nfrom engine import planner as P\n"
            f"a = P.arch_from_config(json.loads({json.dumps(json.dumps(GEMMA3_WRAPPER))}), 'x')\n"
            f"b = P.resolve_model({str(CONFIGS / 'Gemma-4-26B-A4B.json')!r})\n"
            "assert a.vocab == 262208 and b.experts == 128\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_gemma4_per_layer_inputs_and_kv_shared_layers_are_counted():
    """What no catalog config has but Gemma 4's small models do: per-layer input embeddings, layers that reuse
    an earlier layer's keys and values (no k/v weights) with a double-wide MLP; and the MoE block with k = v."""
    dense = {"architectures": ["Gemma4ForCausalLM"], "model_type": "gemma4_text", "hidden_size": 64,
             "intermediate_size": 96, "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 16, "global_head_dim": 32, "vocab_size": 320, "vocab_size_per_layer_input": 320,
             "hidden_size_per_layer_input": 8, "num_kv_shared_layers": 2, "use_double_wide_mlp": True,
             "attention_k_eq_v": False, "layer_types": ["sliding_attention", "full_attention"] * 3}
    moe = {**dense, "attention_k_eq_v": True, "num_global_key_value_heads": 1, "num_kv_shared_layers": 0,
           "enable_moe_block": True, "num_experts": 4, "top_k_experts": 2, "moe_intermediate_size": 32}
    for config in (dense, moe):
        assert P.arch_from_config(config, "tiny").total_params == real_count(config)


@pytest.mark.parametrize("config,says", [
    ({"model_type": "foo", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 100},
     "lacks 'intermediate_size'"),  # an unknown model type without an MLP width: not planned with none
    ({**json.loads((CONFIGS / "Gemma-4-31B.json").read_text()), "text_config": {
        **json.loads((CONFIGS / "Gemma-4-31B.json").read_text())["text_config"], "per_layer_config": {"0": None}}},
     "cannot read as a model's shape"),
])
def test_a_config_it_cannot_read_is_refused_with_the_file_named(tmp_path, config, says):
    (tmp_path / "config.json").write_text(json.dumps(config))
    res = rigtune("plan", "--model", str(tmp_path / "config.json"), "--gpus", "1x24")
    assert res.returncode == 2 and says in res.stderr and "config.json" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_only_gpt_oss_mxfp4_checkpoints_are_taken():
    from engine.planner.arch import trainable
    gpt_oss = json.loads((CONFIGS / "gpt-oss-20b.json").read_text())
    assert trainable(gpt_oss)[0] is None
    other = {**json.loads((CONFIGS / "Qwen3-30B-A3B.json").read_text()), "quantization_config": {"quant_method": "mxfp4"}}
    assert "already quantized (mxfp4)" in trainable(other)[0]


@pytest.mark.parametrize("typed", ["openai/", "openai/gpt-oss-", "openai/gpt-oss.", "a--b/model"])
def test_a_half_typed_hub_id_is_a_one_line_error_not_the_hub_clients_exception(typed):
    """What the wizard's model field holds while someone types: the planner answers with BadInput (the fit meter
    shows it), never with huggingface_hub's HFValidationError (which crashed the wizard)."""
    from engine.errors import BadInput
    with pytest.raises(BadInput):
        P.resolve_model(typed)
    res = rigtune("plan", "--model", typed, "--gpus", "1x24")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
