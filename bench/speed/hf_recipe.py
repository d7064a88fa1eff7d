"""The baseline: the default recipe Axolotl and LLaMA-Factory wrap - HF Trainer + PEFT LoRA on a bitsandbytes
NF4 base, prepare_model_for_kbit_training, examples padded to the longest in the batch, no packing.
Examples and labels are the same as rigtune's (engine.data), so only the training stack differs.

Usage (from bench/speed/run.py): python hf_recipe.py MODEL_DIR TRAIN_JSON OUT_DIR SEQ MICRO_BATCH LR [ROOT]
BENCH_DEVICE=cuda (bench/gpu/run.py) trains on the GPU in bfloat16 and reports max_memory_reserved.
"""
import json
import os
import time

t_start = time.time()

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training  # noqa: E402
from transformers import (AutoModelForCausalLM, BitsAndBytesConfig, DataCollatorForSeq2Seq,  # noqa: E402
                          Trainer, TrainingArguments)

from baseline_args import D, read  # noqa: E402  (puts rigtune's root on the path)


def main():
    model_dir, out_dir, seq, mbs, lr, tok, encs = read()
    rows = [{"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)} for e in encs]
    torch.manual_seed(42)
    device = os.environ.get("BENCH_DEVICE", "cpu")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, device_map={"": device},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype))
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=mbs, gradient_accumulation_steps=1,
                             num_train_epochs=1, learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=0.03,
                             weight_decay=0.0, max_grad_norm=1.0, logging_steps=10, save_strategy="no",
                             report_to=[], use_cpu=device == "cpu", bf16=device == "cuda", optim="adamw_torch",
                             seed=42, dataloader_num_workers=0,
                             gradient_checkpointing=False, disable_tqdm=True)
    collator = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=D.IGNORE)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
    trainer.train()
    model.save_pretrained(f"{out_dir}/adapter", safe_serialization=True)
    peak = round(torch.cuda.max_memory_reserved() / 2**30, 3) if device == "cuda" else None
    print(json.dumps({"steps": trainer.state.global_step, "seconds": time.time() - t_start, "peak_gib": peak,
                      "trained_tokens": sum(sum(1 for x in r["labels"][1:] if x != D.IGNORE) for r in rows)}))


if __name__ == "__main__":
    main()
