"""The wizard end to end with Pilot: the CPU demo on a machine without a GPU, and a what-if 70B plan on faked
dual-3090 hardware. Assertions are on the run file written, the fit verdicts shown and the launch command."""
import json
from pathlib import Path

import pytest

from engine import runfile
from engine.demo import DEMO_MODEL_VERSION
from engine import scan as S
from engine.fakenvml import FakeNvml
from engine.launch import accelerate_command
from tui.app import RigtuneApp
from tui.screens import wizard as W
from tui.screens.dashboard import Dashboard

PROFILES = Path(__file__).parent / "profiles"


def fixed_machine(profile=None):
    """A scan with fixed CPU/RAM/disk figures so screens are the same on every machine."""
    nvml = FakeNvml(PROFILES / f"{profile}.json") if profile else FakeNvml({"fail_init": "NVML Shared Library Not Found"})
    gpus, driver, cuda, err = S.scan_gpus(nvml)
    return S.Machine(gpus=gpus, cpu_count=16, cpu_model="AMD Ryzen 9 7950X", cpu_cores_physical=16, ram_total_gib=62.7,
                     ram_available_gib=58.1, disk_path="/home/me/runs", disk_free_gib=812.0, disk_nvme=True,
                     disk_kind="nvme", hf_cache_path="/home/me/.cache/huggingface", hf_cache_free_gib=812.0,
                     driver=driver, cuda=cuda, nvml_error=err)


class RecordingLauncher:
    """Builds the real accelerate command and a run directory the dashboard can open, without training."""

    def __init__(self):
        self.cfgs, self.argvs = [], []

    def __call__(self, cfg):
        run_dir = runfile.run_dir(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"event": "start", "time": 1, "total_steps": 10}) + "\n")
        (run_dir / "status.json").write_text(json.dumps({"state": "finished", "step": 0, "total_steps": 10}))
        argv = accelerate_command(cfg, run_dir, False)[0]
        self.cfgs.append(cfg)
        self.argvs.append(argv)
        return argv


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    (cache / f"tiny-demo-v{DEMO_MODEL_VERSION}").mkdir(parents=True)
    (cache / f"tiny-demo-v{DEMO_MODEL_VERSION}" / "rigtune-tiny.json").write_text("{}")  # the demo model counts as built
    monkeypatch.setenv("RIGTUNE_CACHE", str(cache))
    return tmp_path


async def shown(pilot, screen, widget_id, words, tries=150):
    """The text of Static `widget_id` on `screen` once it shows every one of `words` (a worker fills it)."""
    from textual.widgets import Static
    text = ""
    for _ in range(tries):
        await pilot.pause(0.02)
        text = str(screen.query_one(widget_id, Static).render())
        if all(w in text for w in words):
            return text
    raise AssertionError(f"{widget_id} never showed {words}: {text!r}")


async def settle(pilot, screen_type, tries=200):
    for _ in range(tries):
        await pilot.pause(0.02)
        if isinstance(pilot.app.screen, screen_type):
            await pilot.pause(0.05)
            return pilot.app.screen
    raise AssertionError(f"never reached {screen_type.__name__}; at {type(pilot.app.screen).__name__}")


async def test_cpu_demo_with_enter_only(home):
    launcher = RecordingLauncher()
    app = RigtuneApp(wizard=True, machine=fixed_machine(), launcher=launcher)
    async with app.run_test(size=(80, 24)) as pilot:
        scan = await settle(pilot, W.ScanStep)
        assert "No NVIDIA GPU" in str(scan.query_one("#scan-body").render())
        await pilot.press("enter")
        tier = await settle(pilot, W.TierStep)
        assert tier.col == 4  # the CPU demo is preselected
        await pilot.press("enter")
        await settle(pilot, W.SetupStep)
        await pilot.press("enter")
        review = await settle(pilot, W.ReviewStep)
        assert review.query_one("#save-path").value == "runs/cpu-demo/run.toml"
        await pilot.press("enter")
        await settle(pilot, W.LaunchStep)
        await pilot.press("enter")
        await settle(pilot, Dashboard)
    written = runfile.load(home / "runs" / "cpu-demo" / "run.toml")
    assert written.hardware.tier == "cpu-demo" and written.hardware.gpus == [] and written.model.quantization == "nf4"
    assert written.model.base == str(home / "cache" / f"tiny-demo-v{DEMO_MODEL_VERSION}")
    (argv,) = launcher.argvs
    assert argv[1:3] == ["-m", "engine.torchside.trainer"]  # one process: the trainer itself, no launcher in between


async def to_setup(pilot):
    """From the scan through the tier step (Enter on each) to the setup step."""
    await settle(pilot, W.ScanStep)
    await pilot.press("enter")
    await settle(pilot, W.TierStep)
    await pilot.press("enter")
    return await settle(pilot, W.SetupStep)


async def test_dual_3090_llama2_70b_needs_fsdp_offload(home):
    app = RigtuneApp(wizard=True, machine=fixed_machine("dual3090-nvlink"), launcher=RecordingLauncher())
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, W.ScanStep)
        assert "NVLink to 1" in str(app.screen.query_one("#scan-body").render())
        await pilot.press("enter")
        tier = await settle(pilot, W.TierStep)
        assert tier.col == 3  # this machine
        await pilot.press("left")  # the $3,000 tier (what-if: 128 GB of RAM)
        await pilot.press("enter")
        setup = await settle(pilot, W.SetupStep)
        setup.query_one("#f-model").value = "meta-llama/Llama-2-70b-hf"
        await pilot.pause(0.1)
        fit = str(setup.query_one("#fit").render())
        assert "Llama-2-70B" in fit
        lines = {line.split()[1]: line.split()[0] for line in fit.splitlines() if line.strip()[:1] in "✓✗"}
        assert lines == {"single": "✗", "ddp": "✗", "fsdp": "✗", "fsdp+offload": "✓"}
        assert "fsdp+offload" in next(line for line in fit.splitlines() if "◀" in line)
        assert "one card would need" in fit and "per card" in fit  # per card, not in total
        setup.query_one("#f-model").value = "meta-llama/Llama-2-7b-hf"  # a 7B fits each card: ddp is faster
        await pilot.pause(0.1)
        fit = str(setup.query_one("#fit").render())
        assert "ddp" in next(line for line in fit.splitlines() if "◀" in line) and "ddp: each card" in fit
        assert setup.query_one("#f-strategy").value == "ddp" and setup.query_one("#f-offload").value is False
        setup.query_one("#f-model").value = "meta-llama/Llama-2-70b-hf"
        await pilot.pause(0.1)
        assert setup.query_one("#f-strategy").value == "fsdp" and setup.query_one("#f-offload").value is True
        await pilot.press("enter")
        await settle(pilot, W.ReviewStep)
        await pilot.press("enter")
        await settle(pilot, W.LaunchStep)
    path = home / "runs" / "llama-3.1-70b-3000" / "run.toml"
    cfg = runfile.load(path)
    assert cfg.model.base == "meta-llama/Llama-2-70b-hf"
    assert cfg.hardware.strategy == "fsdp" and cfg.hardware.cpu_offload and cfg.hardware.num_processes == 2
    assert "fsdp + CPU offload" in path.read_text()  # the file says why


async def test_fields_validate_like_check_and_escape_keeps_input(home):
    app = RigtuneApp(wizard=True, machine=fixed_machine(), launcher=RecordingLauncher())
    async with app.run_test(size=(80, 24)) as pilot:
        setup = await to_setup(pilot)
        lr = setup.query_one("#f-lr")
        lr.value = "abc"
        await pilot.pause(0.05)
        assert "expected a number > 0 and ≤ 1" in str(setup.query_one("#e-lr").render())
        lr.value = "5"
        await pilot.pause(0.05)
        assert "5.0 is out of range" in str(setup.query_one("#e-lr").render()) or "5 is out of range" in str(
            setup.query_one("#e-lr").render())
        await pilot.press("enter")
        assert isinstance(app.screen, W.SetupStep)  # refused to go on
        lr.value = "1e-4"
        setup.query_one("#f-name").value = "mine"
        await pilot.pause(0.05)
        assert str(setup.query_one("#e-lr").render()) == ""
        await pilot.press("enter")
        await settle(pilot, W.ReviewStep)
        await pilot.press("escape")
        setup = await settle(pilot, W.SetupStep)
        assert setup.query_one("#f-lr").value == "1e-4"
        await pilot.press("escape")
        await settle(pilot, W.TierStep)
        await pilot.press("enter")
        setup = await settle(pilot, W.SetupStep)
        assert setup.query_one("#f-lr").value == "0.0001" and setup.query_one("#f-name").value == "mine"


async def test_preset_and_run_file_skip_ahead(home):
    app = RigtuneApp(preset="1500", machine=fixed_machine("rtx4090"), launcher=RecordingLauncher())
    async with app.run_test(size=(80, 24)) as pilot:
        setup = await settle(pilot, W.SetupStep)
        assert "Llama-3.1-8B" in str(setup.query_one("#fit").render())
    rf = home / "mine.toml"
    runfile.save(runfile.defaults(name="mine", model={"base": "Llama-2-7B"}, data={"path": "d.jsonl"}), rf)
    app = RigtuneApp(run_file=str(rf), machine=fixed_machine(), launcher=RecordingLauncher())
    async with app.run_test(size=(80, 24)) as pilot:
        review = await settle(pilot, W.ReviewStep)
        assert review.query_one("#save-path").value == str(rf)
        await pilot.press("escape")
        await settle(pilot, W.SetupStep)


async def test_launch_refusal_is_shown(home, monkeypatch):
    """A what-if plan for GPUs this machine lacks (here: a machine whose NVML does not start) is refused at
    launch, on the launch screen."""
    from tui.app import default_launcher
    monkeypatch.setenv("RIGTUNE_FAKE_NVML", str(PROFILES / "no-gpu.json"))
    app = RigtuneApp(preset="3000", machine=fixed_machine("dual3090-nvlink"), launcher=default_launcher)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, W.SetupStep)
        await pilot.press("enter")
        await settle(pilot, W.ReviewStep)
        await pilot.press("enter")
        launch = await settle(pilot, W.LaunchStep)
        await pilot.press("enter")
        for _ in range(100):
            await pilot.pause(0.02)
            if "gpus" in str(launch.query_one("#launch-status").render()):
                break
        assert "this machine has no NVIDIA GPU" in str(launch.query_one("#launch-status").render())
        assert isinstance(app.screen, W.LaunchStep)


async def test_setup_opens_in_the_model_field_and_ctrl_t_switches_panes(home):
    from textual.widgets import TabbedContent
    app = RigtuneApp(preset="3000", machine=fixed_machine("dual3090-nvlink"), launcher=RecordingLauncher())
    async with app.run_test(size=(80, 24)) as pilot:
        setup = await settle(pilot, W.SetupStep)
        await pilot.pause(0.1)
        assert app.focused.id == "f-model"  # typing edits the model, not the screen's one-key bindings
        tabs = setup.query_one("#setup-tabs", TabbedContent)
        await pilot.press("ctrl+t")
        await pilot.pause(0.1)
        assert tabs.active == "tab-settings" and app.focused.id == "f-name"
        await pilot.press("ctrl+t")
        await pilot.pause(0.1)
        assert tabs.active == "tab-data"


async def test_the_tier_step_says_what_to_buy_and_b_opens_the_bill(home):
    from textual.widgets import Static

    from tui.screens.common import BillScreen
    app = RigtuneApp(wizard=True, machine=fixed_machine("rtx4090"), launcher=RecordingLauncher())
    async with app.run_test(size=(80, 24)) as pilot:
        scan = await settle(pilot, W.ScanStep)
        await pilot.pause(0.2)
        assert "b there: what to buy" in str(scan.query_one("#scan-verdict").render())
        await pilot.press("enter")
        tier = await settle(pilot, W.TierStep)
        await pilot.press("left")  # this machine -> the $3,000 tier
        await pilot.pause(0.2)
        detail = str(tier.query_one("#tier-detail", Static).render())
        assert "what to buy: 2 x RTX 3090, NVLink bridge, RAM" in detail and "(b: the full bill)" in detail
        await pilot.press("b")
        bill = await settle(pilot, BillScreen)
        assert "What to buy: this machine -> the $3,000 tier" in bill.text and "price from" in bill.text
        await pilot.press("escape")
        await settle(pilot, W.TierStep)
        await pilot.press("right", "right")  # the CPU demo column: no bill for it
        await pilot.press("b")
        await pilot.pause(0.1)
        assert isinstance(app.screen, W.TierStep)


async def test_a_model_nothing_can_fit_says_what_takes_the_room(home):
    """Mixtral-8x7B on the $1,500 tier: no setting makes it fit, so there is no ctrl+f; the fit meter says the
    weights alone exceed the card, and that this is a mixture of experts, every expert in memory."""
    app = RigtuneApp(preset="1500", machine=fixed_machine("rtx4090"), launcher=RecordingLauncher())
    async with app.run_test(size=(120, 45)) as pilot:
        setup = await settle(pilot, W.SetupStep)
        setup.query_one("#f-model").value = "Mixtral-8x7B"
        await pilot.pause(0.3)
        fit = " ".join(str(setup.query_one("#fit").render()).split())
        assert "does not fit on this tier: the weights alone take 25 GiB" in fit
        assert "mixture of experts: every expert stays in memory" in fit and "ctrl+f" not in fit


async def test_ctrl_f_applies_every_change_of_the_suggestion_and_says_what_changed(home):
    """On the $1,500 tier, an 8B at seq 4096, micro-batch 8, no checkpointing does not fit. ctrl+f applies the
    planner's whole suggestion (several keys), the fit meter then says it fits, the note names each change,
    and the run file written has them. The fit meter also estimates the run's time on the tier's card."""
    from textual.widgets import Switch
    app = RigtuneApp(preset="1500", machine=fixed_machine("rtx4090"), launcher=RecordingLauncher())
    notes = []
    app.notify = lambda message, **kw: notes.append(message)
    async with app.run_test(size=(120, 45)) as pilot:
        setup = await settle(pilot, W.SetupStep)
        for _ in range(100):  # the dataset preview gives the duration
            await pilot.pause(0.02)
            if "time: " in str(setup.query_one("#fit").render()):
                break
        assert "on RTX 4090 (~" in str(setup.query_one("#fit").render())
        setup.query_one("#f-seq").value = "4096"
        setup.query_one("#f-mbs").value = "8"
        setup.query_one("#f-accum").value = "2"
        setup.query_one("#f-gc", Switch).value = False
        await pilot.pause(0.2)
        fit = str(setup.query_one("#fit").render())
        assert "does not fit. ctrl+f applies all of:" in fit and "gradient checkpointing on" in fit
        expected = dict(setup.suggestion)
        assert len(expected) >= 3
        await pilot.press("ctrl+f")
        await pilot.pause(0.3)
        fit = str(setup.query_one("#fit").render())
        assert "does not fit" not in fit and setup.query_one("#f-gc", Switch).value is True
        note = next(n for n in notes if n.startswith("Applied: "))
        for dotted in expected:
            assert dotted.split(".")[1] in note
        mbs, accum = expected["train.micro_batch_size"], expected["train.gradient_accumulation_steps"]
        assert mbs * accum == 16 and setup.query_one("#f-mbs").value == str(mbs)
        await pilot.press("enter")
        review = await settle(pilot, W.ReviewStep)
        path = review.query_one("#save-path").value
        await pilot.press("enter")
        await settle(pilot, W.LaunchStep)
    cfg = runfile.load(home / path)
    assert cfg.train.micro_batch_size == mbs and cfg.train.gradient_accumulation_steps == accum
    assert cfg.train.gradient_checkpointing is True and cfg.data.max_seq_len == expected.get("data.max_seq_len", 4096)


async def test_any_hub_id_in_the_model_field_plans_after_its_config_arrives(home, tiny_model, monkeypatch):
    """A real local hub server (tests/hubserver.py): the fit meter fetches the config.json of a typed id in a
    worker, then plans it; a gated id says what to do instead."""
    from huggingface_hub import constants

    from tests.hubserver import HubServer
    server = HubServer()
    server.add("tiny-org/tiny-llama", tiny_model)
    server.add("tiny-org/gated-llama", tiny_model, gated=True)
    server.start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)  # as HF_ENDPOINT does when set before the import
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hf"))
    try:
        app = RigtuneApp(wizard=True, machine=fixed_machine("rtx4090"), launcher=RecordingLauncher())
        async with app.run_test(size=(120, 40)) as pilot:
            setup = await to_setup(pilot)

            async def fit_once_fetched():
                for _ in range(100):
                    await pilot.pause(0.05)
                    fit = str(setup.query_one("#fit").render())
                    if "fetching" not in fit:
                        return fit
                return fit
            setup.query_one("#f-model").value = "tiny-org/tiny-llama"
            await pilot.pause(0.1)
            assert "fetching the config.json of tiny-org/tiny-llama" in str(setup.query_one("#fit").render())
            fit = await fit_once_fetched()
            assert "tiny-org/tiny-llama" in fit and "GiB" in fit
            setup.query_one("#f-model").value = "tiny-org/gated-llama"
            fit = await fit_once_fetched()
            assert "gated" in fit and "hf auth login" in fit
    finally:
        server.stop()


async def test_saving_over_a_file_that_is_there_asks_and_no_keeps_it(home):
    """The review step asks before it writes over a file; No (Enter on the focused No, n, Escape) leaves it
    byte for byte, Yes writes the run file."""
    from tui.screens.common import ConfirmScreen
    there = home / "runs" / "cpu-demo" / "run.toml"
    there.parent.mkdir(parents=True)
    there.write_bytes(b'# not the wizard\'s: a file someone keeps here\nname = "theirs"\r\n')
    before = there.read_bytes()
    app = RigtuneApp(wizard=True, machine=fixed_machine(), launcher=RecordingLauncher())
    async with app.run_test(size=(80, 24)) as pilot:
        await to_setup(pilot)
        await pilot.press("enter")
        review = await settle(pilot, W.ReviewStep)
        assert review.query_one("#save-path").value == "runs/cpu-demo/run.toml"
        for no in ("enter", "n", "escape"):
            await pilot.press("enter")
            confirm = await settle(pilot, ConfirmScreen)
            assert "runs/cpu-demo/run.toml is already there" in confirm.question
            await pilot.press(no)
            await settle(pilot, W.ReviewStep)
            assert there.read_bytes() == before, no
            assert "not saved" in str(review.query_one("#review-error").render())
        await pilot.press("enter")
        await settle(pilot, ConfirmScreen)
        await pilot.press("y")
        await settle(pilot, W.LaunchStep)
    written = runfile.load(there)
    assert written.name == "cpu-demo" and written.hardware.tier == "cpu-demo"


COMMENTED = """\
# My first fine-tune. Keep this note.
name = "mine"  # the run's folder

# the base I always use
[model]
base = "Llama-2-7B"

[data]
path = "d.jsonl"   # my data

[train]
# slow and steady
learning_rate = 2e-4
epochs = 2
"""


async def test_the_wizard_edits_a_run_file_it_was_given_and_keeps_its_comments(home):
    from tui.screens.common import ConfirmScreen
    rf = home / "mine.toml"
    rf.write_text(COMMENTED)
    app = RigtuneApp(run_file=str(rf), machine=fixed_machine(), launcher=RecordingLauncher())
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, W.ReviewStep)
        await pilot.press("escape")
        setup = await settle(pilot, W.SetupStep)
        setup.query_one("#f-lr").value = "1e-4"
        await pilot.pause(0.05)
        await pilot.press("enter")
        review = await settle(pilot, W.ReviewStep)
        assert "# slow and steady" in review.text()  # the preview is the file as it will be written
        await pilot.press("enter")
        confirm = await settle(pilot, ConfirmScreen)
        assert "Its comments stay" in confirm.question
        await pilot.press("y")
        await settle(pilot, W.LaunchStep)
    text = rf.read_text()
    comments = [line for line in COMMENTED.splitlines() if "#" in line]
    kept = [line for line in text.splitlines() if "#" in line]
    assert [c.split("#", 1)[1] for c in comments] == [k.split("#", 1)[1] for k in kept]  # all there, in order
    assert 'path = "d.jsonl"   # my data' in text and "epochs = 2" in text  # untouched lines as written
    assert "learning_rate = 2e-4" not in text
    cfg = runfile.load(rf)
    assert cfg.train.learning_rate == 1e-4 and cfg.train.epochs == 2 and cfg.name == "mine"
    assert cfg.model.base == "Llama-2-7B" and cfg.data.path == "d.jsonl"
