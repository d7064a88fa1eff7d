"""The activation term per decoder-layer kind: the bytes per token one layer saves for backward, for full and
sliding-window attention with each kind's own head size and kv heads (Gemma 4), gated attention, and Gated
DeltaNet linear attention (Qwen3.5/3.6). A sliding layer saves what a full one does: SDPA keeps no scores in
either, and transformers' eager attention builds the whole s x s matrix and masks it to the window (measured on
Gemma 4: one (heads, s, s) tensor per layer, sliding or not), so the window saves no activation memory here.
bench/planner_selfcheck measures each kind against the engine's saved tensors (full width, one layer of each)."""
from __future__ import annotations

from .blocks import FULL, LINEAR

# transformers' PyTorch Gated DeltaNet (torch_chunk_gated_delta_rule, what runs without the fla kernels, as on
# the CPU) walks the sequence in chunks of 64 tokens, in float32 whatever the compute dtype
DELTA_CHUNK = 64
FP32 = 4
# transformers lets SDPA share kv heads itself (enable_gqa) only for heads up to 256 wide (and no mask); wider
# heads (Gemma 4's 512-wide full-attention ones) get their keys and values repeated to every query head first
# (transformers.integrations.sdpa_attention.use_gqa_in_sdpa), and SDPA saves the repeated copies
SDPA_GQA_HEAD_DIM = 256


def linear_attention_elements(a) -> tuple:
    """(elements per token in the compute dtype, elements per token in float32) a Gated DeltaNet layer saves:
    its conv1d's input and output, the decay and beta inputs, out_proj's input (compute dtype); the chunked delta
    rule's float32 work - queries and keys (repeated to the value heads) and values before and after their L2
    norms, the per-chunk decay masks and attention (C x C per head), the per-chunk recurrent state (dk x dv per
    head) and the chunk outputs - and the gated RMSNorm's (float32)."""
    nv, dk, dv, c = a.linear_v_heads, a.linear_k_dim, a.linear_v_dim, DELTA_CHUNK
    compute = 2 * a.linear_conv_dim + 2 * nv + nv * dv
    fp32 = nv * (5 * c + 12 * dk + 7 * dv + dk * dv / c + 9)
    return compute, fp32


def attention_elements(a, kind: str, shared: bool) -> int:
    """Elements per token an attention layer's attention saves: the q, k, v projections, the rotated q and k, the
    attention output and its log-sum-exp (SDPA), the q/k norms' inputs, and with a gated q_proj (Qwen3.5) its
    doubled output, the gate's sigmoid and the gated attention output."""
    hd, kvh = a.attn_shape(kind)
    q, kv = hd * a.heads, hd * kvh
    n = 3 * q + 3 * kv + ((q + kv) if a.qk_norm else 0)
    if a.attn_gate and kind == FULL:  # q_proj's output is twice as wide; the gate's sigmoid and the gated output
        n += 3 * q
    if hd > SDPA_GQA_HEAD_DIM and kvh < a.heads:  # keys and values repeated to every query head, and kept so
        n += 2 * (q - kv)
    return n


def layer_bytes(inp, kind: str, shared: bool, targets: list) -> float:
    """Bytes per token one decoder layer of this kind saves for backward (its MLP or experts included)."""
    a, cb, s = inp.arch, {"bfloat16": 2, "float16": 2, "float32": 4}[inp.compute_dtype], inp.seq_len
    h, i = a.hidden, a.intermediate
    # the MLP's: gate and up outputs, the activation and the product. An MoE block (transformers' grouped_mm
    # experts), for each of the token's top-k experts: the gate/up output, the activation and the expert's
    # output (kept for the routing weight's gradient) - not the gathered input nor the product, which only
    # the frozen experts' weight gradients would need (torch saves neither then) - plus the router's fp32
    # scores. bench/planner_selfcheck measures it on the Qwen3-30B-A3B shape.
    mlp = (a.experts_active * (3 * a.expert_intermediate + h) + 2 * a.experts) if a.experts else 4 * i
    if a.experts and (a.moe_and_mlp or a.shared_expert_intermediate):
        mlp += 4 * (i if a.moe_and_mlp else a.shared_expert_intermediate)
    n = cb * (4 * h + mlp + a.extra_norms * h)
    if kind == LINEAR:
        compute, fp32 = linear_attention_elements(a)
        n += cb * compute + FP32 * fp32
    else:
        n += cb * attention_elements(a, kind, shared)
        if inp.attn == "eager":  # scores and probabilities per head, s^2: transformers' eager attention computes
            n += 2 * cb * a.heads * s  # the whole matrix in a sliding layer too and masks it (measured on Gemma 4)
    shapes = a.layer_linears(kind, shared)
    mine = [t for t in targets if t in shapes]
    if inp.lora_dropout > 0:  # each adapter keeps its own dropped-out input
        n += cb * sum(shapes[t][0] for t in mine)
    return n + 4 * inp.lora_r * len(mine)


def decoder_bytes(inp, targets: list) -> tuple:
    """(bytes per token every layer saves together, the most one layer saves)."""
    per = {key: layer_bytes(inp, key[0], key[1], targets) for key in inp.arch.kinds()}
    return sum(n * per[key] for key, n in inp.arch.kinds().items()), max(per.values())
