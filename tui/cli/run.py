"""`rigtune init`, `check`, `demo` and `train`: write a run file, validate it and its dataset, and launch a
run (the dashboard or plain lines follow it, from .watch). Heavy libraries are imported inside the commands."""
from __future__ import annotations

import sys
from pathlib import Path

from engine.errors import BadInput
from engine.events import TRAIN_LOG
from engine.modelfiles import refuse_overwrite

from .common import use_tui
from .watch import dashboard, follow


# ---------------------------------------------------------------------------- check

def cmd_check(args) -> int:
    from engine import prefdata, runfile
    from engine.modelfiles import start_adapter
    from engine.modelref import check_base, is_local_model

    cfg = runfile.load(args.run_file)
    check_base(cfg)
    _check_architecture(cfg)
    start_adapter(cfg)  # [model] adapter: there, and trained with the same [lora] settings
    records, fmt, files = prefdata.load_for_method(cfg)  # pairs for dpo/orpo, prompts for grpo, examples for sft
    print(f"{args.run_file}: run file OK (run directory {runfile.run_dir(cfg)})")
    print(f"dataset: {cfg.data.path} ({len(files)} file{'s' if len(files) != 1 else ''})")
    print(f"format: {fmt}")
    tok = None
    if is_local_model(cfg.model.base):
        from engine.preview import LightTokenizer
        tok = LightTokenizer(cfg.model.base)
        train, evals, report = prefdata.prepare_for_method(cfg, tok, records, fmt)
        print(report.summary())
    else:
        train_part, eval_part = prefdata.split_for_method(cfg, records)
        unit = {prefdata.FORMAT: "pairs", "prompt": "prompts"}.get(fmt, "records")
        print(f"{len(records)} {unit} ({len(train_part)} train, {len(eval_part)} eval); token lengths need the "
              f"model's tokenizer, which is not local ({cfg.model.base})")
    if cfg.train.method == "grpo":  # every active reward on the first record: a broken function fails here
        from engine.rewards import check_lines
        count = (lambda text: len(tok(text, add_special_tokens=False)["input_ids"])) if tok else None
        print("\n".join(check_lines(cfg, records[0].record, records[0].source, count)))
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
    refuse_overwrite(out, args.force, "run")
    values, header = _preset_values(args.preset, args.model, args.dataset)
    if args.name:
        values["name"] = args.name
    cfg = runfile.validate(values, path=str(out))
    runfile.save(cfg, out, header=header)
    print(f"wrote {out}\nnext: rigtune check {out}   then   rigtune train {out}")
    return 0


def cmd_demo(args) -> int:
    from engine import runfile, runvalues
    from engine.launch import free_name
    tui = not getattr(args, "no_tui", False)
    if getattr(args, "method", "sft") == "dpo":
        values, _ = _preset_values("cpu-demo-dpo", None, None)
        if values["model"]["adapter"] == runvalues.DEMO_ADAPTER:  # no SFT demo here yet: it comes first
            print("The preference demo starts from the CPU demo's SFT adapter; training that first (about a minute).")
            sft = _demo_values()
            code = _train(runfile.validate(sft, path="preset cpu-demo"), resume=False, tui=False)
            if code != 0:
                return code
            values["model"]["adapter"] = str(runfile.run_dir(runfile.validate(sft)).absolute())
        free_name(values)
        cfg = runfile.validate(values, path="preset cpu-demo-dpo")
        print(f"CPU preference demo: DPO from the SFT demo's adapter ({cfg.model.adapter}), run directory "
              f"{runfile.run_dir(cfg)}")
        return _train(cfg, resume=False, tui=tui)
    if getattr(args, "method", "sft") == "grpo":
        values, _ = _preset_values("cpu-demo-grpo", None, None)
        cfg = runfile.validate(free_name(values), path="preset cpu-demo-grpo")
        print(f"CPU GRPO demo: rewards for the right sum, sampled answers from the tiny base model, run directory "
              f"{runfile.run_dir(cfg)}")
        return _train(cfg, resume=False, tui=tui)
    cfg = runfile.validate(_demo_values(), path="preset cpu-demo")
    print(f"CPU demo: QLoRA (NF4) on a tiny local model, run directory {runfile.run_dir(cfg)}")
    return _train(cfg, resume=False, tui=tui)


def _demo_values() -> dict:
    from engine.launch import free_name
    values, _ = _preset_values("cpu-demo", None, None)
    return free_name(values)


# ---------------------------------------------------------------------------- train

def cmd_train(args) -> int:
    from engine import runfile
    cfg = runfile.load(args.run_file)
    if args.allow_changes and not args.resume:
        raise BadInput("--allow-changes only goes with --resume.", key="--allow-changes")
    return _train(cfg, resume=args.resume, tui=not args.no_tui, allow_changes=args.allow_changes)


def _train(cfg, resume: bool, tui: bool = False, allow_changes: bool = False) -> int:
    from engine.launch import launch
    from engine.modelfiles import start_adapter
    from engine.prefdata import load_for_method
    files = load_for_method(cfg)[2]  # bad data, or data the method cannot train on, fails here before anything starts
    start_adapter(cfg)  # so does a starting adapter that is not there or does not match [lora]
    if cfg.model.trust_remote_code:
        print("warning: trust_remote_code = true runs Python code shipped with the model", file=sys.stderr)
    proc, run_dir = launch(cfg, resume=resume, allow_changes=allow_changes, data_files=files)
    if use_tui(tui):
        return dashboard(run_dir)
    print(f"training in {run_dir} (pid {proc.pid}); log: {run_dir / TRAIN_LOG}")
    print("Ctrl-C stops gracefully (checkpoint + adapter); closing the terminal leaves training running.")
    return follow(run_dir, proc)


# ---------------------------------------------------------------------------- the parsers

def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train the CPU demo")
    p.add_argument("--method", choices=["sft", "dpo", "grpo"], default="sft",
                   help="sft: teach the tiny model a persona; dpo: then teach it a preferred style (preference "
                        "tuning); grpo: reward it for right sums (reinforcement learning)")
    p.add_argument("--no-tui", action="store_true", help="plain progress lines")
    p.set_defaults(func=cmd_demo)


def _add_init(sub) -> None:
    p = sub.add_parser("init", help="write a run file from a preset")
    p.add_argument("--preset", required=True)
    p.add_argument("--model")
    p.add_argument("--dataset")
    p.add_argument("--name")
    p.add_argument("--out", default="run.toml")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_init)


def _add_check(sub) -> None:
    p = sub.add_parser("check", help="validate a run file and its dataset")
    p.add_argument("run_file")
    p.set_defaults(func=cmd_check)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="launch training")
    p.add_argument("run_file")
    p.add_argument("--resume", action="store_true", help="continue from the newest verified checkpoint")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: accept a changed dataset or training-shape keys")
    p.add_argument("--no-tui", action="store_true", help="plain progress lines (for scripts and CI)")
    p.set_defaults(func=cmd_train)


PARSERS = {"demo": _add_demo, "init": _add_init, "check": _add_check, "train": _add_train}
