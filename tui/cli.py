"""The `rigtune` command line. Heavy libraries (torch, transformers) are imported inside the commands that
need them, so `rigtune --help` stays instant."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from engine.errors import BadInput, Failed
from engine.modelfiles import refuse_overwrite
from engine.events import ADAPTER, METRICS, RUN_FILE, STATUS, TRAIN_LOG

USAGE = """\
rigtune [RUN_FILE] [--preset ID]   the wizard (on a machine without a GPU it offers the CPU demo)
rigtune demo                  build the tiny demo model and train it on the bundled dataset
rigtune scan [--json]         GPUs, NVLink, driver, CPU, RAM and disk of this machine
rigtune plan [RUN_FILE] [--model M] [--gpus NxGIB|NxCARD] ... [--json]   will it fit, how long? (no download)
rigtune init --preset ID      write a run file (a tier from presets/tiers.toml, this-machine, cpu-demo)
rigtune check RUN_FILE        validate a run file and its dataset without loading the model
rigtune train RUN_FILE        launch training detached and watch it (--no-tui: plain lines)
rigtune watch [RUN_DIR]       re-attach the dashboard to a run (no argument: pick a recent one)
rigtune stop RUN_DIR          stop a run gracefully (it saves a checkpoint and the adapter)
rigtune fetch MODEL           download a model's weights with progress (resumes; checks free disk first)
rigtune build [--tier ID] [--model M] [--seq-len N] [--json]   what to buy to reach a tier or fit a model
rigtune chat RUN_DIR [--checkpoint step-N] [--base] [--system T] [--prompt T]   talk to what a run trained
rigtune export RUN_DIR --to merged|gguf|gguf-lora|ollama [--out PATH] [--quant Q]   use it elsewhere
"""


# ---------------------------------------------------------------------------- check

def cmd_check(args) -> int:
    from engine import data as D
    from engine import runfile
    from engine.modelref import check_base, is_local_model

    cfg = runfile.load(args.run_file)
    check_base(cfg)
    _check_architecture(cfg)
    examples, fmt, files = D.load_examples(cfg.data.path, cfg.data.format)
    print(f"{args.run_file}: run file OK (run directory {runfile.run_dir(cfg)})")
    print(f"dataset: {cfg.data.path} ({len(files)} file{'s' if len(files) != 1 else ''})")
    print(f"format: {fmt}")
    if is_local_model(cfg.model.base):
        from engine.preview import LightTokenizer
        tok = LightTokenizer(cfg.model.base)
        train, evals, report = D.prepare(cfg, tok, examples, fmt)
        print(report.summary())
    else:
        train_part, eval_part = D.split(cfg, examples)
        print(f"{len(examples)} records ({len(train_part)} train, {len(eval_part)} eval); token lengths need the "
              f"model's tokenizer, which is not local ({cfg.model.base})")
    if cfg.model.trust_remote_code:
        print("warning: trust_remote_code = true runs Python code shipped with the model", file=sys.stderr)
    for name in runfile.missing_trackers(cfg.train.report_to):
        print(f"warning: report_to lists {name!r}, which is not installed here (pip install {name}); training "
              "will go on without it", file=sys.stderr)
    return 0


def _check_architecture(cfg) -> None:
    """Refuse, before anything downloads, a model this stack cannot train (its config.json: a few KB from the
    hub when it is not local). When the config cannot be had (offline, not cached), say it was not checked."""
    from engine import planner as P
    from engine.modelref import DEMO_MODEL
    if cfg.model.base == DEMO_MODEL:
        return
    where = {"path": cfg.path, "line": cfg.line_of("model", "base"), "key": "model.base"}
    known = P.catalog_model(cfg.model.base)
    try:
        config = ({"model_type": known.model_type, "num_experts": known.experts,
                   **({"vision_config": {}} if known.extra_params else {})} if known else
                  P.model_config(cfg.model.base, online=True, revision=cfg.model.revision or None)[0])
    except BadInput as e:
        print(f"note: the architecture was not checked: {e.bare}", file=sys.stderr)
        return
    refused, warning = P.trainable(config, cfg.hardware.strategy, cfg.model.trust_remote_code)
    if refused:
        raise BadInput(refused, **where)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


# ---------------------------------------------------------------------------- scan and plan

def cmd_scan(args) -> int:
    import json
    from engine import scan as S
    from engine import tiers as T
    m = S.scan()
    if args.json:
        print(json.dumps(m.to_json(), indent=1))
        return 0
    print(S.describe(m))
    print(f"Tier  {T.verdict(T.this_machine(m))}")
    return 0


def _plan_input(args):
    """PlanInput from a run file and/or flags; GPUs from --gpus, the run file's tier, or this machine."""
    from engine import planner as P
    from engine import runfile
    from engine import tiers as T
    cfg = runfile.load(args.run_file) if args.run_file else None
    model = args.model or (cfg.model.base if cfg else None)
    if not model:
        raise BadInput("say which model to plan for: --model NAME|DIR|config.json, or a run file.", key="--model")
    arch = _arch_online(model, cfg.model.revision if cfg else None)
    ram, link = None, "nvlink"
    if args.gpus:
        gpus, card = P.parse_gpus(args.gpus)
        note = f"planning for --gpus {args.gpus}"
    elif cfg and cfg.hardware.tier in T.tiers():
        tier = T.tiers()[cfg.hardware.tier]
        gpus, ram, link, note = list(tier.gpus), tier.ram_gib, tier.link, f"planning for the {tier.label} tier"
        card = tier.card
    else:
        from engine.scan import scan
        m = scan()
        if not m.gpus:
            raise BadInput("this machine has no NVIDIA GPU; say what to plan for with --gpus NxGIB or NxCARD (e.g. "
                           "1x24, 2x4090 or 1xA100-80).", key="--gpus")
        gpus, ram, link, note = [g.memory_total_gib for g in m.gpus], m.ram_total_gib, m.link, "planning for this machine"
        card = _card_name(m.gpus[0].name) if len({g.name for g in m.gpus}) == 1 else ""
        if cfg and cfg.hardware.gpus:
            gpus = [gpus[i] for i in cfg.hardware.gpus if i < len(gpus)] or gpus
    inp = (P.input_from_run(cfg, arch, gpus, ram, link, card) if cfg else
           P.PlanInput(arch=arch, gpus=gpus, ram_gib=ram, link=link, card=card, kernels="liger"))
    flags = {"seq_len": args.seq_len, "micro_batch": args.micro_batch, "lora_r": args.lora_r,
             "optimizer": args.optimizer, "gradient_checkpointing": args.gradient_checkpointing,
             "attn": args.attn, "quantization": args.quantization, "strategy": args.strategy}
    if args.lora_targets:
        flags["lora_targets"] = "all-linear" if args.lora_targets == "all-linear" else args.lora_targets.split(",")
    if args.cpu_offload:
        flags["cpu_offload"] = True
    inp = P.replace(inp, **{k: v for k, v in flags.items() if v is not None})
    pick = args.strategy is None and cfg is None
    return inp, pick, note, cfg


def _arch_online(model: str, revision: str | None = None):
    """The Arch of any model: the catalog, a local folder or config.json, or a hub id (its config.json fetched,
    a few KB, and the size of its weights from the hub's listing)."""
    from engine import hub
    from engine import planner as P
    arch = P.resolve_model(model, online=True, revision=revision)
    if arch.hf_id == model and P.catalog_model(model) is None and not hub.offline():
        try:
            arch = P.replace(arch, download_bytes=hub.listing(model, revision, key="--model").weight_bytes)
        except BadInput:  # the size alone is not worth failing the plan for: it is estimated from the shape
            pass
    return arch


def _card_name(name: str) -> str:
    from engine import planner as P
    card = P.card_named(name) if name else None
    return card.name if card else ""


def _run_tokens(cfg, inp) -> tuple[int | None, str]:
    """The tokens a run file's training covers (its dataset x epochs, or max_steps), read from a local dataset;
    (None, why not) when it cannot be known without a download."""
    import presets
    from engine.preview import preview
    from engine.runvalues import DEMO_DATA, model_path
    path = str(presets.DEMO_DATA) if cfg.data.path == DEMO_DATA else cfg.data.path
    if not Path(path).expanduser().exists():
        return None, f"no duration: the dataset {path!r} is not on this machine yet."
    try:
        p = preview(path, cfg.data.format, model_path(cfg.model.base), cfg.data.max_seq_len, cfg.data.train_on_prompt)
    except BadInput as e:
        return None, f"no duration: {e.bare}"
    from engine import planner as P
    return p.run_tokens(cfg, inp.micro_batch * inp.accum * P.processes(inp)), ""


def cmd_plan(args) -> int:
    import json
    from engine import planner as P
    inp, pick, note, cfg = _plan_input(args)
    tokens, why_not = args.tokens, ""
    if tokens is None and cfg is not None and inp.card:
        tokens, why_not = _run_tokens(cfg, inp)
    p = P.plan(inp, pick_strategy=pick, total_tokens=tokens)
    if why_not:
        p.notes.append(why_not)
    elif not inp.card:
        p.notes.append("no time estimate: name the card (--gpus 2x4090, 1xA100-80); "
                       f"cards rigtune knows: {', '.join(P.load_cards())}.")
    elif tokens is None:
        p.notes.append(f"~{p.tokens_per_s_estimate:,} tokens/s on {p.card}; give --tokens N (or a run file) for "
                       "the duration.")
    past = P.past_runs(Path(args.runs), inp.arch.name)
    if past:
        p.notes.append(past)
    if args.json:
        print(json.dumps(p.to_json(), indent=1))
        return 0
    cards = f"{len(inp.gpus)} x {inp.card or f'{min(inp.gpus):g} GiB'}"
    print(f"{inp.arch.name}: seq {inp.seq_len}, micro-batch {inp.micro_batch}, LoRA r{inp.lora_r}, "
          f"{inp.quantization}, {inp.optimizer}, gradient checkpointing {'on' if inp.gradient_checkpointing else 'off'}")
    print(f"{note}: {cards}, strategy {p.strategy}{' + CPU offload' if p.cpu_offload else ''}")
    width = max(len(k) for k in p.breakdown_gib)
    for k, v in p.breakdown_gib.items():
        print(f"  {k:<{width}} {v:7.2f} GiB")
    print(f"  {'per GPU':<{width}} {p.per_gpu_peak_gib:7.2f} GiB of {p.gpu_gib:g}  ->  "
          f"{'FITS' if p.fits else 'DOES NOT FIT'}")
    if p.max_seq_len or p.max_micro_batch:
        print(f"longest sequence at this micro-batch: {p.max_seq_len}; largest micro-batch at this length: "
              f"{p.max_micro_batch}")
    else:
        print("no sequence length fits at this micro-batch, and no micro-batch at this length")
    if p.suggestion:
        print("to fit, set all of:")
        for key, value in p.suggestion.items():
            print(f"  {key} = {json.dumps(value)}")
    for n in p.notes:
        print(f"- {n}")
    return 0


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
    if args.prompt is None and _use_tui(True):
        from .app import RigtuneApp
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


# ---------------------------------------------------------------------------- build

def cmd_build(args) -> int:
    import json
    from engine import build as B
    from engine import planner as P
    from engine import tiers as T
    from engine.scan import scan
    if args.tier and args.model:
        raise BadInput("give a tier or a model, not both.", key="--tier")
    m = scan()  # RIGTUNE_FAKE_NVML (a profile with "host" facts) plans for a machine you don't have
    if args.model:
        bill = B.for_model(m, P.resolve_model(args.model), args.seq_len or 2048)
    else:
        tiers = T.tiers()
        if args.tier and args.tier not in tiers:
            raise BadInput(f"unknown tier '{args.tier}'; tiers (presets/tiers.toml): {', '.join(tiers)}.", key="--tier")
        bill = B.for_tier(m, tiers[args.tier] if args.tier else B.default_tier(m))
    print(json.dumps(bill.to_json(), indent=1) if args.json else B.describe(bill))
    return 0


# ---------------------------------------------------------------------------- init and demo

def _preset_values(preset: str, model: str | None, dataset: str | None, log=print) -> tuple[dict, str]:
    """A complete run file's values for a preset (the demo model built), and the header comment saying why."""
    from engine import runvalues
    values, why = runvalues.values_for(preset, model, dataset)
    runvalues.build_demo_model(values, log)
    return values, f"written by rigtune init --preset {preset}" + (f"\n{why}" if why else "")


def cmd_init(args) -> int:
    from engine import runfile
    out = Path(args.out)
    refuse_overwrite(out, args.force)
    values, header = _preset_values(args.preset, args.model, args.dataset)
    if args.name:
        values["name"] = args.name
    cfg = runfile.validate(values, path=str(out))
    runfile.save(cfg, out, header=header)
    print(f"wrote {out}\nnext: rigtune check {out}   then   rigtune train {out}")
    return 0


def cmd_demo(args) -> int:
    from engine import runfile
    from engine.launch import free_name
    values, _ = _preset_values("cpu-demo", None, None)
    free_name(values)
    cfg = runfile.validate(values, path="preset cpu-demo")
    print(f"CPU demo: QLoRA (NF4) on a tiny local model, run directory {runfile.run_dir(cfg)}")
    return _train(cfg, resume=False, tui=not getattr(args, "no_tui", False))


# ---------------------------------------------------------------------------- train and follow

def cmd_train(args) -> int:
    from engine import runfile
    cfg = runfile.load(args.run_file)
    if args.allow_changes and not args.resume:
        raise BadInput("--allow-changes only goes with --resume.", key="--allow-changes")
    return _train(cfg, resume=args.resume, tui=not args.no_tui, allow_changes=args.allow_changes)


def _use_tui(tui: bool) -> bool:
    return tui and sys.stdin.isatty() and sys.stdout.isatty()


def _train(cfg, resume: bool, tui: bool = False, allow_changes: bool = False) -> int:
    from engine import data as D
    from engine.launch import launch
    files = D.load_examples(cfg.data.path, cfg.data.format)[2]  # bad data fails here, before anything starts
    if cfg.model.trust_remote_code:
        print("warning: trust_remote_code = true runs Python code shipped with the model", file=sys.stderr)
    proc, run_dir = launch(cfg, resume=resume, allow_changes=allow_changes, data_files=files)
    if _use_tui(tui):
        return _dashboard(run_dir)
    print(f"training in {run_dir} (pid {proc.pid}); log: {run_dir / TRAIN_LOG}")
    print("Ctrl-C stops gracefully (checkpoint + adapter); closing the terminal leaves training running.")
    return follow(run_dir, proc)


def follow(run_dir: Path, proc=None, out=sys.stdout) -> int:
    """Print a line per logged step (engine.runview.Follower) until the run's process group is gone; Ctrl-C
    asks the trainer to stop (engine.launch.stop). Returns the run's exit status."""
    from engine.events import group_alive, read_status_raw
    from engine.launch import stop
    from engine.runview import Follower

    pgid = read_status_raw(run_dir).get("pgid") or (proc.pid if proc else None)
    view = Follower(run_dir)

    def forward(signum, frame):
        try:
            stop(run_dir)
        except BadInput:  # status.json not there yet: nothing to signal, the launcher's group still gets it
            if pgid:
                os.killpg(pgid, signal.SIGTERM)
        print("\nstopping after this step (checkpoint and adapter are saved)...", file=out, flush=True)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            view.poll()
            for line in view.take_lines():
                print(line, file=out, flush=True)
            launcher_done = proc is None or proc.poll() is not None
            if launcher_done and not group_alive(pgid):
                view.poll()
                for line in view.take_lines():
                    print(line, file=out, flush=True)
                break
            time.sleep(0.3)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    end = view.end
    if end is None:
        print(f"the trainer ended without an end event; see {run_dir / TRAIN_LOG}", file=sys.stderr)
        return 1
    if end["reason"] == "error":
        print(f"rigtune: training failed: {end.get('message')}\n(log: {run_dir / TRAIN_LOG})", file=sys.stderr)
        return int(end.get("exit_code") or 1)
    print(f"{end['reason']} at step {end.get('step')}: adapter in {run_dir / ADAPTER}", file=out)
    return 0


# ---------------------------------------------------------------------------- watch

def _dashboard(run_dir=None, pick_from=None) -> int:
    from .app import RigtuneApp
    RigtuneApp(run_dir=run_dir, pick_from=pick_from).run()
    if run_dir is not None:
        print(_left_message(Path(run_dir)))
    return 0


def _left_message(run_dir: Path) -> str:
    """What to say on leaving the dashboard: a live run goes on; a finished one says where its adapter is."""
    from engine.events import read_status
    st = read_status(run_dir)
    state = st.get("state")
    if state == "finished":
        return f"the run is finished (step {st.get('step')}); its adapter is in {run_dir / ADAPTER}"
    if state in ("stopped", "error", "crashed"):
        return (f"the run is {state} at step {st.get('step')}; continue it with: rigtune train "
                f"{run_dir / RUN_FILE} --resume")
    return f"detached; training goes on. Re-attach with: rigtune watch {run_dir}"


def cmd_watch(args) -> int:
    if args.run_dir:
        run_dir = Path(args.run_dir)
        if not (run_dir / METRICS).exists() and not (run_dir / STATUS).exists():
            raise BadInput("not a run directory (no metrics.jsonl or status.json); `rigtune watch` with no "
                           "argument lists recent runs.", path=str(run_dir))
        if not _use_tui(True):
            return follow(run_dir)
        return _dashboard(run_dir)
    if not _use_tui(True):
        raise BadInput("watching needs a terminal; give a RUN_DIR to follow it as plain lines.", key="watch")
    return _dashboard(pick_from=args.runs)


# ---------------------------------------------------------------------------- stop

def cmd_stop(args) -> int:
    from engine.launch import stop
    run_dir = Path(args.run_dir)
    what, st = stop(run_dir, wait_s=args.timeout)
    if what == "not-running":
        print(f"{run_dir}: not running (state {st['state']}, step {st.get('step')})")
    elif what == "gone":
        print(f"{run_dir}: its processes are gone (state {st.get('state')})")
    elif what == "still-running":
        print(f"still running after {args.timeout:.0f} s (saving can take a while); run `rigtune stop` again to "
              "wait more", file=sys.stderr)
        return 1
    else:
        print(f"asked the trainer to stop after its current step...\n{run_dir}: {st.get('state')} at step "
              f"{st.get('step')}")
    return 0


# ---------------------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rigtune", description="QLoRA fine-tuning on your own GPU box, from a terminal.",
                                 usage=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command")
    p = sub.add_parser("demo", help="train the CPU demo")
    p.add_argument("--no-tui", action="store_true", help="plain progress lines")
    p = sub.add_parser("watch", help="re-attach the dashboard to a run")
    p.add_argument("run_dir", nargs="?")
    p.add_argument("--runs", default="runs", help="where to look for recent runs")
    p = sub.add_parser("scan", help="scan this machine's hardware")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("plan", help="plan a run's memory before anything downloads")
    p.add_argument("run_file", nargs="?")
    p.add_argument("--model", help="a name from presets/models.toml, any Hugging Face id (its config.json is fetched, "
                                   "a few KB), a local model folder or a config.json")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--micro-batch", type=int)
    p.add_argument("--lora-r", type=int)
    p.add_argument("--lora-targets", help="all-linear or q_proj,v_proj,...")
    p.add_argument("--optimizer", choices=["adamw_torch", "adamw_8bit", "paged_adamw_8bit"])
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--attn", choices=["sdpa", "flash_attention_2", "eager"])
    p.add_argument("--quantization", choices=["nf4", "fp4", "none"])
    p.add_argument("--gpus", help="NxGIB or NxCARD, e.g. 2x24, 2x4090, 1xA100-80 (default: this machine's GPUs); "
                                  "a card name also gives the time estimate")
    p.add_argument("--strategy", choices=["single", "ddp", "fsdp"])
    p.add_argument("--cpu-offload", action="store_true")
    p.add_argument("--tokens", type=int, help="tokens to train in all (for the duration, without a run file)")
    p.add_argument("--runs", default="runs", help="where past runs are, to compare plans with measurements")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("init", help="write a run file from a preset")
    p.add_argument("--preset", required=True)
    p.add_argument("--model")
    p.add_argument("--dataset")
    p.add_argument("--name")
    p.add_argument("--out", default="run.toml")
    p.add_argument("--force", action="store_true")
    p = sub.add_parser("check", help="validate a run file and its dataset")
    p.add_argument("run_file")
    p = sub.add_parser("train", help="launch training")
    p.add_argument("run_file")
    p.add_argument("--resume", action="store_true", help="continue from the newest verified checkpoint")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: accept a changed dataset or training-shape keys")
    p.add_argument("--no-tui", action="store_true", help="plain progress lines (for scripts and CI)")
    p = sub.add_parser("chat", help="talk to what a run trained (the base model too, to compare)")
    p.add_argument("run_dir")
    p.add_argument("--checkpoint", help="chat with a checkpoint still on disk, e.g. step-000200")
    p.add_argument("--base", action="store_true", help="with --prompt: answer as the base model (adapter off)")
    p.add_argument("--system", help="a system prompt")
    p.add_argument("--prompt", help="ask one question, print the reply and exit")
    p.add_argument("--max-new-tokens", type=int, default=256)
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
    p = sub.add_parser("build", help="what to buy to reach a tier, or to fit a model")
    p.add_argument("--tier", help="a tier id from presets/tiers.toml (default: the first one this machine misses)")
    p.add_argument("--model", help="plan the box for this model instead (a catalog name, folder or config.json)")
    p.add_argument("--seq-len", type=int, help="with --model: the sequence length (default 2048)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("fetch", help="download a model's weights with progress (resumable; checks free disk first)")
    p.add_argument("model", metavar="MODEL", help="a Hugging Face id (owner/name) or a name from presets/models.toml")
    p.add_argument("--revision", help="a branch, tag or commit (default: main)")
    p.add_argument("--trust-remote-code", action="store_true", help="also fetch the repository's .py files")
    p = sub.add_parser("stop", help="stop a run gracefully")
    p.add_argument("run_dir")
    p.add_argument("--timeout", type=float, default=600)
    return ap




def cmd_wizard(args) -> int:
    if not _use_tui(True):
        raise BadInput("the wizard needs a terminal; in scripts use `rigtune init --preset ID` and "
                       "`rigtune train RUN_FILE --no-tui` (or `rigtune demo --no-tui`).", key="rigtune")
    if args.run_file:
        from engine import runfile
        runfile.load(args.run_file)  # a bad file gets the usual one-paragraph error, not a screen
    from .app import RigtuneApp
    # RIGTUNE_FAKE_NVML (a profile from tests/profiles) is read by engine.scan: plan on hand-made hardware profiles
    app = RigtuneApp(wizard=True, preset=args.preset, run_file=args.run_file)
    app.run()
    if app.run_dir is not None:
        print(_left_message(app.run_dir))
    return 0


COMMANDS = {"wizard": cmd_wizard, "demo": cmd_demo, "watch": cmd_watch, "scan": cmd_scan, "plan": cmd_plan, "init": cmd_init, "check": cmd_check, "train": cmd_train, "stop": cmd_stop, "fetch": cmd_fetch,
            "build": cmd_build, "chat": cmd_chat, "export": cmd_export}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--debug"):
        wiz = argparse.ArgumentParser(prog="rigtune", usage=USAGE)
        wiz.add_argument("run_file", nargs="?")
        wiz.add_argument("--preset", help="start the wizard at setup for this preset (a tier, this-machine, cpu-demo)")
        wiz.add_argument("--debug", action="store_true")
        args = wiz.parse_args(argv)
        if args.preset:
            from engine.runvalues import preset_ids
            if args.preset not in preset_ids():
                print(f"rigtune: unknown preset '{args.preset}'; presets: {', '.join(preset_ids())}.", file=sys.stderr)
                return 2
        args.command = "wizard"
    else:
        args = build_parser().parse_args(argv)
        if args.command is None:
            args.command, args.run_file, args.preset = "wizard", None, None
    command = COMMANDS[args.command]
    try:
        return command(args)
    except BadInput as e:
        if args.debug:
            raise
        print(f"rigtune: {e}", file=sys.stderr)
        return 2
    except Failed as e:
        if args.debug:
            raise
        print(f"rigtune: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        from engine.checkpoint import is_disk_full
        if not is_disk_full(e) or args.debug:
            raise
        where = getattr(e, "filename", None) or "the run directory"  # the run-file copy, status.json, init --out
        print(f"rigtune: disk full while writing {where}; nothing was started. Free some space and try again.",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
