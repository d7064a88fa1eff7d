"""Planner accuracy: predict every published measurement in points.toml and record the error.

Run: .venv/bin/python bench/planner_accuracy/run.py   (writes bench/planner_accuracy/RESULTS.md)
"""
import datetime
import platform
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from engine import planner as P  # noqa: E402

FIELDS = {"gpus", "seq_len", "micro_batch", "lora_r", "lora_targets", "lora_dropout", "lora_dtype", "optimizer",
          "gradient_checkpointing", "attn", "quantization", "double_quant", "compute_dtype", "strategy",
          "cpu_offload", "loss", "upcast"}


def predict(point: dict, models: dict):
    inp = P.PlanInput(arch=models[point["model"]], **{k: v for k, v in point.items() if k in FIELDS})
    if point["kind"] == "peak":
        return P.peak(inp)
    return P.max_seq_len(inp)


def main(write: bool = True) -> float:
    points = tomllib.loads((HERE / "points.toml").read_text())["point"]
    models = P.load_models()
    rows, errors = [], []
    for pt in points:
        pred = predict(pt, models)
        err = (pred - pt["measured"]) / pt["measured"]
        errors.append(abs(err))
        unit = "GiB" if pt["kind"] == "peak" else "tokens"
        rows.append(f"| {pt['id']} | {pt['kind']} | {pt['measured']:g} {unit} | {pred:.1f} {unit} | {err:+.1%} | {pt['source']} |")
    mae = sum(errors) / len(errors)
    out = [
        "# Planner accuracy", "",
        f"Measured {datetime.date.today()} on {platform.node() or 'this machine'} ({platform.machine()}, Python "
        f"{platform.python_version()}); the planner is pure arithmetic, so the machine does not change the figures.",
        "", f"**Mean absolute error: {mae:.1%}** over {len(points)} published measurements.", "",
        "| point | kind | measured | planner | error | source |", "|---|---|---|---|---|---|", *rows, "",
        "Settings of each point are in points.toml. Peaks are per GPU. Max-context points compare the planner's",
        "longest sequence at micro-batch 1 on a card of that size with the longest the source could train.",
        "",
        "Reviewed and not used: Answer.AI's fsdp_qlora benchmarks (benchmarks_03_2024.md) report peak reserved",
        "memory for their own FSDP training script, whose allocator behaviour the planner does not model: going",
        "from 512 to 2,048 tokens adds only 0.23 GiB at batch 1 (less than the bf16 logits alone), while going from",
        "batch 1 to 4 at 2,048 tokens adds 6 GiB. The planner is off by +3% to +90% on those points, so they would",
        "calibrate another stack, not rigtune's. The HF 4-bit blog gives no peak figures with their settings. Both",
        "should be revisited with measurements of rigtune's own engine in a session that has a GPU.",
    ]
    if write:
        (HERE / "RESULTS.md").write_text("\n".join(out) + "\n")
        print("\n".join(out))
    return mae


if __name__ == "__main__":
    main()
