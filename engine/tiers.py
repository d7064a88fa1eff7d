"""Budget tiers (presets/tiers.toml), "this machine" as a tier, the seed article's checks, and what each
tier fine-tunes according to the planner."""
from __future__ import annotations

from dataclasses import dataclass, field

import presets

from . import planner as P

SIZES = {"7B": "Llama-2-7B", "13B": "Llama-2-13B", "34B": "CodeLlama-34B", "70B": "Llama-2-70B"}
# the mixtures of experts people fine-tune on one card (row label -> catalog name): every expert is resident, in
# 4 bits (engine.torchside.experts), so the total, not the active count, decides the fit
MOE = {"Qwen3-30B-A3B": "Qwen3-30B-A3B", "Gemma4 26B-A4B": "Gemma-4-26B-A4B", "gpt-oss-20b": "gpt-oss-20b"}


@dataclass
class Tier:
    id: str
    label: str
    summary: str
    gpus: list
    ram_gib: float
    nvme: bool
    nvlink: bool
    article: str = ""
    run: dict = field(default_factory=dict)
    disk_free_gib: float | None = None
    gpu_name: str = ""
    link: str = ""  # nvlink | p2p | host; "" = from nvlink (GeForce cards without it: through host RAM)

    def __post_init__(self):
        self.link = self.link or ("nvlink" if self.nvlink else "host")

    @property
    def card(self) -> str:
        """The planner's name for the tier's card (presets/cards.toml), "" when it knows none: what gives a
        plan for the tier its time estimate."""
        card = P.card_named(self.gpu_name) if self.gpu_name else None
        return card.name if card else ""


@dataclass
class Check:
    name: str
    ok: bool
    message: str


def rules() -> dict:
    return presets.load_tiers()["rules"]


def tiers() -> dict:
    data = presets.load_tiers()["tiers"]
    return {tid: Tier(id=tid, label=t["label"], summary=t["summary"], gpus=list(t["gpus"]), ram_gib=t["ram_gib"],
                      nvme=t["nvme"], nvlink=t["nvlink"], article=t.get("article", ""), run=t.get("run", {}),
                      gpu_name=t.get("gpu_name", "")) for tid, t in data.items()}


def this_machine(m) -> Tier:
    """The scanned machine as a tier (its default run is the one tiers.toml names in this_machine_run,
    re-planned for its cards)."""
    names = sorted({g.name.replace("NVIDIA ", "").replace("GeForce ", "") for g in m.gpus})
    gpus = " + ".join(f"{g.memory_total_gib:.0f} GB" for g in m.gpus) or "no GPU"
    base = tiers()[presets.load_tiers()["this_machine_run"]].run
    return Tier(id="this-machine", label="this machine",
                summary=f"{len(m.gpus)} GPU ({', '.join(names) or 'none'}; {gpus}), {m.ram_total_gib:.0f} GB RAM, "
                        f"{m.disk_kind} disk", gpus=[g.memory_total_gib for g in m.gpus], ram_gib=m.ram_total_gib,
                nvme=m.disk_nvme, nvlink=m.nvlinked, run=dict(base), disk_free_gib=m.disk_free_gib,
                gpu_name=", ".join(names), link=m.link)


def checks(tier: Tier, size: str, keep_checkpoints: int = 2) -> list:
    """The seed article's checks for training a model of `size` on `tier`; a failure names the number."""
    r = rules()
    vram = sum(tier.gpus)
    out = []
    need = r["vram_min_gib"][size]
    out.append(Check("vram", vram >= need, f"VRAM {vram:.0f} GB {'≥' if vram >= need else '<'} the ~{need} GB "
                                           f"QLoRA needs at {size}"))
    ok = tier.ram_gib >= 2 * vram
    out.append(Check("ram_2x_vram", ok, f"RAM {tier.ram_gib:.0f} GB {'≥' if ok else '<'} 2 x VRAM ({2 * vram:.0f} GB)"))
    low, rec = r["ram_min_gib"][size], r["ram_recommended_gib"][size]
    if tier.ram_gib < low:
        out.append(Check("ram", False, f"RAM {tier.ram_gib:.0f} GB below the {low} GB minimum at {size}"))
    elif tier.ram_gib < rec:
        out.append(Check("ram", False, f"RAM {tier.ram_gib:.0f} GB below the {rec} GB recommended at {size}"))
    else:
        out.append(Check("ram", True, f"RAM {tier.ram_gib:.0f} GB ≥ the {rec} GB recommended at {size}"))
    out.append(Check("nvme", tier.nvme, "NVMe SSD" if tier.nvme else "not on an NVMe SSD: loading and "
                                                                     "checkpointing will be slower"))
    if tier.disk_free_gib is not None:
        arch = P.load_models()[SIZES[size]]
        need_disk = arch.total_params * 2 / P.GIB + keep_checkpoints * 2 + 2  # 16-bit download + checkpoints
        ok = tier.disk_free_gib >= need_disk
        out.append(Check("disk", ok, f"{tier.disk_free_gib:.0f} GB free {'≥' if ok else '<'} {need_disk:.0f} GB "
                                     f"for the {size} download and checkpoints"))
    if len(tier.gpus) > 1:
        ok = tier.nvlink
        msg = "NVLink between the cards" if ok else "no NVLink between the cards: gradient sync goes over PCIe"
        if size == "70B" and not ok:
            msg += " (the article asks for NVLink at 70B on two cards)"
        out.append(Check("nvlink", ok or size != "70B", msg))
    return out


@dataclass
class Capability:
    size: str
    model: str
    fits: bool
    strategy: str
    cpu_offload: bool
    micro_batch: int
    seq_len: int
    per_gpu_gib: float
    why: str
    verdict: str = ""   # the planner's: fits | tight (under the card, within its error margin) | does not fit


def plan_for(tier: Tier, arch: P.Arch, seq_len: int = 2048, micro_batch: int = 4, **settings) -> tuple:
    """(PlanInput with strategy, offload and micro-batch chosen to fit, one-line reason). Micro-batch shrinks
    before anything else changes; the strategy is the fastest that fits."""
    settings = {"loss_chunk": 4096, "kernels": "liger", "card": tier.card, **settings}  # as trained
    base = P.PlanInput(arch=arch, gpus=list(tier.gpus), seq_len=seq_len, micro_batch=micro_batch,
                       ram_gib=tier.ram_gib, link=tier.link, **settings)
    b = micro_batch
    while True:
        inp, why = P.choose_strategy(P.replace(base, micro_batch=b))
        if P.fits(inp) or b == 1:
            return inp, why
        b //= 2


def capabilities(tier: Tier, sizes: dict | None = None) -> list:
    """What the tier fine-tunes at 7B/13B/34B/70B (seq 2048), per the planner; `sizes` (label -> catalog name,
    e.g. MOE) for other models, those missing from the catalog left out."""
    if not tier.gpus:
        return []
    out = []
    for size, name in (SIZES if sizes is None else sizes).items():
        arch = P.catalog_model(name)
        if arch is None:
            continue
        inp, why = plan_for(tier, arch)
        fits = P.fits(inp)
        out.append(Capability(size=size, model=name, fits=fits, strategy=inp.strategy, cpu_offload=inp.cpu_offload,
                              micro_batch=inp.micro_batch, seq_len=inp.seq_len,
                              per_gpu_gib=round(P.peak(inp), 1), why=why, verdict=P.verdict(inp)))
    return out


def compare(machine_tier: Tier, tier: Tier) -> tuple[bool, list]:
    """Does this machine hold up against `tier`? (True if it meets it, and the shortfalls as sentences)."""
    short = []
    if len(machine_tier.gpus) < len(tier.gpus):
        short.append(f"{len(machine_tier.gpus)} GPU(s), the tier has {len(tier.gpus)}")
    elif machine_tier.gpus and min(machine_tier.gpus) < min(tier.gpus) - 0.5:
        short.append(f"{min(machine_tier.gpus):.0f} GB cards, the tier's have {min(tier.gpus):.0f} GB")
    if machine_tier.ram_gib < tier.ram_gib * 0.95:
        short.append(f"RAM {machine_tier.ram_gib:.0f} GB below the {tier.ram_gib:.0f} GB it recommends")
    if tier.nvme and not machine_tier.nvme:
        short.append("no NVMe SSD")
    if tier.nvlink and not machine_tier.nvlink:
        short.append("no NVLink")
    gpu_short = any("GPU" in s or "cards" in s for s in short)
    return not gpu_short, short


def verdict(machine_tier: Tier, all_tiers: dict | None = None) -> str:
    """One line such as 'fits the $1,500 tier; RAM below the 64 GB it recommends'."""
    all_tiers = all_tiers or tiers()
    if not machine_tier.gpus:
        return "no NVIDIA GPU here: try the CPU demo, or plan for a tier you don't own"
    best = None
    for t in sorted(all_tiers.values(), key=lambda t: sum(t.gpus)):
        ok, short = compare(machine_tier, t)
        if ok:
            best = (t, short)
    if best is None:
        t = min(all_tiers.values(), key=lambda t: sum(t.gpus))
        _, short = compare(machine_tier, t)
        return f"below the {t.label} tier: " + "; ".join(short)
    t, short = best
    return f"fits the {t.label} tier" + ("; " + "; ".join(short) if short else "")


def run_values(tier: Tier, arch: P.Arch, base: str | None = None) -> tuple[dict, str]:
    """Complete run-file values for the tier's default run on `arch`: micro-batch, sequence length,
    strategy and offload chosen by the planner, the effective batch kept; and the lines saying why."""
    from . import runfile
    run = tier.run
    rank = run.get("lora_r", 16)
    inp, why = plan_for(tier, arch, seq_len=run["max_seq_len"], micro_batch=run["micro_batch_size"],
                        optimizer=run.get("optimizer", "adamw_torch"), lora_r=rank)
    if not P.fits(inp):
        longest = P.max_seq_len(inp)
        if longest >= 256:
            inp = P.replace(inp, seq_len=longest)
            why += f" Sequence length cut to {longest} to fit."
    n = len(tier.gpus) if inp.strategy != "single" else 1
    accum = P.keep_effective_batch(run["micro_batch_size"], run["gradient_accumulation_steps"], inp.micro_batch,
                                   new_processes=n)
    values = runfile.defaults(
        name=f"{arch.name.lower()}-{tier.id}",
        hardware={"tier": tier.id, "gpus": list(range(n)), "strategy": inp.strategy, "num_processes": n,
                  "cpu_offload": inp.cpu_offload},
        model={"base": base or arch.hf_id, "compute_dtype": "bfloat16"},
        lora={"r": rank, "alpha": 2 * rank},
        data={"path": None, "max_seq_len": inp.seq_len},
        train={"micro_batch_size": inp.micro_batch, "gradient_accumulation_steps": accum, "optimizer": inp.optimizer})
    p = P.plan(inp)
    verdict = (f"planned: {p.per_gpu_peak_gib:.1f} GiB per GPU of {p.gpu_gib:g} GiB"
               f" ({', '.join(f'{k} {v:.1f}' for k, v in p.breakdown_gib.items())})")
    if p.verdict == "tight":
        verdict += " - TIGHT on this tier: within the planner's error margin, it may run out of memory; see rigtune plan"
    elif not p.fits:
        verdict += " - DOES NOT FIT this tier even so; see rigtune plan"
    return values, (f"{tier.label} tier: {tier.summary}\n{why}\n{verdict}\nmicro-batch {inp.micro_batch} x "
                    f"accumulation {accum} x {n} process(es) keeps the effective batch at {inp.micro_batch * accum * n}."
                    "\nReplace data.path with your dataset.")
