"""The Ollama Modelfile's TEMPLATE, run as Ollama runs it (tests/gotemplate.py: the Go template subset it is
written in, and Ollama's collation of .Messages and .System), gives what the model's own chat template renders
for the same conversation, as transformers renders it (its BOS and EOS, add_generation_prompt, today's date):
with and without a system prompt, over one and several turns. Templates: the CPU demo's (rigtune's ChatML
default) and the published ones of each catalog family, stored in tests/fixtures/templates with their sources
(SOURCES.md)."""
from pathlib import Path

import pytest

from engine.data import DEFAULT_CHAT_TEMPLATE
from engine.errors import BadInput
from engine.ollama import modelfile, render
from gotemplate import execute

FIXTURES = Path(__file__).parent / "fixtures" / "templates"
# name: (template file, the tokenizer's bos, eos and the special tokens an answer can end with). Llama 3.3
# ships Llama 3.1's template byte for byte.
FAMILIES = {
    "llama-3.1": ("llama-3.1-8b-instruct", "<|begin_of_text|>", "<|eot_id|>", ["<|eot_id|>", "<|eom_id|>"]),
    "llama-3.2": ("meta-llama-Llama-3.2-3B-Instruct", "<|begin_of_text|>", "<|eot_id|>", ["<|eot_id|>"]),
    "qwen2.5": ("qwen2.5-7b-instruct", None, "<|im_end|>", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
    "qwen3": ("qwen3", None, "<|im_end|>", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
    "qwen3.5": ("qwen3_5_think", None, "<|im_end|>", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
    "qwen3.5-2b": ("qwen3_5_nothink", None, "<|im_end|>", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
    "qwen3.6": ("qwen3_6", None, "<|im_end|>", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
    "gemma-2": ("google-gemma-2-2b-it", "<bos>", "<eos>", ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]),
    "gemma-3": ("gemma3", "<bos>", "<eos>", ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]),
    "gemma-4": ("gemma4_v5", "<bos>", "<eos>", ["<bos>", "<eos>", "<|turn>", "<turn|>"]),
    "gpt-oss": ("openai-gpt-oss-120b", "<|startoftext|>", "<|return|>",
                ["<|startoftext|>", "<|start|>", "<|message|>", "<|channel|>", "<|end|>", "<|return|>", "<|call|>"]),
    "phi-3.5": ("microsoft-Phi-3.5-mini-instruct", "<s>", "<|endoftext|>", ["<|end|>", "<|endoftext|>", "<|user|>"]),
    "phi-4": ("microsoft-phi-4", "<|endoftext|>", "<|endoftext|>",
              ["<|endoftext|>", "<|im_start|>", "<|im_sep|>", "<|im_end|>"]),
    "mistral-nemo": ("mistralai-Mistral-Nemo-Instruct-2407", "<s>", "</s>", ["<s>", "</s>", "[INST]", "[/INST]"]),
    "mistral-small-3.2": ("Mistral-Small-3.2-24B-Instruct-2506", "<s>", "</s>",
                          ["<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]),
}
TEMPLATES = {"demo": DEFAULT_CHAT_TEMPLATE} | {k: (FIXTURES / f"{v[0]}.jinja").read_text() for k, v in FAMILIES.items()}
SPECIAL = {"demo": {"specials": ["<|im_start|>", "<|im_end|>"], "eos": "<|im_end|>"}} | {
    k: {"bos": bos, "eos": eos, "specials": specials} for k, (_, bos, eos, specials) in FAMILIES.items()}
TURNS = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Teal."},
         {"role": "user", "content": "Another?"}]
STOPS = {"llama-3.1": ["<|eot_id|>"], "llama-3.2": ["<|eot_id|>"], "gemma-2": ["<end_of_turn>", "<eos>"],
         "gemma-3": ["<end_of_turn>", "<eos>"], "gemma-4": ["<turn|>", "<eos>"], "gpt-oss": ["<|return|>"],
         "phi-3.5": ["<|end|>", "<|endoftext|>"], "phi-4": ["<|im_end|>", "<|endoftext|>"], "mistral-nemo": ["</s>"],
         "mistral-small-3.2": ["</s>"]} | {
    k: ["<|im_end|>"] for k in ("demo", "qwen2.5", "qwen3", "qwen3.5", "qwen3.5-2b", "qwen3.6")}


def written(name: str, system: str | None = None) -> str:
    return modelfile("./model.gguf", TEMPLATES[name], SPECIAL[name], system)


def go_template(name: str) -> str:
    return written(name).split('TEMPLATE """')[1].split('"""')[0]


def jinja(name: str, messages: list) -> str:
    s = SPECIAL[name]
    return render(TEMPLATES[name], messages, True, s.get("bos") or "", s.get("eos") or "")


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_modelfile_template_renders_like_the_chat_template(name):
    go = go_template(name)
    for system in (None, "Be brief."):
        for turns in (1, 3, 5):
            messages = ([{"role": "system", "content": system}] if system else []) + TURNS[:turns]
            if system and name == "gemma-2":  # its template refuses a system message: the Modelfile drops one
                with pytest.raises(ValueError, match="System role not supported"):
                    jinja(name, messages)
                assert execute(go, system, messages) == jinja(name, TURNS[:turns])
                continue
            assert execute(go, system or "", messages) == jinja(name, messages), (system, turns)
            if system:  # the Modelfile's SYSTEM, which Ollama puts first when the chat has no system message
                assert execute(go, system, TURNS[:turns]) == jinja(name, messages)


def test_every_catalog_family_has_its_published_template():
    assert set(FAMILIES) >= {"llama-3.1", "llama-3.2", "qwen2.5", "qwen3", "qwen3.5", "qwen3.6", "gemma-2",
                             "gemma-3", "gemma-4", "gpt-oss", "phi-3.5", "phi-4", "mistral-nemo",
                             "mistral-small-3.2"}
    sources = (FIXTURES / "SOURCES.md").read_text()
    for _, (stem, *_) in FAMILIES.items():
        assert f"{stem}.jinja" in sources


@pytest.mark.parametrize("name", STOPS)
def test_the_stops_are_the_tokens_that_end_an_answer(name):
    lines = [line for line in written(name).splitlines() if line.startswith("PARAMETER")]
    assert lines == [f'PARAMETER stop "{s}"' for s in STOPS[name]]


@pytest.mark.parametrize("name", ["demo", "llama-3.1", "qwen2.5", "gemma-3", "mistral-nemo", "phi-3.5", "phi-4"])
def test_a_chat_that_ends_on_an_answer_is_closed_as_the_template_closes_a_final_answer(name):
    s = SPECIAL[name]
    for turns in (2, 4):
        want = render(TEMPLATES[name], TURNS[:turns], False, s.get("bos") or "", s.get("eos") or "")
        assert execute(go_template(name), "", TURNS[:turns]) == want


def test_where_each_template_puts_the_system_prompt_and_what_it_writes_without_one():
    one = TURNS[:1]
    sys = [{"role": "system", "content": "Be brief."}] + one
    llama, qwen = go_template("llama-3.1"), go_template("qwen2.5")
    assert execute(llama, "", one).count("Cutting Knowledge Date") == 1
    assert execute(llama, "Be brief.", sys).count("<|start_header_id|>system") == 1
    assert "You are Qwen" in execute(qwen, "", one) and "You are Qwen" not in execute(qwen, "Be brief.", sys)
    # Gemma 3 folds the system prompt into the first user turn, Mistral into the last one
    assert execute(go_template("gemma-3"), "Be brief.", TURNS[:3]).startswith(
        "<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>")
    assert execute(go_template("mistral-nemo"), "Be brief.", TURNS[:3]).endswith(
        "</s>[INST]Be brief.\n\nName a colour.[/INST]")
    # gpt-oss: its harmony system block always, today's date in it, a system prompt as the developer block
    oss = execute(go_template("gpt-oss"), "Be brief.", TURNS[:3])
    from datetime import date
    assert f"Current date: {date.today():%Y-%m-%d}" in oss and "<|start|>developer<|message|># Instructions" in oss
    assert "<|start|>assistant<|channel|>final<|message|>Hello! How can I help?<|end|>" in oss
    assert oss.endswith("<|start|>assistant")
    # Qwen3.5 opens a think block for the answer and writes none for past ones; Qwen3 writes none at all
    q35 = execute(go_template("qwen3.5"), "", TURNS[:3])
    assert q35.endswith("<|im_start|>assistant\n<think>\n") and q35.count("<think>") == 1
    assert "<think>" not in execute(go_template("qwen3"), "", TURNS[:3])


def test_a_template_ollama_cannot_render_the_same_is_refused_with_the_reason():
    with pytest.raises(BadInput, match="refuses a system prompt"):
        written("gemma-2", "Be brief.")
    odd = ("{% for m in messages %}{% if loop.index0 == 4 %}<<{{ m.content }}>>{% else %}[{{ m.role }}]"
           "{{ m.content }}{% endif %}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")
    with pytest.raises(BadInput, match="not written the same way each time"):
        modelfile("./m.gguf", odd, {})
    clock = "{{ strftime_now('%H:%M') }}{% for m in messages %}{{ m.content }}{% endfor %}"
    with pytest.raises(BadInput, match="writes the time as '%H:%M'"):
        modelfile("./m.gguf", clock, {})
    dropped = "{% for m in messages %}{% if m.role != 'system' %}{{ m.content }}{% endif %}{% endfor %}"
    with pytest.raises(BadInput, match="drops the system prompt"):
        modelfile("./m.gguf", dropped, {})
    # a template that fails on a system message other than by its own raise_exception: refused, not taken as
    # one that refuses system prompts (whose Modelfile would drop them)
    broken = ("{% for m in messages %}{% if m.role == 'system' %}{{ m.content + 1 }}{% else %}{{ m.content }}"
              "{% endif %}{% endfor %}")
    with pytest.raises(BadInput, match="fails \\(TypeError"):
        modelfile("./m.gguf", broken, {})
