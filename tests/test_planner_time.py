"""The time estimate: tokens/s and durations on named cards, checked against published training runs (the
held-out points of bench/planner_accuracy/throughput.py) rather than against its own formula."""
import importlib.util
import json
from dataclasses import replace

from conftest import ROOT, rigtune
from engine import planner as P

M = P.load_models()


def inp(name, gpus=(24.0,), **kw):
    return P.PlanInput(arch=M[name], gpus=list(gpus), **kw)


def _bench(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / "planner_accuracy" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plan_estimates_time_on_a_named_card(tmp_path):
    """--gpus takes card names (VRAM and throughput); NxGIB gives a time only when one card has that size;
    with --tokens or a run file with a local dataset, plan --json has the duration."""
    res = rigtune("plan", "--model", "Llama-3.1-8B", "--gpus", "1x4090", "--tokens", "3000000", "--json")
    data = json.loads(res.stdout)
    assert data["card"] == "RTX 4090" and data["gpu_gib"] == 24.0 and data["tokens_per_s_estimate"] > 500
    assert data["duration_s_estimate"] > 0  # against published training times: test_duration_against_published_runs
    two = json.loads(rigtune("plan", "--model", "Llama-3.1-8B", "--gpus", "2x4090", "--tokens", "3000000",
                             "--json").stdout)
    assert two["strategy"] == "ddp" and 1.5 < two["tokens_per_s_estimate"] / data["tokens_per_s_estimate"] <= 2.0
    ambiguous = json.loads(rigtune("plan", "--model", "Llama-3.1-8B", "--gpus", "1x24", "--json").stdout)
    assert ambiguous["tokens_per_s_estimate"] is None and any("name the card" in n for n in ambiguous["notes"])
    assert P.parse_gpus("1x12") == ([12.0], "RTX 4070 Ti") and P.parse_gpus("1xA100-80") == ([80.0], "A100 80GB")
    slow = json.loads(rigtune("plan", "--model", "Llama-3.1-8B", "--gpus", "1x3090", "--tokens", "3000000",
                              "--json").stdout)
    assert slow["duration_s_estimate"] > data["duration_s_estimate"]  # a 3090 has ~43% of a 4090's bf16 peak
    from engine import runfile
    rf = tmp_path / "r.toml"
    runfile.save(runfile.defaults(name="r", model={"base": "Llama-3.1-8B"}, hardware={"gpus": [0]},
                                  data={"path": "rigtune:demo-data", "max_seq_len": 512},
                                  train={"epochs": 2, "micro_batch_size": 4}), rf)
    run = json.loads(rigtune("plan", str(rf), "--gpus", "1x4090", "--json").stdout)
    assert run["duration_s_estimate"] and run["duration_s_estimate"] < 3600
    more = json.loads(rigtune("plan", str(rf), "--gpus", "1x4090", "--json", "--tokens", "10000000").stdout)
    assert more["duration_s_estimate"] > 10 * run["duration_s_estimate"]


# Published training speeds, the held-out points of bench/planner_accuracy/throughput.py:
# Qwen README, 'Profiling of Memory and Speed' (QwenLM/Qwen): LoRA on a bf16 base, one A100-SXM4-80G, flash
# attention 2, gradient checkpointing, r64 on every linear; an iteration is batch 1 x accumulation 8 rows padded
# to the length; seconds per iteration:
QWEN1_LORA_S_PER_IT = {("1.8B", 2048): 1.7, ("1.8B", 8192): 6.8, ("7B", 2048): 5.2, ("7B", 8192): 21.3,
                       ("14B", 2048): 8.4, ("14B", 8192): 36.0}
# torchtune README, 'Memory and training speed' (pytorch/torchtune): Llama 3.1 8B LoRA on a bf16 base, one RTX 4090,
# batch 2 packed to 2,048 tokens, r8: 3,083 tokens/s.
TORCHTUNE_LORA_4090_TOKENS_PER_S = 3083
# The recorded held-out error of the time estimate's tokens/s (bench/planner_accuracy/THROUGHPUT.md): mean 27.8%,
# largest 39.4% (Qwen-14B at 8,192 tokens, estimated slower than it ran).
HELD_OUT_MEAN, HELD_OUT_MAX = 0.278, 0.3945  # the largest to the rounding it is written with


def test_duration_against_published_runs():
    """The planner's duration for a published run's settings and token count against the published time: within
    the recorded held-out error where the held-out points are (torchtune's 4090 LoRA, Qwen-1.8B on an A100), and
    for Qwen-1's 7B and 14B (outside the mean, as THROUGHPUT.md records) long rather than short, within the
    largest recorded error."""
    tput = _bench("throughput")
    assert round(tput.main(write=False)["mae"]["held-out"], 3) == HELD_OUT_MEAN

    def within(duration, published, error):  # the estimate's tokens/s within `error` of the published rate
        return published / (1 + error) <= duration <= published / (1 - error)

    hour = TORCHTUNE_LORA_4090_TOKENS_PER_S * 3600  # the tokens torchtune's run trains in one hour
    data = json.loads(rigtune("plan", "--model", "Llama-3.1-8B", "--gpus", "1x4090", "--seq-len", "2048",
                              "--micro-batch", "2", "--lora-r", "8", "--quantization", "none", "--tokens", str(hour),
                              "--json").stdout)
    assert within(data["duration_s_estimate"], 3600, HELD_OUT_MEAN), data["duration_s_estimate"]
    qwen = _bench("run").EXTRA
    card = P.card_named("A100 80GB")
    for (size, seq), seconds in QWEN1_LORA_S_PER_IT.items():
        iterations = 1000
        run = P.PlanInput(arch=qwen[f"Qwen-{size}"], gpus=[card.vram_gib], card=card.name, seq_len=seq, micro_batch=1,
                          lora_r=64, quantization="none", attn="flash_attention_2")
        p = P.plan(run, total_tokens=iterations * 8 * seq)
        published = iterations * seconds
        assert p.verdict == "fits" and p.duration_s_estimate
        if size == "1.8B":
            assert within(p.duration_s_estimate, published, HELD_OUT_MEAN), (size, seq, p.duration_s_estimate)
        else:
            assert published < p.duration_s_estimate <= published / (1 - HELD_OUT_MAX), (size, seq)


def test_time_model_follows_the_work():
    """Checkpointing adds the recompute (3 passes instead of 2 over the frozen base), a larger model takes longer,
    CPU offload adds PCIe traffic, and a card with twice the peak is faster."""
    base = inp("Llama-3.1-8B", gpus=(24.0,), card="RTX 4090")
    card = P.card_named("RTX 4090")
    ratio = P.tokens_per_s(replace(base, gradient_checkpointing=False), card) / P.tokens_per_s(base, card)
    assert 1.3 < ratio < 1.5
    assert P.tokens_per_s(inp("Llama-2-13B", gpus=(24.0,)), card) < P.tokens_per_s(base, card)
    seventy = inp("Llama-3.1-70B", gpus=(24.0, 24.0), strategy="fsdp", ram_gib=128)
    assert P.micro_batch_seconds(replace(seventy, cpu_offload=True), card)["offload"] > 0
    assert P.tokens_per_s(base, P.card_named("RTX 3090")) < P.tokens_per_s(base, card)
    assert P.fmt_estimate(6000) == "about 1 h 40 min" and P.fmt_estimate(600) == "about 10 min"


def test_datacenter_device_names_as_nvml_reports_them_find_their_card():
    """NVML names a datacenter card with its form factor and memory type; the time estimate and the cloud price
    need the card behind the name (an A100-SXM4-80GB is priced as an A100 80GB, not as a fallback card)."""
    named = {n: (P.card_named(n).name if P.card_named(n) else None) for n in (
        "NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-40GB", "NVIDIA A100 80GB PCIe", "NVIDIA A100-PCIE-40GB",
        "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H200", "Tesla T4", "NVIDIA H100 NVL")}
    assert named == {"NVIDIA A100-SXM4-80GB": "A100 80GB", "NVIDIA A100-SXM4-40GB": "A100 40GB",
                     "NVIDIA A100 80GB PCIe": "A100 80GB", "NVIDIA A100-PCIE-40GB": "A100 40GB",
                     "NVIDIA H100 80GB HBM3": "H100 80GB", "NVIDIA H100 PCIe": "H100 80GB", "NVIDIA H200": "H200",
                     "Tesla T4": "T4", "NVIDIA H100 NVL": None}  # the NVL has 94 GB: no card of the table
