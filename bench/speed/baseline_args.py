"""What both baselines (hf_recipe.py, trl_recipe.py) read first: their arguments, the tokenizer, and rigtune's own
encoded examples (engine.data), so that only the training stack differs between the three sides.

Usage of a baseline: python RECIPE.py MODEL_DIR TRAIN_JSON OUT_DIR SEQ MICRO_BATCH LR [ROOT]
"""
import sys

sys.path.insert(0, sys.argv[7] if len(sys.argv) > 7 else ".")
from engine import data as D  # noqa: E402


def read():
    """(model_dir, out_dir, seq, micro_batch, lr, tokenizer, encoded examples that train something)."""
    from transformers import AutoTokenizer
    model_dir, train_json, out_dir, seq, mbs, lr = sys.argv[1:7]
    seq = int(seq)
    tok = D.ensure_chat_template(AutoTokenizer.from_pretrained(model_dir))
    examples, _, _ = D.load_examples(train_json)
    encs = [enc for enc, _ in (D.encode(tok, ex, seq, False) for ex in examples) if enc.trained]
    return model_dir, out_dir, seq, int(mbs), float(lr), tok, encs
