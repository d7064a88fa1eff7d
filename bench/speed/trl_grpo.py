"""TRL's GRPOTrainer on the GRPO demo, for bench/speed/grpo.py: the same NF4 base, a fresh LoRA of the same shape,
the same prompts through the same chat template, group size, completion length, temperature, beta, epsilon,
prompts per step, steps, learning rate and schedule, and the same reward - rigtune's own (engine.rewards, built
from the run file), called on each completion's text.

Everything is read from rigtune's run file for this run (RUN_TOML), so both stacks get the same values. The
prompts go in as TRL's conversational format (the prompt's messages), built from rigtune's own reading of the
file (engine.promptdata), and TRL renders and tokenizes them itself; before training this script checks that
TRL's prompt tokens are rigtune's, prompt by prompt.

TRL settings changed from GRPOConfig's defaults, and why (grpo.py's RESULTS section repeats them):
  loss_type "grpo"        (default "dapo": token sum over the whole batch's tokens) - rigtune's loss is the mean
                          over each answer's tokens, then the mean over the step's answers
  per_device_train_batch_size = prompts per step x num_generations (TRL counts completions), steps_per_generation
                          1, gradient_accumulation_steps 1, num_iterations 1: one sampling of 4 prompts x 8
                          answers, one optimizer step on it, as rigtune
  beta 0.04               (default 0.0); TRL's KL is the same k3 estimator, exp(ref - logp) - (ref - logp) - 1,
                          against the base with the adapter disabled (TRL's default for a fresh PEFT adapter)
  temperature 0.7         (default 1.0); top_p 1, top_k 0 (TRL's defaults) as rigtune samples
  learning_rate 1e-3, cosine, warmup_steps = warmup_ratio (default 1e-6, linear, no warmup): rigtune's
  bf16 False, gradient_checkpointing False (defaults True): fp32 compute and no checkpointing, as the demo
  logging_steps 1, save/eval off, report_to none
Kept at TRL's default because it already matches: scale_rewards "group" (advantage = (r - mean) / (std + 1e-4)
within each group), epsilon 0.2, importance_sampling_level "token", mask_truncated_completions False,
shuffle_dataset True, AdamW (adamw_torch), weight_decay 0, max_grad_norm 1.0, seed 42.

Differences TRL does not let one change (the RESULTS section reports them):
  - the group's std is Bessel-corrected (n - 1) in TRL, population (n) in rigtune: TRL's advantages are
    sqrt(7/8) = 0.935 of rigtune's for a group of 8, so its KL term weighs relatively 7% more;
  - TRL's log-probabilities are of the temperature-scaled logits (logits / 0.7), for the policy term and the KL;
    rigtune's are of the model's own logits (temperature only shapes the sampling);
  - on a quantized model GRPOTrainer casts the trainable adapter weights to bf16 (as DPOTrainer does). With the
    last argument `fp32-adapter` this script casts them back to fp32 after the trainer is built, before its
    optimizer exists: a diagnostic of that one difference, not TRL's default.

Prints one JSON line: steps, TRL's per-step mean reward, losses, KL, version, adapter dtypes.
Usage: python trl_grpo.py RUN_TOML OUT_DIR ROOT [fp32-adapter]
"""
import json
import sys
import time

t_start = time.time()

import datasets  # noqa: E402
import torch  # noqa: E402
import trl  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

sys.path.insert(0, sys.argv[3])
from engine import data as D  # noqa: E402
from engine import promptdata, rewards, runfile  # noqa: E402


def main():
    run_toml, out_dir = sys.argv[1:3]
    cfg = runfile.load(run_toml)
    tc = cfg.train
    tok = D.ensure_chat_template(AutoTokenizer.from_pretrained(cfg.model.base))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    train, _, _ = promptdata.prepare(cfg, tok)
    rows = [{"prompt": [{"role": m["role"], "content": m["content"]} for m in p.messages],
             "record": json.dumps(p.record)} for p in train]
    rw = rewards.Rewards.from_config(cfg)

    def rigtune_reward(prompts, completions, completion_ids, record, **_):
        """rigtune's [rewards] on each completion's text: the same function the rigtune run scores with."""
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        totals, _ = rw.score(texts, [len(ids) for ids in completion_ids], [json.loads(r) for r in record])
        return totals

    torch.manual_seed(tc.seed)
    base = AutoModelForCausalLM.from_pretrained(
        cfg.model.base, dtype=torch.float32, device_map={"": "cpu"}, attn_implementation="sdpa",
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32,
                                               bnb_4bit_quant_storage=torch.float32))
    # as rigtune's loader does (engine.torchside.model.keep_cpu_weights_as_loaded): no repacking of the 4-bit
    # weights to a bf16 kernel the first time a layer runs in eval mode (generation)
    for mod in base.modules():
        if hasattr(mod, "support_avx512bf16_for_cpu"):
            mod.support_avx512bf16_for_cpu = False
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, bias="none",
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    g = tc.num_generations
    args = GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=tc.micro_batch_size * g, gradient_accumulation_steps=1,
        steps_per_generation=1, num_generations=g, num_iterations=1, max_completion_length=tc.max_completion_length,
        temperature=tc.temperature, top_p=1.0, top_k=0, beta=tc.beta, epsilon=tc.epsilon, loss_type="grpo",
        scale_rewards="group", max_steps=tc.max_steps, learning_rate=tc.learning_rate,
        lr_scheduler_type=tc.lr_scheduler, warmup_steps=float(tc.warmup_ratio), weight_decay=tc.weight_decay,
        max_grad_norm=tc.max_grad_norm, optim="adamw_torch", seed=tc.seed, bf16=False, use_cpu=True,
        gradient_checkpointing=False, logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[],
        disable_tqdm=True, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=base, reward_funcs=rigtune_reward, args=args,
                          train_dataset=datasets.Dataset.from_list(rows), processing_class=tok, peft_config=lora)
    theirs = [trainer._tokenize_prompts([r["prompt"]])[0][0] for r in rows]
    wrong = sum(list(t) != p.ids for t, p in zip(theirs, train, strict=True))
    if wrong:
        raise SystemExit(f"TRL tokenized {wrong} prompts differently from rigtune")
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    if sys.argv[4:] == ["fp32-adapter"]:
        for p in trainable:
            p.data = p.data.float()
    trainer.train()
    trainer.model.save_pretrained(f"{out_dir}/adapter", safe_serialization=True)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    print(json.dumps({"steps": trainer.state.global_step, "seconds": time.time() - t_start,
                      "losses": [h["loss"] for h in logs], "rewards": [h.get("reward") for h in logs],
                      "kl": [h.get("kl") for h in logs], "lengths": [h.get("completions/mean_length") for h in logs],
                      "trl": trl.__version__, "prompts_checked": len(theirs),
                      "trainable_params": sum(p.numel() for p in trainable),
                      "trainable_dtypes": sorted({str(p.dtype) for p in trainable})}))


if __name__ == "__main__":
    main()
