"""What to buy: hold this machine (or a faked one) against a target - a tier from presets/tiers.toml, or what a
model needs at a sequence length with the planner's best strategy - and list the parts that get it there.

Each line of the bill names the part, why (the rule and the number that fails), a price range with its source
and date (presets/parts.toml; "not known" where no sourced price exists), and what it unlocks according to
the planner and the seed article's rules. The bill ends with the total and what the finished box fine-tunes.
Parts are added in order - cards, NVLink bridge, RAM, disk, PSU, CPU - each on top of the ones before it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import presets

from . import planner as P
from . import tiers as T
from .errors import BadInput


@dataclass
class Box:
    """A machine as the bill sees it, and as it becomes while parts are added."""
    gpu_name: str              # "RTX 3090" (listed in parts.toml or not), or "" for no card or cards that differ
    gpus: list                 # GiB per card
    ram_gib: float
    nvlink: bool
    link: str                  # nvlink | p2p | host
    nvme: bool
    disk_free_gib: float
    cpu_cores: int
    disk_kind: str = "unknown"

    def as_tier(self) -> T.Tier:
        return T.Tier(id="box", label="this box", summary="", gpus=list(self.gpus), ram_gib=self.ram_gib,
                      nvme=self.nvme, nvlink=self.nvlink, link=self.link, disk_free_gib=None)


@dataclass
class Item:
    part: str
    why: str
    usd_low: float | None
    usd_high: float | None
    unlocks: list = field(default_factory=list)
    source: str = ""
    date: str = ""
    kind: str = ""             # gpu | bridge | ram | disk | psu | cpu
    card: str = ""             # gpu items: the card (parts.toml's name) and how many the box has after this one
    cards: int = 0
    payback: dict | None = None  # gpu items: after how many runs they pay for themselves (engine.cost.add_payback)

    def to_json(self) -> dict:
        runs = [self.payback["runs_low"], self.payback["runs_high"]] if self.payback else None
        return {"kind": self.kind, "part": self.part, "why": self.why, "usd_low": self.usd_low, "usd_high": self.usd_high,
                "unlocks": self.unlocks, "price_source": self.source or None, "price_date": self.date or None,
                "payback_runs": runs if runs and runs[0] is not None else None, "payback": self.payback}


@dataclass
class Bill:
    target: str
    items: list
    fine_tunes: dict
    notes: list = field(default_factory=list)
    arch: object = None        # the target's model (a tier's or --model's), for the cards' payback

    @property
    def usd_low(self) -> float:
        return sum(i.usd_low for i in self.items if i.usd_low is not None)

    @property
    def usd_high(self) -> float:
        return sum(i.usd_high for i in self.items if i.usd_high is not None)

    @property
    def prices_unknown(self) -> list:
        return [i.part for i in self.items if i.usd_low is None]

    def to_json(self) -> dict:
        return {"target": self.target, "items": [i.to_json() for i in self.items], "usd_low": self.usd_low,
                "usd_high": self.usd_high, "prices_unknown": self.prices_unknown, "fine_tunes": self.fine_tunes,
                "notes": self.notes}


def parts() -> dict:
    return presets.load_parts()


def short_name(name: str) -> str:
    return name.replace("NVIDIA ", "").replace("GeForce ", "").strip()


def box_of(machine) -> Box:
    names = {short_name(g.name) for g in machine.gpus}
    name = names.pop() if len(names) == 1 else ""
    return Box(gpu_name=name, gpus=[g.memory_total_gib for g in machine.gpus],
               ram_gib=machine.ram_total_gib, nvlink=machine.nvlinked, link=machine.link, nvme=machine.disk_nvme,
               disk_free_gib=machine.disk_free_gib, cpu_cores=machine.cpu_cores_physical or machine.cpu_count,
               disk_kind=machine.disk_kind)


# ---------------------------------------------------------------------------- what a box fine-tunes

def fine_tunes(box: Box) -> dict:
    """{size: {"verdict": comfortable | fits | no, "how": strategy and memory, "warnings": [...]}} at seq 2048:
    "fits" when the planner fits it but a seed-article rule (VRAM, RAM) warns."""
    if not box.gpus:
        return {size: {"verdict": "no", "how": "no GPU", "warnings": []} for size in T.SIZES}
    tier = box.as_tier()
    out = {}
    for cap in T.capabilities(tier):
        how = (f"{cap.strategy}{' + CPU offload' if cap.cpu_offload else ''}, micro-batch {cap.micro_batch}, "
               f"{cap.per_gpu_gib:.1f} GiB per card")
        warn = [c.message for c in T.checks(tier, cap.size) if not c.ok and c.name in ("vram", "ram_2x_vram", "ram")]
        verdict = "no" if not cap.fits else ("fits" if warn else "comfortable")
        out[cap.size] = {"verdict": verdict, "how": how if cap.fits else cap.why, "warnings": warn if cap.fits else []}
    return out


def describe_fit(size: str, f: dict) -> str:
    if f["verdict"] == "comfortable":
        return f"{size} comfortably ({f['how']})"
    if f["verdict"] == "fits":
        return f"{size} ({f['how']}), but {f['warnings'][0]}"
    return f"{size}: no ({f['how']})"


def _gained(before: dict, after: dict) -> list:
    """What a part unlocks: sizes that became comfortable, or that now fit at all."""
    rank = {"no": 0, "fits": 1, "comfortable": 2}
    return [describe_fit(size, after[size]) for size in T.SIZES
            if rank[after[size]["verdict"]] > rank[before[size]["verdict"]]]


# ---------------------------------------------------------------------------- the parts

def card_facts(card: str, tier: T.Tier | None = None, box: Box | None = None) -> dict:
    """presets/parts.toml's facts for a card; for one it does not list (a tier someone added, or the card in
    this machine), what the tier or NVML says (VRAM, NVLink) and no price, no board power."""
    known = parts()["gpus"].get(card)
    if known:
        return known
    vram = min(tier.gpus) if tier else min(box.gpus) if box and box.gpus else 0
    return {"vram_gib": vram, "board_power_w": None, "nvlink": bool(tier and tier.nvlink),
            "condition": "price and power not in presets/parts.toml", "usd_low": None, "usd_high": None,
            "source": "", "date": ""}


def _card_item(box: Box, card: str, count: int, why: str, tier: T.Tier | None = None) -> tuple[Item, Box]:
    facts = card_facts(card, tier, box)
    replace_all = box.gpu_name != card or not box.gpus
    new = replace(box, gpu_name=card, gpus=[float(facts["vram_gib"])] * ((0 if replace_all else len(box.gpus)) + count),
                  nvlink=False, link="host")
    power = f", {facts['board_power_w']} W" if facts["board_power_w"] else ""
    item = Item(f"{count} x {card} ({facts['vram_gib']:.0f} GB{power}{', NVLink' if facts['nvlink'] else ''}), "
                f"{facts['condition']}" + (" (replacing the cards here)" if replace_all and box.gpus else ""), why,
                facts["usd_low"] * count if facts["usd_low"] is not None else None,
                facts["usd_high"] * count if facts["usd_high"] is not None else None,
                source=facts["source"], date=facts["date"], kind="gpu", card=card, cards=len(new.gpus))
    return item, new


def _bridge(box: Box, notes: list, run_arch=None) -> tuple[Item | None, Box]:
    """The NVLink bridge for a pair of cards that have the connector; for cards without it, a note why not."""
    if len(box.gpus) < 2 or box.nvlink:
        return None, box
    facts = parts()["gpus"].get(box.gpu_name)
    if not facts or not facts["nvlink"]:
        name = f"the {box.gpu_name}" if box.gpu_name else "these cards"
        has_none = (f"{name} has no NVLink connector" if facts else  # a card parts.toml lists without one
                    f"presets/parts.toml does not say whether {name} {'has' if box.gpu_name else 'have'} an NVLink "
                    "connector")
        notes.append(f"no NVLink bridge: {has_none}, so the cards sync over PCIe"
                     + (f" ({_link_slowdown(box, run_arch)})" if run_arch else "") + ".")
        return None, box
    b = parts()["nvlink_bridge"]
    spacing = " or ".join(f"{s}-slot" for s in b["slot_spacings"])
    new = replace(box, nvlink=True, link="nvlink")
    unlocks = [f"gradient sync over NVLink instead of PCIe ({_link_slowdown(box, run_arch)})"] if run_arch else []
    return Item(f"NVLink bridge for {box.gpu_name} ({spacing}; match the spacing of the motherboard's x16 slots)",
                f"no NVLink between the {len(box.gpus)} cards: gradient sync goes over PCIe",
                b["usd_low"], b["usd_high"], unlocks, b["source"], b["date"], "bridge"), new


def _link_slowdown(box: Box, arch) -> str:
    inp, _ = T.plan_for(box.as_tier(), arch)
    slow, _ = P.link_cost(replace(inp, link="host"), "host")
    return f"PCIe through RAM estimated at {slow:.2f}x the step time of NVLink for {arch.name}"


def ram_kits(add_gib: float) -> tuple[list, float, float, str, str]:
    """The fewest kits (largest first) that add at least add_gib: (kit sizes, usd low, usd high, source, date)."""
    kits = sorted(parts()["ram_kits"], key=lambda k: -k["gib"])
    chosen, left = [], add_gib
    while left > 0.5:  # the largest kit that does not overshoot, else the smallest (to round up)
        kit = next((k for k in kits if k["gib"] <= left + 0.5), kits[-1])
        chosen.append(kit)
        left -= kit["gib"]
    sources = "; ".join(dict.fromkeys(k["source"] for k in chosen))
    return ([k["gib"] for k in chosen], sum(k["usd_low"] for k in chosen), sum(k["usd_high"] for k in chosen),
            sources, chosen[0]["date"] if chosen else "")


def _ram(box: Box, target_gib: float, why: str) -> tuple[Item | None, Box]:
    """Kits that add the missing RAM; when what is here is under half the target, kits for the whole target
    instead (replacing the small modules beats filling every slot)."""
    if box.ram_gib >= target_gib * 0.95:
        return None, box
    swap = box.ram_gib < target_gib / 2
    kits, low, high, source, date = ram_kits(target_gib if swap else target_gib - box.ram_gib)
    total = sum(kits) if swap else box.ram_gib + sum(kits)
    desc = " + ".join(f"{n} GB" for n in kits)
    kit_word = "DDR5 kits" if len(kits) > 1 else "DDR5 kit"
    part = (f"RAM: {total:.0f} GB ({desc} {kit_word}), replacing the {box.ram_gib:.0f} GB here" if swap else
            f"RAM: add {sum(kits)} GB ({desc} {kit_word}) to reach {total:.0f} GB; check for free DIMM slots")
    return Item(part, why, low, high, source=source, date=date, kind="ram"), replace(box, ram_gib=total)


def _disk(box: Box, need_gib: float, what: str) -> tuple[Item | None, Box]:
    r = parts()["rules"]
    reasons = []
    if not box.nvme:
        reasons.append(f"runs and the model cache are on a {box.disk_kind} disk, not NVMe (slow loading and saving)")
    if box.disk_free_gib < need_gib:
        reasons.append(f"{box.disk_free_gib:.0f} GB free < {need_gib:.0f} GB for {what}")
    if not reasons:
        return None, box
    n = parts()["nvme"]
    new = replace(box, nvme=True, disk_free_gib=max(box.disk_free_gib, n["tb"] * 1000 * 0.93), disk_kind="nvme")
    return Item(f"{n['tb']} TB NVMe SSD", "; ".join(reasons), n["usd_low"], n["usd_high"],
                [f"{what} on fast storage (≥ {r['disk_free_gib']} GB free is comfortable)"], n["source"], n["date"],
                "disk"), new


def _psu(box: Box) -> Item:
    r = parts()["rules"]
    card_w = (parts()["gpus"].get(box.gpu_name) or {}).get("board_power_w")
    if not card_w:
        return Item("PSU sized for the cards", f"the {box.gpu_name}'s board power is not in presets/parts.toml: add "
                    f"it, + {r['cpu_watts']} W CPU + {r['rest_watts']} W rest, x{r['psu_headroom']:g} headroom",
                    None, None, [], kind="psu")
    total = len(box.gpus) * card_w + r["cpu_watts"] + r["rest_watts"]
    need = total * r["psu_headroom"]
    size = next((s for s in r["psu_sizes_w"] if s >= need), r["psu_sizes_w"][-1])
    return Item(f"PSU of at least {size} W", f"{len(box.gpus)} x {card_w} W ({box.gpu_name}) + {r['cpu_watts']} W CPU + "
                f"{r['rest_watts']} W rest = {total} W, x{r['psu_headroom']:g} headroom = {need:.0f} W "
                f"({r['headroom_source']})", None, None, [f"the {len(box.gpus)} card(s) at full load"], kind="psu")


def _cpu(box: Box) -> Item | None:
    need = parts()["rules"]["min_cpu_cores"]
    if box.cpu_cores >= need:
        return None
    return Item(f"CPU with at least {need} cores", f"{box.cpu_cores} cores < {need}: data loading (tokenizing, "
                "packing) is CPU-bound and would stall the GPUs", None, None, ["data loading that keeps up"], kind="cpu")


# ---------------------------------------------------------------------------- bills

def for_tier(machine, tier: T.Tier) -> Bill:
    """The parts that take this machine to `tier`."""
    box, items, notes = box_of(machine), [], []
    arch = P.resolve_model(tier.run["model"]) if tier.run.get("model") else None
    card, want_n, want_vram = tier.gpu_name, len(tier.gpus), min(tier.gpus)
    have = f"{len(box.gpus)} x {min(box.gpus):.0f} GB" if box.gpus else "none here"
    if len(box.gpus) < want_n or (box.gpus and min(box.gpus) < want_vram - 0.5):
        same = box.gpu_name == card and box.gpus and min(box.gpus) >= want_vram - 0.5
        item, new = _card_item(box, card, want_n - len(box.gpus) if same else want_n,
                               f"GPUs: {have}; the {tier.label} tier has {want_n} x {want_vram:.0f} GB", tier)
        items.append(_unlocking(item, box, new))
        box = new
    if tier.nvlink:
        item, new = _bridge(box, notes, arch)
        if item:
            items.append(item)
            box = new
    ram_target = max(tier.ram_gib, 2 * sum(box.gpus))
    item, new = _ram(box, ram_target, f"RAM {box.ram_gib:.0f} GB < " + (
        f"the tier's {tier.ram_gib:.0f} GB" if tier.ram_gib >= 2 * sum(box.gpus) else f"2x VRAM = {2 * sum(box.gpus):.0f} GB"))
    if item:
        items.append(_unlocking(item, box, new))
        box = new
    return _finish(f"the {tier.label} tier ({tier.summary})", box, items, notes, arch)


def for_model(machine, arch: P.Arch, seq_len: int = 2048) -> Bill:
    """The cheapest set of cards (the ones here, more of them, or a known card for a machine without one) on which
    the planner's best strategy fits `arch` at `seq_len`, then the RAM it needs, disk and power."""
    box, items, notes = box_of(machine), [], []
    best = _cheapest_cards(box, arch, seq_len)
    if best is None:
        cards = f"{box.gpu_name}s" if _more_of_these(box) else "cards of one kind presets/parts.toml lists"
        raise BadInput(f"no box of up to 4 {cards} fits {arch.name} at seq {seq_len}; try a shorter --seq-len.",
                       key="--model")
    card, count, inp, why = best
    if count:
        have = f"{len(box.gpus)} x {min(box.gpus):.0f} GB" if box.gpus else "no GPU here"
        item, new = _card_item(box, card, count, f"{arch.name} at seq {seq_len} needs more than {have}: with the "
                               f"cards added, {why}")
        items.append(_unlocking(item, box, new))
        box = new
    notes.append(f"the planner's pick (LoRA r{inp.lora_r}, {MODEL_OPTIMIZER}, micro-batch {inp.micro_batch}): {why}")
    size = size_of(arch)
    needs = {f"what {arch.name} needs with {inp.strategy}{' + CPU offload' if inp.cpu_offload else ''}":
             P.ram_needed(inp), "2x VRAM": 2 * sum(box.gpus),
             f"the {T.rules()['ram_recommended_gib'][size]} GB the seed article recommends at {size}":
             T.rules()["ram_recommended_gib"][size]}
    rule, ram_target = max(needs.items(), key=lambda kv: kv[1])
    item, new = _ram(box, ram_target, f"RAM {box.ram_gib:.0f} GB < {ram_target:.0f} GB ({rule})")
    if item:
        items.append(_unlocking(item, box, new))
        box = new
    if len(box.gpus) > 1:
        item, new = _bridge(box, notes, arch)
        if item:
            items.append(item)
            box = new
    return _finish(f"{arch.name} at seq {seq_len}", box, items, notes, arch)


def size_of(arch) -> str:
    """The seed article's size class (7B, 13B, 34B, 70B) of a model, by its parameter count."""
    b = arch.total_params / 1e9
    return "7B" if b < 10 else "13B" if b < 20 else "34B" if b < 45 else "70B"


MODEL_OPTIMIZER = "adamw_8bit"  # what the tiers' default runs use (presets/tiers.toml): 2 B of state per parameter


def _more_of_these(box: Box) -> bool:
    """Whether the bill adds cards to the ones here: not to a laptop's, nor to cards that differ."""
    return bool(box.gpus and box.gpu_name and "laptop" not in box.gpu_name.lower())


def _cheapest_cards(box: Box, arch, seq_len: int):
    """(card, cards to buy, PlanInput, why) that fits for the least money, or None. The cards here, as NVML
    reports them, come first (nothing to buy when they fit, listed in parts.toml or not); then more of the same
    card (an unlisted one at its NVML VRAM, price not known); for a machine without a card, a laptop's or cards
    that differ, a set of a card parts.toml lists, replacing them."""
    if box.gpus:
        inp, why = T.plan_for(replace(box, ram_gib=1e6).as_tier(), arch, seq_len=seq_len, optimizer=MODEL_OPTIMIZER)
        if P.fits(inp):
            return box.gpu_name, 0, inp, why
    known = parts()["gpus"]
    options = [box.gpu_name] if _more_of_these(box) else list(known)
    best = None
    for card in options:
        facts = card_facts(card, box=box)
        start = len(box.gpus) if card == box.gpu_name else 0
        for n in range(max(1, start), 5):
            tier = replace(box, gpus=[float(facts["vram_gib"])] * n, ram_gib=1e6,
                           link="nvlink" if facts["nvlink"] else "host").as_tier()
            inp, why = T.plan_for(tier, arch, seq_len=seq_len, optimizer=MODEL_OPTIMIZER)
            if not P.fits(inp):
                continue
            cost = (facts["usd_low"] or 0) * (n - start)  # no price (a card parts.toml lacks): the only option
            if best is None or cost < best[0]:
                best = (cost, (card, n - start, inp, why))
            break
    return best[1] if best else None


def _unlocking(item: Item, before: Box, after: Box) -> Item:
    item.unlocks = _gained(fine_tunes(before), fine_tunes(after)) or item.unlocks
    return item


def _finish(target: str, box: Box, items: list, notes: list, arch) -> Bill:
    """Disk, power and CPU (which do not change what fits), and what the finished box fine-tunes."""
    need = (arch.total_params * 2 / P.GIB + 40) if arch else parts()["rules"]["disk_free_gib"]
    item, box = _disk(box, need, f"the {arch.name} download ({arch.total_params * 2 / 1e9:.0f} GB) and its "
                      "checkpoints" if arch else "models and checkpoints")
    if item:
        items.append(item)
    if any(i.kind == "gpu" for i in items):
        items.append(_psu(box))  # cards were bought: they need the power
    cpu = _cpu(box)
    if cpu:
        items.append(cpu)
    if not items:
        notes.insert(0, "nothing to buy: this machine already meets the target.")
    return Bill(target=target, items=items, fine_tunes=fine_tunes(box), notes=notes, arch=arch)


def describe(bill: Bill) -> str:
    """The bill as text for the terminal."""
    lines = [f"What to buy: this machine -> {bill.target}"]
    for n, item in enumerate(bill.items, 1):
        price = (f"${item.usd_low:,.0f}-{item.usd_high:,.0f}" if item.usd_low is not None else "price: not known")
        lines.append(f"{n}. {item.part}   {price}")
        lines.append(f"   why: {item.why}")
        if item.unlocks:
            lines.append(f"   unlocks: {'; '.join(item.unlocks)}")
        if item.source:
            lines.append(f"   price from {item.source}, taken {item.date}")
        if item.payback:
            lines.append(f"   {payback_words(item.payback)}")
    if bill.items:
        unknown = bill.prices_unknown
        lines.append(f"total: ${bill.usd_low:,.0f}-{bill.usd_high:,.0f}"
                     + (f" (plus {', '.join(unknown)}: price not known)" if unknown else ""))
    lines += [f"- {n}" for n in bill.notes]
    lines.append("the finished box fine-tunes (seq 2048):")
    lines += [f"  {describe_fit(size, f)}" for size, f in bill.fine_tunes.items()]
    return "\n".join(lines)


def payback_words(p: dict) -> str:
    """'pays for itself after 18-24 runs like ...: renting ... costs $x a run, electricity here about $y'."""
    if p["runs_low"] is None and not p["rented"]:
        return f"payback: not known ({p['note']})"
    cost = (f"renting {p['rented']} costs ${p['cloud_usd_per_run']:,.2f} a run of {p['hours_per_run']:g} h, "
            f"electricity here about ${p['electricity_usd_per_run']:,.2f} (at full board power)")
    if p["runs_low"] is None:
        return f"payback: {p['note']}; {cost}"
    runs = f"{p['runs_low']:,}" + (f"-{p['runs_high']:,}" if p["runs_high"] != p["runs_low"] else "")
    return f"pays for itself after {runs} runs like {p['run']}: {cost}"


def default_tier(machine) -> T.Tier:
    """The first tier (in tiers.toml's order) this machine does not meet, else the last one."""
    this = T.this_machine(machine)
    all_tiers = list(T.tiers().values())
    for tier in all_tiers:
        ok, short = T.compare(this, tier)
        if not ok or short:
            return tier
    return all_tiers[-1]

