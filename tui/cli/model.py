"""`rigtune fetch`, `chat` and `export`: a model's weights onto this machine, talking to what a run trained,
and the fine-tune in a form other tools load. Heavy libraries are imported inside the commands, and chat and
export run the torch side in their own processes, so this one never imports torch."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from engine.errors import BadInput

from .common import use_tui


# ---------------------------------------------------------------------------- fetch

def cmd_fetch(args) -> int:
    """Download a model's weights into the Hugging Face cache with a progress line (resumes a cut-off one)."""
    from engine import hub
    from engine import planner as P
    known = P.catalog_model(args.model)
    repo = known.hf_id if known else args.model
    if P.config_path(repo) is not None:
        print(f"{repo} is a local folder: nothing to fetch.")
        return 0
    from engine.modelref import HUB_ID
    if not HUB_ID.match(repo):
        raise BadInput(f"{repo!r} is not a Hugging Face id ('owner/name') nor a name in presets/models.toml.",
                       key="MODEL")
    tty = sys.stderr.isatty()
    last = {"t": 0.0, "line": ""}

    def show(p):
        line = hub.fmt_progress(p)
        if tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif time.time() - last["t"] >= 2 or p.bytes_done == p.bytes_total:
            last["t"] = time.time()
            print(line, file=sys.stderr, flush=True)
        last["line"] = line
    lst = None
    if not hub.offline():
        lst = hub.listing(repo, args.revision, args.trust_remote_code, key="MODEL")
        _, left = hub.missing(lst)
        print(f"{repo} @ {lst.commit[:12]}: {len(lst.files)} files, {lst.total_bytes / hub.GIB:.2f} GiB "
              f"({left / hub.GIB:.2f} GiB to download) into {hub.cache_dir()}", file=sys.stderr)
    try:
        snap = hub.download(repo, args.revision, show, trust_remote_code=args.trust_remote_code, key="MODEL", lst=lst)
    finally:
        if tty and last["line"]:
            print(file=sys.stderr)
    print(f"{repo}: ready in {snap}")
    return 0


# ---------------------------------------------------------------------------- chat

def cmd_chat(args) -> int:
    """The chat screen; with --prompt (or a question piped in) one reply on stdout, streamed, for scripts."""
    from engine.chat import ChatBackend, adapter_dir, messages_for
    run_dir = Path(args.run_dir)
    adapter_dir(run_dir, args.checkpoint)  # a missing adapter or checkpoint is a clear error, before loading
    if args.prompt is None and use_tui(True):
        from ..app import RigtuneApp
        RigtuneApp(chat_run=run_dir, chat_options={"checkpoint": args.checkpoint, "system": args.system,
                                                   "max_new_tokens": args.max_new_tokens}).run()
        return 0
    prompt = args.prompt if args.prompt is not None else sys.stdin.read().strip()
    if not prompt:
        raise BadInput("nothing to ask: give --prompt TEXT, or pipe the question in.", key="--prompt")
    backend = ChatBackend(run_dir, args.checkpoint)
    try:
        backend.ready()
        for ev in backend.ask(messages_for(prompt, args.system), adapter=not args.base,
                              max_new_tokens=args.max_new_tokens):
            if ev["event"] == "token":
                print(ev["text"], end="", flush=True)
            elif ev["event"] == "error":
                raise RuntimeError(ev["message"])
        print()
    except RuntimeError as e:
        print(f"\nrigtune: chat failed: {e}", file=sys.stderr)
        return 1
    finally:
        backend.close()
    return 0


# ---------------------------------------------------------------------------- export

def cmd_export(args) -> int:
    """The export runs on the torch side in its own process (this one never imports torch); its progress
    lines and its one-paragraph errors come straight through, and so does its exit code."""
    import subprocess
    from engine.chat import adapter_dir
    adapter_dir(args.run_dir, args.checkpoint)  # a run without an adapter is refused here, at once
    from engine.launch import export_command
    argv = export_command(args.run_dir, args.to, out=args.out, checkpoint=args.checkpoint, quant=args.quant,
                          merge_into=args.merge_into, system=args.system, force=args.force, base=args.base)
    return subprocess.run(argv, stdin=subprocess.DEVNULL).returncode


# ---------------------------------------------------------------------------- the parsers

def _add_chat(sub) -> None:
    p = sub.add_parser("chat", help="talk to what a run trained (the base model too, to compare)")
    p.add_argument("run_dir")
    p.add_argument("--checkpoint", help="chat with a checkpoint still on disk, e.g. step-000200")
    p.add_argument("--base", action="store_true", help="with --prompt: answer as the base model (adapter off)")
    p.add_argument("--system", help="a system prompt")
    p.add_argument("--prompt", help="ask one question, print the reply and exit")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.set_defaults(func=cmd_chat)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="the fine-tune as a merged model, GGUF, a GGUF LoRA or an Ollama folder")
    p.add_argument("run_dir")
    p.add_argument("--to", required=True, choices=["merged", "gguf", "gguf-lora", "ollama"])
    p.add_argument("--out", help="where to write (default RUN_DIR/export/FORMAT)")
    p.add_argument("--quant", choices=["f16", "bf16", "q8_0"], help="GGUF weights (default f16)")
    p.add_argument("--checkpoint", help="export a checkpoint still on disk instead of the final adapter")
    p.add_argument("--merge-into", choices=["dequantized", "original"],
                   help="merge into the base as training saw it (default) or its original 16-bit weights")
    p.add_argument("--system", help="ollama: the system prompt for the Modelfile")
    p.add_argument("--base", action="store_true", help="with --to gguf: the base model itself, for a gguf-lora")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_export)


def _add_fetch(sub) -> None:
    p = sub.add_parser("fetch", help="download a model's weights with progress (resumable; checks free disk first)")
    p.add_argument("model", metavar="MODEL", help="a Hugging Face id (owner/name) or a name from presets/models.toml")
    p.add_argument("--revision", help="a branch, tag or commit (default: main)")
    p.add_argument("--trust-remote-code", action="store_true", help="also fetch the repository's .py files")
    p.set_defaults(func=cmd_fetch)


PARSERS = {"chat": _add_chat, "export": _add_export, "fetch": _add_fetch}
