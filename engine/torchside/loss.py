"""The training loss, the held-out loss, and one greedy sample to watch the model learn."""
from __future__ import annotations

from .. import data as D
from .batches import collate, to_device
from .head import final_softcap, full_head


def loss_sum(model, batch, chunk_tokens: int = 0, head=None, fused_loss=None):
    """Sum of the token cross-entropies over trained tokens (labels shifted by one), in fp32.

    With a `head` (the lm_head engine.torchside.head.detach_head took out) and chunk_tokens, the model returns
    hidden states and the loss is computed only at trained positions, chunk by chunk, each chunk's logits
    recomputed in backward instead of kept: identical loss and gradients, a fraction of the memory and of the
    lm_head work. `fused_loss` (Liger's fused linear cross-entropy) does the same inside one kernel."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    from .attention import NAME as PACKED
    labels = batch.pop("labels")
    segments = batch.pop("segments", None)  # where each packed example starts, from collate
    inner = model.module if hasattr(model, "module") else model
    if segments is not None and getattr(inner.config, "_attn_implementation", None) == PACKED:
        batch["rigtune_segments"] = segments
    out = model(**batch, use_cache=False).logits
    target = labels[:, 1:]
    if not chunk_tokens or head is None:
        logits = out[:, :-1].float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=D.IGNORE,
                               reduction="sum")
    keep = target != D.IGNORE
    hidden, y = out[:, :-1][keep], target[keep]
    if fused_loss is not None:  # the same sum, chunked inside one kernel
        return fused_loss(head.weight, hidden, y).float()
    total = out.new_zeros((), dtype=torch.float32)
    cap = final_softcap(inner)

    def piece(h, t):
        logits = head(h).float()
        if cap:  # as the model's own forward does (Gemma 2): cap * tanh(logits / cap)
            logits = cap * torch.tanh(logits / cap)
        return F.cross_entropy(logits, t, reduction="sum")
    for i in range(0, y.numel(), chunk_tokens):
        total = total + checkpoint(piece, hidden[i:i + chunk_tokens], y[i:i + chunk_tokens], use_reentrant=False)
    return total


def evaluate(model, eval_seqs, cfg, pad_id, device, head=None, fused_loss=None) -> float | None:
    """Mean loss per trained token over the held-out sequences (None when there are none)."""
    import torch
    if not eval_seqs:
        return None
    model.eval()
    total, count = 0.0, 0
    mbs = cfg.train.micro_batch_size
    with torch.no_grad():
        for i in range(0, len(eval_seqs), mbs):
            chunk = eval_seqs[i:i + mbs]
            batch = to_device(collate(chunk, pad_id, cfg.data.packing), device)
            total += float(loss_sum(model, batch, cfg.train.loss_chunk_tokens, head, fused_loss))
            count += sum(s.trained for s in chunk)
    model.train()
    return total / max(1, count)


def sample(model, tokenizer, example, max_new_tokens: int, device, head=None, fixed_length: bool = False,
           adapter: bool = True) -> dict | None:
    """Greedy generation for one held-out prompt, to watch the model learn: {question, prompt, completion}.
    With fixed_length every rank runs the same number of forward passes (a sharded model needs all ranks in
    each one); the text is cut at the end-of-sequence token afterwards. adapter=False answers as the base
    model (peft's adapters switched off for the call)."""
    import contextlib

    import torch

    if max_new_tokens <= 0 or example is None:
        return None
    if example.text is not None:
        ids = tokenizer(example.text, add_special_tokens=True)["input_ids"][:16]
        prompt = question = tokenizer.decode(ids)
    else:
        first = next(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
        question = example.messages[first - 1]["content"] if first else ""
        prompt_msgs = [{"role": m["role"], "content": m["content"]} for m in example.messages[:first]]
        prompt = tokenizer.apply_chat_template(prompt_msgs, tools=example.tools, tokenize=False,
                                               add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    model.eval()
    switch = contextlib.nullcontext() if adapter else model.disable_adapter()
    with torch.no_grad(), full_head(model, head), switch:
        out = model.generate(input_ids=torch.tensor([ids], device=device), max_new_tokens=max_new_tokens,
                             min_new_tokens=max_new_tokens if fixed_length else None, do_sample=False,
                             use_cache=True, pad_token_id=tokenizer.pad_token_id)
    model.train()
    new = out[0][len(ids):].tolist()
    if tokenizer.eos_token_id in new:
        new = new[:new.index(tokenizer.eos_token_id)]
    completion = tokenizer.decode(new, skip_special_tokens=True)
    return {"question": question, "prompt": prompt, "completion": completion}
