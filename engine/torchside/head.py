"""The lm_head held aside for the chunked loss, and the final logit cap that goes with it. Model loading takes
the head out (detach_head), the loss applies head and cap only where a token trains (final_softcap), the
fused kernels' loss caps the same way, and generation puts the head back (full_head). One module below all
three, so none of them imports another for these."""
from __future__ import annotations


def text_of(config):
    """A multimodal model's text config (Gemma 3), or the config itself."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def final_softcap(model) -> float | None:
    """The model's final logit softcapping (Gemma 2: 30.0), or None; with the lm_head detached, the cap the
    chunked loss applies (detach_head moved it aside)."""
    text = text_of(getattr(model, "config", None))
    return getattr(text, "rigtune_softcap", None) or getattr(text, "final_logit_softcapping", None)


def detach_head(model):
    """Make the forward pass return the final hidden states: the (frozen) lm_head is taken out and returned,
    for the chunked loss to apply only where a token is trained (it is then no registered submodule: no
    DDP bucket, nothing in the adapter file). `full_head(model, head)` puts it back, e.g. to generate.
    A model that caps its logits (Gemma 2: 30 tanh(x / 30)) would cap the hidden states instead: the cap moves
    to `rigtune_softcap` on its config, where the chunked loss applies it to the real logits."""
    import torch
    base = model.get_base_model()
    head = base.get_output_embeddings()
    if head is None or isinstance(head, torch.nn.Identity):
        return None
    base.set_output_embeddings(torch.nn.Identity())
    text = text_of(base.config)
    if getattr(text, "final_logit_softcapping", None):
        text.rigtune_softcap, text.final_logit_softcapping = text.final_logit_softcapping, None
    return head


class full_head:
    """Context manager: the model with its lm_head (and logit cap) in place (generation needs logits)."""

    def __init__(self, model, head):
        self.model, self.head = model, head

    def __enter__(self):
        if self.head is not None:
            base = self.model.get_base_model()
            base.set_output_embeddings(self.head)
            text = text_of(base.config)
            if getattr(text, "rigtune_softcap", None):
                text.final_logit_softcapping = text.rigtune_softcap
        return self.model

    def __exit__(self, *exc):
        if self.head is not None:
            import torch
            base = self.model.get_base_model()
            base.set_output_embeddings(torch.nn.Identity())
            text = text_of(base.config)
            if getattr(text, "rigtune_softcap", None):
                text.final_logit_softcapping = None
