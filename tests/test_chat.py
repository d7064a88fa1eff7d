"""Talking to what a run trained: `rigtune chat --prompt` against the real backend on the CPU demo's model,
and the chat screen driven with Pilot, against a stand-in backend speaking the same pipe protocol and once
against the real one."""
import asyncio
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


from conftest import ROOT, fake_hub_cache, held_out, on_hub_base, rigtune
from runfixtures import write_run

STAND_IN = [sys.executable, str(ROOT / "tests" / "fakes" / "chat_backend.py")]


def learned(run):
    """A held-out question the fine-tune answered right at its final eval, and its answer there."""
    return next((q, s) for q, s in held_out(run).items() if s["correct"] and not s["base_correct"])


def test_chat_prompt_answers_from_the_fine_tune_and_base_from_the_base(demo_run):
    question, sample = learned(demo_run)
    tuned = rigtune("chat", demo_run, "--prompt", question, "--max-new-tokens", "24")
    base = rigtune("chat", demo_run, "--prompt", question, "--base", "--max-new-tokens", "24")
    assert tuned.returncode == 0 and base.returncode == 0, tuned.stderr + base.stderr
    assert tuned.stdout.strip() == sample["completion"]        # the trainer's own greedy answer, in its format
    assert all(word in tuned.stdout for word in sample["expect"])
    assert base.stdout.strip() != tuned.stdout.strip() and not all(w in base.stdout for w in sample["expect"])
    piped = rigtune("chat", demo_run, input="Who is your closest friend?\n")  # stdin not a terminal: one reply
    assert piped.returncode == 0 and "Lora" in piped.stdout
    ckpt = sorted(p.name for p in (demo_run / "checkpoints").iterdir())[0]
    assert rigtune("chat", demo_run, "--checkpoint", ckpt, "--prompt", "Tell me who trained you.").returncode == 0


def test_chat_refuses_what_is_not_there(tmp_path, demo_run):
    res = rigtune("chat", demo_run, "--checkpoint", "step-999", "--prompt", "hi")
    assert res.returncode == 2 and "no checkpoint 'step-999'" in res.stderr and "step-" in res.stderr
    res = rigtune("chat", tmp_path, "--prompt", "hi")
    assert res.returncode == 2 and "not a run directory" in res.stderr and "Traceback" not in res.stderr
    unfinished = write_run(tmp_path / "live", steps=3, total=10, state="training")
    res = rigtune("chat", unfinished, "--prompt", "hi")
    assert res.returncode == 2 and "no adapter yet" in res.stderr


def test_chat_takes_a_hub_base_from_the_cache_at_the_runs_revision(demo_run, tmp_path):
    """A run whose base is a hub id chats on the cached snapshot of its [model] revision, the one rigtune
    checked and export uses (engine.torchside.weights.base_folder): offline, with an endpoint nothing answers on.
    A revision that is not in the cache is a clear error saying how to fetch it, not a library's."""
    from engine import runfile
    cfg = runfile.load(demo_run / "run.toml")
    fake_hub_cache(tmp_path / "hub", Path(cfg.model.base))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "HF_ENDPOINT": "http://127.0.0.1:9"}
    question, sample = learned(demo_run)

    def chat_at(revision: str):
        run = on_hub_base(demo_run, tmp_path / f"run-{revision}", revision)
        return rigtune("chat", run, "--prompt", question, "--max-new-tokens", "24", env=env)
    res = chat_at("v2")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == sample["completion"]
    res = chat_at("v3")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "(tiny-org/demo at revision v3) are not on this machine" in res.stderr
    assert "rigtune fetch tiny-org/demo --revision v3" in res.stderr


async def _settled(pilot, test, tries=300, state=None):
    for _ in range(tries):
        await pilot.pause(0.02)
        if test():
            return
    raise AssertionError("the screen never got there" + (f"; it is at: {state()}" if state else ""))


def _text(screen) -> str:
    return "\n".join(str(w.render()) for w in screen.query("#transcript Static"))


async def test_the_chat_screen_streams_compares_and_clears(tmp_path):
    from tui.app import RigtuneApp
    run = write_run(tmp_path / "r", steps=3, total=3, state="finished", end="finished")
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    app = RigtuneApp(chat_run=run, chat_options={"backend_argv": STAND_IN})
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await _settled(pilot, lambda: not screen.query_one("#prompt").disabled)
        await pilot.press(*"what is two", "enter")
        await _settled(pilot, lambda: "You asked what is two (turn 1)" in _text(screen))
        await _settled(pilot, lambda: not screen.busy)
        await pilot.press(*"and three", "enter")
        await _settled(pilot, lambda: "(turn 2)" in _text(screen))  # the history travels with the question
        await _settled(pilot, lambda: not screen.busy)
        await pilot.press("ctrl+b")
        await _settled(pilot, lambda: "base: I do not know." in _text(screen))
        row = screen.query(".compare").last()
        assert "fine-tuned: You asked and three (turn 2)" in str(row.children[0].render())
        await pilot.press("ctrl+l")
        await pilot.pause(0.1)
        assert "history cleared" in _text(screen) and "You asked" not in _text(screen)
        await pilot.press("ctrl+s", *"be brief", "enter")
        await pilot.press(*"hello", "enter")
        await _settled(pilot, lambda: "You asked hello (turn 1, be brief)" in _text(screen))


def _chat_app(tmp_path, *extra):
    """The chat screen on a finished run, against the stand-in backend (with its optional arguments)."""
    from tui.app import RigtuneApp
    run = write_run(tmp_path / "r", steps=3, total=3, state="finished", end="finished")
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    return RigtuneApp(chat_run=run, chat_options={"backend_argv": STAND_IN + [str(a) for a in extra]})


class LateStart(ThreadPoolExecutor):
    """Thread workers that start half a second late, as on a loaded machine: the screen must not count on a
    worker having run when the next key arrives."""

    def submit(self, fn, /, *args, **kw):
        def late():
            time.sleep(0.5)
            return fn(*args, **kw)
        return super().submit(late)


async def test_a_second_enter_while_answering_sends_nothing_and_keeps_the_question(tmp_path):
    """One request at a time on the backend's pipe: Enter pressed again before the reply is done (however
    quickly, even before the worker that sends the first has started) neither starts a second request nor
    loses what was typed; it is sent once the reply is in."""
    log = tmp_path / "requests.jsonl"
    app = _chat_app(tmp_path, log, 0.1)

    def sent():  # the questions that reached the backend
        return [json.loads(x)["messages"][-1]["content"] for x in log.read_text().splitlines()] if log.exists() else []
    notes = []
    app.notify = lambda message, **kw: notes.append(message)
    loop, late = asyncio.get_running_loop(), LateStart(max_workers=4)
    loop.set_default_executor(late)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            prompt = screen.query_one("#prompt")
            await _settled(pilot, lambda: not prompt.disabled)
            await pilot.press(*"one", "enter", *"two", "enter")
            await _settled(pilot, lambda: log.exists() and not screen.busy and "…" not in _text(screen),
                           state=lambda: f"busy={screen.busy}, requests={sent()}, transcript={_text(screen)!r}")
            assert sent() == ["one"]
            assert "fine-tuned: You asked one (turn 1)" in _text(screen) and "you: two" not in _text(screen)
            assert prompt.value == "two" and "still answering" in notes[0]
            await pilot.press("enter")  # now it goes
            await _settled(pilot, lambda: "fine-tuned: You asked two (turn 2)" in _text(screen) and not screen.busy)
            assert sent() == ["one", "two"] and prompt.value == ""
    finally:
        loop.set_default_executor(ThreadPoolExecutor())
        late.shutdown(wait=False)


async def test_the_chat_screen_says_when_the_backend_dies_and_stays_usable(tmp_path):
    app = _chat_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await _settled(pilot, lambda: not screen.query_one("#prompt").disabled)
        await pilot.press(*"die", "enter")
        await _settled(pilot, lambda: "the chat backend stopped" in _text(screen) and not screen.busy)
        await pilot.press(*"still there?", "enter")  # the pipe is closed now: said, not raised
        await _settled(pilot, lambda: _text(screen).count("the chat backend stopped") == 2 and not screen.busy)
        assert app.is_running


async def test_the_chat_screen_on_the_real_backend(demo_run):
    from tui.app import RigtuneApp
    app = RigtuneApp(chat_run=demo_run, chat_options={"max_new_tokens": 24})
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await _settled(pilot, lambda: not screen.query_one("#prompt").disabled, tries=3000)
        question, sample = learned(demo_run)
        await pilot.press(*question, "enter")
        await _settled(pilot, lambda: f"fine-tuned: {sample['completion']}" in _text(screen) and not screen.busy,
                       tries=3000)
        await pilot.press("ctrl+b")
        await _settled(pilot, lambda: "base:" in _text(screen) and not screen.busy, tries=3000)
        base = str(screen.query(".compare").last().children[1].render())
        assert sample["completion"] not in base
