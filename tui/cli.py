"""The `rigtune` command line. Heavy libraries (torch, transformers) are imported inside the commands that
need them, so `rigtune --help` stays instant."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from engine.errors import BadInput

USAGE = """\
rigtune [RUN_FILE] [--preset ID]   the wizard (on a machine without a GPU it offers the CPU demo)
rigtune demo                  build the tiny demo model and train it on the bundled dataset
rigtune scan [--json]         GPUs, NVLink, driver, CPU, RAM and disk of this machine
rigtune plan [RUN_FILE] [--model M] [--gpus NxGIB] ... [--json]   will it fit? (no download)
rigtune init --preset ID      write a run file (presets: 1500, 3000, this-machine, cpu-demo)
rigtune check RUN_FILE        validate a run file and its dataset without loading the model
rigtune train RUN_FILE        launch training detached and watch it (--no-tui: plain lines)
rigtune watch [RUN_DIR]       re-attach the dashboard to a run (no argument: pick a recent one)
rigtune stop RUN_DIR          stop a run gracefully (it saves a checkpoint and the adapter)
"""


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "--:--"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


# ---------------------------------------------------------------------------- check

def cmd_check(args) -> int:
    from engine import data as D
    from engine import runfile
    from engine.model import is_local_model

    cfg = runfile.load(args.run_file)
    examples, fmt, files = D.load_examples(cfg.data.path, cfg.data.format)
    print(f"{args.run_file}: run file OK (run directory {runfile.run_dir(cfg)})")
    print(f"dataset: {cfg.data.path} ({len(files)} file{'s' if len(files) != 1 else ''})")
    print(f"format: {fmt}")
    if is_local_model(cfg.model.base):
        from engine.model import load_tokenizer
        tok = load_tokenizer(cfg)
        train, evals, report = D.prepare(cfg, tok, examples, fmt)
        print(report.summary())
    else:
        train_idx, eval_idx = D.split_indices(len(examples), cfg.data.eval_fraction, cfg.train.seed)
        print(f"{len(examples)} records ({len(train_idx)} train, {len(eval_idx)} eval); token lengths need the "
              f"model's tokenizer, which is not local ({cfg.model.base})")
    if cfg.model.trust_remote_code:
        print("warning: trust_remote_code = true runs Python code shipped with the model", file=sys.stderr)
    return 0


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
    arch = P.resolve_model(model)
    ram, link = None, "nvlink"
    if args.gpus:
        gpus = P.parse_gpus(args.gpus)
        note = f"planning for --gpus {args.gpus}"
    elif cfg and cfg.hardware.tier in T.tiers():
        tier = T.tiers()[cfg.hardware.tier]
        gpus, ram, link, note = list(tier.gpus), tier.ram_gib, tier.link, f"planning for the {tier.label} tier"
    else:
        from engine.scan import scan
        m = scan()
        if not m.gpus:
            raise BadInput("this machine has no NVIDIA GPU; say what to plan for with --gpus NxGIB (e.g. 1x24 or "
                           "2x24).", key="--gpus")
        gpus, ram, link, note = [g.memory_total_gib for g in m.gpus], m.ram_total_gib, m.link, "planning for this machine"
        if cfg and cfg.hardware.gpus:
            gpus = [gpus[i] for i in cfg.hardware.gpus if i < len(gpus)] or gpus
    inp = (P.input_from_run(cfg, arch, gpus, ram, link) if cfg else
           P.PlanInput(arch=arch, gpus=gpus, ram_gib=ram, link=link))
    flags = {"seq_len": args.seq_len, "micro_batch": args.micro_batch, "lora_r": args.lora_r,
             "optimizer": args.optimizer, "gradient_checkpointing": args.gradient_checkpointing,
             "attn": args.attn, "quantization": args.quantization, "strategy": args.strategy}
    if args.lora_targets:
        flags["lora_targets"] = "all-linear" if args.lora_targets == "all-linear" else args.lora_targets.split(",")
    if args.cpu_offload:
        flags["cpu_offload"] = True
    inp = P.replace(inp, **{k: v for k, v in flags.items() if v is not None})
    pick = args.strategy is None and cfg is None
    return inp, pick, note


def cmd_plan(args) -> int:
    import json
    from engine import planner as P
    inp, pick, note = _plan_input(args)
    p = P.plan(inp, pick_strategy=pick)
    past = P.past_runs(Path(args.runs), inp.arch.name)
    if past:
        p.notes.append(past)
    if args.json:
        print(json.dumps(p.to_json(), indent=1))
        return 0
    cards = f"{len(inp.gpus)} x {min(inp.gpus):g} GiB"
    print(f"{inp.arch.name}: seq {inp.seq_len}, micro-batch {inp.micro_batch}, LoRA r{inp.lora_r}, "
          f"{inp.quantization}, {inp.optimizer}, gradient checkpointing {'on' if inp.gradient_checkpointing else 'off'}")
    print(f"{note}: {cards}, strategy {p.strategy}{' + CPU offload' if p.cpu_offload else ''}")
    width = max(len(k) for k in p.breakdown_gib)
    for k, v in p.breakdown_gib.items():
        print(f"  {k:<{width}} {v:7.2f} GiB")
    print(f"  {'per GPU':<{width}} {p.per_gpu_peak_gib:7.2f} GiB of {p.gpu_gib:g}  ->  "
          f"{'FITS' if p.fits else 'DOES NOT FIT'}")
    print(f"longest sequence at this micro-batch: {p.max_seq_len}; largest micro-batch at this length: "
          f"{p.max_micro_batch}")
    for n in p.notes:
        print(f"- {n}")
    return 0


# ---------------------------------------------------------------------------- init and demo

def _preset_values(preset: str, model: str | None, dataset: str | None, log=print) -> tuple[dict, str]:
    """A complete run file's values for a preset, and the header comment saying why."""
    import presets
    from engine import runfile
    from engine import tiers as T
    header = f"written by rigtune init --preset {preset}"
    if preset in presets.RUN_PRESETS:
        values = runfile.defaults(**presets.load_run_preset(preset))
        if model:
            values["model"]["base"] = model
    elif preset in T.tiers() or preset == "this-machine":
        values, why = _tier_values(preset, model)
        header += "\n" + why
    else:
        raise BadInput(f"unknown preset '{preset}'; presets: {', '.join(presets.preset_ids() + list(T.tiers()))}, "
                       "this-machine.", key="--preset")
    if dataset:
        values["data"]["path"] = dataset
    if values["model"]["base"] == "rigtune:tiny-demo":
        from engine.demo import demo_model
        values["model"]["base"] = str(demo_model(log))
    if values["data"]["path"] in ("rigtune:demo-data", None):
        values["data"]["path"] = str(presets.DEMO_DATA)
    return values, header


def _tier_values(preset: str, model: str | None) -> tuple[dict, str]:
    """Run-file values for a tier: micro-batch, sequence length, strategy and offload chosen by the planner."""
    from engine import planner as P
    from engine import tiers as T
    if preset == "this-machine":
        from engine.scan import scan
        tier = T.this_machine(scan())
        if not tier.gpus:
            raise BadInput("this machine has no NVIDIA GPU; use --preset cpu-demo, or --preset 1500 / 3000 to write "
                           "a run file for a tier.", key="--preset")
    else:
        tier = T.tiers()[preset]
    arch = P.resolve_model(model or tier.run["model"])
    return T.run_values(tier, arch, base=model if model and not arch.hf_id else None)


def cmd_init(args) -> int:
    from engine import runfile
    out = Path(args.out)
    if out.exists() and not args.force:
        raise BadInput("already exists; choose another --out or add --force to overwrite.", path=str(out))
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
    print(f"training in {run_dir} (pid {proc.pid}); log: {run_dir / 'train.log'}")
    print("Ctrl-C stops gracefully (checkpoint + adapter); closing the terminal leaves training running.")
    return follow(run_dir, proc)


def follow(run_dir: Path, proc=None, out=sys.stdout) -> int:
    """Print one line per logged step until the run's process group is gone; return its exit status."""
    from engine.events import group_alive, read_events, read_status_raw

    pgid = read_status_raw(run_dir).get("pgid") or (proc.pid if proc else None)
    stopping = {"n": 0}

    def forward(signum, frame):
        stopping["n"] += 1
        if pgid:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        print("\nstopping after this step (checkpoint and adapter are saved)...", file=out, flush=True)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    offset, end, total, first = 0, None, None, None
    try:
        while True:
            events, offset = read_events(run_dir, offset)
            for ev in events:
                kind = ev["event"]
                if kind == "start":
                    total = ev.get("total_steps")
                    first = None
                    print(f"start: {ev.get('world_size')} process(es), {total} steps, "
                          f"{ev.get('trainable_params'):,} trainable params"
                          + (f", resumed from {ev['resumed_from']}" if ev.get("resumed_from") else ""), file=out)
                elif kind == "step" and ev.get("skipped"):
                    print(f"step {ev['step']}/{total}  skipped: loss or gradient was NaN/inf", file=out, flush=True)
                elif kind == "step":
                    if first is None:
                        first = (ev["step"] - 1, ev["time"] - 0.0)
                    done = ev["step"] - first[0]
                    rate = (ev["time"] - first[1]) / done if done > 0 and ev["time"] > first[1] else None
                    eta = rate * (total - ev["step"]) if rate and total else None
                    print(f"step {ev['step']}/{total}  loss {ev['loss']:.4f}  lr {ev['lr']:.2e}  "
                          f"{ev['tokens_per_s']:.0f} tok/s  ETA {_fmt_eta(eta)}", file=out, flush=True)
                elif kind == "eval":
                    s = ev.get("sample") or {}
                    loss = f"eval_loss {ev['eval_loss']:.4f}" if ev.get("eval_loss") is not None else "eval"
                    completion = (s.get("completion") or "").replace("\n", " ")[:60]
                    print(f"  {loss}" + (f"  sample: {completion!r}" if s else ""), file=out, flush=True)
                elif kind == "checkpoint":
                    print(f"  checkpoint {ev['path']}", file=out, flush=True)
                elif kind in ("warning", "oom_fallback"):
                    detail = ev.get("message") or (f"out of memory: micro-batch {ev['micro_batch_size'][0]} -> "
                                                   f"{ev['micro_batch_size'][1]}, resuming from step {ev['step']}")
                    print(f"  {kind}: {detail}", file=out, flush=True)
                elif kind == "end":
                    end = ev
            launcher_done = proc is None or proc.poll() is not None
            if launcher_done and not group_alive(pgid):
                events, offset = read_events(run_dir, offset)
                end = next((e for e in reversed(events) if e["event"] == "end"), end)
                break
            time.sleep(0.3)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if end is None:
        print(f"the trainer ended without an end event; see {run_dir / 'train.log'}", file=sys.stderr)
        return 1
    if end["reason"] == "error":
        print(f"rigtune: training failed: {end.get('message')}\n(log: {run_dir / 'train.log'})", file=sys.stderr)
        return int(end.get("exit_code") or 1)
    print(f"{end['reason']} at step {end.get('step')}: adapter in {run_dir / 'adapter'}", file=out)
    return 0


# ---------------------------------------------------------------------------- watch

def _dashboard(run_dir=None, pick_from=None) -> int:
    from .app import RigtuneApp
    RigtuneApp(run_dir=run_dir, pick_from=pick_from).run()
    if run_dir is not None:
        print(f"detached; training goes on. Re-attach with: rigtune watch {run_dir}")
    return 0


def cmd_watch(args) -> int:
    if args.run_dir:
        run_dir = Path(args.run_dir)
        if not (run_dir / "metrics.jsonl").exists() and not (run_dir / "status.json").exists():
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
    from engine.events import FINAL_STATES, group_alive, read_status
    run_dir = Path(args.run_dir)
    if not (run_dir / "status.json").exists():
        raise BadInput("not a run directory (no status.json).", path=str(run_dir))
    st = read_status(run_dir)
    if st.get("state") in FINAL_STATES:
        print(f"{run_dir}: not running (state {st['state']}, step {st.get('step')})")
        return 0
    pgid = st.get("pgid")
    if not pgid:
        raise BadInput("status.json names no process group; the run may still be starting, try again.",
                       path=str(run_dir / "status.json"))
    try:
        os.killpg(int(pgid), signal.SIGTERM)
    except ProcessLookupError:
        print(f"{run_dir}: its processes are gone (state {read_status(run_dir).get('state')})")
        return 0
    print(f"asked the trainer (process group {pgid}) to stop after its current step...")
    deadline = time.time() + args.timeout
    while group_alive(pgid) and time.time() < deadline:
        time.sleep(0.3)
    if group_alive(pgid):
        print(f"still running after {args.timeout:.0f} s (saving can take a while); run `rigtune stop` again to "
              "wait more", file=sys.stderr)
        return 1
    st = read_status(run_dir)
    print(f"{run_dir}: {st.get('state')} at step {st.get('step')}")
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
    p.add_argument("--model", help="a name from presets/models.toml, a local model folder or a config.json")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--micro-batch", type=int)
    p.add_argument("--lora-r", type=int)
    p.add_argument("--lora-targets", help="all-linear or q_proj,v_proj,...")
    p.add_argument("--optimizer", choices=["adamw_torch", "adamw_8bit", "paged_adamw_8bit"])
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--attn", choices=["sdpa", "flash_attention_2", "eager"])
    p.add_argument("--quantization", choices=["nf4", "fp4", "none"])
    p.add_argument("--gpus", help="NxGIB, e.g. 1x24 or 2x24 (default: this machine's GPUs)")
    p.add_argument("--strategy", choices=["single", "ddp", "fsdp"])
    p.add_argument("--cpu-offload", action="store_true")
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
    # RIGTUNE_FAKE_NVML (a profile from tests/profiles) is read by engine.scan: plan on recorded hardware
    app = RigtuneApp(wizard=True, preset=args.preset, run_file=args.run_file)
    app.run()
    if app.run_dir is not None:
        print(f"left the dashboard; training goes on. Re-attach with: rigtune watch {app.run_dir}")
    return 0


COMMANDS = {"wizard": cmd_wizard, "demo": cmd_demo, "watch": cmd_watch, "scan": cmd_scan, "plan": cmd_plan, "init": cmd_init, "check": cmd_check, "train": cmd_train, "stop": cmd_stop}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--debug"):
        wiz = argparse.ArgumentParser(prog="rigtune", usage=USAGE)
        wiz.add_argument("run_file", nargs="?")
        wiz.add_argument("--preset", help="start the wizard at setup for this tier (1500, 3000, this-machine, cpu-demo)")
        wiz.add_argument("--debug", action="store_true")
        args = wiz.parse_args(argv)
        if args.preset and args.preset not in ("1500", "3000", "this-machine", "cpu-demo"):
            print(f"rigtune: unknown preset '{args.preset}'; presets: 1500, 3000, this-machine, cpu-demo.", file=sys.stderr)
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
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
