"""Exports of what a run trained, written complete or absent (a temporary folder, then a rename).

merged: the base with the adapter merged in, as safetensors shards plus the tokenizer (with its chat template)
and a model card. It goes shard by shard and tensor by tensor - each weight that has an adapter gets
W + scale * B @ A - so the peak memory is about one shard, never the whole model, and no GPU is needed.

Which W: by default the base's weights as training saw them, i.e. quantized to NF4/FP4 and dequantized again
(merge_into = "dequantized"). The adapter learned to correct those weights, so this merge reproduces the
model that trained and was evaluated, up to rounding. merge_into = "original" adds the same delta to the
16-bit weights instead: closer to the untouched base, but the adapter never saw them, so the result can
drift from what was evaluated by about the quantization error. For a run without quantization both are the
same.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from .. import checkpoint as C
from .. import runfile
from .. import modelfiles as M
from ..chat import adapter_dir
from ..errors import BadInput
from ..events import METRICS, RUN_FILE, read_events
from . import gguf_export as G
from .weights import base_folder, shards

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "generation_config.json")


def lora_deltas(adapter: Path) -> tuple[dict, float]:
    """{module name: (A, B)} from a PEFT adapter, and its scale (alpha / r, or alpha / sqrt(r) with rsLoRA)."""
    from safetensors.torch import load_file
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scale = alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r
    out = {}
    for name, t in load_file(str(adapter / "adapter_model.safetensors")).items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in name:
                module = name.split(marker)[0].removeprefix("base_model.model.")
                out.setdefault(module, {})[part] = t
    return {m: (ab["lora_A"], ab["lora_B"]) for m, ab in out.items() if len(ab) == 2}, scale


def as_trained(w, cfg):
    """The weight as the 4-bit base held it in training: quantized with the run's settings and dequantized."""
    import torch
    from bitsandbytes import functional as F
    m = cfg.model
    q, state = F.quantize_4bit(w.to(getattr(torch, m.compute_dtype)).contiguous(), blocksize=64,
                               compress_statistics=m.double_quant, quant_type=m.quantization)
    return F.dequantize_4bit(q, state).float()


def merge_tensor(w, ab, scale: float, cfg, into: str):
    import torch
    a, b = ab
    base = as_trained(w, cfg) if into == "dequantized" and cfg.model.quantization != "none" else w.float()
    with torch.no_grad():
        return (base + scale * (b.float() @ a.float())).to(w.dtype)


def adapter_name(module: str, deltas: dict) -> str:
    """The adapter's name for a checkpoint's module. A published multimodal checkpoint (Qwen3.5) keeps its text
    model under model.language_model, where AutoModelForCausalLM loads it as model (without the vision tower)."""
    if module in deltas or ".language_model." not in module:
        return module
    return module.replace(".language_model.", ".", 1)


def tensor_in(files, key: str):
    """Tensor `key` from whichever of the checkpoint's shards holds it."""
    from safetensors import safe_open
    for shard in files:
        with safe_open(str(shard), framework="pt") as f:
            if key in f.keys():
                return f.get_tensor(key)
    raise BadInput(f"the base's checkpoint lacks {key}; is it complete?")


def merged(run_dir: Path, out: Path, checkpoint: str | None = None, into: str = "dequantized",
           force: bool = False, progress=print) -> Path:
    """Write the merged model to `out`; returns it."""
    import re

    from safetensors import safe_open
    from safetensors.torch import save_file

    from . import experts as X
    cfg = runfile.load(run_dir / RUN_FILE)
    adapter = adapter_dir(run_dir, checkpoint)
    base = base_folder(cfg.model)
    files = shards(base)
    check_output(out, merged_size(files), force, "merged")
    deltas, scale = lora_deltas(adapter)

    def write(tmp: Path) -> None:
        done, weight_map = set(), {}
        for n, shard in enumerate(files, 1):
            tensors = {}
            with safe_open(str(shard), framework="pt") as f:
                for name in f.keys():
                    expert = ".experts." in name and re.match(X.EXPERT_TENSOR, name.replace("_scales", "_blocks"))
                    if expert and name.endswith("_scales"):
                        continue  # an MXFP4 tensor's scales: read with its blocks
                    t = f.get_tensor(name)
                    module = adapter_name(name.removesuffix(".weight"), deltas)
                    if name.endswith(".weight") and module in deltas:
                        t = merge_tensor(t, deltas[module], scale, cfg, into)
                        done.add(module)
                    elif expert:  # the 4-bit experts training ran on (engine.torchside.experts), MXFP4 ones dense
                        name, t = X.trained_expert(name, t, lambda key: tensor_in(files, key), cfg, into)
                    tensors[name] = t.contiguous()
            save_file(tensors, str(tmp / shard.name), metadata={"format": "pt"})
            weight_map.update({name: shard.name for name in tensors})
            progress(f"merged {shard.name} ({n}/{len(files)})")
        missing = sorted(set(deltas) - done)
        if missing:
            raise BadInput(f"the adapter has layers the base does not ({missing[0]}, ...); is this the run's base?")
        copy_model_files(base, tmp)
        if len(files) > 1:  # the index of the tensors as written: MXFP4 experts changed names (blocks -> dense)
            total = sum((tmp / f.name).stat().st_size for f in files)
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
        (tmp / "README.md").write_text(model_card(run_dir, cfg, adapter, into))
        M.mark_export(tmp, "merged", run_dir)

    C.write_complete(out.with_name(f".tmp-{out.name}"), out, write, f"the merged model {out.name}", C.AFTER_EXPORT)
    return out


def merged_size(files) -> int:
    """Bytes the merged model takes: the shards', plus what MXFP4 experts grow by when written dense in 16 bits
    (two 4-bit values a byte become two 2-byte values; their scales are dropped)."""
    from safetensors import safe_open
    size = sum(f.stat().st_size for f in files)
    for shard in files:
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():
                if name.endswith("_blocks") and ".experts." in name:
                    size += 3 * math.prod(f.get_slice(name).get_shape())
    return size


def check_output(out: Path, size: int, force: bool, kind: str) -> None:
    """Refuse to overwrite without --force (and with it, anything but an earlier export of this kind), and to
    start without room for the result."""
    M.refuse_overwrite(out, force, kind)
    parent = out.parent if out.parent.exists() else Path.cwd()
    free = shutil.disk_usage(parent).free
    if free < size * 1.05:
        raise BadInput(f"{free / 2**30:.1f} GiB free in {parent}, the export needs about {size / 2**30:.1f} GiB.",
                       path=str(out))


def copy_model_files(base: Path, tmp: Path) -> None:
    """config.json (without any quantization settings: the export is plain 16-bit), the index, the tokenizer and
    its chat templates."""
    config = json.loads((base / "config.json").read_text())
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:  # the index is written from the shards as merged
        if (base / name).exists():
            shutil.copy2(base / name, tmp / name)
    if (base / "additional_chat_templates").is_dir():  # transformers' named chat templates beside the default
        shutil.copytree(base / "additional_chat_templates", tmp / "additional_chat_templates")


def model_card(run_dir: Path, cfg, adapter: Path, into: str) -> str:
    evs = read_events(run_dir)[0] if (run_dir / METRICS).exists() else []
    steps = [e for e in evs if e["event"] == "step" and e.get("loss") is not None]
    evals = [e for e in evs if e["event"] == "eval" and e.get("eval_loss") is not None]
    m, lo, t, d = cfg.model, cfg.lora, cfg.train, cfg.data
    lines = [f"# {cfg.name}: {m.base} fine-tuned with rigtune", "",
             f"- base: `{m.base}`" + (f" (revision `{m.revision}`)" if m.revision else ""),
             f"- dataset: `{d.path}` (format {d.format}, max_seq_len {d.max_seq_len})",
             f"- QLoRA: {m.quantization}, LoRA r {lo.r}, alpha {lo.alpha:g}, targets {lo.target_modules}",
             f"- training: {t.optimizer}, learning rate {t.learning_rate:g}, micro-batch {t.micro_batch_size} x "
             f"accumulation {t.gradient_accumulation_steps}, {steps[-1]['step'] if steps else 0} steps",
             f"- final training loss: {steps[-1]['loss'] if steps else 'n/a'}; final eval loss: "
             f"{evals[-1]['eval_loss'] if evals else 'n/a'}",
             f"- adapter: {adapter.relative_to(run_dir)}; merged into the {into} base weights",
             f"- exported: {time.strftime('%Y-%m-%d')}", "", "The run file:", "", "```toml",
             (run_dir / RUN_FILE).read_text().strip(), "```", ""]
    return "\n".join(lines)


FORMATS = ("merged", "gguf", "gguf-lora", "ollama")
DEFAULT_OUT = {"merged": "merged", "gguf": "model-{quant}.gguf", "gguf-lora": "adapter.gguf", "ollama": "ollama"}


def gguf_file(run_dir: Path, out: Path, checkpoint, into: str, quant: str, force: bool, progress, base_only=False):
    """The merged model (or, with base_only, the untouched base) as one GGUF file, written complete or absent."""
    import tempfile

    cfg = runfile.load(run_dir / RUN_FILE)
    base = base_folder(cfg.model)
    G.check_supported(base)
    check_output(out, sum(f.stat().st_size for f in shards(base)) * 2, force, "gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tmp-merge-") as work:
        folder = base if base_only else merged(run_dir, Path(work) / "merged", checkpoint, into, True, progress)
        name = f"{cfg.model.base}" if base_only else f"{cfg.name} (rigtune)"
        C.write_file_complete(out, lambda tmp: G.write_model(folder, tmp, quant, name=name, progress=progress),
                              "the GGUF file")
    return out


def gguf_lora(run_dir: Path, out: Path, checkpoint, force: bool) -> Path:
    """The adapter alone as a GGUF LoRA, written complete or absent."""
    cfg = runfile.load(run_dir / RUN_FILE)
    adapter, base = adapter_dir(run_dir, checkpoint), base_folder(cfg.model)
    check_output(out, 0, force, "gguf-lora")
    out.parent.mkdir(parents=True, exist_ok=True)
    return C.write_file_complete(out, lambda tmp: G.write_lora(adapter, base, tmp), "the GGUF LoRA")


def ollama_folder(run_dir: Path, out: Path, checkpoint, into: str, quant: str, force: bool, progress,
                  system: str | None) -> Path:
    """A folder Ollama imports: model.gguf and a Modelfile (FROM, TEMPLATE from the chat template, stops)."""
    cfg = runfile.load(run_dir / RUN_FILE)
    base = base_folder(cfg.model)
    template = M.chat_template(base)
    if not template:
        raise BadInput("the model has no chat template, which the Modelfile's TEMPLATE is made from.", key="--to")
    from ..ollama import modelfile
    text = modelfile("./model.gguf", template, _special(base), system)

    def write(tmp: Path) -> None:
        gguf_file(run_dir, tmp / "model.gguf", checkpoint, into, quant, True, progress)
        (tmp / "Modelfile").write_text(text)
        M.mark_export(tmp, "ollama", run_dir)
    check_output(out, 0, force, "ollama")
    C.write_complete(out.with_name(f".tmp-{out.name}"), out, write, "the Ollama folder", C.AFTER_EXPORT)
    return out


def _special(folder: Path) -> dict:
    tok, config = json.loads((folder / "tokenizer.json").read_text()), M.tokenizer_config(folder)
    return {"specials": [t["content"] for t in tok.get("added_tokens", []) if t.get("special")],
            "bos": M.special_token(config, "bos_token"), "eos": M.special_token(config, "eos_token")}


def main(argv=None) -> int:
    """python -m engine.torchside.export RUN_DIR --to FORMAT [...] (what `rigtune export` runs)."""
    import argparse
    import sys

    from .process import quiet_libraries
    quiet_libraries()
    ap = argparse.ArgumentParser(prog="rigtune export")
    ap.add_argument("run_dir")
    ap.add_argument("--to", required=True, choices=FORMATS)
    ap.add_argument("--out")
    ap.add_argument("--checkpoint")
    ap.add_argument("--quant", choices=("f16", "bf16", "q8_0"), default="f16")
    ap.add_argument("--merge-into", choices=("dequantized", "original"), default="dequantized")
    ap.add_argument("--system")
    ap.add_argument("--base", action="store_true")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir).resolve()
    out = Path(args.out) if args.out else run_dir / "export" / DEFAULT_OUT[args.to].format(quant=args.quant)
    say = lambda line: print(line, flush=True)  # noqa: E731
    try:
        if args.base and args.to != "gguf":
            raise BadInput("--base goes with --to gguf (the base model as GGUF, for a gguf-lora adapter).", key="--base")
        if args.to == "merged":
            path = merged(run_dir, out, args.checkpoint, args.merge_into, args.force, say)
        elif args.to == "gguf":
            path = gguf_file(run_dir, out, args.checkpoint, args.merge_into, args.quant, args.force, say, args.base)
        elif args.to == "gguf-lora":
            path = gguf_lora(run_dir, out, args.checkpoint, args.force)
        else:
            path = ollama_folder(run_dir, out, args.checkpoint, args.merge_into, args.quant, args.force, say,
                                 args.system)
    except BadInput as e:
        print(f"rigtune: {e}", file=sys.stderr)
        return 2
    except C.DiskFull as e:
        print(f"rigtune: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    print(NEXT[args.to].format(path=path, name=run_dir.name))
    return 0


NEXT = {"merged": "next: AutoModelForCausalLM.from_pretrained({path!r})",
        "gguf": "next: llama-cli -m {path} -cnv   (or load it in LM Studio)",
        "gguf-lora": "next: llama-cli -m BASE.gguf --lora {path}   (BASE.gguf: rigtune export RUN_DIR --to gguf --base)",
        "ollama": "next: ollama create {name} -f {path}/Modelfile   then   ollama run {name}"}


if __name__ == "__main__":
    import sys
    sys.exit(main())
