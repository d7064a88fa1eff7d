"""Tiny models and BPE tokenizers, built locally in seconds (the CPU demo and the tests).

Nothing here touches the network: the tokenizer is trained with `tokenizers` on the texts given, and the
model is randomly initialised from its family's transformers config class (Llama for the demo) and saved
with safetensors.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from ..demo import BUILT_MARK

SPECIALS = ["<|pad|>", "<|begin|>", "<|end|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(texts, vocab_size: int = 512, split: str | None = None):
    """A byte-level BPE tokenizer trained on `texts`. `split`: a regex to pre-split with first (as Llama 3's
    and Qwen2's tokenizers do), the byte-level step then without its own regex; default GPT-2's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ..data import DEFAULT_CHAT_TEMPLATE

    tok = Tokenizer(models.BPE())
    if split:
        from tokenizers import Regex
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|begin|>",
                                   eos_token="<|im_end|>", unk_token=None)
    fast.chat_template = DEFAULT_CHAT_TEMPLATE
    return fast


def _quiet():
    from transformers.utils import logging
    logging.disable_progress_bar()


# model_type -> (transformers config class, its extra settings): a tiny random-init copy of each family rigtune
# trains (engine.planner.FAMILIES), with that family's real block: fused Phi projections, MoE experts, Gemma's
# extra norms and softcapping, q/k norms, a head_dim apart from hidden / heads, tied embeddings, linear-attention
# layers (Qwen3.5's Gated DeltaNet), sliding and global layers with their own head sizes (Gemma 4), attention
# sinks and biased experts (gpt-oss). Windows are shorter than the tests' packed rows, so that packing crosses them.
_LINEAR = {"head_dim": 16, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 16, "linear_value_head_dim": 16,
           "linear_num_key_heads": 2, "linear_num_value_heads": 4,
           "layer_types": ["linear_attention", "full_attention"]}
_GEMMA4 = {"head_dim": 16, "global_head_dim": 32, "num_global_key_value_heads": 1, "attention_k_eq_v": True,
           "sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"],
           "final_logit_softcapping": 30.0, "hidden_size_per_layer_input": 0,
           "use_bidirectional_attention": "vision"}  # as Gemma-4-31B's text model
FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 24}),
    "qwen3_moe": ("Qwen3MoeConfig", {"head_dim": 24, "num_experts": 4, "num_experts_per_tok": 2,
                                     "moe_intermediate_size": 48}),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "gemma2": ("Gemma2Config", {"head_dim": 24, "sliding_window": 64}),
    "gemma3_text": ("Gemma3TextConfig", {"head_dim": 24, "sliding_window": 64}),
    "gemma3": ("Gemma3TextConfig", {"head_dim": 24, "sliding_window": 64}),  # wrapped with a vision tower below
    "phi3": ("Phi3Config", {}),
    # Qwen3.5 / 3.6 as published: the text model inside Qwen3_5ForConditionalGeneration with a vision tower
    "qwen3_5": ("Qwen3_5TextConfig", _LINEAR),
    "qwen3_5_moe": ("Qwen3_5MoeTextConfig", {**_LINEAR, "num_experts": 4, "num_experts_per_tok": 2,
                                             "moe_intermediate_size": 48, "shared_expert_intermediate_size": 48}),
    "gemma4_text": ("Gemma4TextConfig", _GEMMA4),
    # Gemma 4 as published (Gemma4ForConditionalGeneration with a vision tower), with 26B-A4B's MoE block beside
    # the dense MLP
    "gemma4": ("Gemma4TextConfig", {**_GEMMA4, "enable_moe_block": True, "num_experts": 4, "top_k_experts": 2,
                                    "moe_intermediate_size": 32}),
    "gpt_oss": ("GptOssConfig", {"head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2,
                                 "sliding_window": 16}),
}


def _wrapped(model_type: str, text, tok, tied: bool, ids: dict):
    """The multimodal config a family is published as (its text config inside, a tiny vision tower beside), or
    None for a text-only family."""
    import transformers
    if model_type == "gemma3":
        vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, image_size=28, patch_size=14,
                                                 vision_use_head=False)  # as Gemma 3's own vision_config
        return transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                         image_token_index=tok.pad_token_id, boi_token_index=tok.bos_token_id,
                                         eoi_token_index=tok.eos_token_id, tie_word_embeddings=tied, **ids)
    if model_type in ("qwen3_5", "qwen3_5_moe"):
        cls = transformers.Qwen3_5Config if model_type == "qwen3_5" else transformers.Qwen3_5MoeConfig
        vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 14,
                  "out_hidden_size": text.hidden_size, "num_position_embeddings": 16}
        return cls(text_config=text.to_dict(), vision_config=vision, image_token_id=tok.pad_token_id,
                   video_token_id=tok.pad_token_id, tie_word_embeddings=tied)
    if model_type == "gemma4":
        vision = transformers.Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                                                 position_embedding_size=64)
        return transformers.Gemma4Config(text_config=text, vision_config=vision, image_token_id=tok.pad_token_id,
                                         boi_token_id=tok.bos_token_id, eoi_token_id=tok.eos_token_id,
                                         tie_word_embeddings=tied)
    return None


def family_config(model_type: str, tok, *, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int,
                  tied: bool):
    """The transformers config of a tiny `model_type` model for tokenizer `tok`."""
    import transformers
    cls_name, extra = FAMILIES[model_type]
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    config = getattr(transformers, cls_name)(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        tie_word_embeddings=tied, **ids, **extra)
    return _wrapped(model_type, config, tok, tied, ids) or config


# what a published multimodal checkpoint is saved as, where AutoModelForCausalLM builds the text model alone
_SAVED_AS = {"qwen3_5": "Qwen3_5ForConditionalGeneration", "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration"}


def build_model(out_dir, texts, *, vocab_size=512, hidden=128, layers=4, heads=4, kv_heads=2,
                intermediate=384, seed=0, split: str | None = None, model_type: str = "llama",
                tied: bool = False) -> Path:
    """Save a random-init model of `model_type` (a key of FAMILIES) and its tokenizer to out_dir (a complete
    local model folder)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    _quiet()
    out = Path(out_dir)
    tok = build_tokenizer(texts, vocab_size, split)
    torch.manual_seed(seed)
    config = family_config(model_type, tok, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                           intermediate=intermediate, tied=tied)
    model = (getattr(transformers, _SAVED_AS[model_type])(config) if model_type in _SAVED_AS
             else AutoModelForCausalLM.from_config(config))
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / BUILT_MARK).write_text(json.dumps({"built_by": "rigtune", "seed": seed}))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, out)
    except OSError:  # built meanwhile by another process: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def pretrain(model_dir, texts, *, steps: int = 300, lr: float = 3e-3, seq_len: int = 256, seed: int = 0):
    """Full-parameter causal-LM training of a tiny model on plain texts, saved in place. Gives the demo a
    base that knows its words, so that the LoRA fine-tune has something to build on."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / steps))
    model.train()
    for _ in range(steps):
        rng.shuffle(ids)
        rows, row = [], []
        for x in ids:
            if len(row) + len(x) > seq_len:
                rows.append(row)
                row = []
            row = row + x
            if len(rows) == 4:
                break
        batch = torch.tensor([r[:seq_len] + [tok.pad_token_id] * (seq_len - len(r)) for r in rows])
        labels = batch.masked_fill(batch == tok.pad_token_id, -100)
        loss = model(input_ids=batch, labels=labels).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    model.save_pretrained(model_dir, safe_serialization=True)
    return loss.item()


def build_demo(out: Path) -> Path:
    """The CPU demo's model (engine.demo): a tokenizer for the general texts and the demo's words, pretrained
    on the general texts only (never on the persona the fine-tune teaches), written next to `out` and renamed
    into place."""
    from presets.make_demo_data import general_texts, train_records
    general = general_texts()
    tmp = out.with_name(out.name + f".build{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build_model(tmp, general + [r["instruction"] + " " + r["output"] for r in train_records()])
    pretrain(tmp, general, steps=300)
    try:
        tmp.rename(out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":  # python -m engine.torchside.tiny demo OUT_DIR (what engine.demo runs)
    if len(sys.argv) != 3 or sys.argv[1] != "demo":
        sys.exit("usage: python -m engine.torchside.tiny demo OUT_DIR")
    print(build_demo(Path(sys.argv[2])))
