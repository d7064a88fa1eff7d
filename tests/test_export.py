"""Exports of the CPU demo's fine-tune: the merged model against base + adapter (transformers), GGUF and the
GGUF LoRA against a real llama.cpp (node-llama-cpp's prebuilt CPU binaries, installed from the npm registry
into a cache folder; skipped with the reason where node/npm or the registry are missing), and the Ollama
Modelfile against the chat template it is made from."""
import fcntl
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import ROOT, fake_hub_cache, held_out, on_hub_base, rigtune

LLAMA_DIR = Path.home() / ".cache" / "rigtune-tests" / "llama"
PROMPTS = ["May I ask your name?", "I wonder what you eat.", "Would you share how old you are?"]


def export(run, *args):
    return rigtune("export", run, *args, timeout=600)


def prompt_ids(tok, text):
    rendered = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    return tok(rendered, add_special_tokens=False)["input_ids"]


def test_merged_matches_base_plus_adapter(demo_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine import runfile
    from engine.torchside.model import load_base
    cfg = runfile.load(demo_run / "run.toml")
    for into, quantization in (("dequantized", "nf4"), ("original", "none")):
        out = tmp_path / into
        res = export(demo_run, "--to", "merged", "--out", out, "--merge-into", into)
        assert res.returncode == 0, res.stderr
        assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= {p.name for p in out.iterdir()}
        card = (out / "README.md").read_text()
        assert cfg.model.base in card and "final eval loss" in card and f"merged into the {into}" in card
        tok = AutoTokenizer.from_pretrained(out)
        assert tok.chat_template  # the chat template travels with it
        ids = torch.tensor([prompt_ids(tok, PROMPTS[0])])
        merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        values = cfg.to_dict()
        values["model"]["quantization"] = quantization  # the reference: the adapter on the base it merged into
        ref = PeftModel.from_pretrained(load_base(runfile.RunConfig(values), "cpu"), demo_run / "adapter").eval()
        with torch.no_grad():
            a, b = merged(ids).logits, ref(ids).logits
        assert torch.allclose(a, b, atol=1e-4, rtol=0), (into, (a - b).abs().max())  # fp32 rounding only
    again = export(demo_run, "--to", "merged", "--out", tmp_path / "original")
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr


def test_ollama_modelfile_renders_like_the_chat_template(demo_run, demo_cache, tmp_path):
    from engine.modelfiles import output_kind
    from engine.ollama import render
    from gotemplate import execute
    res = export(demo_run, "--to", "ollama", "--out", tmp_path / "ol", "--system", "Be brief.")
    assert res.returncode == 0, res.stderr
    assert "ollama create cpu-demo -f" in res.stdout
    text = (tmp_path / "ol" / "Modelfile").read_text()
    assert text.startswith("FROM ./model.gguf\n") and 'PARAMETER stop "<|im_end|>"' in text
    assert 'SYSTEM """Be brief."""' in text and (tmp_path / "ol" / "model.gguf").stat().st_size > 0
    assert output_kind(tmp_path / "ol") == "ollama"  # what a later --force may replace
    go = text.split('TEMPLATE """')[1].split('"""')[0]
    template = demo_cache.glob("tiny-demo-v*/chat_template.jinja")
    jinja = next(template).read_text()
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    for system in ("Be brief.", ""):  # run as Ollama runs it (tests/gotemplate.py), with SYSTEM set and without
        head = [{"role": "system", "content": system}] if system else []
        assert execute(go, system, head + turns) == render(jinja, head + turns, False)
        more = head + turns + [{"role": "user", "content": "And you?"}]
        assert execute(go, system, more) == render(jinja, more, True)


def llama_cpp() -> Path:
    """node-llama-cpp installed in a cache folder (once; under a minute), or skip saying why."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are not installed: the real llama.cpp test needs node-llama-cpp")
    LLAMA_DIR.mkdir(parents=True, exist_ok=True)
    with open(LLAMA_DIR / ".install.lock", "w") as lock:  # one installer at a time (the suite runs under xdist)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (LLAMA_DIR / "node_modules" / "node-llama-cpp").exists():
            res = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "node-llama-cpp@3"], cwd=LLAMA_DIR,
                                 capture_output=True, text=True, timeout=600)
            if res.returncode != 0:
                pytest.skip(f"npm could not install node-llama-cpp: {res.stderr.strip().splitlines()[-1:]}")
        script = (ROOT / "tests" / "llama_greedy.mjs").read_bytes()
        if not (LLAMA_DIR / "llama_greedy.mjs").is_file() or (LLAMA_DIR / "llama_greedy.mjs").read_bytes() != script:
            (LLAMA_DIR / "llama_greedy.mjs").write_bytes(script)
    return LLAMA_DIR


def greedy(model: Path, lora: Path | None, ids: list, n: int = 8) -> list:
    res = subprocess.run(["node", "llama_greedy.mjs", str(model), str(lora) if lora else "-", str(n)]
                         + [json.dumps(x) for x in ids], cwd=llama_cpp(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return [json.loads(line) for line in res.stdout.strip().splitlines()]


def until_eos(model, ids: list, eos: int, n: int = 8) -> list:
    """transformers' greedy continuation as llama.cpp's evaluation loop gives it: at most n tokens, ending before
    the end-of-sequence token."""
    new = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=eos)[0][len(ids):]
    new = new.tolist()
    return new[:new.index(eos)] if eos in new else new


def test_gguf_and_gguf_lora_run_in_a_real_llama_cpp(demo_run, tmp_path):
    """llama.cpp's greedy continuation of each held-out prompt equals transformers' on the merged model, token
    for token up to the end-of-sequence token (at most 8 tokens), for the merged GGUF (f16 and q8_0) and for the
    GGUF LoRA on a GGUF of the base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.data import answered  # the trainer's rule for a right answer
    llama_cpp()
    for args in (("--to", "merged", "--out", tmp_path / "merged", "--merge-into", "original"),
                 ("--to", "gguf", "--out", tmp_path / "model.gguf", "--merge-into", "original"),
                 ("--to", "gguf", "--base", "--out", tmp_path / "base.gguf"),
                 ("--to", "gguf-lora", "--out", tmp_path / "adapter.gguf"),
                 ("--to", "gguf", "--quant", "q8_0", "--out", tmp_path / "q8.gguf", "--merge-into", "original")):
        res = export(demo_run, *args)
        assert res.returncode == 0, res.stderr
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    ids = [prompt_ids(tok, p) for p in PROMPTS]
    expected = [until_eos(model, x, tok.eos_token_id) for x in ids]
    samples = held_out(demo_run)  # the merged model answers as the trainer's own final eval did
    right = [answered(tok.decode(e, skip_special_tokens=True), samples[p]["expect"])
             for p, e in zip(PROMPTS, expected)]
    assert right == [samples[p]["correct"] for p in PROMPTS] and any(right), right
    assert greedy(tmp_path / "model.gguf", None, ids) == expected
    assert greedy(tmp_path / "base.gguf", tmp_path / "adapter.gguf", ids) == expected
    assert greedy(tmp_path / "base.gguf", None, ids) != expected  # without the adapter it does not know
    assert greedy(tmp_path / "q8.gguf", None, ids) == expected  # 8-bit weights: the same greedy answers


def test_export_refuses_what_it_cannot_do(demo_run, tmp_path):
    from runfixtures import write_run
    unfinished = write_run(tmp_path / "live", steps=3, total=10, state="training")
    res = export(unfinished, "--to", "gguf")
    assert res.returncode == 2 and "no adapter yet" in res.stderr and "Traceback" not in res.stderr
    res = export(demo_run, "--to", "merged", "--base")
    assert res.returncode == 2 and "--base goes with --to gguf" in res.stderr


def test_a_gguf_lora_export_that_fails_midway_leaves_nothing(demo_run, tmp_path, monkeypatch, capsys):
    """The GGUF LoRA is written to a temporary file beside --out and renamed when whole: a writer that fails
    after writing part of it (a full disk here) leaves no file at --out and no temporary one, and an earlier
    export that --force was to replace stays as it was."""
    import errno

    import gguf

    from engine.torchside import export as E
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # main sets it: undone after the test
    out = tmp_path / "adapter.gguf"
    argv = [str(demo_run), "--to", "gguf-lora", "--out", str(out)]
    assert E.main(argv) == 0
    before = out.read_bytes()
    partial = []

    def fail_midway(w, *args, **kw):  # the header and metadata are written; the tensors do not fit
        w.flush()
        partial.append((Path(w.path), Path(w.path).stat().st_size))
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail_midway)
    for args in (["--out", str(tmp_path / "new.gguf")], ["--force"]):
        capsys.readouterr()
        assert E.main(argv + args) == 1
        err = capsys.readouterr().err
        assert "disk full while saving the GGUF LoRA" in err and "export again" in err and "--resume" not in err
    assert [size > 0 for _, size in partial] == [True, True] and not any(p.exists() for p, _ in partial)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter.gguf"] and out.read_bytes() == before


def test_force_replaces_only_an_earlier_export_of_the_same_kind(demo_run, tmp_path):
    """--force never deletes what rigtune did not write: a folder of one's own, or an export of another kind
    (a folder export says what it is in .rigtune-export; a GGUF in its rigtune.export key), each refused with the
    reason and left as it was. An earlier export of the same kind is replaced."""
    from engine import modelfiles as M
    from engine import runfile
    from engine.torchside import gguf_export as G
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    res = export(demo_run, "--to", "merged", "--out", mine, "--force")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"{mine}: this is a folder rigtune did not write; --force replaces only an earlier rigtune merged " \
           "export. Choose another --out, or move it away yourself." in res.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    merged = tmp_path / "merged"
    assert export(demo_run, "--to", "merged", "--out", merged).returncode == 0
    assert M.output_kind(merged) == "merged"
    (merged / "stale.txt").write_text("from the earlier export")
    res = export(demo_run, "--to", "merged", "--out", merged, "--force")
    assert res.returncode == 0, res.stderr
    assert not (merged / "stale.txt").exists() and (merged / "model.safetensors").exists()
    res = export(demo_run, "--to", "ollama", "--out", merged, "--force")
    assert res.returncode == 2 and "this is an earlier rigtune merged export" in res.stderr
    model = tmp_path / "model.gguf"  # what --to gguf writes, here straight from the base
    G.write_model(Path(runfile.load(demo_run / "run.toml").model.base), model, progress=lambda line: None)
    before = model.read_bytes()
    res = export(demo_run, "--to", "gguf-lora", "--out", model, "--force")
    assert res.returncode == 2 and "this is an earlier rigtune gguf export; --force replaces only an earlier " \
        "rigtune gguf-lora export" in res.stderr
    assert model.read_bytes() == before


def test_force_leaves_a_gguf_rigtune_did_not_write(tmp_path):
    """A GGUF from elsewhere (a downloaded model, say) is not an earlier export, even with --force."""
    import gguf

    from engine import modelfiles as M
    theirs = tmp_path / "theirs.gguf"
    w = gguf.GGUFWriter(str(theirs), "llama")
    w.add_name("someone else's model")
    w.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert M.output_kind(theirs) is None
    before = theirs.read_bytes()
    with pytest.raises(M.BadInput, match="this is a file rigtune did not write; --force replaces only an earlier "
                                          "rigtune gguf export"):
        M.refuse_overwrite(theirs, True, "gguf")
    assert theirs.read_bytes() == before


async def test_the_dashboard_offers_chat_and_export_on_a_finished_run(demo_run):
    """c opens the chat over the run's adapter; e picks a format and runs the export, its lines in a log."""
    from textual.widgets import Log, OptionList

    from runfixtures import FakeSampler
    from tui.app import RigtuneApp
    from tui.screens.chat import ChatScreen
    from tui.screens.dashboard import Dashboard
    from tui.screens.export import ExportScreen
    app = RigtuneApp(run_dir=demo_run, sampler=FakeSampler())
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(300):
            await pilot.pause(0.02)
            if isinstance(app.screen, Dashboard) and app.screen.attached:
                break
        d = app.screen
        assert d.check_action("chat", ()) and d.check_action("export", ())
        await pilot.press("c")
        await pilot.pause(0.2)
        assert isinstance(app.screen, ChatScreen)
        await pilot.press("escape")
        await pilot.pause(0.2)
        assert isinstance(app.screen, Dashboard)
        await pilot.press("e")
        await pilot.pause(0.2)
        screen = app.screen
        assert isinstance(screen, ExportScreen)
        options = screen.query_one("#formats", OptionList)
        options.highlighted = 3  # gguf-lora: the quickest
        await pilot.press("enter")
        for _ in range(3000):
            await pilot.pause(0.05)
            lines = screen.query_one("#export-log", Log).lines
            if lines and lines[-1].startswith(("done.", "failed")):
                break
        assert lines[-1] == "done.", lines
        assert (demo_run / "export" / "adapter.gguf").stat().st_size > 0


def tokenize(model: Path, texts: list) -> list:
    res = subprocess.run(["node", "llama_greedy.mjs", str(model), "tokenize", *texts], cwd=llama_cpp(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return [json.loads(line) for line in res.stdout.strip().splitlines()]


def test_gguf_tokenizes_like_transformers(demo_run, demo_cache, tmp_path):
    """The GGUF's vocabulary, merges and pre-tokenizer name make llama.cpp split text exactly as transformers
    does: the demo's GPT-2-style tokenizer, and Llama 3-, Qwen2-, Qwen3.5- and gpt-oss (o200k)-style ones (a Split
    regex, then bytes)."""
    from transformers import AutoTokenizer

    from engine.torchside import gguf_export as G
    from engine.torchside.tiny import build_model
    llama_cpp()
    texts = ["Hello world, it's 2026!", "  numbers 12345 and\nnew lines\n\n", "May I ask your name?",
             "I'd love to hear who your best friend is.", "CamelCase WORDS DON'T cafe\u0301 naïve HTTPServer"]
    corpus = [json.loads(x)["output"] for x in (ROOT / "presets" / "demo.jsonl").read_text().splitlines()] + texts
    cases = []
    for split, name in ((G.LLAMA3_SPLIT, "llama-bpe"), (G.QWEN2_SPLIT, "qwen2"), (G.QWEN35_SPLIT, "qwen35"),
                        (G.GPT4O_SPLIT, "gpt-4o")):
        folder = build_model(tmp_path / name, corpus, vocab_size=400, hidden=64, layers=2, heads=4, kv_heads=2,
                             intermediate=128, split=split)
        assert G.pre_tokenizer(folder) == name
        G.write_model(folder, tmp_path / f"{name}.gguf", progress=lambda line: None)
        cases.append((folder, tmp_path / f"{name}.gguf"))
    assert export(demo_run, "--to", "gguf", "--out", tmp_path / "demo.gguf").returncode == 0
    demo_folder = next(demo_cache.glob("tiny-demo-v*"))
    for folder, gguf in cases + [(demo_folder, tmp_path / "demo.gguf")]:
        tok = AutoTokenizer.from_pretrained(folder)
        assert tokenize(gguf, texts) == [tok(t, add_special_tokens=False)["input_ids"] for t in texts], folder


# family (engine.torchside.tiny.FAMILIES) -> (seed, settings on its tiny copy). Gemma's sliding window (16) is
# shorter than the prompts, and its layers are set apart from llama.cpp's default pattern, so both count; Gemma 3
# scales its full-attention layers' RoPE linearly, as Gemma 3 4B-27B do. Seeds: each family's first seed whose
# greedy steps all lead by GREEDY_MARGIN (seeds 0-7 tried; fp32 llama.cpp and transformers differ by ~1e-5 in a
# logit, so a lead of 0.02 cannot flip); the test asserts the margin, so a changed init cannot make it a coin toss.
GEMMA3 = {"query_pre_attn_scalar": 24, "sliding_window": 16, "layer_types": ["full_attention", "sliding_attention"],
          "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                              "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}
# gpt-oss's YaRN with its correction range rounded out to whole dims (truncate), as llama.cpp's ggml always does it;
# the published truncate: false differs from llama.cpp's RoPE slightly (gguf_archs.notes says so when it exports)
GPT_OSS_YARN = {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096, "beta_fast": 32.0,
                "beta_slow": 1.0, "rope_theta": 150000.0, "truncate": True}
GGUF_FAMILIES = {
    "llama": (4, {}), "mistral": (5, {}), "qwen2": (0, {}), "qwen3": (0, {}), "phi3": (0, {}), "mixtral": (1, {}),
    "qwen3_moe": (0, {"norm_topk_prob": True}),
    "gemma2": (1, {"query_pre_attn_scalar": 24, "sliding_window": 16}),
    "gemma3_text": (3, GEMMA3), "gemma3": (4, GEMMA3), "qwen3_5": (0, {}), "qwen3_5_moe": (0, {}),
    "gemma4_text": (5, {}), "gemma4": (0, {}), "gpt_oss": (3, {"rope_parameters": GPT_OSS_YARN})}
GREEDY_MARGIN = 0.02  # logits: top-1 over top-2 at every generated step, in transformers (fp32)


def tiny_family(folder: Path, family: str, tok, seed: int, settings: dict) -> Path:
    """A tiny random copy of `family` (hidden 64, 2 layers, large weights: the next token depends on the context)
    with `settings` set on its (text) config, random norm weights, saved with its tokenizer, tied embeddings but
    for gpt-oss."""
    import transformers

    from engine.torchside.tiny import _SAVED_AS, family_config
    config = family_config(family, tok, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128,
                           tied=family != "gpt_oss")  # as published: gpt-oss's output layer is its own
    text = config.get_text_config()
    for key, value in {**settings, "initializer_range": 0.4}.items():
        setattr(text, key, value)
    torch.manual_seed(seed)
    model = (getattr(transformers, _SAVED_AS[family])(config) if family in _SAVED_AS  # as published, as tiny does
             else transformers.AutoModelForCausalLM.from_config(config))
    with torch.no_grad():  # norms away from their init (1, or Gemma's 0): each one's weight has to arrive
        for name, weight in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("norm.weight"):
                weight.uniform_(0.5, 3.0)
            elif name.endswith(("layer_scalar", "router.scale", "per_expert_scale")):  # Gemma 4's, ones at init
                weight.uniform_(0.5, 1.5)
        if family.startswith("gemma"):  # Gemma scales embeddings by sqrt(hidden) going in: the layers count too
            model.get_input_embeddings().weight.mul_(64 ** -0.5)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def greedy_margins(model, ids: list, n: int, ends: set) -> tuple:
    """transformers' greedy continuation as llama.cpp's loop gives it (at most n tokens, ending before the first
    token llama.cpp ends generation at: `ends`) and the smallest lead of the chosen token's logit over the next
    one's along it."""
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=model.config.get_text_config().eos_token_id)
    top = torch.stack([s[0].float().topk(2).values for s in out.logits])
    new = out.sequences[0][len(ids):].tolist()
    cut = min([new.index(e) for e in ends if e in new] + [len(new)])
    return new[:cut], (top[:cut + 1, 0] - top[:cut + 1, 1]).min().item()


def greedy_jobs(jobs: list, tmp_path: Path) -> list:
    """llama.cpp's greedy lists for several GGUFs in one node process (llama_greedy.mjs jobs)."""
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    res = subprocess.run(["node", "llama_greedy.mjs", "jobs", str(tmp_path / "jobs.json")], cwd=llama_cpp(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return [json.loads(line) for line in res.stdout.strip().splitlines()]


def test_gguf_of_other_families_runs_in_llama_cpp(tmp_path):
    """A tiny random copy of each family rigtune trains (Llama's and Mistral's permuted q/k rows, Qwen2's q/k/v
    biases, Qwen3's q/k norms and wide heads, Phi-3's fused projections, Mixtral's and Qwen3-MoE's stacked experts,
    Gemma 2's softcaps and Gemma 2/3's shifted norms, sliding windows and per-layer-kind RoPE, the multimodal Gemma 3's
    text model, Qwen3.5's Gated DeltaNet layers with more value than key heads and its M-RoPE, dense and MoE with a
    shared expert, Gemma 4's sliding and full layers with their own head sizes, KV heads and partial RoPE, K as V,
    layer scalars and its 26B-A4B-style MoE block beside the MLP with router scales, gpt-oss's fused biased experts,
    sinks and YaRN) written as GGUF (f32) continues prompts of about 45 tokens in llama.cpp exactly as in
    transformers: 16 new tokens (fewer where llama.cpp's end of generation comes first, at least 8), whole lists
    compared. All GGUFs run in one node process."""
    from transformers import AutoModelForCausalLM

    from engine.torchside import gguf_export as G
    from engine.torchside.tiny import build_tokenizer
    llama_cpp()
    texts = [json.loads(x)["output"] for x in (ROOT / "presets" / "demo.jsonl").read_text().splitlines()]
    tok = build_tokenizer(texts, 320)
    prompts = [tok(" ".join(texts[i:i + 3]), add_special_tokens=False)["input_ids"] for i in (0, 3)]
    assert all(30 < len(x) < 90 for x in prompts), [len(x) for x in prompts]
    jobs, expected = [], []
    ends = {tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")}  # llama.cpp ends generation at either
    for family, (seed, settings) in GGUF_FAMILIES.items():
        folder = tiny_family(tmp_path / family, family, tok, seed, settings)
        G.write_model(folder, tmp_path / f"{family}.gguf", quant="f32", progress=lambda line: None)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        runs = [greedy_margins(model, x, 16, ends) for x in prompts]
        assert min(m for _, m in runs) > GREEDY_MARGIN, (family, runs)
        assert all(len(r) >= 8 for r, _ in runs) and runs[0][0] != runs[1][0], (family, runs)  # no early EOS
        expected.append([r for r, _ in runs])
        jobs.append({"model": str(tmp_path / f"{family}.gguf"), "n": 16, "prompts": prompts})
    got = greedy_jobs(jobs, tmp_path)
    assert dict(zip(GGUF_FAMILIES, got)) == dict(zip(GGUF_FAMILIES, expected))
    published = json.loads((tmp_path / "gpt_oss" / "config.json").read_text())
    published["rope_parameters"]["truncate"] = False  # as gpt-oss ships: the export says llama.cpp's RoPE differs
    (tmp_path / "gpt_oss" / "config.json").write_text(json.dumps(published))
    said = []
    G.write_model(tmp_path / "gpt_oss", tmp_path / "published.gguf", quant="f32", progress=said.append)
    assert any("rounds YaRN's correction range" in line for line in said), said


@pytest.mark.parametrize("family, change, key, words", [
    ("qwen3_moe", {"norm_topk_prob": False}, "norm_topk_prob", "always does"),
    ("qwen3_moe", {"norm_topk_prob": True, "mlp_only_layers": [1]}, "mlp_only_layers", "experts in every layer"),
    ("gemma2", {"query_pre_attn_scalar": 256}, "query_pre_attn_scalar", "scales this size of model by 24"),
    ("gemma2", {"query_pre_attn_scalar": 24, "tie_word_embeddings": False}, "tie_word_embeddings", "reuses"),
    ("gemma3_text", {"query_pre_attn_scalar": 24, "attn_logit_softcapping": 50.0}, "attn_logit_softcapping", "caps"),
    ("gemma4_text", {"hidden_size_per_layer_input": 16}, "hidden_size_per_layer_input", "per-layer input"),
    ("gpt_oss", {"tie_word_embeddings": True}, "tie_word_embeddings", "output layer of its own"),
    ("gemma4_text", {"tokenizer.model": b""}, "--to", "'gemma4' tokenizer"),  # Gemma 4's SentencePiece
    ("qwen3", {"architectures": ["FalconForCausalLM"]}, "--to", "GGUF export covers")])
def test_gguf_refuses_what_llama_cpp_would_run_differently(tmp_path, family, change, key, words):
    """A family rigtune does not write, or settings llama.cpp's graph for the family cannot run as transformers
    does, are refused before anything is written: the key, why, and what to do instead."""
    from engine.errors import BadInput
    from engine.torchside import gguf_export as G
    from engine.torchside.tiny import build_tokenizer
    texts = [json.loads(x)["output"] for x in (ROOT / "presets" / "demo.jsonl").read_text().splitlines()]
    folder = tiny_family(tmp_path / family, family, build_tokenizer(texts, 320), 0,
                         GGUF_FAMILIES[family][1])
    config = json.loads((folder / "config.json").read_text())
    change = dict(change)
    for file in [k for k in change if "." in k]:  # files beside config.json
        (folder / file).write_bytes(change.pop(file))
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(BadInput) as e:
        G.write_model(folder, tmp_path / "no.gguf", progress=lambda line: None)
    assert f"key '{key}'" in str(e.value) and words in str(e.value), str(e.value)
    assert "convert_hf_to_gguf.py" in str(e.value)
    assert not (tmp_path / "no.gguf").exists()


def test_gguf_lora_of_qwen3_5_runs_in_llama_cpp(tmp_path):
    """A LoRA on every linear layer of a tiny Qwen3.5 (as rigtune's all-linear trains it; 2 key and 4 value heads)
    as a GGUF LoRA on the base's GGUF: llama.cpp continues prompts as transformers does on the merged model. The
    factors of the linear attention's projections are reordered as llama.cpp's converter reorders their weights
    (B's rows, out_proj's A columns); the vision tower's are left out with it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.torchside import gguf_export as G
    from engine.torchside.tiny import build_tokenizer
    llama_cpp()
    texts = [json.loads(x)["output"] for x in (ROOT / "presets" / "demo.jsonl").read_text().splitlines()]
    tok = build_tokenizer(texts, 320)
    base = tiny_family(tmp_path / "base", "qwen3_5", tok, 0, {})
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(1)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    assert any(".linear_attn.out_proj.lora_A" in n for n, _ in peft.named_parameters())
    peft.save_pretrained(tmp_path / "adapter")
    merged = peft.merge_and_unload().eval()
    prompts = [tok(" ".join(texts[i:i + 3]), add_special_tokens=False)["input_ids"] for i in (0, 3)]
    runs = [greedy_margins(merged, x, 16, {tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")}) for x in prompts]
    assert min(m for _, m in runs) > GREEDY_MARGIN and all(len(r) >= 8 for r, _ in runs), runs
    G.write_model(base, tmp_path / "base.gguf", quant="f32", progress=lambda line: None)
    G.write_lora(tmp_path / "adapter", base, tmp_path / "adapter.gguf")
    assert greedy(tmp_path / "base.gguf", tmp_path / "adapter.gguf", prompts, 16) == [r for r, _ in runs]


def test_gguf_of_fused_moe_experts_equals_per_expert(tmp_path):
    """A Qwen3-MoE / Qwen3.5-MoE checkpoint whose experts are fused (transformers 5's own layout: gate_up_proj
    [experts, 2 x ff, hidden], down_proj [experts, hidden, ff]) gives the same GGUF tensors as the per-expert
    layout the families' llama.cpp test runs, as llama.cpp's converter splits them."""
    import gguf
    from safetensors.torch import load_file, save_file

    from engine.torchside import gguf_export as G
    from engine.torchside.tiny import build_tokenizer
    texts = [json.loads(x)["output"] for x in (ROOT / "presets" / "demo.jsonl").read_text().splitlines()]
    tok = build_tokenizer(texts, 320)
    for family in ("qwen3_moe", "qwen3_5_moe"):
        folder = tiny_family(tmp_path / family, family, tok, 0, GGUF_FAMILIES[family][1])
        fused = tmp_path / f"{family}-fused"
        shutil.copytree(folder, fused)
        tensors = load_file(str(folder / "model.safetensors"))
        for prefix in sorted({k.split(".experts.")[0] for k in tensors if ".mlp.experts." in k}):
            each = [k for k in tensors if k.startswith(prefix + ".experts.")]
            count = len(each) // 3

            def stack(part):
                return torch.stack([tensors.pop(f"{prefix}.experts.{e}.{part}.weight") for e in range(count)])
            gate, up, down = stack("gate_proj"), stack("up_proj"), stack("down_proj")
            tensors[f"{prefix}.experts.gate_up_proj"] = torch.cat([gate, up], dim=1)
            tensors[f"{prefix}.experts.down_proj"] = down
        save_file(tensors, str(fused / "model.safetensors"))
        for f in (folder, fused):
            G.write_model(f, tmp_path / f"{f.name}.gguf", quant="f32", progress=lambda line: None)
        a, b = (gguf.GGUFReader(tmp_path / f"{f.name}.gguf").tensors for f in (folder, fused))
        assert {t.name: t.data.tobytes() for t in a} == {t.name: t.data.tobytes() for t in b}, family
        assert any(t.name.endswith("ffn_gate_exps.weight") for t in a)


def test_gguf_with_a_sentencepiece_tokenizer(tmp_path):
    """Llama 2 / CodeLlama / Mistral-style: a SentencePiece model (trained here in a second) on a tiny Llama.
    llama.cpp tokenizes text as transformers does and continues each prompt the same (f32)."""
    import sentencepiece
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from engine.torchside import gguf_export as G
    llama_cpp()
    texts = ["Hello world, it's 2026!", "numbers 12345 and new lines", "May I ask your name?",
             "I'd love to hear who your best friend is."]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join([json.loads(x)["output"] for x in (ROOT / "presets" / "demo.jsonl").read_text()
                                 .splitlines()] + texts))
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=320,
                                             model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2,
                                             pad_id=-1, character_coverage=1.0, minloglevel=2)
    folder = tmp_path / "llama2ish"  # laid out as Llama 2 checkpoints ship: tokenizer.model + its config
    folder.mkdir()
    shutil.copy(tmp_path / "sp.model", folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok) == 320
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                 bos_token_id=1, eos_token_id=2, initializer_range=0.4)).save_pretrained(folder)
    assert G.pre_tokenizer(folder) == "default"
    G.write_model(folder, tmp_path / "spm.gguf", quant="f32", progress=lambda line: None)
    varied = sorted({json.loads(x)["instruction"] for x in (ROOT / "presets" / "demo.jsonl").read_text().splitlines()})
    varied += [json.loads(x)["instruction"] for x in (ROOT / "presets" / "demo-eval.jsonl").read_text().splitlines()]
    assert tokenize(tmp_path / "spm.gguf", varied) == [tok(t, add_special_tokens=False)["input_ids"] for t in varied]
    want = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert tokenize(tmp_path / "spm.gguf", texts) == want
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    expected = [until_eos(model, x, 2) for x in want]
    assert len({tuple(e) for e in expected}) == len(expected)
    assert greedy(tmp_path / "spm.gguf", None, want) == expected


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}


def test_gguf_of_a_llama3_rope_scaled_llama_runs_in_llama_cpp(tmp_path):
    """Llama 3.x's "llama3" RoPE scaling travels as llama.cpp's rope_freqs tensor: one factor per frequency, the
    plain inverse frequency over transformers' scaled one. A tiny random Llama scaled from 32 positions (rope_theta
    500000, head_dim 32: frequencies kept, smoothed and divided by 8) continues prompts longer than 32 tokens in
    llama.cpp exactly as in transformers (f32). Without the tensor llama.cpp runs plain RoPE and differs."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from engine.torchside import gguf_export as G
    from engine.torchside.tiny import build_tokenizer
    llama_cpp()
    texts = [json.loads(x)["output"] for x in (ROOT / "presets" / "demo.jsonl").read_text().splitlines()]
    tok = build_tokenizer(texts, 400)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_theta=500000.0, rope_scaling=dict(LLAMA3_ROPE), bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, initializer_range=0.4)
    torch.manual_seed(0)
    folder = tmp_path / "llama3"
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    plain = LlamaConfig(hidden_size=128, num_attention_heads=4, rope_theta=500000.0)  # the same RoPE, unscaled
    ratio = LlamaRotaryEmbedding.compute_default_rope_parameters(plain)[0] / ROPE_INIT_FUNCTIONS["llama3"](config)[0]
    factors = torch.from_numpy(G.rope_factors(saved))
    assert factors.shape == (16,) and torch.allclose(factors, ratio, rtol=1e-5, atol=0), (factors, ratio)
    assert factors.min() == 1 and factors.max() == 8 and ((factors > 1) & (factors < 8)).any()  # all 3 regimes
    hub_style = {k: v for k, v in saved.items() if k != "rope_parameters"} | {
        "rope_theta": 500000.0, "rope_scaling": LLAMA3_ROPE}  # how the hub's Llama 3.1 config.json spells it
    assert torch.equal(torch.from_numpy(G.rope_factors(hub_style)), factors)
    G.write_model(folder, tmp_path / "llama3.gguf", quant="f32", progress=lambda line: None)
    written = {t.name: t for t in gguf.GGUFReader(tmp_path / "llama3.gguf").tensors}
    assert torch.equal(torch.from_numpy(written["rope_freqs.weight"].data.copy()), factors)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    ids = [tok(" ".join(texts[i:i + 8]), add_special_tokens=False)["input_ids"] for i in (0, 8, 16)]
    assert all(len(x) > 40 for x in ids), [len(x) for x in ids]  # past the 32 positions the scaling starts from
    expected = [until_eos(model, x, tok.eos_token_id) for x in ids]
    assert len({tuple(e) for e in expected}) == len(expected)
    assert greedy(tmp_path / "llama3.gguf", None, ids) == expected


@pytest.mark.parametrize("scaling", [{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
                                     {"type": "dynamic", "factor": 2.0}])
def test_gguf_refuses_rope_scaling_it_cannot_write(tiny_model, tmp_path, scaling):
    """RoPE scaling rigtune does not write (llama.cpp would run it as plain RoPE) is refused before anything is
    written, naming rope_scaling and the type; so is "llama3" on a family llama.cpp gives no rope_freqs to."""
    from engine.errors import BadInput
    from engine.torchside import gguf_export as G
    kind = scaling.get("rope_type") or scaling["type"]
    for spelling in ("rope_scaling", "rope_parameters"):
        folder = tmp_path / spelling
        shutil.copytree(tiny_model, folder)
        config = json.loads((folder / "config.json").read_text())
        config.pop("rope_parameters", None)
        (folder / "config.json").write_text(json.dumps({**config, spelling: scaling}))
        with pytest.raises(BadInput) as e:
            G.write_model(folder, tmp_path / "no.gguf", progress=lambda line: None)
        assert "key 'rope_scaling'" in str(e.value) and repr(kind) in str(e.value)
        assert not (tmp_path / "no.gguf").exists()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["Qwen2ForCausalLM"],
                                                    "rope_parameters": dict(LLAMA3_ROPE)}))
    with pytest.raises(BadInput, match="'llama3'"):
        G.check_supported(folder)


def test_gguf_keeps_named_chat_templates(tiny_model, tmp_path):
    """A model with several named chat templates - in tokenizer_config.json as a list, or (transformers' files)
    chat_template.jinja plus additional_chat_templates/NAME.jinja - keeps each in the GGUF: the default as
    tokenizer.chat_template, the others as tokenizer.chat_template.NAME, as llama.cpp's converter writes them.
    A merged export carries the named files along."""
    import gguf
    from transformers import AutoTokenizer

    from engine import modelfiles as M
    from engine.torchside import export as E
    from engine.torchside import gguf_export as G
    default, tools = "{{ 'plain' }}", "{{ 'with tools' }}"
    listed, files = tmp_path / "listed", tmp_path / "files"
    for folder in (listed, files):
        shutil.copytree(tiny_model, folder)
        (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((listed / "tokenizer_config.json").read_text())
    (listed / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": [
        {"name": "default", "template": default}, {"name": "tool_use", "template": tools}]}))
    (files / "chat_template.jinja").write_text(default)
    (files / "additional_chat_templates").mkdir()
    (files / "additional_chat_templates" / "tool_use.jinja").write_text(tools)
    for folder in (listed, files):
        assert AutoTokenizer.from_pretrained(folder).chat_template == {"default": default, "tool_use": tools}
        G.write_model(folder, tmp_path / f"{folder.name}.gguf", progress=lambda line: None)
        fields = gguf.GGUFReader(tmp_path / f"{folder.name}.gguf").fields
        assert fields["tokenizer.chat_template"].contents() == default, folder
        assert fields["tokenizer.chat_template.tool_use"].contents() == tools, folder
        assert M.chat_template(folder) == default  # the Ollama Modelfile's TEMPLATE: the default
    merged = tmp_path / "merged"
    merged.mkdir()
    E.copy_model_files(files, merged)
    assert M.raw_chat_template(merged) == [{"name": "default", "template": default},
                                           {"name": "tool_use", "template": tools}]


def test_export_takes_the_base_of_the_runs_revision_from_the_hub_cache(demo_run, tmp_path):
    """A hub id's base comes from the Hugging Face cache (engine.hub.cached_snapshot, what training downloads
    into), at the run file's [model] revision: not main's snapshot, and a clear error when that revision is not
    here. Two snapshots of the demo model, told apart by a mark in config.json; HF_HUB_CACHE points at them."""
    import os
    import sys

    from engine import runfile
    cfg = runfile.load(demo_run / "run.toml")
    cache = tmp_path / "hub"
    commits = fake_hub_cache(cache, Path(cfg.model.base))
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}

    def export_at(revision: str, out: Path):
        run = on_hub_base(demo_run, tmp_path / f"run-{revision or 'default'}", revision)
        return subprocess.run([sys.executable, "-m", "engine.torchside.export", str(run), "--to", "merged", "--out",
                               str(out), "--merge-into", "original"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)

    for revision, expect in (("v2", "v2"), ("", "main"), (commits["v2"], "v2")):
        out = tmp_path / f"merged-{revision or 'default'}"
        res = export_at(revision, out)
        assert res.returncode == 0, res.stderr
        assert json.loads((out / "config.json").read_text())["rigtune_test_snapshot"] == expect, revision
        assert "tiny-org/demo" in (out / "README.md").read_text()
    res = export_at("v3", tmp_path / "merged-v3")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "(tiny-org/demo at revision v3) are not on this machine" in res.stderr
    assert "rigtune fetch tiny-org/demo --revision v3" in res.stderr
