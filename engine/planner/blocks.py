"""Arch: the shape of a decoder-only model, and the parameters of each kind of decoder layer it has (full,
sliding-window and Gated DeltaNet linear-attention layers, dense and MoE blocks). Pure arithmetic, no imports
of the rest of the planner: arch.py and configs.py build Archs, memory.py and throughput.py count with them."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

GIB = 1024 ** 3
FULL, SLIDING, LINEAR = "full_attention", "sliding_attention", "linear_attention"


@dataclass(frozen=True)
class Arch:
    """The shape of a decoder-only model, from its config.json (or presets/models.toml, which copies it)."""
    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False
    hf_id: str = ""
    size: str = ""
    params_b: float = 0.0            # the published total (models.toml): what total_params is checked against
    head_dim: int = 0                # when the config sets it apart from hidden / heads (Qwen3, Gemma 3)
    extra_norms: int = 0             # RMSNorms per layer beyond Llama's two (Gemma 2/3: two more around the MLP)
    qk_norm: bool = False            # RMSNorm on each head's queries and keys (Qwen3, Gemma 3)
    qkv_bias: bool = False           # biases on q, k and v (Qwen2.5)
    model_type: str = "llama"        # the config's model_type
    fused: bool = False              # Phi-3/4: one qkv_proj and one gate_up_proj instead of q/k/v and gate/up
    experts: int = 0                 # MoE: experts per layer (0 = a dense MLP)
    experts_active: int = 0          # MoE: experts each token goes through
    expert_intermediate: int = 0     # MoE: one expert's intermediate size
    extra_params: int = 0            # loaded with the model but outside the decoder (a vision tower and its projector)
    active_params_b: float = 0.0     # the published active count of an MoE model (models.toml)
    gated: bool = False              # the hub asks to accept a licence before downloading (models.toml)
    source: str = ""                 # where the catalog's numbers come from (models.toml)
    download_bytes: int = 0          # the weights' size from the hub's listing (0: not known; 16-bit assumed)
    layer_types: tuple = ()          # each layer's kind (config layer_types): full_attention, sliding_attention or
                                     # linear_attention; () = every layer full attention
    sliding_window: int = 0          # tokens a sliding_attention layer attends to (0 = no sliding layers)
    attn_gate: bool = False          # full attention's q_proj also outputs a gate per query dim (Qwen3.5 attn_output_gate)
    global_head_dim: int = 0         # full-attention layers' head size where it differs from sliding layers' (Gemma 4)
    global_kv_heads: int = 0         # full-attention layers' kv heads where they differ (Gemma 4 with attention_k_eq_v)
    k_eq_v: bool = False             # full-attention layers take the keys as values: no v_proj (Gemma 4 attention_k_eq_v)
    linear_k_heads: int = 0          # Gated DeltaNet layers: key heads (linear_num_key_heads)
    linear_v_heads: int = 0          # Gated DeltaNet layers: value heads (linear_num_value_heads)
    linear_k_dim: int = 0            # Gated DeltaNet layers: key head size (linear_key_head_dim)
    linear_v_dim: int = 0            # Gated DeltaNet layers: value head size (linear_value_head_dim)
    linear_conv: int = 0             # Gated DeltaNet layers: the causal conv1d's kernel (linear_conv_kernel_dim)
    shared_expert_intermediate: int = 0  # MoE: an always-on shared expert's intermediate size, with its sigmoid gate
    moe_and_mlp: bool = False        # MoE layers keep a dense MLP beside the experts (Gemma 4 enable_moe_block)
    router_bias: bool = False        # the router has a bias per expert (gpt-oss)
    router_scales: bool = False      # the router is an nn.Linear with a scale per hidden dim and per expert (Gemma 4)
    expert_bias: bool = False        # every expert's gate/up and down projections have biases (gpt-oss)
    attn_bias: bool = False          # q, k, v and o_proj all have biases (gpt-oss attention_bias)
    sinks: bool = False              # a learned attention-sink logit per head (gpt-oss)
    per_layer_input: int = 0         # Gemma 4 per-layer input embeddings: width per layer (hidden_size_per_layer_input)
    per_layer_vocab: int = 0         # ... and their vocabulary (vocab_size_per_layer_input)
    kv_shared_layers: int = 0        # the last layers that reuse an earlier layer's keys and values (no k/v weights)
    double_wide_mlp: bool = False    # those kv-shared layers have an MLP twice as wide (Gemma 4 use_double_wide_mlp)
    vision_loaded: bool = True       # AutoModelForCausalLM loads the vision tower too (Gemma 3/4); Qwen3.5's text-only
                                     # class leaves it in the download (total_params) but out of memory

    @property
    def download_gib(self) -> float:
        """What the download of the weights takes: the listing's size, else the 16-bit checkpoint's."""
        return (self.download_bytes or self.total_params * 2) / GIB

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        return self.head_size * self.heads

    @property
    def kv_dim(self) -> int:
        return self.head_size * self.kv_heads

    def kind_of(self, i: int) -> str:
        return self.layer_types[i] if i < len(self.layer_types) else FULL

    def _memo(self, key, make):
        """make(), computed once per Arch (frozen, so its answer cannot change): the planner asks the same shapes
        hundreds of thousands of times while it searches for settings that fit."""
        memo = self.__dict__.setdefault("_memos", {})
        if key not in memo:
            memo[key] = make()
        return memo[key]

    def kinds(self) -> Counter:
        """{(layer kind, kv-shared): how many layers} - the layers whose shapes differ, counted once each."""
        first_shared = self.layers - self.kv_shared_layers
        return self._memo("kinds", lambda: Counter((self.kind_of(i), i >= first_shared) for i in range(self.layers)))

    def attn_shape(self, kind: str) -> tuple:
        """(head size, kv heads) of a layer of this kind: full-attention layers may have their own (Gemma 4)."""
        if kind == FULL:
            return self.global_head_dim or self.head_size, self.global_kv_heads or self.kv_heads
        return self.head_size, self.kv_heads

    @property
    def linear_conv_dim(self) -> int:
        """Channels of a Gated DeltaNet layer's conv1d: its queries, keys and values."""
        return 2 * self.linear_k_heads * self.linear_k_dim + self.linear_v_heads * self.linear_v_dim

    def layer_linears(self, kind: str = FULL, shared: bool = False) -> dict:
        """(in, out) of each nn.Linear in one decoder layer of this kind: what bitsandbytes quantizes and LoRA can
        target. An MoE block's experts are fused 3-D parameters, not linears: rigtune packs them to 4 bits itself
        (engine.torchside.experts) and LoRA does not reach them; nor does it reach a router that is not a Linear."""
        return dict(self._memo(("linears", kind, shared), lambda: self._layer_linears(kind, shared)))

    def _layer_linears(self, kind: str, shared: bool) -> dict:
        h, i = self.hidden, self.intermediate
        if kind == LINEAR:
            vdim = self.linear_v_heads * self.linear_v_dim
            out = {"in_proj_qkv": (h, self.linear_conv_dim), "in_proj_z": (h, vdim), "in_proj_b": (h, self.linear_v_heads),
                   "in_proj_a": (h, self.linear_v_heads), "out_proj": (vdim, h)}
        else:
            hd, kvh = self.attn_shape(kind)
            q, kv = hd * self.heads, hd * kvh
            if self.fused:
                out = {"qkv_proj": (h, q + 2 * kv)}
            else:
                out = {"q_proj": (h, 2 * q if self.attn_gate and kind == FULL else q)}
                if not shared:
                    out["k_proj"] = (h, kv)
                    if not (self.k_eq_v and kind == FULL):
                        out["v_proj"] = (h, kv)
            out["o_proj"] = (q, h)
        if not self.experts or self.moe_and_mlp:
            wide = i * (2 if self.double_wide_mlp and shared else 1)
            mlp = {"gate_up_proj": (h, 2 * wide)} if self.fused else {"gate_proj": (h, wide), "up_proj": (h, wide)}
            out.update(mlp, down_proj=(wide, h))
        if self.experts and self.shared_expert_intermediate:
            si = self.shared_expert_intermediate
            out.update(gate_proj=(h, si), up_proj=(h, si), down_proj=(si, h), shared_expert_gate=(h, 1))
        if self.experts and self.router_scales:
            out["proj"] = (h, self.experts)
        if self.per_layer_input:
            out.update(per_layer_input_gate=(h, self.per_layer_input), per_layer_projection=(self.per_layer_input, h))
        return out

    def linears(self) -> dict:
        """(in, out) of each nn.Linear name of a decoder layer (the largest where layer kinds differ): the names
        LoRA can target. layer_linears() gives each kind's own shapes."""
        return dict(self._memo("linears", self._widest_linears))

    def _widest_linears(self) -> dict:
        out: dict = {}
        for kind, shared in self.kinds():
            for name, shape in self.layer_linears(kind, shared).items():
                if name not in out or shape[0] * shape[1] > out[name][0] * out[name][1]:
                    out[name] = shape
        return out

    def lora_params(self, r: int, targets) -> int:
        """Adapter parameters of rank r on the named linears, over every layer (each kind with its own shapes)."""
        return sum(n * sum(r * (a + b) for name, (a, b) in self.layer_linears(kind, shared).items() if name in targets)
                   for (kind, shared), n in self.kinds().items())

    @property
    def linear_params(self) -> int:
        return sum(n * sum(a * b for a, b in self.layer_linears(kind, shared).values())
                   for (kind, shared), n in self.kinds().items())

    @property
    def router_params(self) -> int:
        """One layer's router parameters outside the linears: its weight (unless it is an nn.Linear), biases, scales."""
        if self.router_scales:
            return self.hidden + self.experts
        return self.experts * (self.hidden + (1 if self.router_bias else 0))

    @property
    def one_expert_params(self) -> int:
        h, e = self.hidden, self.expert_intermediate
        return 3 * h * e + ((2 * e + h) if self.expert_bias else 0)

    @property
    def expert_params(self) -> int:
        """Every expert's gate, up and down weights, plus the routers: all resident, in the compute dtype."""
        return self.layers * (self.experts * self.one_expert_params + self.router_params) if self.experts else 0

    @property
    def active_expert_params(self) -> int:
        """The expert weights one token runs through (its top-k experts), plus the router."""
        if not self.experts:
            return 0
        return self.layers * (self.experts_active * self.one_expert_params + self.router_params)

    @property
    def per_layer_embed_params(self) -> int:
        """Gemma 4's per-layer input embeddings: the table, the projection of the hidden state into it, its norm."""
        width = self.layers * self.per_layer_input
        return (self.per_layer_vocab * width + self.hidden * width + self.per_layer_input) if width else 0

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.per_layer_embed_params

    def layer_small_params(self, kind: str = FULL, shared: bool = False) -> int:
        """One layer's parameters outside its linears and experts: norms, biases, attention sinks, and a Gated
        DeltaNet layer's conv1d, decay (A_log), dt_bias and gated norm."""
        h = self.hidden
        n = (2 + self.extra_norms) * h + (h if self.per_layer_input else 0)
        if kind == LINEAR:
            return n + self.linear_conv_dim * self.linear_conv + 2 * self.linear_v_heads + self.linear_v_dim
        hd, kvh = self.attn_shape(kind)
        q, kv = hd * self.heads, hd * kvh
        if self.qk_norm:
            n += hd * (1 if shared else 2)
        if self.qkv_bias:
            n += q + 2 * kv
        if self.attn_bias:
            n += q + (0 if shared else kv * (1 if self.k_eq_v and kind == FULL else 2)) + h
        return n + (self.heads if self.sinks else 0)

    @property
    def norm_params(self) -> int:
        """Norms, biases and the other small tensors of every layer, plus the final norm."""
        return sum(n * self.layer_small_params(kind, shared) for (kind, shared), n in self.kinds().items()) + self.hidden

    @property
    def total_params(self) -> int:
        return self.linear_params + self.expert_params + self.embed_params + self.norm_params + self.extra_params

    @property
    def loaded_extra_params(self) -> int:
        """The part of extra_params the engine loads (AutoModelForCausalLM's class)."""
        return self.extra_params if self.vision_loaded else 0

    @property
    def loaded_params(self) -> int:
        """What the engine holds in memory: the total less a vision tower it does not load."""
        return self.total_params - self.extra_params + self.loaded_extra_params

    @property
    def active_params(self) -> int:
        """Parameters one text token's forward pass uses. An MoE model's: the decoder less the experts it is not
        routed to (its vision tower does not run for text tokens; the published active counts leave it out too).
        A dense model's: the total, as a dense model's count is published."""
        if not self.experts:
            return self.total_params
        return self.total_params - self.extra_params - self.expert_params + self.active_expert_params

    def layer_count(self, kind: str) -> int:
        return sum(n for (k, _), n in self.kinds().items() if k == kind)
