"""The chat backend: the run's adapter on its base, loaded as training loaded it (same quantization, same chat
template), answering over a pipe. Run as `python -m engine.torchside.chat RUN_DIR [--checkpoint step-N]` by
engine.chat, which the command line and the chat screen use; the terminal UI never imports torch.

Protocol, one JSON object per line:
  out  {"event": "ready", "model", "adapter"}            once loaded (or {"event": "error", "message"}, exit 2)
  in   {"id", "messages": [{"role", "content"}], "adapter": true|false, "max_new_tokens": N}
  out  {"id", "event": "token", "text": "..."}            as each piece of the reply is decoded
  out  {"id", "event": "done", "text": "...", "tokens": N}
  out  {"id", "event": "error", "message": "..."}
Greedy decoding, so the same question gets the same answer; "adapter": false answers as the base model.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import runfile
from ..chat import adapter_dir
from ..errors import BadInput
from ..events import RUN_FILE


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


class LineStreamer:
    """transformers' streamer interface: decodes the new tokens as they come and emits what text they add."""

    def __init__(self, tokenizer, request_id, prompt_len: int):
        self.tok, self.id, self.skip = tokenizer, request_id, prompt_len
        self.ids, self.text = [], ""

    def put(self, value):
        ids = value.reshape(-1).tolist()
        if self.skip:  # generate() first passes the prompt
            self.skip = 0
            return
        self.ids += ids
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if len(text) > len(self.text) and not text.endswith("\ufffd"):  # a whole character more
            emit({"id": self.id, "event": "token", "text": text[len(self.text):]})
            self.text = text

    def end(self):
        pass


def load(run_dir: Path, checkpoint: str | None):
    """(PeftModel in eval mode, tokenizer, device, the run file) for the run's adapter or a checkpoint's."""
    import torch
    from peft import PeftModel

    from .model import load_base, load_tokenizer
    from .weights import base_folder, loading_from
    cfg = runfile.load(run_dir / RUN_FILE)
    local = loading_from(cfg, base_folder(cfg.model))  # a hub id's cached weights, never fetched from here
    device = torch.device("cuda:0" if cfg.hardware.gpus and torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(local)
    base = load_base(local, device)
    model = PeftModel.from_pretrained(base, str(adapter_dir(run_dir, checkpoint)))
    model.eval()
    return model, tokenizer, device, cfg


def answer(model, tokenizer, device, request: dict) -> None:
    import contextlib

    import torch
    rid = request.get("id")
    prompt = tokenizer.apply_chat_template(request["messages"], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
    streamer = LineStreamer(tokenizer, rid, ids.shape[1])
    switch = contextlib.nullcontext() if request.get("adapter", True) else model.disable_adapter()
    with torch.no_grad(), switch:
        out = model.generate(input_ids=ids, max_new_tokens=int(request.get("max_new_tokens", 256)), do_sample=False,
                             streamer=streamer, pad_token_id=tokenizer.pad_token_id, use_cache=True)
    new = out[0][ids.shape[1]:].tolist()
    emit({"id": rid, "event": "done", "text": tokenizer.decode(new, skip_special_tokens=True).strip(),
          "tokens": len(new)})


def main(argv=None) -> int:
    from .process import quiet_libraries
    quiet_libraries()
    ap = argparse.ArgumentParser(prog="engine.torchside.chat")
    ap.add_argument("run_dir")
    ap.add_argument("--checkpoint")
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir).resolve()
    try:
        model, tokenizer, device, cfg = load(run_dir, args.checkpoint)
    except BadInput as e:
        emit({"event": "error", "message": str(e)})
        return 2
    emit({"event": "ready", "model": cfg.model.base, "adapter": str(adapter_dir(run_dir, args.checkpoint))})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = None
        try:
            request = json.loads(line)
            answer(model, tokenizer, device, request)
        except Exception as e:  # one bad request ends that answer, not the session; the screen shows why
            emit({"id": request.get("id") if isinstance(request, dict) else None, "event": "error",
                  "message": f"{type(e).__name__}: {e}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
