"""The second baseline: TRL's SFTTrainer, the strongest common recipe - packing (best-fit decreasing) and
padding-free batches, loss on the completion only, LoRA through peft_config on the same NF4 base (TRL
prepares the quantized model for k-bit training itself). The examples and the tokens trained are
rigtune's own (engine.data), handed over tokenized with their completion masks, so only the training stack
differs.

Usage (from bench/speed/run.py): python trl_recipe.py MODEL_DIR TRAIN_JSON OUT_DIR SEQ MICRO_BATCH LR [ROOT]
"""
import json
import time

t_start = time.time()

import datasets  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

from baseline_args import D, read  # noqa: E402  (puts rigtune's root on the path)


def main():
    model_dir, out_dir, seq, mbs, lr, tok, encs = read()
    rows = [{"input_ids": e.input_ids, "completion_mask": [int(x != D.IGNORE) for x in e.labels]} for e in encs]
    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, device_map={"": "cpu"},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32))
    args = SFTConfig(output_dir=out_dir, per_device_train_batch_size=mbs, gradient_accumulation_steps=1,
                     num_train_epochs=1, learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=0.03,
                     weight_decay=0.0, max_grad_norm=1.0, logging_steps=10, save_strategy="no", report_to=[],
                     use_cpu=True, optim="adamw_torch", seed=42, dataloader_num_workers=0,
                     gradient_checkpointing=False, disable_tqdm=True, max_length=seq, packing=True,
                     padding_free=True, completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tok,
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    trainer.train()
    trainer.model.save_pretrained(f"{out_dir}/adapter", safe_serialization=True)
    print(json.dumps({"steps": trainer.state.global_step, "seconds": time.time() - t_start,
                      "trained_tokens": sum(sum(r["completion_mask"][1:]) for r in rows)}))


if __name__ == "__main__":
    main()
