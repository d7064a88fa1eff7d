"""The Ollama Modelfile's TEMPLATE, run as Ollama runs it (tests/gotemplate.py, the Go template subset it is
written in), gives what the model's own chat template renders for the same conversation: with and without a
system prompt, over one and two turns, ending with the generation prompt. Templates: the CPU demo's (rigtune's
ChatML default, no default system block) and, from tests/fixtures, Llama 3.1's and Qwen2.5's, which write a
system block of their own when the conversation has none (copied byte for byte from llama.cpp's
models/templates/meta-llama-Llama-3.1-8B-Instruct.jinja and Qwen-Qwen2.5-7B-Instruct.jinja, the models'
tokenizer_config.json chat templates)."""
from pathlib import Path

import pytest

from engine.data import DEFAULT_CHAT_TEMPLATE
from engine.ollama import modelfile, render
from gotemplate import execute

FIXTURES = Path(__file__).parent / "fixtures"
TEMPLATES = {"demo": DEFAULT_CHAT_TEMPLATE, "llama-3.1": (FIXTURES / "llama-3.1-8b-instruct.jinja").read_text(),
             "qwen2.5": (FIXTURES / "qwen2.5-7b-instruct.jinja").read_text()}
TURNS = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "Name a colour."}]
SPECIAL = {"demo": ["<|im_start|>", "<|im_end|>"], "qwen2.5": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
           "llama-3.1": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"]}


def go_template(name: str) -> str:
    text = modelfile("./model.gguf", TEMPLATES[name], {"specials": SPECIAL[name]})
    return text.split('TEMPLATE """')[1].split('"""')[0]


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("system", [None, "Be brief."])
@pytest.mark.parametrize("turns", [1, 3])
def test_the_modelfile_template_renders_like_the_chat_template(name, system, turns):
    messages = ([{"role": "system", "content": system}] if system else []) + TURNS[:turns]
    want = render(TEMPLATES[name], messages, True)
    assert execute(go_template(name), system or "", messages) == want


def test_the_default_system_block_stands_once_and_only_without_a_system_prompt():
    qwen, llama = go_template("qwen2.5"), go_template("llama-3.1")
    for go, default in ((qwen, "You are Qwen, created by Alibaba Cloud."), (llama, "Cutting Knowledge Date")):
        assert default in execute(go, "", TURNS)
        assert execute(go, "", TURNS).count("system") == 1
    assert "You are Qwen" not in execute(qwen, "Be brief.", [{"role": "system", "content": "Be brief."}] + TURNS)
    with_system = execute(llama, "Be brief.", [{"role": "system", "content": "Be brief."}] + TURNS)
    assert with_system.count("Cutting Knowledge Date") == 1 and with_system.count("<|start_header_id|>system") == 1


def test_the_stops_are_the_tokens_that_end_an_answer():
    llama = modelfile("./m.gguf", TEMPLATES["llama-3.1"], {"specials": SPECIAL["llama-3.1"]})
    assert [line for line in llama.splitlines() if line.startswith("PARAMETER")] == ['PARAMETER stop "<|eot_id|>"']
    qwen = modelfile("./m.gguf", TEMPLATES["qwen2.5"], {"specials": SPECIAL["qwen2.5"], "eos": "<|im_end|>"})
    assert [line for line in qwen.splitlines() if line.startswith("PARAMETER")] == ['PARAMETER stop "<|im_end|>"']
