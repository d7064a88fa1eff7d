"""The dashboard against recorded and live-growing run directories, with a fake hardware sampler."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest


from runfixtures import FakeSampler, append_steps, own_pid, write_run
from tui.app import RigtuneApp
from tui.screens.dashboard import Dashboard

os.environ["TZ"] = "UTC"
time.tzset()


async def attached(pilot):
    for _ in range(200):
        await pilot.pause(0.02)
        screen = pilot.app.screen
        if isinstance(screen, Dashboard) and screen.attached:
            return screen
    raise AssertionError("dashboard never attached")


def text(screen, selector):
    widget = screen.query_one(selector)
    return str(widget.render())


async def test_finished_run_panels(tmp_path):
    run = write_run(tmp_path / "runs" / "demo", steps=40, total=40, state="finished", end="finished")
    app = RigtuneApp(run_dir=run, sampler=FakeSampler())
    async with app.run_test(size=(100, 30)) as pilot:
        d = await attached(pilot)
        status = text(d, "#status")
        assert "FINISHED" in status and "step 40/40" in status and "loss 0.3333" in status
        assert "ETA --:--" in status
        hw = text(d, "#hardware")
        assert "GPU0 RTX 4090" in hw and "20.1/24G" in hw and "util  97%" in hw and "401/450W" in hw
        assert "run 19.8G" in hw
        table = d.query_one("#ckpts")
        assert table.row_count == 3  # the two kept on disk, and a note for the pruned ones
        assert [table.get_row_at(i)[0] for i in range(2)] == ["40", "30"]
        assert "2 older pruned" in str(table.get_row_at(2)[2])
        await pilot.press("g")
        assert "A banana is yellow. (40)" in text(d, "#sample-text")
        await pilot.press("l")
        assert "[rigtune] 1 process(es), 40 steps" in text(d, "#logtail")
        assert not d.check_action("stop", ()) and not d.check_action("resume", ())
        await pilot.press("q")
    assert app.return_code == 0


async def test_a_sharded_run_says_how_it_is_spread(tmp_path):
    run = write_run(tmp_path / "runs" / "big", steps=10, total=40, state="finished", end="finished")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    start = json.loads(lines[0])
    start.update(world_size=2, strategy="fsdp")
    (run / "metrics.jsonl").write_text("\n".join([json.dumps(start)] + lines[1:]) + "\n")
    app = RigtuneApp(run_dir=run, sampler=FakeSampler())
    async with app.run_test(size=(100, 30)) as pilot:
        d = await attached(pilot)
        assert "fsdp x2" in text(d, "#status")


async def test_live_run_updates_and_eta(tmp_path):
    run = write_run(tmp_path / "live", steps=5, total=50, state="training", pid=own_pid())
    app = RigtuneApp(run_dir=run, sampler=FakeSampler())
    async with app.run_test(size=(80, 24)) as pilot:
        d = await attached(pilot)
        assert "TRAINING" in text(d, "#status") and "step 5/50" in text(d, "#status")
        append_steps(run, 6, 20, total=50)
        await pilot.pause(0.8)
        status = text(d, "#status")
        assert "step 20/50" in status
        assert "ETA 01:00" in status  # 30 steps left at 2 s a step
        assert d.check_action("stop", ()) and not d.check_action("resume", ())
        with open(run / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"event": "end", "time": 1, "step": 20, "reason": "stopped",
                                "message": "stopped on request at step 20 of 50"}) + "\n")
        await pilot.pause(0.8)
        assert "STOPPED" in text(d, "#status") and "stopped on request" in text(d, "#status")
        assert d.check_action("resume", ()) and not d.check_action("stop", ())


async def test_crashed_run_reads_as_crashed(tmp_path):
    run = write_run(tmp_path / "c", steps=7, total=40, state="training", pid=999999)  # no such process
    app = RigtuneApp(run_dir=run, sampler=FakeSampler(gpus=False))
    async with app.run_test(size=(80, 24)) as pilot:
        d = await attached(pilot)
        assert "CRASHED" in text(d, "#status")
        assert d.check_action("resume", ())
        hw = text(d, "#hardware")
        assert "CPU  42.0% (2 proc)" in hw and "run RSS 1.50 GiB" in hw


async def test_stop_sends_sigterm_to_the_group_after_confirmation(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        run = write_run(tmp_path / "s", steps=3, total=40, state="training", pid=child.pid)
        app = RigtuneApp(run_dir=run, sampler=FakeSampler())
        async with app.run_test(size=(80, 24)) as pilot:
            await attached(pilot)
            await pilot.press("s")
            await pilot.pause(0.1)
            assert child.poll() is None        # nothing happens before the confirmation
            await pilot.press("y")
            assert child.wait(timeout=10) == -signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()


async def test_run_file_viewer(tmp_path):
    run = write_run(tmp_path / "v", steps=3, total=40, state="finished", end="finished")
    app = RigtuneApp(run_dir=run, sampler=FakeSampler())
    async with app.run_test(size=(80, 24)) as pilot:
        await attached(pilot)
        await pilot.press("o")
        await pilot.pause(0.1)
        assert type(app.screen).__name__ == "RunFileScreen"
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert isinstance(app.screen, Dashboard)


async def test_picker_lists_recent_runs_and_attaches(tmp_path):
    write_run(tmp_path / "runs" / "older", steps=10, total=10, state="finished", end="finished")
    time.sleep(0.01)
    newer = write_run(tmp_path / "runs" / "newer", steps=4, total=10, state="finished", end="finished")
    os.utime(newer / "metrics.jsonl")
    app = RigtuneApp(pick_from=tmp_path / "runs", sampler=FakeSampler())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.1)
        options = app.screen.query_one("#runs")
        labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert labels[0].startswith("newer") and labels[1].startswith("older")
        await pilot.press("enter")
        d = await attached(pilot)
        assert d.run_dir.name == "newer" and "step 4/10" in text(d, "#status")


async def test_big_stream_attaches_by_sampling(tmp_path):
    """Above 32 MB the history is sampled and the tail read in full: the state is exact, the plot complete."""
    from engine import runview
    run = tmp_path / "big"
    run.mkdir()
    n = 200_000
    line = '{"event": "step", "time": %d, "step": %d, "epoch": 1.0, "loss": %f, "lr": 0.0002, "grad_norm": 0.5, "tokens": 8192, "trained_tokens": 4000, "tokens_per_s": 16384.0, "elapsed_s": 1.0, "pad": "%s"}\n'
    with open(run / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"event": "start", "time": 0, "total_steps": n, "world_size": 1}) + "\n")
        for s in range(1, n + 1):
            f.write(line % (s, s, 1.0 / s, "x" * 40))
    assert (run / "metrics.jsonl").stat().st_size > runview.SPARSE_ABOVE
    v = runview.RunView(run)
    v.poll()
    assert v.step == n and v.total_steps == n and v.steps[0] < 100 and v.sampled_until > 0
    assert 1000 < len(v.steps) < 200_000
    xs, ys = runview.downsample(v.steps, v.losses, 50)
    assert len(xs) == 50 and xs[0] < n / 40 and xs[-1] > n * 0.95


def test_leaving_the_dashboard_says_what_the_run_is_doing(tmp_path):
    from tui.cli.watch import left_message
    done = write_run(tmp_path / "done", steps=4, total=4, state="finished", end="finished")
    assert left_message(done) == f"the run is finished (step 4); its adapter is in {done / 'adapter'}"
    stopped = write_run(tmp_path / "stopped", steps=2, total=4, state="stopped", end="stopped")
    assert "is stopped at step 2" in left_message(stopped) and "--resume" in left_message(stopped)
    live = write_run(tmp_path / "live", steps=2, total=4, state="training", pid=own_pid())
    assert left_message(live).startswith("detached; training goes on")


async def test_r_resumes_a_stopped_run_to_the_end(tmp_path, tiny_model):
    """A real run, stopped after a few steps with `rigtune stop`; in the dashboard `r` launches --resume, and the
    run goes on from its checkpoint to `finished`."""
    from conftest import DEMO, events, run_file
    from engine.launch import stop
    rf = run_file(tmp_path, tiny_model, DEMO, name="rs", train={"max_steps": 40, "save_every_steps": 2,
                                                              "eval_every_steps": 0})
    run_dir = tmp_path / "runs" / "rs"
    proc = subprocess.Popen([sys.executable, "-m", "tui.cli", "train", str(rf), "--no-tui"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not any(e["event"] == "step" and e["step"] >= 3
                                               for e in (events(run_dir) if (run_dir / "metrics.jsonl").exists() else [])):
        time.sleep(0.2)
    what, st = stop(run_dir, wait_s=120)
    proc.wait(timeout=60)
    assert what == "stopped" and st["state"] == "stopped" and st["step"] < 40
    app = RigtuneApp(run_dir=run_dir, sampler=FakeSampler())
    async with app.run_test(size=(100, 30)) as pilot:
        d = await attached(pilot)
        assert "STOPPED" in text(d, "#status") and d.check_action("resume", ())
        await pilot.press("r")
        for _ in range(1500):  # up to about 5 minutes on a slow machine
            await pilot.pause(0.2)
            if d.view.state == "finished":
                break
        assert d.view.state == "finished" and "FINISHED" in text(d, "#status")
    evs = events(run_dir)
    starts = [e for e in evs if e["event"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed_from"].endswith(f"step-{st['step']:06d}")
    assert [e["reason"] for e in evs if e["event"] == "end"] == ["stopped", "finished"]
    assert max(e["step"] for e in evs if e["event"] == "step") == 40


async def test_a_download_shows_as_a_progress_bar_while_loading(tmp_path):
    run = tmp_path / "dl"
    run.mkdir()
    ev = {"event": "download", "time": 1.0, "bytes_done": 6_400_000_000, "bytes_total": 16_000_000_000,
          "files_done": 2, "files_total": 7, "bytes_per_s": 100_000_000, "model": "Qwen/Qwen3-8B"}
    (run / "metrics.jsonl").write_text(json.dumps(ev) + "\n")
    (run / "status.json").write_text(json.dumps({"state": "loading", "step": 0, "total_steps": 0, "pid": own_pid(),
                                                 "pgid": own_pid(), "updated": 1.0}))
    (run / "run.toml").write_text('name = "dl"\n[model]\nbase = "Qwen/Qwen3-8B"\n')
    app = RigtuneApp(run_dir=run, sampler=FakeSampler())
    async with app.run_test(size=(80, 24)) as pilot:
        d = await attached(pilot)
        status = text(d, "#status")
        assert "LOADING" in status and "downloading: 6.4 / 16.0 GB, 100 MB/s, ETA 01:36 (2 of 7 files)" in status
        pb = d.query_one("#progress")
        assert pb.progress / pb.total == pytest.approx(0.4)
        with open(run / "metrics.jsonl", "a") as f:  # done, and the trainer started: the bar counts steps again
            f.write(json.dumps({**ev, "bytes_done": 16_000_000_000, "files_done": 7}) + "\n")
            f.write(json.dumps({"event": "start", "time": 2.0, "world_size": 1, "total_steps": 40}) + "\n")
        (run / "status.json").write_text(json.dumps({"state": "training", "step": 0, "total_steps": 40,
                                                     "pid": own_pid(), "pgid": own_pid(), "updated": 2.0}))
        await pilot.pause(0.8)
        assert "downloading" not in text(d, "#status") and "step 0/40" in text(d, "#status")
        assert d.query_one("#progress").total == 40


async def test_a_preference_run_shows_its_margin_and_accuracy_beside_the_loss(tmp_path):
    """DPO/ORPO step events carry the reward figures and eval events the held-out preference accuracy: the status
    line shows them beside the loss, the log lines too, and the held-out table names the starting model."""
    run = write_run(tmp_path / "runs" / "dpo", steps=20, total=20, state="finished", end="finished", held_out=True)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for e in lines:
        if e["event"] == "start":
            e.update(method="dpo", adapter=str(tmp_path / "runs" / "sft"))
        if e["event"] == "step":
            e.update(rewards_chosen=0.1 * e["step"], rewards_rejected=-0.05 * e["step"],
                     reward_margin=0.15 * e["step"], reward_accuracy=min(1.0, 0.5 + 0.05 * e["step"]))
        if e["event"] == "eval" and e.get("samples"):
            e.update(pref_accuracy=0.9375, base_pref_accuracy=0.0625)
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    app = RigtuneApp(run_dir=run, sampler=FakeSampler())
    async with app.run_test(size=(120, 30)) as pilot:
        d = await attached(pilot)
        status = text(d, "#status")
        assert "margin 3.000 acc 1.00" in status and "held-out pref 0.94" in status
        await pilot.press("l")
        await pilot.press("g")
        assert "the starting model: 0 of 4" in text(d, "#sample-text")
    from engine.runview import Follower
    log = Follower(run)  # what `rigtune train --no-tui` prints
    log.poll()
    said = "\n".join(log.take_lines())
    assert "margin 3.000  acc 1.00" in said and "preference accuracy 0.94 (the starting model: 0.06)" in said


async def test_a_grpo_run_plots_its_reward_and_lists_a_steps_sampled_answers(tmp_path):
    """GRPO: the main plot draws the reward (not the loss), the status line shows it, and the Answers tab (a)
    lists the latest completions event's answers, best first, with their rewards; other runs hide that tab."""
    run = write_run(tmp_path / "runs" / "grpo", steps=20, total=20, state="finished", end="finished")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    out = []
    for e in lines:
        if e["event"] == "start":
            e["method"] = "grpo"
        if e["event"] == "step":
            e.update(reward_mean=round(0.04 * e["step"], 4), reward_std=0.3, reward_exact=0.04 * e["step"],
                     completion_length=9.0, kl=0.01)
        out.append(e)
        if e["event"] == "step" and e["step"] == 20:
            out.append({"event": "completions", "time": e["time"], "step": 20, "question": "What is two plus three?",
                        "answers": [{"text": "Answer: Two plus three is six.", "reward": 0.0, "tokens": 9},
                                    {"text": "Answer: Two plus three is five.", "reward": 1.0, "tokens": 9}]})
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in out))
    app = RigtuneApp(run_dir=run, sampler=FakeSampler())
    async with app.run_test(size=(100, 30)) as pilot:
        d = await attached(pilot)
        assert "reward 0.800" in text(d, "#status")
        assert str(d.query_one("#loss-box").border_title).startswith("reward")
        await pilot.press("a")
        shown = text(d, "#answers-text")
        assert "step 20: What is two plus three?" in shown
        assert shown.index("is five.") < shown.index("is six.") and "  1.000  " in shown
    plain = write_run(tmp_path / "runs" / "sft", steps=10, total=10, state="finished", end="finished")
    app = RigtuneApp(run_dir=plain, sampler=FakeSampler())
    async with app.run_test(size=(100, 30)) as pilot:
        d = await attached(pilot)
        from textual.widgets import TabbedContent
        assert d.query_one("#bottom", TabbedContent).get_tab("answers").display is False
