"""GRPO's rewards (engine.rewards) and prompt data (engine.promptdata), torch-free: each built-in reward on
hand-made completions, weighted totals and full marks, a user's function from a real file (a number; a raise, None,
text, NaN or too much, each named with its file and line), [rewards] validation, prompt records and their errors
(file, record, key), prompt tokens with the generation prompt and the left cut, `rigtune check` on a grpo run file,
and the wizard's preview of a prompt."""
import json
from pathlib import Path

import pytest

from conftest import rigtune, run_file
from test_wizard import home  # noqa: F401  (the fixture: a cache where the demo model counts as built)
from engine import data as D
from engine import prefdata as PD
from engine import promptdata as P
from engine import runfile
from engine.errors import BadInput
from engine.preview import preview
from engine.rewards import Rewards, parse_number

FIXTURES = Path(__file__).parent / "fixtures"
PROMPTS = FIXTURES / "prompts.jsonl"
TAGS = "<answer>(.*?)</answer>"

USER_FILE = '''\
"""A user's rewards."""


def score(completion, record):
    return 0.5 if record["answer"] in completion else 0.25


def passes(completion, record):
    return completion.startswith("yes")


def raises(completion, record):
    total = len(completion)
    return total / 0


def gives_none(completion, record):
    if completion:
        return None
    return 1


def gives_text(completion, record):
    return "x"


def gives_nan(completion, record):
    return float("nan")


def too_much(completion, record):
    return 2


def scaled(completion, record):
    return 10 if "42" in completion else 3


scaled.max_reward = 10
'''


def line_of(text: str, fragment: str) -> int:
    return next(no for no, line in enumerate(text.splitlines(), 1) if fragment in line)


def cfg_of(tmp_path: Path, method="grpo", train=None, **rewards):
    """A grpo run file in tmp_path with these [rewards], loaded back (so errors can name its lines)."""
    values = runfile.defaults(model={"base": "m"}, data={"path": str(PROMPTS), "max_seq_len": 256},
                              train={"method": method, **(train or {})}, rewards=rewards)
    path = tmp_path / "run.toml"
    runfile.save(values, path)
    return runfile.load(path)


@pytest.fixture
def user_file(tmp_path):
    (tmp_path / "mine.py").write_text(USER_FILE)
    return tmp_path / "mine.py"


def one(rw, completion, record, n=5):
    totals, parts = rw.score([completion], [n], [record])
    return totals[0], {k: v[0] for k, v in parts.items()}


# ---------------------------------------------------------------------------- the built-in rewards

def test_exact_reads_the_patterns_group_or_the_whole_answer(tmp_path):
    rw = Rewards.from_config(cfg_of(tmp_path, pattern=TAGS, exact=1.0))
    assert rw.names == ["exact"]
    rec = {"answer": "42"}
    assert one(rw, "I think <answer> 42 </answer>", rec)[0] == 1.0
    assert one(rw, "<answer>43</answer>", rec)[0] == 0.0
    assert one(rw, "  42\n", rec)[0] == 1.0            # the pattern does not match: the whole completion, stripped
    assert one(rw, "The answer is 42", rec)[0] == 0.0
    assert one(rw, "<answer>42</answer> and <answer>7</answer>", rec)[0] == 1.0   # the first match
    assert one(rw, "<answer>15</answer>", {"answer": 15})[0] == 1.0                # a number compares as str()
    assert rw.answer("x <answer>\n7\n</answer>") == "7"  # DOTALL: the group may span lines
    bare = Rewards.from_config(cfg_of(tmp_path, exact=1.0))
    assert one(bare, "<answer>42</answer>", rec)[0] == 0.0 and one(bare, " 42 ", rec)[0] == 1.0


def test_numeric_within_tolerance(tmp_path):
    rw = Rewards.from_config(cfg_of(tmp_path, pattern=r"= (\S+)$", exact=0.0, numeric=1.0, tolerance=0.5))
    assert rw.names == ["numeric"]
    for completion, answer, want in [("x = 1,234", 1234, 1.0), ("x = 1,234", "1,234", 1.0), ("x = -3.5", "-3", 1.0),
                                     ("x = -3.6", "-3", 0.0), ("x = +10.4", 10, 1.0), ("x = 10.6", 10, 0.0),
                                     ("x = 12.", "12", 1.0), ("x = .5", 0, 1.0), ("x = ten", 10, 0.0),
                                     ("x = 1,23", 123, 0.0), ("x = nan", 1, 0.0), ("10", 10, 1.0)]:
        assert one(rw, completion, {"answer": answer})[0] == want, (completion, answer)
    strict = Rewards.from_config(cfg_of(tmp_path, exact=0.0, numeric=1.0))
    assert one(strict, "0.30", {"answer": 0.3})[0] == 1.0 and one(strict, "0.31", {"answer": 0.3})[0] == 0.0
    assert [parse_number(s) for s in ("1,234,567.5", "-0", "1e3", "1,2345", "", True)] == [1234567.5, 0.0, None,
                                                                                         None, None, None]


def test_format_searches_with_dotall_and_length_follows_its_target(tmp_path):
    rw = Rewards.from_config(cfg_of(tmp_path, pattern=r"^<answer>.*</answer>$", exact=0.0, format=1.0))
    assert one(rw, "<answer>\nfour\n</answer>", {})[0] == 1.0
    assert one(rw, "well <answer>4</answer>", {})[0] == 0.0   # anchored: the whole completion
    assert one(Rewards.from_config(cfg_of(tmp_path, pattern=TAGS, exact=0.0, format=1.0)), "well <answer>4</answer>",
               {})[0] == 1.0                                   # search: anywhere
    target = Rewards.from_config(cfg_of(tmp_path, exact=0.0, length=1.0, length_target=10))
    assert [one(target, "c", {}, n)[0] for n in (10, 5, 15, 0, 20, 30)] == [1.0, 0.5, 0.5, 0.0, 0.0, 0.0]
    shorter = Rewards.from_config(cfg_of(tmp_path, train={"max_completion_length": 64}, exact=0.0, length=1.0))
    assert [one(shorter, "c", {}, n)[0] for n in (0, 16, 64)] == [1.0, 0.75, 0.0]


def test_weighted_totals_and_solved(tmp_path):
    rw = Rewards.from_config(cfg_of(tmp_path, pattern=TAGS, exact=2.0, format=0.5, length=0.25, length_target=4))
    assert rw.names == ["exact", "format", "length"] and rw.max_total == 2.75
    totals, parts = rw.score(["<answer>42</answer>", "<answer>41</answer>", "42"], [4, 4, 2],
                             [{"answer": "42"}] * 3)
    assert totals == [2.75, 0.75, 2.125]
    assert parts == {"exact": [1.0, 0.0, 1.0], "format": [1.0, 1.0, 0.0], "length": [1.0, 1.0, 0.5]}
    assert [rw.solved(t) for t in totals] == [True, False, False]
    assert rw.solved(2.75 - 1e-12) and not rw.solved(2.75 - 1e-6)
    with pytest.raises(ValueError, match="one length and one record per completion"):
        rw.score(["a", "b"], [1], [{}, {}])


# ---------------------------------------------------------------------------- the user's function

def test_a_user_function_from_its_file(tmp_path, user_file):
    rw = Rewards.from_config(cfg_of(tmp_path, exact=1.0, function="mine.py:score", function_weight=2.0))
    assert rw.names == ["exact", "function"] and rw.max_total == 3.0
    assert rw.rewards[1].label == "mine.py:score"
    totals, parts = rw.score(["42", "7"], [1, 1], [{"answer": "42"}, {"answer": "42"}])
    assert parts["function"] == [0.5, 0.25] and totals == [2.0, 0.5]
    rw = Rewards.from_config(cfg_of(tmp_path, exact=0.0, function="mine.py:passes"))
    assert rw.score(["yes", "no"], [1, 1], [{}, {}])[0] == [1.0, 0.0]   # True/False count as 1/0
    rw = Rewards.from_config(cfg_of(tmp_path, exact=0.0, function=f"{user_file}:scaled", function_weight=0.5))
    assert rw.max_total == 5.0                                          # its declared full mark, absolute path
    totals, _ = rw.score(["42", "41"], [1, 1], [{}, {}])
    assert totals == [5.0, 1.5] and [rw.solved(t) for t in totals] == [True, False]


@pytest.mark.parametrize("name, fragment, said", [
    ("raises", "return total / 0", "raised ZeroDivisionError: division by zero on the completion '42'"),
    ("gives_none", "return None", "returned None on the completion '42'; a reward must be a number"),
    ("gives_text", "return \"x\"", "returned 'x' on the completion '42'; a reward must be a number"),
    ("gives_nan", "return float(\"nan\")", "returned nan on the completion '42'; a reward must be a finite number"),
    ("too_much", "return 2", "returned 2 on the completion '42'; that is above its full mark 1"),
])
def test_a_broken_function_is_named_with_its_file_and_line(tmp_path, user_file, name, fragment, said):
    rw = Rewards.from_config(cfg_of(tmp_path, exact=0.0, function=f"mine.py:{name}"))
    with pytest.raises(BadInput) as e:
        rw.score(["42"], [1], [{"answer": "42"}], ["data.jsonl:3"])
    line = line_of(USER_FILE, fragment)
    assert (e.value.path, e.value.line, e.value.key) == (str(user_file), line, "rewards.function")
    assert str(e.value).startswith(f"{user_file}:{line}, key 'rewards.function': {name}(completion, record) {said}")
    assert str(e.value).endswith("(the record: data.jsonl:3)")


def test_a_function_that_cannot_be_had(tmp_path, user_file):
    cfg = cfg_of(tmp_path, function="gone.py:score")
    with pytest.raises(BadInput, match=r"run.toml:\d+, key 'rewards.function': the reward function's file .*gone.py is "
                                       "not there"):
        Rewards.from_config(cfg)
    with pytest.raises(BadInput, match="mine.py has no function 'scor'; it defines gives_nan, gives_none"):
        Rewards.from_config(cfg_of(tmp_path, function="mine.py:scor"))
    (tmp_path / "bad.py").write_text("x = 1\ndef score(c, r)\n    return 1\n")
    with pytest.raises(BadInput) as e:
        Rewards.from_config(cfg_of(tmp_path, function="bad.py:score"))
    assert (e.value.path, e.value.line) == (str(tmp_path / "bad.py"), 2) and "does not compile" in str(e.value)
    (tmp_path / "boom.py").write_text("import json\n\nCONFIG = json.loads('{')\n")
    with pytest.raises(BadInput) as e:
        Rewards.from_config(cfg_of(tmp_path, function="boom.py:score"))
    assert (e.value.path, e.value.line) == (str(tmp_path / "boom.py"), 3)
    assert "importing boom.py raised JSONDecodeError" in str(e.value)


def test_the_run_directory_names_the_function_by_its_absolute_path(tmp_path, user_file):
    """The trainer reads the run directory's copy of the run file, which is not beside the function's file."""
    from engine.launch import prepare_run_dir
    cfg = cfg_of(tmp_path, function="mine.py:score")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_dir = prepare_run_dir(cfg, resume=False, cwd=elsewhere)
    copied = runfile.load(run_dir / "run.toml")
    assert copied.rewards.function == f"{user_file}:score"
    assert Rewards.from_config(copied).score(["42"], [1], [{"answer": "42"}])[1]["function"] == [0.5]


def test_rewards_are_checked_with_the_run_file(tmp_path):
    def refused(key, **rewards):
        with pytest.raises(BadInput) as e:
            cfg_of(tmp_path, **rewards)
        assert e.value.key == key and e.value.line, str(e.value)
        return str(e.value)
    assert "needs a pattern to match" in refused("rewards.format", format=1.0)
    assert "not a valid regular expression" in refused("rewards.pattern", pattern="<answer>(.*?</answer>")
    assert "must read FILE.py:NAME" in refused("rewards.function", function="mine.score")
    assert "grpo needs a reward" in refused("rewards.exact", exact=0.0, function="mine.py:score", function_weight=0.0)
    with pytest.raises(BadInput, match="leaves no room for the prompt"):
        cfg_of(tmp_path, train={"max_completion_length": 256})
    assert cfg_of(tmp_path, method="sft", exact=0.0).rewards.exact == 0.0   # no reward needed outside grpo


# ---------------------------------------------------------------------------- prompt data

def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def grpo_cfg(tmp_path, data, name="t", data_keys=None, **rewards):
    return runfile.load(run_file(tmp_path, "base", data, name=name, train={"method": "grpo"},
                                 data={"max_seq_len": 256, **(data_keys or {})}, rewards=rewards))


def test_prompt_records(tmp_path):
    prompts, fmt, files = PD.load_for_method(grpo_cfg(tmp_path, PROMPTS, numeric=1.0))
    assert (fmt, files, len(prompts)) == ("prompt", [str(PROMPTS)], 6)
    first = prompts[0]
    assert first.messages == [{"role": "system", "content": "You add numbers.", "train": False},
                              {"role": "user", "content": "What is 12 + 30? Put the answer in <answer></answer>.",
                               "train": False}]
    assert first.record["answer"] == "42" and first.source == f"{PROMPTS}:1"
    assert first.question == "What is 12 + 30? Put the answer in <answer></answer>."
    assert prompts[3].messages[-1]["content"].startswith("What is 19 + 23?")   # {from, value} messages
    assert PD.detect_format([("f", 1, {"prompt": "q", "answer": 1})]) == "prompt"


@pytest.mark.parametrize("records, rewards, where, said", [
    ([{"prompt": "a", "answer": "1"}, {"question": "b", "answer": "2"}], {}, "record 2, key 'prompt'",
     "missing field 'prompt': a grpo record has the prompt to answer"),
    ([{"prompt": "a", "answer": "1"}, {"prompt": "b"}], {}, "record 2, key 'answer'",
     "missing field 'answer': the exact reward compares each answer with it ([rewards] answer_field = \"answer\")"),
    ([{"prompt": "a", "solution": "x"}], {"answer_field": "solution", "exact": 0.0, "numeric": 1.0},
     "record 1, key 'solution'", "'solution' is 'x', not a number"),
    ([{"prompt": "a", "answer": [1]}], {}, "record 1, key 'answer'", "'answer' must be a string or a number, got list"),
    ([{"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "answer": "1"}], {},
     "record 1, key 'prompt'", "the prompt ends with an assistant turn"),
    ([{"prompt": "  ", "answer": "1"}], {}, "record 1, key 'prompt'", "the prompt is empty"),
])
def test_bad_prompt_records_name_file_record_and_key(tmp_path, records, rewards, where, said):
    data = write_jsonl(tmp_path / "p.jsonl", records)
    with pytest.raises(BadInput) as e:
        PD.load_for_method(grpo_cfg(tmp_path, data, **rewards))
    assert str(e.value).startswith(f"{data}, {where}: {said}"), str(e.value)


def test_the_answer_is_needed_only_by_rewards_that_read_it(tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    prompts, _, _ = PD.load_for_method(grpo_cfg(tmp_path, data, exact=0.0, pattern=TAGS, format=1.0))
    assert [p.record for p in prompts] == [{"prompt": "a"}, {"prompt": "b"}]
    held_out = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "c", "answer": "3"}, {"prompt": "d"}])
    cfg = grpo_cfg(tmp_path, PROMPTS, name="e", data_keys={"eval_path": str(held_out)})
    with pytest.raises(BadInput, match=f"^{held_out}, record 2, key 'answer': missing field 'answer'"):
        PD.split_for_method(cfg, PD.load_for_method(cfg)[0])


def test_methods_and_data_refuse_each_other(tmp_path):
    with pytest.raises(BadInput) as e:
        PD.load_for_method(grpo_cfg(tmp_path, FIXTURES / "pref_strings.jsonl"))
    assert e.value.key == "train.method" and "is preference data (its records have no 'prompt')" in str(e.value)
    for method in ("sft", "dpo"):
        cfg = runfile.load(run_file(tmp_path, "base", PROMPTS, train={"method": method}))
        with pytest.raises(BadInput) as e:
            PD.load_for_method(cfg)
        assert e.value.key == "train.method", str(e.value)
        if method == "sft":
            assert 'holds prompts to be answered (format prompt)' in str(e.value)
            assert 'set [train] method = "grpo"' in str(e.value)


# ---------------------------------------------------------------------------- tokens

@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer
    return D.ensure_chat_template(AutoTokenizer.from_pretrained(tiny_model))


def test_prompt_ids_end_with_the_generation_prompt_and_lose_their_start(tok):
    prompt = P.to_prompt({"prompt": "What is 7 + 8?", "system": "You add numbers."}, "f", 1)
    ids = P.prompt_ids(tok, prompt)
    assert tok.decode(ids) == ("<|im_start|>system\nYou add numbers.<|im_end|>\n<|im_start|>user\nWhat is 7 + 8?"
                               "<|im_end|>\n<|im_start|>assistant\n")
    assert P.prompt_ids(tok, prompt, len(ids)) == ids
    assert P.prompt_ids(tok, prompt, 12) == ids[-12:]
    assert tok.decode(ids[-12:]).endswith("<|im_start|>assistant\n")

    class WithBos:  # a template that starts with a BOS token: the cut keeps it
        chat_template = "a template"
        bos_token_id = tok.bos_token_id

        def apply_chat_template(self, msgs, tools=None, tokenize=False, add_generation_prompt=False):
            return "<|begin|>" + " ".join(m["content"] for m in msgs)

        def __call__(self, text, add_special_tokens=False):
            return tok(text, add_special_tokens=add_special_tokens)

    full = P.prompt_ids(WithBos(), prompt)
    assert full[0] == tok.bos_token_id and len(full) > 6
    assert P.prompt_ids(WithBos(), prompt, 6) == [tok.bos_token_id] + full[-5:]


def test_prepare_for_run_cuts_long_prompts_and_reports_them(tmp_path, tok):
    cfg = runfile.load(run_file(tmp_path, "base", PROMPTS, train={"method": "grpo", "max_completion_length": 72},
                                data={"max_seq_len": 96, "eval_fraction": 0.2}))
    train, evals, report, files = P.prepare_for_run(cfg, tok)
    assert (len(train), len(evals), files, report.budget) == (5, 1, [str(PROMPTS)], 24)
    whole = {p.source: P.prompt_ids(tok, p) for p in train + evals}
    assert all(p.ids == whole[p.source][-24:] for p in train + evals)
    assert report.truncated == sum(len(ids) > 24 for ids in whole.values()) > 0
    assert report.lengths == [min(24, len(whole[p.source])) for p in train + evals]
    assert report.summary().startswith("format prompt: 6 prompts (5 train, 1 eval); prompt tokens (with the "
                                       "generation prompt): median ")
    assert report.summary().endswith(f"; {report.truncated} prompts cut from the left to 24 tokens (max_seq_len - "
                                     "max_completion_length)")


# ---------------------------------------------------------------------------- rigtune check, preview, wizard

def test_check_a_grpo_run_file(tmp_path, tiny_model, tok):
    (tmp_path / "rewards.py").write_text("def score(completion, record):\n"
                                         "    return 1.0 if completion.endswith('</answer>') else 0.0\n")
    rf = run_file(tmp_path, tiny_model, PROMPTS, train={"method": "grpo"}, data={"max_seq_len": 256},
                  rewards={"pattern": TAGS, "exact": 1.0, "numeric": 1.0, "format": 0.5, "length": 0.25,
                           "length_target": 4, "function": "rewards.py:score", "function_weight": 2.0})
    res = rigtune("check", rf)
    assert res.returncode == 0, res.stderr
    n = len(tok("<answer>42</answer>", add_special_tokens=False)["input_ids"])
    length = max(0.0, 1 - abs(n - 4) / 4)
    out = res.stdout
    assert "format: prompt" in out and "format prompt: 6 prompts (5 train, 1 eval)" in out
    assert "rewards: exact x 1, numeric x 1, format x 0.5, length x 0.25, function x 2; full marks 4.75" in out
    assert f"reward check on {PROMPTS}:1, completion '<answer>42</answer>' ({n} tokens):" in out
    for line in ("exact     1 of 1 x 1  (answer equals the record's 'answer')",
                 "numeric   1 of 1 x 1  (answer within 0 of the record's 'answer')",
                 "format    1 of 1 x 0.5  (matches '<answer>(.*?)</answer>')",
                 f"length    {length:g} of 1 x 0.25  (about 4 tokens)",
                 "function  1 of 1 x 2  (rewards.py:score)",
                 f"total {4.5 + 0.25 * length:g} of 4.75"):
        assert "  " + line in out, line

    (tmp_path / "broken.py").write_text("def score(completion, record):\n    if completion:\n        return None\n")
    rf = run_file(tmp_path, tiny_model, PROMPTS, name="broken", train={"method": "grpo"}, data={"max_seq_len": 256},
                  rewards={"function": "broken.py:score"})
    res = rigtune("check", rf)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert (f"{tmp_path / 'broken.py'}:3, key 'rewards.function': score(completion, record) returned None on the "
            "completion '42'") in res.stderr


def test_preview_of_a_prompt(tiny_model):
    p = preview(str(PROMPTS), "auto", str(tiny_model), 96, method="grpo", rewards={"numeric": 1.0},
                max_completion_length=72)
    assert (p.format, p.records, len(p.lengths), p.exact, p.max_seq_len) == ("prompt", 6, 6, True, 24)
    assert p.truncated == sum(n > 24 for n in p.lengths) > 0
    text = "".join(t for t, _ in p.prompt["pieces"])
    assert text.endswith("<|im_start|>assistant\n") and not any(trained for _, trained in p.prompt["pieces"])
    assert (p.prompt["answer_field"], p.prompt["answer"]) == ("answer", "42")
    full = preview(str(PROMPTS), "auto", str(tiny_model), 512, method="grpo")
    assert "You add numbers." in "".join(t for t, _ in full.prompt["pieces"]) and full.truncated == 0
    with pytest.raises(BadInput, match="key 'solution': missing field 'solution'"):
        preview(str(PROMPTS), "auto", str(tiny_model), 96, method="grpo", rewards={"answer_field": "solution"})
    cfg = runfile.validate(runfile.defaults(model={"base": "m"}, data={"path": "d", "eval_fraction": 0.0},
                                            train={"method": "grpo", "num_generations": 4, "epochs": 2,
                                                   "max_completion_length": 10}))
    mean = sum(full.lengths) / 6
    assert full.run_tokens(cfg, 4) == round((mean + 10) * 4 * 6 * 2)



async def test_wizard_previews_a_prompt_once_the_method_is_grpo(home):
    from textual.widgets import Select, Static

    from test_wizard import RecordingLauncher, fixed_machine, settle, shown
    from tui.app import RigtuneApp
    from tui.screens import wizard as W
    app = RigtuneApp(preset="cpu-demo", machine=fixed_machine(), launcher=RecordingLauncher())

    async with app.run_test(size=(100, 40)) as pilot:
        setup = await settle(pilot, W.SetupStep)
        setup.query_one("#f-data").value = str(PROMPTS)
        await shown(pilot, setup, "#e-data", ['set [train] method = "grpo"'])
        assert setup.valid is False
        setup.query_one("#f-method", Select).value = "grpo"
        text = await shown(pilot, setup, "#data-example", ["first prompt", "answer: 42"])
        assert "You add numbers." in text and "What is 12 + 30?" in text
        assert str(setup.query_one("#e-data", Static).render()) == ""
        assert "6 records, format prompt" in str(setup.query_one("#data-info", Static).render())
        assert setup.valid is True
