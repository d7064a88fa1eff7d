"""Cards and time: the card table (presets/cards.toml) and the --gpus flag that names cards, the matmul
FLOPs of a trained token, tokens/s on a named card, and what the link between cards costs. The estimate
follows the memory model's settings (memory.py); bench/planner_accuracy/throughput.py checks it."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace

import presets

from ..errors import BadInput
from .arch import GIB
from .memory import DTYPE_BYTES, PlanInput, adapter_params, breakdown, linear_bytes, processes

# Effective GB/s between two cards (round numbers: RTX 3090 NVLink ~56 GB/s one way, PCIe 4.0 x16 peer-to-peer
# ~20, staged through host RAM ~10; GeForce drivers usually disable PCIe P2P), and host <-> card over PCIe 4.0
# x16 for CPU offload (~20 of its 32 GB/s in practice).
LINK_GBPS = {"nvlink": 50.0, "p2p": 20.0, "host": 10.0}
PCIE_GBPS = 20.0
# The share of a card's dense bf16 peak that QLoRA's matmuls reach, by class of card. Calibrated on one
# published or measured point each, and checked on points kept apart (bench/planner_accuracy/throughput.py):
#   consumer    torchtune's Llama-3.1-8B QLoRA on one RTX 4090 (2,413 tokens/s)
#   datacenter  rigtune's own engine, Llama-3.1-8B shape on an H200 (6,814 tokens/s; gpu_points.json)
# Large cards reach a smaller share: micro-batches of a few thousand tokens do not fill 132 SMs the way they
# fill a GeForce die, and bitsandbytes' dequantize runs between every matmul.
ACHIEVED = {"consumer": 0.71, "datacenter": 0.32}
# Bytes of memory traffic per 4-bit parameter per pass to dequantize it for the matmul: read 0.5 B of NF4,
# write 2 B of bf16, the matmul reads those 2 B again (derived, not fitted).
DEQUANT_BYTES = 4.5
DEFAULT_CARD = "RTX 3090"  # what link_cost compares against when no card is named


@dataclass(frozen=True)
class Card:
    name: str
    vram_gib: float
    bf16_tflops: float
    mem_gbps: float
    kind: str
    aliases: tuple = ()
    rent_usd_per_hour: float | None = None  # renting one, where a published price is known (cards.toml's rent_*)
    rent_offer: str = ""
    rent_source: str = ""
    rent_date: str = ""

    @property
    def achieved_tflops(self) -> float:
        return self.bf16_tflops * ACHIEVED[self.kind]


def _norm(text: str) -> str:
    return "".join(text.lower().replace("nvidia", "").replace("geforce", "").split()).replace("-", "")


@functools.lru_cache(maxsize=1)
def load_cards() -> dict:
    """presets/cards.toml as Cards, read once (every plan, suggestion and link cost looks cards up)."""
    return {name: Card(name, c["vram_gib"], c["bf16_tflops"], c["mem_gbps"], c["class"], tuple(c.get("aliases", ())),
                       c.get("rent_usd_per_hour"), c.get("rent_offer", ""), c.get("rent_source", ""), c.get("rent_date", ""))
            for name, c in presets.load_cards().items()}


# what a datacenter device name adds to the card's: its form factor and memory type ("NVIDIA A100-SXM4-80GB",
# "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe")
FORM_FACTOR = re.compile(r"sxm\d?|pcie|hbm\d?e?")


def card_named(text: str) -> Card | None:
    """A card from its name, an alias or a device name as NVML reports it ("NVIDIA GeForce RTX 4090",
    "NVIDIA A100-SXM4-80GB")."""
    want = _norm(text)
    if not want:
        return None
    cards = load_cards()
    for name in (want, FORM_FACTOR.sub("", want)):
        for card in cards.values():
            if name in {_norm(card.name), *(_norm(a) for a in card.aliases)}:
                return card
    # a device name: the longest card name inside it ("rtx4090d" is not a 4090, "rtx3090ti" matches its alias)
    bare = FORM_FACTOR.sub("", want)
    hits = [c for c in cards.values() if _norm(c.name) in want or _norm(c.name) in bare]
    return max(hits, key=lambda c: len(c.name)) if hits else None


def _aliases() -> set:
    return {_norm(a) for c in load_cards().values() for a in (c.name, *c.aliases)}


def card_of_size(gib: float) -> Card | None:
    """The card of this memory size when only one in the table has it (12 -> RTX 4070 Ti; 24 is ambiguous)."""
    hits = [c for c in load_cards().values() if abs(c.vram_gib - gib) < 0.5]
    return hits[0] if len(hits) == 1 else None


def parse_gpus(spec: str) -> tuple[list, str]:
    """(GiB of each card, card name or ""): '2x24' -> [24.0, 24.0]; '2x4090' -> two RTX 4090s; '24' -> [24.0];
    '24,12' -> [24.0, 12.0]; '1xA100-80'. A bare size names a card only when one card has that size."""
    def one(text: str):
        named = card_named(text)  # a name, or a number that is a card's alias ("4090"), before a size ("24")
        if named is not None and (not text.replace(".", "").isdigit() or _norm(text) in _aliases()):
            return named.vram_gib, named.name
        try:
            gib = float(text)
        except ValueError:
            raise BadInput(f"--gpus {spec!r}: {text!r} is neither a size in GiB nor a card rigtune knows "
                           f"({', '.join(load_cards())}).", key="--gpus") from None
        known = card_of_size(gib)
        return gib, known.name if known else ""
    try:
        if "x" in spec.lower() and spec.lower().split("x", 1)[0].strip().isdigit():
            count, what = spec.lower().split("x", 1)
            gib, name = one(what.strip())
            return [gib] * int(count), name
        sizes = [one(x.strip()) for x in spec.split(",")]
    except ValueError:
        raise BadInput(f"--gpus {spec!r} is not NxGIB (2x24), NxCARD (2x4090), GIB (24) or a list (24,12).",
                       key="--gpus") from None
    names = {n for _, n in sizes}
    return [g for g, _ in sizes], names.pop() if len(names) == 1 else ""


def flops_per_token(inp: PlanInput) -> float:
    """Matmul FLOPs per trained token of one optimizer micro-step. The frozen 4-bit base needs no weight
    gradient, so its backward is one matmul per layer (input gradient), not two: forward 2N + backward 2N,
    + 2N recomputed with gradient checkpointing. Adapters get both gradients. Attention scores: a token
    attends to s/2 positions on average (causal). The lm_head runs forward and backward once."""
    a = inp.arch
    passes = 3 if inp.gradient_checkpointing else 2
    base = 2 * (a.linear_params + a.active_expert_params) * passes
    adapters = 2 * adapter_params(inp) * (passes + 1)
    attention = 2 * 2 * (inp.seq_len / 2) * a.q_dim * a.layers * passes
    head = 2 * 2 * a.vocab * a.hidden
    return base + adapters + attention + head


def micro_batch_seconds(inp: PlanInput, card: Card) -> dict:
    """Seconds per micro-batch on one card, by part: compute, dequantize, link (card to card), offload."""
    a = inp.arch
    tokens = inp.seq_len * inp.micro_batch * inp.rows_per_item
    passes = 3 if inp.gradient_checkpointing else 2
    parts = {"compute": tokens * flops_per_token(inp) / (card.achieved_tflops * 1e12), "dequantize": 0.0,
             "link": link_seconds(inp), "offload": 0.0}
    if inp.quantization in ("nf4", "fp4"):
        parts["dequantize"] = passes * a.linear_params * DEQUANT_BYTES / (card.mem_gbps * 1e9)
    if inp.cpu_offload:  # the sharded weights come over PCIe for each forward, recompute and backward
        parts["offload"] += passes * a.linear_params * linear_bytes(inp) / len(inp.gpus) / (PCIE_GBPS * 1e9)
    if inp.activation_offload:  # saved activations go to RAM and come back
        saved = breakdown(replace(inp, activation_offload=False))["activations"] * GIB
        parts["offload"] += 2 * saved / (PCIE_GBPS * 1e9)
    return parts


def tokens_per_s(inp: PlanInput, card: Card) -> float:
    """Tokens per second of the whole run (every card's micro-batches)."""
    tokens = processes(inp) * inp.seq_len * inp.micro_batch * inp.rows_per_item
    return tokens / sum(micro_batch_seconds(inp, card).values())


def link_seconds(inp: PlanInput, link: str | None = None) -> float:
    """Card-to-card transfer per micro-batch, assuming no overlap with compute (an upper bound). FSDP gathers
    the sharded base in forward and again in backward; DDP and rigtune's FSDP also average the adapter
    gradients."""
    n = len(inp.gpus)
    if n < 2 or inp.strategy == "single":
        return 0.0
    a = inp.arch
    cb = DTYPE_BYTES[inp.compute_dtype]
    moved = 2 * adapter_params(inp) * DTYPE_BYTES[inp.lora_dtype] * (n - 1) / n
    if inp.strategy == "fsdp":
        moved += 2 * (a.linear_params * linear_bytes(inp) + (a.embed_params + a.expert_params) * cb) * (n - 1) / n
    return moved / (LINK_GBPS[link or inp.link] * 1e9)


def link_cost(inp: PlanInput, link: str | None = None) -> tuple[float, float]:
    """(step time over `link` / step time over NVLink, seconds of card-to-card transfer per micro-batch)."""
    link = link or inp.link
    if len(inp.gpus) < 2 or inp.strategy == "single":
        return 1.0, 0.0
    card = card_named(inp.card) or load_cards()[DEFAULT_CARD]
    rest = sum(v for k, v in micro_batch_seconds(replace(inp, link="nvlink"), card).items() if k != "link")
    seconds = link_seconds(inp, link)
    return (rest + seconds) / (rest + link_seconds(inp, "nvlink")), seconds


def fmt_estimate(seconds: float) -> str:
    """'about 1 h 40 min', 'about 12 min', 'about 3.2 days', 'under a minute' - rounded as an estimate should be."""
    minutes = seconds / 60
    if minutes < 1:
        return "under a minute"
    if minutes < 60:
        return f"about {minutes:.0f} min"
    hours = minutes / 60
    if hours < 48:
        h, m = int(hours), int(round(minutes - int(hours) * 60, -1))
        if m == 60:
            h, m = h + 1, 0
        return f"about {h} h" + (f" {m} min" if m else "")
    return f"about {hours / 24:.1f} days"


def link_note(inp: PlanInput) -> str | None:
    """A warning for cards without NVLink, with the estimated slowdown."""
    if inp.link == "nvlink" or len(inp.gpus) < 2 or inp.strategy == "single":
        return None
    slow, seconds = link_cost(inp)
    what = "FSDP's weight gathers go" if inp.strategy == "fsdp" else "DDP's gradient averaging goes"
    how = "PCIe peer-to-peer" if inp.link == "p2p" else "PCIe through system RAM (no P2P)"
    return (f"no NVLink between the cards: {what} over {how}, about {seconds:.2f} s per micro-batch; "
            f"estimated {slow:.2f}x the step time with NVLink.")
