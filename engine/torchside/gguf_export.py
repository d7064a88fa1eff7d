"""GGUF for llama.cpp, Ollama and LM Studio, written with the `gguf` package: no llama.cpp checkout or build.

gguf: the merged model (engine.torchside.export) as one file, f16, bf16 or q8_0.
gguf-lora: the adapter alone, for `llama-cli -m base.gguf --lora adapter.gguf` on a GGUF of the base.

Supported (gguf_archs.ARCHS, written as llama.cpp's own converter writes them): Llama, Mistral and Mixtral
(llama.cpp's "llama" graph), Qwen2/2.5, Qwen3, Qwen3-MoE, Qwen3.5/3.6 (dense and MoE), Gemma 2, Gemma 3 and Gemma 4
(31B, 26B-A4B; text, and the multimodal models' text part), Phi-3 and gpt-oss (its merged bf16 experts), with a
byte-level BPE tokenizer, or a SentencePiece one (Llama 2, CodeLlama, Mistral up to v0.3, Gemma). For the Llama graph
the q and k projections' rows are permuted to llama.cpp's rotary layout, as its own converter does (and so are the
LoRA B matrices of q and k). Other architectures and tokenizers, and settings llama.cpp's graph for the family cannot
run, are refused with the reason, before anything is written.
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import modelfiles as M
from ..errors import BadInput
from . import gguf_archs as A
from .gguf_archs import ARCHS, rope, rope_factors  # noqa: F401 (their home before)
from .weights import shards

# tokenizer.json pre-tokenizers llama.cpp knows, by how they split text: GPT-2's byte-level regex, and the
# Split regexes of Llama 3.x and Qwen2/2.5 (followed by a byte-level step without its own regex)
PRE_BYTELEVEL_GPT2 = "gpt-2"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")  # Qwen3.5/3.6: letters with their combining marks
GPT4O_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
               r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
               r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
               r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")  # o200k: gpt-oss
SPLIT_PATTERNS = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2", QWEN35_SPLIT: "qwen35", GPT4O_SPLIT: "gpt-4o"}


def check_supported(folder: Path) -> dict:
    """The model's settings (gguf_archs.load_config), if rigtune can write GGUF for it; BadInput saying why not."""
    config = A.load_config(folder)
    A.check_family(config)
    if is_sentencepiece(folder) and A.ARCHS[config["architectures"][0]][0] == "GEMMA4":
        raise BadInput("Gemma 4's SentencePiece vocabulary is llama.cpp's 'gemma4' tokenizer, which rigtune does not "
                       f"write yet. {A.CONVERT}", key="--to")
    pre_tokenizer(folder)
    return config


def is_sentencepiece(folder: Path) -> bool:
    """Llama 2, CodeLlama and Mistral up to v0.3 ship a SentencePiece model: llama.cpp's "llama" vocabulary."""
    return (folder / "tokenizer.model").exists()


def pre_tokenizer(folder: Path) -> str:
    """llama.cpp's name for how the tokenizer splits text before BPE ("default" for SentencePiece)."""
    if is_sentencepiece(folder):
        return "default"
    tok = json.loads((folder / "tokenizer.json").read_text())
    if tok.get("model", {}).get("type") != "BPE":
        raise BadInput("GGUF export needs a BPE tokenizer (tokenizer.json); this one is "
                       f"{tok.get('model', {}).get('type')}.", key="--to")
    pre = tok.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return PRE_BYTELEVEL_GPT2
    parts = pre.get("pretokenizers") or []
    if (pre.get("type") == "Sequence" and len(parts) == 2 and parts[0].get("type") == "Split"
            and parts[1].get("type") == "ByteLevel" and not parts[1].get("use_regex", True)):
        name = SPLIT_PATTERNS.get(parts[0].get("pattern", {}).get("Regex"))
        if name:
            return name
    raise BadInput("this tokenizer's pre-tokenizer is not one rigtune can name for llama.cpp yet; export --to "
                   "merged and convert it with llama.cpp's convert_hf_to_gguf.py.", key="--to")


def permute(w, n_head: int):
    """transformers' q/k rows (rotary halves) to llama.cpp's (interleaved pairs), as its converter does."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_arch(config: dict):
    """(gguf.MODEL_ARCH, llama.cpp's architecture name, whether q/k rows are permuted)."""
    import gguf
    name, permuted = ARCHS[config["architectures"][0]]
    arch = getattr(gguf.MODEL_ARCH, name)
    return arch, gguf.MODEL_ARCH_NAMES[arch], permuted


def _heads(config: dict, name: str) -> int | None:
    if not gguf_arch(config)[2]:
        return None
    if name.endswith("self_attn.q_proj.weight") or ".self_attn.q_proj." in name:
        return config["num_attention_heads"]
    if name.endswith("self_attn.k_proj.weight") or ".self_attn.k_proj." in name:
        return config.get("num_key_value_heads") or config["num_attention_heads"]
    return None


def add_metadata(w, config: dict, name: str) -> None:
    heads = config["num_attention_heads"]
    own = gguf_arch(config)[1] == "gemma4"  # its per-kind sizes: gguf_archs.add_gemma4
    w.add_name(name)
    w.add_context_length(config.get("max_position_embeddings", 4096))
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    if not own:
        w.add_head_count_kv(config.get("num_key_value_heads") or heads)
        w.add_rope_dimension_count(int(rope(config).get("partial_rotary_factor", 1.0) * head_dim))
    if head_dim != config["hidden_size"] // heads and not own:  # Qwen3, Gemma: heads wider than hidden/heads
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-5))
    w.add_rope_freq_base(rope(config)["rope_theta"])
    w.add_vocab_size(config["vocab_size"])
    A.add_family_metadata(w, config)


def add_sentencepiece(w, folder: Path, config: dict) -> None:
    """A SentencePiece vocabulary as llama.cpp's "llama" tokenizer: pieces, scores and types, as its converter
    writes them; tokens added on top of the model (tokenizer.json's added_tokens) follow."""
    import gguf
    import sentencepiece
    sp = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(gguf.TokenType.UNKNOWN if sp.is_unknown(i) else gguf.TokenType.CONTROL if sp.is_control(i)
                     else gguf.TokenType.UNUSED if sp.is_unused(i) else gguf.TokenType.BYTE if sp.is_byte(i)
                     else gguf.TokenType.NORMAL)
    tok = json.loads((folder / "tokenizer.json").read_text()) if (folder / "tokenizer.json").exists() else {}
    added = {t["id"]: t for t in tok.get("added_tokens", []) if t["id"] >= len(tokens)}
    for i in range(len(tokens), config["vocab_size"]):
        t = added.get(i)
        tokens.append(t["content"] if t else f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(gguf.TokenType.CONTROL if t and t.get("special") else
                     gguf.TokenType.USER_DEFINED if t else gguf.TokenType.UNUSED)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    if gguf_arch(config)[0] in (gguf.MODEL_ARCH.GEMMA2, gguf.MODEL_ARCH.GEMMA3):
        w.add_add_space_prefix(False)  # as llama.cpp's converter writes Gemma's SentencePiece vocabulary
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    for value, setter in ((sp.bos_id(), w.add_bos_token_id), (sp.eos_id(), w.add_eos_token_id),
                          (sp.unk_id(), w.add_unk_token_id)):
        if value >= 0:
            setter(value)
    w.add_add_bos_token(False)
    template = M.raw_chat_template(folder)  # a list of named templates stays one: tokenizer.chat_template.NAME
    if template:
        w.add_chat_template(template)


def add_tokenizer(w, folder: Path, config: dict) -> None:
    """Tokens in id order, their types, the merges, special ids and the chat template."""
    import gguf
    if is_sentencepiece(folder):
        add_sentencepiece(w, folder, config)
        return
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    specials = {t["id"]: t["content"] for t in tok.get("added_tokens", [])}
    size = config["vocab_size"]
    tokens, types = [], []
    by_id = {i: t for t, i in vocab.items()} | specials
    for i in range(size):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(gguf.TokenType.CONTROL if i in specials else
                     gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"].get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_tokenizer(folder))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    tcfg = M.tokenizer_config(folder)
    ids = {t: i for i, t in by_id.items()}
    for key, setter in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id),
                        ("pad_token", w.add_pad_token_id)):
        value = M.special_token(tcfg, key)
        if value in ids:
            setter(ids[value])
    w.add_add_bos_token(False)
    template = M.raw_chat_template(folder)  # a list of named templates stays one: tokenizer.chat_template.NAME
    if template:
        w.add_chat_template(template)


BLOCK_BYTES = 64 << 20  # float32 bytes read and converted at a time


class Planned:
    """One GGUF tensor: its header entry, and its data as GGUFWriter.write_tensor_data writes it (it asks for nbytes
    and tofile(fout); a numpy array would have to hold the whole tensor, this writes it block by block)."""

    def __init__(self, target: str, shape, ggml_type, nbytes: int, blocks, shard: Path | None = None):
        import numpy as np
        self.target, self.shape, self.ggml_type, self.nbytes = target, tuple(shape), ggml_type, nbytes
        self.dtype = np.float32  # add_tensor_info's argument; ggml_type (its raw_dtype) is what the file holds
        self.blocks, self.shard = blocks, shard

    def tofile(self, fout) -> None:
        written = 0
        for data in self.blocks():
            data.tofile(fout)
            written += data.nbytes
        if written != self.nbytes:
            raise RuntimeError(f"{self.target}: wrote {written} bytes, planned {self.nbytes}")


def _blocks(shard: Path, hf: str, shape, ggml_type, heads: int | None, shift: float = 0.0):
    """Reads hf from the shard in blocks of rows (whole heads where q/k rows are permuted), converted."""
    import numpy as np
    from safetensors import safe_open

    def read():
        rows, row_bytes = shape[0], 4 * int(np.prod(shape[1:], dtype=np.int64))
        unit = rows // heads if heads else 1
        step = max(unit, BLOCK_BYTES // row_bytes // unit * unit)
        for a in range(0, rows, step):
            with safe_open(str(shard), framework="pt") as f:  # reopened per block: its mapped pages go with it
                t = f.get_slice(hf)[a:a + step].float()
            if heads:
                t = permute(t, t.shape[0] // unit)
            yield _convert((t + shift if shift else t).numpy(), ggml_type)
    return read


def _convert(data, ggml_type):
    import gguf
    import numpy as np
    if ggml_type == gguf.GGMLQuantizationType.F32:
        return data
    if ggml_type == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, ggml_type)  # bf16 and q8_0: packed bytes


def _per_expert(shard: Path, hf: str, fn, ggml_type):
    """Reads a tensor of every expert of a layer [experts, ...] an expert at a time, and writes fn of each."""
    from safetensors import safe_open

    def read():
        with safe_open(str(shard), framework="pt") as f:
            count = f.get_slice(hf).get_shape()[0]
        for e in range(count):
            with safe_open(str(shard), framework="pt") as f:
                t = f.get_slice(hf)[e:e + 1].float()
            yield _convert(fn(t).contiguous().numpy(), ggml_type)
    return read


def _whole(shard: Path, hf: str, fn, ggml_type):
    """Reads hf whole and writes fn of it: for the tensors whose rows move across the whole tensor (Qwen3.5's
    linear attention, at most a few hundred MB in the largest published model)."""
    from safetensors import safe_open

    def read():
        with safe_open(str(shard), framework="pt") as f:
            t = f.get_tensor(hf).float()
        yield _convert(fn(t).contiguous().numpy(), ggml_type)
    return read


def _chain(readers):
    def read():
        for r in readers:
            yield from r()
    return read


def _kind(shape, qtype):
    """norms stay f32, as llama.cpp keeps them; f16 where the quant's blocks do not fit the rows."""
    import gguf
    F32, F16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    return F32 if len(shape) == 1 or qtype == F32 else F16 if qtype == F16 or shape[-1] % block else qtype


def _nbytes(shape, kind) -> int:
    import gguf
    import numpy as np
    return int(np.prod(gguf.quant_shape_to_byte_shape(shape, kind), dtype=np.int64))


def _sources(folder: Path, config: dict) -> dict:
    """Every tensor the GGUF takes, by its text model's name: (shard, name in the shard, shape)."""
    from safetensors import safe_open
    found = {}
    for shard in shards(folder):
        with safe_open(str(shard), framework="pt") as f:
            for hf in f.keys():
                name = A.hf_name(config, hf)
                if name is not None:
                    found[name] = (shard, hf, f.get_slice(hf).get_shape())
    return found


def _planned(config: dict, sources: dict, target: str, source: tuple, experts: dict | None, fn, qtype) -> Planned:
    """One GGUF tensor from its source: experts stacked; a moved tensor (fn of it, read whole, or expert by expert
    where it holds every expert of a layer); any other read a block of rows at a time."""
    import torch
    shard, hf, shape = source
    if experts:
        parts = [sources[experts[i]] for i in range(len(experts))]
        shape = [len(parts), *shape]
        kind = _kind(shape, qtype)
        blocks = _chain([_blocks(s, h, p, kind, None) for s, h, p in parts])
    elif fn is not None:
        shape = list(fn(torch.empty(shape, device="meta")).shape)
        kind = _kind(shape, qtype)
        blocks = _per_expert(shard, hf, fn, kind) if len(shape) == 3 else _whole(shard, hf, fn, kind)
    else:
        name = A.hf_name(config, hf)
        kind = _kind(shape, qtype)
        blocks = _blocks(shard, hf, shape, kind, _heads(config, name), A.norm_shift(config, name))
    return Planned(target, shape, kind, _nbytes(shape, kind), blocks, shard)


def tensor_plan(folder: Path, config: dict, qtype) -> list:
    """Every tensor the GGUF file holds, in order, from the safetensors headers (shapes; nothing loaded). Each
    layer's experts of one projection become one tensor [experts, rows, cols], expert after expert."""
    import gguf
    arch, arch_name, _ = gguf_arch(config)
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    plan = []
    factors = rope_factors(config)
    if factors is not None:
        plan.append(Planned(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors.shape,
                            gguf.GGMLQuantizationType.F32, factors.nbytes, lambda: [factors]))
    sources = _sources(folder, config)
    groups = A.expert_groups(config, list(sources))
    stacked = {name: key for key, found in groups.items() for name in found.values()}
    for name, (shard, hf, shape) in sources.items():
        key = stacked.get(name)
        if key is not None and groups[key].get(0) != name:
            continue  # planned with expert 0
        for source, fn in A.moved(config, name) or [(f"{key[0]}.{key[1]}.weight" if key else name, None)]:
            target = A.direct_target(config, name) or names.get_name(source, try_suffixes=(".weight", ".bias"))
            if target is None:
                raise BadInput(f"tensor {hf} has no GGUF name for the {arch_name} architecture.", key="--to")
            plan.append(_planned(config, sources, target, (shard, hf, shape), groups.get(key), fn, qtype))
    if config.get("tie_word_embeddings") is False and "lm_head.weight" not in sources:
        raise BadInput("the model has untied output weights but no lm_head.weight tensor.", key="--to")
    return plan


QUANTS = {"f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "f32": "F32"}  # f32: for exact comparisons in tests


def write_model(folder: Path, out: Path, quant: str = "f16", name: str = "rigtune fine-tune", progress=print) -> Path:
    """A merged model folder (safetensors) as one GGUF file, streamed: every tensor's shape and type goes into
    the header first (from the safetensors headers, nothing loaded), then each tensor's data is read, converted
    and written a block of rows at a time, so memory holds one block, not the model."""
    import gguf

    config = check_supported(folder)
    for note in A.notes(config):
        progress(note)
    qtype = getattr(gguf.GGMLQuantizationType, QUANTS[quant])
    arch, arch_name, _ = gguf_arch(config)
    w = gguf.GGUFWriter(str(out), arch_name)
    add_metadata(w, config, name)
    w.add_string(M.GGUF_MARK, "gguf")  # so that a later --force knows rigtune wrote it
    w.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "f32": gguf.LlamaFileType.ALL_F32}[quant])
    add_tokenizer(w, folder, config)
    plan = tensor_plan(folder, config, qtype)
    for t in plan:
        w.add_tensor_info(t.target, t.shape, t.dtype, t.nbytes, raw_dtype=t.ggml_type)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for i, t in enumerate(plan):
            w.write_tensor_data(t)  # the writer asks it for nbytes and tofile(fout): see Planned
            if t.shard and (i + 1 == len(plan) or plan[i + 1].shard != t.shard):
                progress(f"converted {t.shard.name}")
    finally:  # a failed write closes its file too, so that the caller can remove it
        w.close()
    return out


def _finish(w) -> None:
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:  # a failed write closes its file too, so that the caller can remove it
        w.close()


def _lora_moved(config: dict, module: str, part: str, t):
    """A LoRA factor of a projection whose rows (B) or columns (A) llama.cpp's converter reorders (Qwen3.5's
    linear attention: its out_proj's columns, the others' rows), reordered the same way."""
    moved = A.moved(config, module + ".weight")
    if not moved:
        return t
    if len(moved) != 1 or ".linear_attn." not in module:
        raise BadInput(f"the adapter trains {module}, which llama.cpp's converter splits; export --to gguf (merged) "
                       "instead.", key="--to")
    columns = module.endswith(".out_proj")
    if part == ("lora_a" if columns else "lora_b"):
        return moved[0][1](t)
    return t


def write_lora(adapter: Path, base_folder: Path, out: Path) -> Path:
    """A PEFT adapter as a GGUF LoRA for the base's GGUF: lora_a [r, in] and lora_b [out, r] per target."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file
    config = check_supported(base_folder)
    acfg = json.loads((adapter / "adapter_config.json").read_text())
    if acfg.get("use_rslora"):
        raise BadInput("rsLoRA adapters scale by alpha/sqrt(r), which llama.cpp's LoRA loader does not; export "
                       "--to gguf (merged) instead.", key="--to")
    arch, arch_name, _ = gguf_arch(config)
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    w = gguf.GGUFWriter(str(out), arch_name)
    w.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    w.add_string(M.GGUF_MARK, "gguf-lora")
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(acfg["lora_alpha"]))
    for name, t in sorted(load_file(str(adapter / "adapter_model.safetensors")).items()):
        part = "lora_a" if ".lora_A." in name else "lora_b" if ".lora_B." in name else None
        if part is None:
            continue
        module = A.hf_name(config, name.split(".lora_")[0].removeprefix("base_model.model.") + ".weight")
        if module is None:
            continue  # a vision tower's: the GGUF is the text model
        module = module.removesuffix(".weight")
        target = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if target is None:
            raise BadInput(f"adapter tensor {name} has no GGUF name for the {arch_name} architecture.", key="--to")
        t = _lora_moved(config, module, part, t.float())
        heads = _heads(config, module + ".weight")
        if part == "lora_b" and heads:
            t = permute(t, heads)  # B's rows are the projection's output rows
        w.add_tensor(f"{target}.{part}", t.numpy().astype(np.float32))
    _finish(w)
    return out
