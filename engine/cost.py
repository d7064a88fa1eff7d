"""What a run costs in money: at home (its measured energy, engine.energy, at [run] electricity_usd_per_kwh), on a
rented card (the same tokens at the planner's tokens/s on a comparable card, at the hourly price in
presets/cards.toml), and after how many such runs a card `rigtune build` lists pays for itself against renting.

The rented card is the run's own GPU when cards.toml has a rental price for it, else CLOUD_DEFAULT_CARD (a rented
RTX 4090: the card of the $1,500 tier, and the cheapest 24 GB card with a published price). Both are estimates
and say so; only the energy is a measurement.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from . import planner as P
from .errors import BadInput

CLOUD_DEFAULT_CARD = "RTX 4090"
# A typical run, for `rigtune build` when this machine has no GPU run of its own yet: about one epoch of an
# Alpaca-sized instruction set (52k examples of ~200 tokens), at the target model's planned settings
TYPICAL_TOKENS = 10_000_000


def sig(x: float | None, digits: int = 6) -> float | None:
    """x to `digits` significant digits: a tiny run's energy and cost are small, not zero."""
    return None if x is None else float(f"{x:.{digits}g}")


def rented_card(gpu_name: str | None = None) -> P.Card:
    """The card a run is priced on in the cloud: its own (an NVML name is fine) when it has a rental price."""
    own = P.card_named(gpu_name) if gpu_name else None
    if own is not None and own.rent_usd_per_hour:
        return own
    return P.load_cards()[CLOUD_DEFAULT_CARD]


def rented_input(cfg, arch, card: P.Card, cards: int):
    """The run's settings (a run file's values) on `cards` rented cards: one card trains alone, several the way
    the planner would spread it."""
    inp = P.input_from_run(cfg, arch, [card.vram_gib] * cards, None, card=card.name)
    if cards == 1:
        return P.replace(inp, strategy="single", cpu_offload=False)
    return P.choose_strategy(P.replace(inp, strategy="ddp"))[0]


def cloud_estimate(cfg, arch, tokens: int | None, gpu_name: str | None = None) -> dict:
    """The final event's cloud figures: `tokens` (every token the run's steps processed) at the planner's
    tokens/s for the run's model and settings on as many rented cards as the run has GPUs (one for a CPU run),
    times their hourly price. cloud_usd_estimate is None, and cloud_note says why, where it cannot be known."""
    card = rented_card(gpu_name)
    cards = max(1, len(cfg.hardware.gpus)) * cfg.hardware.num_machines
    out = {"cloud_usd_estimate": None, "cloud_card": card.name, "cloud_cards": cards,
           "cloud_usd_per_hour": card.rent_usd_per_hour, "cloud_offer": card.rent_offer,
           "cloud_price_source": card.rent_source, "cloud_price_date": card.rent_date,
           "cloud_tokens_per_s": None, "cloud_hours": None, "cloud_note": None}
    if arch is None:
        out["cloud_note"] = "no cloud estimate: the planner cannot read this model's shape"
        return out
    if tokens is None:
        out["cloud_note"] = "no cloud estimate: the tokens of the runs before the resume were not recorded"
        return out
    inp = rented_input(cfg, arch, card, cards)
    speed = P.tokens_per_s(inp, card)
    hours = tokens / speed / 3600
    out.update(cloud_usd_estimate=sig(hours * cards * card.rent_usd_per_hour), cloud_tokens_per_s=round(speed),
               cloud_hours=sig(hours))
    if not P.fits(inp):
        out["cloud_note"] = (f"at this run's settings a {card.name} would need {P.peak(inp):.1f} GiB of its "
                             f"{card.vram_gib:g}; the estimate keeps the settings")
    return out


# ---------------------------------------------------------------------------- what a card saves

def _final_event(run_dir: Path) -> dict | None:
    """The last `final` event of a run directory, read from the end of its event stream."""
    from .events import METRICS
    path = run_dir / METRICS
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 65536))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if b'"final"' in line:
            try:
                ev = json.loads(line)
            except ValueError:  # the torn tail of a killed writer, or a line cut by the seek
                continue
            if ev.get("event") == "final":
                return ev
    return None


def last_gpu_run(runs_root: Path) -> dict | None:
    """The newest finished GPU run under `runs_root` whose final event counted its tokens and whose model the
    planner can read offline: {"name", "cfg", "arch", "tokens", "price"}."""
    from . import runfile
    from .events import METRICS, RUN_FILE
    dirs = [p for p in runs_root.iterdir() if (p / METRICS).is_file()] if runs_root.is_dir() else []
    for run_dir in sorted(dirs, key=lambda p: (p / METRICS).stat().st_mtime, reverse=True):
        final = _final_event(run_dir)
        if not final or not final.get("gpus") or not final.get("tokens"):
            continue
        try:
            cfg = runfile.load(run_dir / RUN_FILE)
            arch = P.resolve_model(cfg.model.base)
        except BadInput:  # its run file or model is gone from this machine: the next one
            continue
        return {"name": run_dir.name, "cfg": cfg, "arch": arch, "tokens": int(final["tokens"]),
                "price": final.get("electricity_usd_per_kwh")}
    return None


def payback(item, arch, run: dict | None) -> dict:
    """After how many runs (like `run`, the last GPU run here, else a typical run of `arch`) a card item of a
    bill pays for itself: its price / (renting its cards for a run - their electricity for a run at home).
    {"runs_low", "runs_high"} are None, and "note" says why, where that cannot be said."""
    import presets

    from . import runfile
    from . import tiers as T
    from .build import MODEL_OPTIMIZER
    out = {"runs_low": None, "runs_high": None, "run": "", "rented": "", "cloud_usd_per_run": None,
           "electricity_usd_per_run": None, "hours_per_run": None, "note": None}
    card = P.card_named(item.card)
    facts = presets.load_parts()["gpus"].get(item.card, {})
    if card is None or not card.rent_usd_per_hour:
        out["note"] = f"no rental price for the {item.card} in presets/cards.toml"
        return out
    if item.usd_low is None or not facts.get("board_power_w"):
        out["note"] = f"no purchase price or board power for the {item.card} in presets/parts.toml"
        return out
    n = item.cards
    if run is not None:
        inp, tokens, price = rented_input(run["cfg"], run["arch"], card, n), run["tokens"], run["price"]
        out["run"] = f"the last GPU run here ({run['name']}: {tokens / 1e6:.3g}M tokens of {run['arch'].name})"
    elif arch is not None:
        tier = T.Tier(id="rented", label="", summary="", gpus=[card.vram_gib] * n, ram_gib=1e6, nvme=True,
                      nvlink=bool(facts.get("nvlink")), gpu_name=card.name)
        inp, tokens, price = T.plan_for(tier, arch, optimizer=MODEL_OPTIMIZER)[0], TYPICAL_TOKENS, None
        out["run"] = f"a typical run ({tokens / 1e6:.0f}M tokens of {arch.name} at seq {inp.seq_len})"
    else:
        out["note"] = "no model to plan a run with: give --model"
        return out
    price = price if price is not None else runfile.SECTION_KEYS["run"]["electricity_usd_per_kwh"].default
    hours = tokens / P.tokens_per_s(inp, card) / 3600
    rules = presets.load_parts()["rules"]
    watts = n * facts["board_power_w"] + rules["cpu_watts"] + rules["rest_watts"]
    cloud, home = hours * n * card.rent_usd_per_hour, watts / 1000 * hours * price
    out.update(rented=f"{n} x {card.name} at ${card.rent_usd_per_hour:g}/h ({card.rent_offer}, {card.rent_date})",
               cloud_usd_per_run=round(cloud, 4), electricity_usd_per_run=round(home, 4), hours_per_run=round(hours, 3))
    if cloud <= home:
        out["note"] = "never: renting costs no more than the electricity at home"
        return out
    out.update(runs_low=math.ceil(item.usd_low / (cloud - home)), runs_high=math.ceil(item.usd_high / (cloud - home)))
    return out


def add_payback(bill, runs_root: Path) -> None:
    """Each card item of a bill with its payback (item.payback), against the last GPU run under `runs_root`
    or, without one, a typical run of the bill's model."""
    run = None
    for item in bill.items:
        if item.kind == "gpu" and item.card:
            run = run or last_gpu_run(Path(runs_root))
            item.payback = payback(item, bill.arch, run)
