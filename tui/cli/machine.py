"""`rigtune scan`, `plan` and `build`: this machine, whether a run fits a machine, and what machine to buy.
Heavy libraries are imported inside the commands, so `rigtune --help` stays instant."""
from __future__ import annotations

import argparse
from pathlib import Path

from engine import calibration
from engine.errors import BadInput
from engine.modelref import DEMO_MODEL


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
    arch = _arch_online(_built(model), cfg.model.revision if cfg else None)
    if model == DEMO_MODEL:  # named as the run file names it, not by its cache folder
        arch = P.replace(arch, name=model)
    ram, link = None, "nvlink"
    if args.gpus:
        gpus, card = P.parse_gpus(args.gpus)
        note = f"planning for --gpus {args.gpus}"
    elif cfg and not cfg.hardware.gpus:  # a CPU run (the demo): its memory is this machine's RAM
        import psutil
        ram = round(psutil.virtual_memory().total / 2**30, 2)
        gpus, card, note = [ram], "", "planning for this machine's CPU (the run file lists no GPU): memory is RAM"
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


def _built(model: str) -> str:
    """The demo model's folder for its placeholder (built once, about 20 s), any other model as named."""
    if model != DEMO_MODEL:
        return model
    import sys

    from engine.demo import demo_model
    return str(demo_model(lambda line: print(line, file=sys.stderr)))


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
    m, failed = _measured(args, cfg, inp)
    tokens, why_not = args.tokens, ""
    if tokens is None and cfg is not None and (inp.card or (m and m.get("tokens_per_s"))):
        tokens, why_not = _run_tokens(cfg, inp)
    p = P.plan(inp, pick_strategy=pick, total_tokens=tokens)
    if why_not:
        p.notes.append(why_not)
    elif not inp.card and not (m and m.get("tokens_per_s")):
        p.notes.append("no time estimate: name the card (--gpus 2x4090, 1xA100-80), or measure this box with "
                       f"`rigtune probe RUN_FILE`; cards rigtune knows: {', '.join(P.load_cards())}.")
    elif tokens is None:
        p.notes.append(f"~{p.tokens_per_s_estimate:,} tokens/s on {p.card}; give --tokens N (or a run file) for "
                       "the duration.")
    calibration.apply(p, m, failed, tokens, on_cpu=bool(cfg and not cfg.hardware.gpus and not args.gpus))
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
    said = {"fits": "FITS", "tight": "TIGHT (may run out of memory)"}.get(p.verdict, "DOES NOT FIT")
    where = "in RAM" if cfg is not None and not cfg.hardware.gpus and not args.gpus else "per GPU"
    print(f"  {where:<{width}} {p.per_gpu_peak_gib:7.2f} GiB of {p.gpu_gib:g}  ->  {said}")
    if p.max_seq_len or p.max_micro_batch:
        print(f"longest sequence at this micro-batch: {p.max_seq_len}; largest micro-batch at this length: "
              f"{p.max_micro_batch}")
    else:
        print("no sequence length fits at this micro-batch, and no micro-batch at this length")
    if p.measured and p.measured.get("max_seq_len"):
        print(f"measured on this box: longest sequence at this micro-batch {p.measured['max_seq_len']}; largest "
              f"micro-batch at this length {p.measured['max_micro_batch']}")
    if p.suggestion:
        print(f"to fit{' with the margin' if p.verdict == 'tight' else ''}, set all of:")
        for key, value in p.suggestion.items():
            print(f"  {key} = {json.dumps(value)}")
    for n in p.notes:
        print(f"- {n}")
    return 0


def _measured(args, cfg, inp):
    """(measured, ran out) on this machine for the run file at the plan's settings (flags included); nothing
    for a what-if plan of other cards (--gpus) or without a run file."""
    if cfg is None or args.gpus:
        return None, None
    settings = calibration.settings_of(cfg)
    settings.update({k: v for k, v in {"lora_r": args.lora_r, "optimizer": args.optimizer, "attn": args.attn,
                                        "gradient_checkpointing": args.gradient_checkpointing,
                                        "quantization": args.quantization, "strategy": args.strategy}.items()
                     if v is not None})
    if args.lora_targets:
        settings["lora_targets"] = inp.lora_targets if isinstance(inp.lora_targets, str) else sorted(inp.lora_targets)
    if args.cpu_offload:
        settings["cpu_offload"] = True
    return calibration.for_run(cfg, inp.arch, inp.seq_len, inp.micro_batch, settings)


# ---------------------------------------------------------------------------- probe

def cmd_probe(args) -> int:
    import json
    import sys

    from engine import probe as PR
    cfg = PR.load_run_file(args.run_file)
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else \
        (lambda line: print(line, flush=True))
    if not args.json:
        say(f"measuring {'this machine' if cfg.hardware.gpus else 'this CPU'} at {cfg.path or 'the run file'}'s "
            "settings: random weights of the model's real shape (they weigh and run like the real ones), so "
            "nothing is downloaded but its config.json; each trial is its own process")
    try:
        r = PR.probe(cfg, time_limit_s=args.time_limit, progress=say)
    except PR.ProbeFailed as e:
        print(f"rigtune probe: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(r.to_json(), indent=1))
        return 0
    what = "peak RSS" if r.device == "cpu" else "peak GPU memory"
    speed = f", {r.tokens_per_s:,.0f} tokens/s" if r.tokens_per_s else ""
    print(f"{r.model} at max_seq_len {r.seq_len}, micro-batch {r.micro_batch}: {what} {r.peak_gib:.2f} GiB{speed}")
    print(f"longest sequence at micro-batch {r.micro_batch}: {r.max_seq_len} (bounded by {r.limits['max_seq_len']})")
    print(f"largest micro-batch at max_seq_len {r.seq_len}: {r.max_micro_batch} (bounded by "
          f"{r.limits['max_micro_batch']})")
    print(f"{len(r.trials)} trials in {r.seconds:.0f} s; kept for `rigtune plan`, the wizard and the time estimate "
          f"on this machine ({r.machine['gpu']}, torch {r.machine['torch']})")
    return 0


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
    from engine.cost import add_payback
    add_payback(bill, Path(args.runs))  # each card against renting it, for runs like the last GPU run in --runs
    print(json.dumps(bill.to_json(), indent=1) if args.json else B.describe(bill))
    return 0


# ---------------------------------------------------------------------------- the parsers

def _add_scan(sub) -> None:
    p = sub.add_parser("scan", help="scan this machine's hardware")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_scan)


def _add_plan(sub) -> None:
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
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)


def _add_build(sub) -> None:
    p = sub.add_parser("build", help="what to buy to reach a tier, or to fit a model")
    p.add_argument("--tier", help="a tier id from presets/tiers.toml (default: the first one this machine misses)")
    p.add_argument("--model", help="plan the box for this model instead (a catalog name, folder or config.json)")
    p.add_argument("--seq-len", type=int, help="with --model: the sequence length (default 2048)")
    p.add_argument("--runs", default="runs", help="where past runs are: a card's payback is for runs like the last "
                                                  "GPU run there (else a typical run)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_build)


def _add_probe(sub) -> None:
    p = sub.add_parser("probe", help="measure this machine at a run file's settings (peak memory, tokens/s, the "
                                     "longest sequence and largest micro-batch that fit)")
    p.add_argument("run_file", nargs="?", help="the run to measure (default on a machine without a GPU: the CPU demo)")
    p.add_argument("--time-limit", type=float, default=600, metavar="SECONDS",
                   help="stop searching after this long and keep what was measured (default 600)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_probe)


PARSERS = {"scan": _add_scan, "plan": _add_plan, "probe": _add_probe, "build": _add_build}
