"""The memory terms: per-GPU memory of a QLoRA run from first principles, before anything downloads.

Every term is named in the breakdown (GiB per GPU):
  weights      quantized linear layers at ~4.127 bits/param (NF4 + double quant; 4.5 without), embeddings,
               lm_head and norms in the compute dtype; under FSDP a shard plus the layers being gathered
  adapters     LoRA A and B matrices (fp32 unless lora_dtype says otherwise)
  gradients    one gradient per adapter parameter (+ DDP's bucket copy)
  optimizer    AdamW 32-bit: 8 B per adapter parameter; 8-bit: 2 B
  activations  what backward needs: with gradient checkpointing one hidden state per layer plus one layer
               recomputed in full; without, every layer's saved tensors; eager attention adds the s^2 scores
  logits       the loss's peak: the output logits, their fp32 upcast, log-softmax and its gradient (one chunk
               of them with the chunked loss; Liger's fused loss holds a smaller chunk)
  overhead     CUDA context, the dequantized weight of the widest layer, and allocator fragmentation
Each constant of the model below is derived, or calibrated on a set of points kept apart from the points its
accuracy is reported on (bench/planner_accuracy). FIT_MARGIN is not a term of the model but the size of its
error on the held-out points; the accuracy figures do not use it, and published verdicts it was not derived
from check it. CUDA_CONTEXT_GIB is an assumption (README, "How accurate"). The time estimate (tokens/s, duration) follows the memory model
(throughput.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .activations import decoder_bytes
from .arch import GIB, Arch

# --- constants (bench/planner_accuracy explains each figure and says which points calibrate it)
NF4_BITS = {True: 4.127, False: 4.5}     # bits per quantized parameter, with / without double quant (derived:
                                         # 4 bits + one absmax per 64 weights, itself 8-bit per 256 blocks)
CUDA_CONTEXT_GIB = 0.5                   # CUDA context, cuBLAS workspace, kernels: outside torch's allocator
FRAGMENTATION = 0.05                     # caching-allocator slack: reserved over allocated at the peak (0.048
                                         # on the calibration set of rigtune's own H200 runs, planner_accuracy)
# how far a plan may be under the measured peak: a run "fits" when its planned peak times (1 + FIT_MARGIN) is
# within the card; at or under the card but not with the margin it is "tight". The median of measured / planned
# - 1 over the held-out peak and reserved points of bench/planner_accuracy (0.092; run.py derives it again);
# checked there against published fits / out-of-memory verdicts that take no part in deriving it.
FIT_MARGIN = 0.09
PROCESS_RAM_GIB = 3.0                    # host RAM per training process (torch, CUDA libraries, buffers)
# bytes per (token x vocab entry) of the loss at its peak, beyond the lm_head's own output (2 B in bf16; in
# fp32 - compute_dtype float32, or lm_head upcast by prepare_model_for_kbit_training - the output is the fp32
# copy; bench/planner_selfcheck measures 12 B there):
#   rigtune: fp32 copy 4 + log-softmax 4 + its gradient 4
#   hf: the same plus the shifted contiguous fp32 copy transformers' loss made before 4.46
#   chunked: the fp32 work happens one chunk (1/8) at a time
#   hf_half: a transformers-style loss on half-precision logits, never upcast (Qwen-1's remote code): the
#            shifted copy 2 + log-softmax 2 + its gradient 2 + the input's gradient 2 (bench/planner_accuracy)
LOSS_BYTES = {"rigtune": 12.0, "hf": 16.0, "chunked": 12.0 / 8, "hf_half": 8.0}
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass
class PlanInput:
    arch: Arch
    gpus: list                       # GiB of each card taking part (per machine)
    seq_len: int = 2048
    micro_batch: int = 1
    lora_r: int = 16
    lora_targets: object = "all-linear"
    lora_dropout: float = 0.05
    lora_dtype: str = "float32"
    optimizer: str = "adamw_torch"
    gradient_checkpointing: bool = True
    attn: str = "sdpa"
    quantization: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"
    strategy: str = "single"
    cpu_offload: bool = False
    ram_gib: float | None = None
    loss: str = "rigtune"
    upcast: bool = False             # prepare_model_for_kbit_training: unquantized weights in fp32
    loss_chunk: int = 0              # rigtune's chunked loss: tokens per chunk (0 = full logits)
    link: str = "nvlink"             # between the cards: nvlink | p2p (PCIe peer-to-peer) | host (through RAM)
    activation_offload: bool = False  # saved activations wait in CPU RAM; one layer's worth on the GPU
    shard_adapters: bool = True      # under FSDP with AdamW 32-bit: adapters, gradients, state sharded too
    accum: int = 1                   # gradient accumulation steps (kept with the micro-batch by suggest())
    kernels: str = "none"            # liger: Liger's fused kernels (what kernels = "auto" runs on a CUDA card)
    card: str = ""                   # a name from presets/cards.toml: the time estimate's card ("" = unknown)
    rows_per_item: int = 1           # sequences per micro-batch item: 2 for a preference pair (chosen, rejected),
                                     # num_generations for a GRPO prompt
    method: str = "sft"              # [train] method: what the notes say about the rows (sft, dpo, orpo, grpo)


def _targets(inp: PlanInput) -> list:
    """The block's linears LoRA wraps: all of them for "all-linear", else the named ones this block has."""
    shapes = inp.arch.linears()
    if inp.lora_targets == "all-linear":
        return list(shapes)
    names = [inp.lora_targets] if isinstance(inp.lora_targets, str) else list(inp.lora_targets)
    known = {"output_proj": "o_proj", "w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
    return [known.get(n, n) for n in names if known.get(n, n) in shapes]


def adapter_params(inp: PlanInput) -> int:
    """LoRA A and B over every layer, each layer kind with its own linears (Qwen3.5's Gated DeltaNet layers have
    in_proj_*/out_proj where its full-attention layers have q/k/v/o_proj)."""
    return inp.arch.lora_params(inp.lora_r, set(_targets(inp)))


def linear_bytes(inp: PlanInput) -> float:
    """Bytes per parameter of the (quantized) linear layers' weights."""
    return NF4_BITS[inp.double_quant] / 8 if inp.quantization in ("nf4", "fp4") else DTYPE_BYTES[inp.compute_dtype]


def expert_weight_params(a) -> int:
    """The experts' gate, up and down matrices, every layer: what engine.torchside.experts packs to 4 bits."""
    return a.layers * a.experts * 3 * a.hidden * a.expert_intermediate if a.experts else 0


def expert_bytes(inp: PlanInput) -> float:
    """Bytes of an MoE model's experts and routers as loaded: the matrices in 4 bits when the run quantizes, with
    single quant whatever double_quant says (engine.torchside.experts says why; bench/moe_experts measures it),
    biases and routers in the compute dtype."""
    a, cb = inp.arch, DTYPE_BYTES[inp.compute_dtype]
    packed = expert_weight_params(a) if inp.quantization in ("nf4", "fp4") else 0
    return packed * NF4_BITS[False] / 8 + (a.expert_params - packed) * cb


def expert_load_transient(inp: PlanInput) -> float:
    """Bytes in transit while one layer's experts load and are packed, beyond the packed weights: its fused
    gate/up tensor in the compute dtype twice (the per-expert checkpoint tensors and their fused copy; for an
    MXFP4 checkpoint, gpt-oss's, the dense copy beside the MXFP4 blocks, which are smaller)."""
    a = inp.arch
    if not a.experts or inp.quantization not in ("nf4", "fp4"):
        return 0.0
    return 2 * a.experts * 2 * a.expert_intermediate * a.hidden * DTYPE_BYTES[inp.compute_dtype]


def breakdown(inp: PlanInput) -> dict:
    """GiB per GPU for each term, for the strategy and offload in `inp`."""
    a = inp.arch
    cb = DTYPE_BYTES[inp.compute_dtype]
    n = len(inp.gpus) if inp.strategy == "fsdp" else 1
    s, b = inp.seq_len, inp.micro_batch
    tokens = s * b * inp.rows_per_item
    h = a.hidden

    # weights; an MoE model's expert matrices are 4-bit (single quant) when the run quantizes
    # (engine.torchside.experts), their biases and the routers stay in the compute dtype
    linear = a.linear_params * linear_bytes(inp)
    experts = expert_bytes(inp)
    other = (a.embed_params + a.norm_params + a.loaded_extra_params) * (4 if inp.upcast else cb) + experts
    if inp.strategy == "fsdp":
        layer = (linear + experts) / a.layers
        gathered = 2 * max(layer + 2 * h * cb, a.vocab * h * cb / (1 if inp.cpu_offload else n))
        weights = gathered if inp.cpu_offload else (linear + other) / n + gathered
        if inp.loss == "rigtune" and inp.loss_chunk and not a.tied and not inp.cpu_offload:
            weights += a.vocab * h * cb * (1 - 1 / n)  # engine.torchside.fsdp keeps the lm_head whole for the chunked loss
    else:
        weights, gathered = linear + other, 0

    # adapters, gradients, optimizer: engine.torchside.fsdp shards them over the ranks (AdamW 32-bit), with two
    # layers' adapters gathered at a time and a layer's gradients whole until they are reduce-scattered; with
    # CPU offload the shards and the optimizer step live in RAM. 8-bit optimizers keep them whole on every
    # rank (and DDP keeps a bucket copy of the gradients).
    p = adapter_params(inp)
    lb = DTYPE_BYTES[inp.lora_dtype]
    if adapters_sharded(inp):
        in_flight = 2 * p / a.layers * lb
        own = 0 if inp.cpu_offload else p * lb / n
        adapters, gradients = own + in_flight, own + in_flight
        optimizer = 0 if inp.cpu_offload else 2 * p * lb / n
    else:
        adapters = p * lb
        gradients = p * lb * (2 if inp.strategy == "ddp" else 1)
        optimizer = p * (2 * lb if inp.optimizer == "adamw_torch" else 2)  # AdamW keeps 2 states in the param dtype

    # activations, per token: the saved tensors of each decoder layer, by layer kind (activations.py)
    every_layer, one_layer = decoder_bytes(inp, _targets(inp))
    final_norm = tokens * h * cb  # the last RMSNorm keeps its input, outside every layer
    if inp.activation_offload:
        activations = tokens * one_layer + final_norm
    elif inp.gradient_checkpointing:
        activations = tokens * (a.layers * h * cb + one_layer) + final_norm
    else:
        activations = tokens * every_layer + final_norm

    if inp.loss == "rigtune" and inp.kernels == "liger":
        logits = liger_loss_bytes(a, tokens, cb)
    elif inp.loss == "rigtune" and inp.loss_chunk:  # one chunk's logits at a time, at trained positions only
        logits = min(tokens, inp.loss_chunk) * a.vocab * (LOSS_BYTES["rigtune"] + (cb if cb < 4 else 0))
    else:
        logits = tokens * a.vocab * (LOSS_BYTES[inp.loss] + (0 if inp.upcast or cb == 4 else cb))
    widest = max(x * y for x, y in a.linears().values()) * cb if inp.quantization != "none" else 0
    allocated = weights + adapters + gradients + optimizer + activations + logits + widest
    # loading holds the weights so far and one layer's experts in transit: when that outgrows what training adds
    # to the weights, the load is the peak
    in_transit = max(0.0, expert_load_transient(inp) - (allocated - weights))
    weights, allocated = weights + in_transit, allocated + in_transit
    overhead = CUDA_CONTEXT_GIB * GIB + widest + FRAGMENTATION * allocated
    terms = {"weights": weights, "adapters": adapters, "gradients": gradients, "optimizer": optimizer,
             "activations": activations, "logits": logits, "overhead": overhead}
    return {k: v / GIB for k, v in terms.items()}


def adapters_sharded(inp: PlanInput) -> bool:
    """What engine.torchside.fsdp.shards_adapters decides for the run."""
    return inp.strategy == "fsdp" and inp.shard_adapters and inp.optimizer == "adamw_torch"


def liger_loss_bytes(a: Arch, tokens: int, cb: int) -> float:
    """Liger's fused linear cross-entropy: the logits of one chunk of ceil(tokens / ceil(vocab / hidden)) tokens
    (rounded up to a power of two) in fp32, with their gradient, plus the input gradient it computes in forward."""
    import math
    chunk = 1 << max(0, math.ceil(math.log2(max(1, math.ceil(tokens / math.ceil(a.vocab / a.hidden))))))
    return 2 * min(chunk, tokens) * a.vocab * 4 + tokens * a.hidden * cb


def peak(inp: PlanInput) -> float:
    return sum(breakdown(inp).values())


def processes(inp: PlanInput) -> int:
    """Training processes of the run: one per card under DDP and FSDP, else one."""
    return len(inp.gpus) if inp.strategy in ("ddp", "fsdp") else 1


def ram_needed(inp: PlanInput) -> float:
    """Host RAM the run needs (GiB): a baseline per process, plus the offloaded weights."""
    procs = processes(inp)
    need = procs * PROCESS_RAM_GIB
    if inp.activation_offload:  # what the GPU no longer holds waits in RAM
        kept = breakdown(replace(inp, activation_offload=False))["activations"]
        need += procs * (kept - breakdown(inp)["activations"])
    if inp.cpu_offload:
        a = inp.arch
        need += (a.linear_params * linear_bytes(inp) + a.embed_params * DTYPE_BYTES[inp.compute_dtype]) / GIB
        need += adapter_params(inp) * 16 / GIB  # adapters, grads and optimizer state live there too
    return need


def fits(inp: PlanInput, budget_gib: float | None = None, margin: float | None = None) -> bool:
    """The planned peak, with the planner's error margin (FIT_MARGIN unless given) on top, is within the card
    (or `budget_gib`), and the RAM suffices. margin=0 asks whether the plan itself is within the card."""
    budget = min(inp.gpus) if budget_gib is None else budget_gib
    if peak(inp) * (1 + (FIT_MARGIN if margin is None else margin)) > budget:
        return False
    return inp.ram_gib is None or ram_needed(inp) <= inp.ram_gib


def verdict(inp: PlanInput, budget_gib: float | None = None) -> str:
    """"fits" (with the margin), "tight" (at or under the card, but within the planner's error margin of its
    edge: it may run out of memory) or "does not fit" (over the card, or short of RAM)."""
    if fits(inp, budget_gib):
        return "fits"
    return "tight" if fits(inp, budget_gib, margin=0.0) else "does not fit"


def headroom(inp: PlanInput, budget_gib: float | None = None) -> float:
    """GiB per card left over the planned peak; negative when the plan is over the card."""
    return (min(inp.gpus) if budget_gib is None else budget_gib) - peak(inp)


def largest(inp: PlanInput, field: str, limit: int, budget_gib: float | None = None,
            margin: float | None = None) -> int:
    """The largest value of `field` (at least 1) at which the run fits, by bisection; 0 if none does."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(replace(inp, **{field: mid}), budget_gib, margin):
            lo = mid
        else:
            hi = mid - 1
    return lo


def max_seq_len(inp: PlanInput, limit: int = 1 << 20, margin: float | None = None) -> int:
    """The longest sequence that fits at this micro-batch (0 if none does); with the margin unless told."""
    return largest(inp, "seq_len", limit, margin=margin)


def max_micro_batch(inp: PlanInput, limit: int = 4096) -> int:
    return largest(inp, "micro_batch", limit)
