"""FSDP-QLoRA: the frozen base model (4-bit or 16-bit) is sharded over the ranks with FSDP2 `fully_shard`, and
so are the LoRA adapters with their gradients and AdamW state ([hardware] shard_adapters, default true).

Each decoder layer is two FSDP units: its LoRA A/B matrices (fp32) and its frozen base (the 4-bit storage
dtype = model dtype = FSDP parameter dtype, FSDP's rule for QLoRA). One dtype per unit holds, and each rank
keeps 1/N of the adapters, their gradients and their optimizer state - which is what takes a 70B at r64 onto
two 24 GB cards (about 830M adapter parameters: 12 GiB of them, their gradients and AdamW state per card
whole, 6 GiB sharded over two). FSDP reduce-scatters the gradients (averaged, as DDP does).

Checkpoints and the adapter are gathered to the same single-process files as always: every rank gathers
each tensor whole, rank 0 writes (engine.torchside.saving), so an adapter loads on one GPU and a checkpoint
resumes on any number of ranks, each taking its own slice. bitsandbytes' 8-bit optimizers keep their state
in blocks that cannot be sliced across ranks: with them (or shard_adapters = false) the adapters stay whole on
every rank and their gradients are averaged in place (average_gradients), as before.

Loading needs little host RAM: rank 0 loads (and quantizes) the weights; the other ranks build the model on
the meta device (no memory), shard it like rank 0, and receive their shards from rank 0. With cpu_offload the
shards live in host RAM and each layer is copied to the GPU only while it runs.
"""
from __future__ import annotations

import json

from .model import Loaded, _hub_kwargs, add_lora, attn_implementation, keep_cpu_weights_as_loaded, load_base


def ensure_process_group(device) -> None:
    """accelerate starts no process group for one process; FSDP needs one, even of size 1."""
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(),
                                rank=0, world_size=1)


def _broadcast_bytes(data: bytes | None, device) -> bytes:
    """Rank 0's bytes on every rank (one length, then one buffer)."""
    import torch
    import torch.distributed as dist
    size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64, device=device)
    dist.broadcast(size, 0)
    # frombuffer refuses an empty buffer (a 16-bit base has no quant states): that one is made empty
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if data
           else torch.empty(int(size), dtype=torch.uint8, device=device))
    dist.broadcast(buf, 0)
    return bytes(buf.cpu().numpy()) if data is None else data


def _quant_states(model) -> dict:
    """{module name: packed weight shape and bitsandbytes' serialised quant state} for each 4-bit linear."""
    import bitsandbytes as bnb
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            qs = mod.weight.quant_state
            mod.quant_state = qs  # bnb restores a sharded weight's state from its module
            out[name] = {"shape": list(mod.weight.shape), "stats": qs.as_dict(packed=True)}
    return out


def _share_quant_states(states: dict | None, rank: int, device) -> dict:
    """Rank 0's quant states on every rank: a JSON header and all the (small) tensors in one buffer."""
    import torch
    blobs = []
    if rank == 0:
        header = {}
        for name, info in states.items():
            parts = {}
            for key, t in info["stats"].items():
                t = t.detach().to("cpu").contiguous().reshape(-1)
                parts[key] = [list(info["stats"][key].shape), str(t.dtype).removeprefix("torch."), t.numel()]
                blobs.append(t.view(torch.uint8))
            header[name] = {"shape": info["shape"], "stats": parts}
        head = json.dumps(header).encode()
        body = torch.cat(blobs).numpy().tobytes() if blobs else b""
    header = json.loads(_broadcast_bytes(head if rank == 0 else None, device))
    body = _broadcast_bytes(body if rank == 0 else None, device)
    if rank == 0:
        return states
    flat = torch.frombuffer(bytearray(body), dtype=torch.uint8) if body else torch.empty(0, dtype=torch.uint8)
    pos, out = 0, {}
    for name, info in header.items():
        stats = {}
        for key, (shape, dtype, numel) in info["stats"].items():
            dt = getattr(torch, dtype)
            nbytes = numel * torch.empty((), dtype=dt).element_size()
            stats[key] = flat[pos:pos + nbytes].clone().view(dt).reshape(shape)
            pos += nbytes
        out[name] = {"shape": info["shape"], "stats": stats}
    return out


def _skeleton(cfg, states: dict, device):
    """The base model on the meta device, with the same 4-bit linears as rank 0's: no memory, no weights."""
    import bitsandbytes as bnb
    import torch
    from bitsandbytes.functional import QuantState
    from transformers import AutoConfig, AutoModelForCausalLM

    m = cfg.model
    dtype = getattr(torch, m.compute_dtype)
    config = AutoConfig.from_pretrained(m.base, **_hub_kwargs(m))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation(cfg),
                                                 trust_remote_code=bool(m.trust_remote_code))
    for name, info in states.items():
        owner_name, _, child = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        old = getattr(owner, child)
        new = bnb.nn.Linear4bit(old.in_features, old.out_features, bias=old.bias is not None, compute_dtype=dtype,
                                compress_statistics=m.double_quant, quant_type=m.quantization,
                                quant_storage=dtype, device="meta")
        new.weight = bnb.nn.Params4bit(torch.empty(info["shape"], dtype=dtype, device="meta"), requires_grad=False,
                                       compress_statistics=m.double_quant, quant_type=m.quantization,
                                       quant_storage=dtype, module=new, bnb_quantized=True)
        new.quant_state = new.weight.quant_state = QuantState.from_dict(info["stats"], device=device)
        setattr(owner, child, new)
    if states:
        model.is_loaded_in_4bit = True  # how peft knows to wrap Linear4bit layers
    return model


def shards_adapters(cfg) -> bool:
    """Whether the adapters, their gradients and optimizer state are sharded (see the module docstring)."""
    return bool(cfg.hardware.shard_adapters) and cfg.train.optimizer == "adamw_torch"


def _lora_modules(block) -> list:
    """The LoRA A and B linears inside one decoder layer (peft names them ...lora_A.<adapter>)."""
    import torch
    return [m for n, m in block.named_modules()
            if isinstance(m, torch.nn.Linear) and any(f".{k}." in f".{n}." for k in ("lora_A", "lora_B"))]


def _blocks(model) -> list:
    """The decoder layers: the modules the model itself says must not be split across devices."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [mod for mod in model.modules() if type(mod).__name__ in names]


def load(cfg, device, rank: int, world: int) -> Loaded:
    """The PeftModel with its base sharded over `world` ranks; every rank holds rank 0's weights and adapters."""
    import bitsandbytes as bnb
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard
    from torch.distributed.tensor import DTensor, distribute_tensor

    ensure_process_group(device)
    mesh = init_device_mesh(device.type, (world,))
    if rank == 0:
        model = load_base(cfg, "cpu")  # host RAM; each layer goes to the GPU as it is sharded
        states = _quant_states(model)
    else:
        states = None
    states = _share_quant_states(states, rank, device)
    if rank != 0:
        model = _skeleton(cfg, states, device)
    loaded = add_lora(cfg, model, device)
    model, head = loaded.model, loaded.head
    base = model.get_base_model()
    adapters = {p for p in model.parameters() if p.requires_grad}
    full = {n: p.data for n, p in model.named_parameters()} if rank == 0 else {}

    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cfg.hardware.cpu_offload else OffloadPolicy()
    shard = shards_adapters(cfg)
    for block in _blocks(base):
        lora = _lora_modules(block) if shard else []
        if lora:  # the layer's adapters: one fp32 unit of their own
            fully_shard(lora, mesh=mesh, offload_policy=offload)
        fully_shard(block, mesh=mesh, offload_policy=offload, ignored_params=None if lora else adapters)
    # adapters outside the decoder layers (if any) stay whole
    whole = {p for p in base.parameters() if p.requires_grad and not isinstance(p, DTensor)}
    # the root reshards too: rank 0 alone saving checkpoints (a state_dict reshards) must not leave the
    # ranks disagreeing on what is gathered
    fully_shard(base, mesh=mesh, offload_policy=offload, ignored_params=whole or None, reshard_after_forward=True)
    loaded.sharded_adapters = shard
    if rank != 0:
        model.to_empty(device="cpu" if cfg.hardware.cpu_offload else device)
        if head is not None:
            head.to_empty(device=device)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if isinstance(p, DTensor):  # a shard of the base: scattered from rank 0's full tensor
                src = full[name].to(device) if rank == 0 else torch.empty(p.shape, dtype=p.dtype, device=device)
                p.to_local().copy_(distribute_tensor(src, mesh, p.placements, src_data_rank=0).to_local())
            else:  # an adapter: whole on every rank
                p.data = p.data.to(device)
                dist.broadcast(p.data, 0)
        for mod in model.modules():  # rotary tables and the like
            for key, buf in mod.named_buffers(recurse=False):
                mod._buffers[key] = buf.to(device)
                dist.broadcast(mod._buffers[key], 0)
        if head is not None:
            head.to(device)
            for p in head.parameters():
                dist.broadcast(p.data, 0)
    full.clear()
    for mod in model.modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            mod.quant_state.to(device)
    keep_cpu_weights_as_loaded(model)  # that path would repack weight.data in place: not a shard's
    return loaded


def local(t):
    """A tensor as this rank holds it: its shard when FSDP shards it (a DTensor), else itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def full_adapter_state(model) -> dict:
    """{name: whole tensor on the CPU} of the trainable parameters. A collective: every rank calls it."""
    from torch.distributed.tensor import DTensor
    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().to("cpu", copy=True)
            for n, p in model.named_parameters() if p.requires_grad}


def full_optimizer_state(optimizer) -> dict:
    """optimizer.state_dict() with every sharded tensor gathered whole: one process's format. A collective."""
    from torch.distributed.tensor import DTensor
    sd = optimizer.state_dict()
    sd["state"] = {i: {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().to("cpu", copy=True)
                       for k, v in sd["state"][i].items()} for i in sorted(sd["state"])}
    return sd


def _my_slice(full, p):
    """This rank's part of a whole tensor, as FSDP2 shards `p` (dim 0, torch.chunk order)."""
    import torch
    import torch.distributed as dist
    chunks = torch.chunk(full, dist.get_world_size(), dim=0)
    rank = dist.get_rank()
    part = chunks[rank] if rank < len(chunks) else full[:0]
    return part.to(device=local(p).device, dtype=p.dtype)


def load_full_adapter_state(model, tensors: dict) -> None:
    """Put whole adapter tensors (a checkpoint's) into sharded parameters: each rank takes its slice."""
    import torch
    from torch.distributed.tensor import DTensor
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in tensors:
                src = tensors[n]
                local(p).copy_(_my_slice(src, p) if isinstance(p, DTensor) else src.to(p.device, p.dtype))


def shard_optimizer_state(sd: dict, params: list) -> dict:
    """A whole optimizer state (one process's format) cut to this rank's slices of sharded parameters."""
    from torch.distributed.tensor import DTensor
    out = {"param_groups": sd["param_groups"], "state": {}}
    for i, st in sd["state"].items():
        p = params[int(i)]
        out["state"][i] = {k: (DTensor.from_local(_my_slice(v, p), p.device_mesh, p.placements, run_check=False,
                                                  shape=v.shape, stride=v.stride())
                               if isinstance(p, DTensor) and v.dim() > 0 else v) for k, v in st.items()}
    return out


def local_state_bytes(params, optimizer) -> int:
    """Bytes this rank holds of the adapters, their gradients and optimizer state."""
    total = sum(local(p).numel() * p.element_size() for p in params)
    total += sum(local(p.grad).numel() * p.grad.element_size() for p in params if p.grad is not None)
    for st in optimizer.state.values():
        total += sum(local(v).numel() * v.element_size() for v in st.values() if hasattr(v, "dim") and v.dim() > 0)
    return total


def average_gradients(params, world: int, bucket: int = 1 << 24) -> None:
    """All-reduce the adapters' gradients and divide by the ranks, as DDP does: in place, a few parameters
    per call so that no second copy of all the gradients is ever held."""
    import torch
    import torch.distributed as dist
    if world == 1:
        return
    group, size = [], 0
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        group.append(p.grad)
        size += p.grad.numel()
        if size >= bucket or p is params[-1]:
            flat = torch.cat([g.reshape(-1) for g in group]) if len(group) > 1 else group[0].reshape(-1)
            dist.all_reduce(flat)
            flat /= world
            if len(group) > 1:
                pos = 0
                for g in group:
                    g.copy_(flat[pos:pos + g.numel()].view_as(g))
                    pos += g.numel()
            group, size = [], 0
