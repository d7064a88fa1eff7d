"""TRL's DPOTrainer on the DPO demo, for bench/speed/dpo.py: the same NF4 base, starting from the same SFT adapter,
the same pairs, steps, beta, learning rate, schedule, micro-batch and LoRA, in fp32 as rigtune's CPU run.

The pairs go in as TRL's conversational preference format (prompt messages, one chosen and one rejected
assistant message), built from rigtune's own reading of the file (engine.prefdata), and TRL tokenizes them
itself; before training this script checks that TRL's tokens are rigtune's, sequence by sequence, and which of
them count (the completion), so only the training stack differs.

The reference is TRL's default for a model that is already a PeftModel with an adapter loaded (the SFT one)
and no ref_model: DPOTrainer copies that adapter into a second, frozen adapter named "ref" and runs the
reference forward with it active, live, in every step (precompute_ref_log_probs stays False, its default). So
both stacks compare the policy with the same reference model, the starting SFT adapter.

On a quantized model DPOTrainer casts the trainable adapter weights to bf16 (TRL's choice, after the QLoRA
paper), with no option to turn it off; the weights then train in bf16, without an fp32 copy. With the last
argument `fp32-adapter` this script casts them back to fp32 after the trainer is built (before its optimizer
exists), as rigtune trains them: a diagnostic of that one difference, not TRL's default.

Usage: python trl_dpo.py MODEL_DIR SFT_ADAPTER PAIRS_JSONL OUT_DIR SEQ MICRO_BATCH LR EPOCHS WARMUP_RATIO BETA ROOT
                         [fp32-adapter]
"""
import json
import sys
import time

t_start = time.time()

import datasets  # noqa: E402
import torch  # noqa: E402
import trl  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

sys.path.insert(0, sys.argv[11])
from engine import data as D  # noqa: E402
from engine import prefdata  # noqa: E402


def same_tokens(trainer, pairs, tok, seq) -> int:
    """How many pairs TRL tokenized differently from rigtune (ids, or where the answer starts)."""
    wrong = 0
    for row, pair in zip(trainer.train_dataset, pairs, strict=True):
        enc, _ = prefdata.encode_pair(tok, pair, seq)
        for answer, ours in (("chosen_ids", enc.chosen), ("rejected_ids", enc.rejected)):
            theirs = row["prompt_ids"] + row[answer]
            trained = [i for i, label in enumerate(ours.labels) if label != D.IGNORE]
            answer = list(range(len(row["prompt_ids"]), len(ours.input_ids)))
            wrong += theirs[:seq] != ours.input_ids or trained != answer
    return wrong


def main():
    model_dir, adapter, pairs_path, out_dir, seq, mbs, lr, epochs, warmup, beta = sys.argv[1:11]
    seq = int(seq)
    pairs, _, _ = prefdata.load(pairs_path, "auto", "dpo")
    rows = [{"prompt": [{"role": m["role"], "content": m["content"]} for m in p.prompt],
             "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]
    tok = D.ensure_chat_template(AutoTokenizer.from_pretrained(model_dir))
    torch.manual_seed(42)
    base = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, device_map={"": "cpu"}, attn_implementation="sdpa",
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32,
                                               bnb_4bit_quant_storage=torch.float32))
    model = PeftModel.from_pretrained(base, adapter, is_trainable=True)
    args = DPOConfig(output_dir=out_dir, per_device_train_batch_size=int(mbs), gradient_accumulation_steps=1,
                     num_train_epochs=float(epochs), learning_rate=float(lr), lr_scheduler_type="cosine",
                     warmup_steps=float(warmup), weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", seed=42,
                     beta=float(beta), loss_type=["sigmoid"], max_length=seq, bf16=False, use_cpu=True,
                     gradient_checkpointing=False, logging_steps=1, save_strategy="no", eval_strategy="no",
                     report_to=[], disable_tqdm=True, dataloader_num_workers=0)
    trainer = DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
    mismatched = same_tokens(trainer, pairs, tok, seq)
    if mismatched:
        raise SystemExit(f"TRL tokenized {mismatched} sequences differently from rigtune")
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    if sys.argv[12:] == ["fp32-adapter"]:
        for p in trainable:
            p.data = p.data.float()
    trainer.train()
    trainer.model.save_pretrained(f"{out_dir}/adapter", safe_serialization=True, selected_adapters=["default"])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(json.dumps({"steps": trainer.state.global_step, "seconds": time.time() - t_start, "losses": losses,
                      "trl": trl.__version__, "adapters": sorted(trainer.model.peft_config),
                      "trainable_params": sum(p.numel() for p in trainable),
                      "trainable_dtypes": sorted({str(p.dtype) for p in trainable}),
                      "reward_accuracies": [h.get("rewards/accuracies") for h in trainer.state.log_history
                                            if "loss" in h]}))


if __name__ == "__main__":
    main()
