"""Strategies and fit: which of single, DDP, FSDP and FSDP with CPU offload fits the cards, the fastest of
them with one line that says why, and the table of all of them that the wizard's fit meter shows."""
from __future__ import annotations

from dataclasses import dataclass, replace

from .memory import FIT_MARGIN, PlanInput, fits, peak, ram_needed


def _strategy_candidates(inp: PlanInput) -> list:
    if len(inp.gpus) <= 1:
        return [replace(inp, strategy="single", cpu_offload=False)]
    return [replace(inp, strategy="ddp", cpu_offload=False), replace(inp, strategy="fsdp", cpu_offload=False),
            replace(inp, strategy="fsdp", cpu_offload=True)]


def choose_strategy(inp: PlanInput) -> tuple[PlanInput, str]:
    """The fastest strategy that fits, and one line that says why (per card versus in total)."""
    cards = len(inp.gpus)
    card = min(inp.gpus)
    whole = peak(replace(inp, strategy="single" if cards == 1 else "ddp", cpu_offload=False))
    for cand in _strategy_candidates(inp):
        if not fits(cand):
            continue
        if cand.strategy == "single":
            return cand, f"single: the run needs {whole:.1f} GiB and the card has {card:.1f} GiB."
        if cand.strategy == "ddp":
            return cand, (f"ddp: each card holds the whole model, {whole:.1f} GiB per card of {card:.1f} GiB; "
                          f"{cards} cards train {cards}x the batch in parallel.")
        need = peak(cand)
        if not cand.cpu_offload:
            return cand, (f"fsdp: one card would need {whole:.1f} GiB but has {card:.1f} GiB; sharded over {cards} "
                          f"cards ({cards * card:.0f} GiB in total) each needs {need:.1f} GiB.")
        return cand, (f"fsdp + CPU offload: one card would need {whole:.1f} GiB, sharded "
                      f"{peak(replace(cand, cpu_offload=False)):.1f} GiB per card, more than its {card:.1f} GiB; "
                      f"with weights in CPU RAM ({ram_needed(cand):.0f} GiB) each card needs {need:.1f} GiB.")
    short_of_ram = inp.ram_gib is not None and ram_needed(inp) > inp.ram_gib
    if cards == 1 and short_of_ram:
        return inp, (f"does not fit: the run needs {ram_needed(inp):.0f} GiB of system RAM and this machine has "
                     f"{inp.ram_gib:.0f} GiB.")
    if cards == 1 and whole <= card:
        return inp, (f"tight: the run needs {whole:.1f} GiB of the card's {card:.1f} GiB, less to spare than the "
                     f"planner's error margin ({FIT_MARGIN:.0%}).")
    if cards == 1:
        return inp, f"does not fit: the run needs {whole:.1f} GiB and the card has {card:.1f} GiB."
    # nothing fits as set: the closest strategy the RAM allows, so that the suggestion starts from there
    usable = [c for c in _strategy_candidates(inp) if c.ram_gib is None or ram_needed(c) <= c.ram_gib]
    if not usable:
        return inp, (f"no strategy fits: one card would need {whole:.1f} GiB, and {cards} cards of {card:.1f} GiB "
                     "are not enough even sharded; CPU offload would need more RAM than this machine has.")
    best = min(usable, key=peak)
    name = "fsdp + CPU offload" if best.cpu_offload else best.strategy
    return best, (f"no strategy fits as set: one card would need {whole:.1f} GiB; the closest is {name} at "
                  f"{peak(best):.1f} GiB per card of {card:.1f} GiB (see the suggestion).")


@dataclass(frozen=True)
class StrategyRow:
    label: str          # single | ddp | fsdp | fsdp+offload
    strategy: str
    cpu_offload: bool
    peak_gib: float     # per card
    fits: bool
    chosen: bool        # the planner's pick (choose_strategy), when it fits
    tight: bool = False  # under the card, but within the planner's error margin of it (fits is False)


def strategy_table(inp: PlanInput) -> tuple[list, str]:
    """Every strategy the cards allow, each planned at the run's other settings, the pick marked; and the
    one-line reason for the pick."""
    best, why = choose_strategy(inp)
    best_fits = fits(best)
    rows = []
    for label, strategy, off in (("single", "single", False), ("ddp", "ddp", False), ("fsdp", "fsdp", False),
                                 ("fsdp+offload", "fsdp", True)):
        if strategy != "single" and len(inp.gpus) < 2:
            continue
        cand = replace(inp, strategy=strategy, cpu_offload=off)
        ok = fits(cand)
        rows.append(StrategyRow(label, strategy, off, peak(cand), ok,
                                best_fits and (best.strategy, best.cpu_offload) == (strategy, off),
                                tight=not ok and fits(cand, margin=0.0)))
    return rows, why
