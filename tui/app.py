"""The rigtune Textual app with two modes: "wizard" (set up and launch a run) and "dashboard" (watch one).
Heavy libraries are never imported here: scan, tiers, planner and the run view are plain Python."""
from __future__ import annotations

from pathlib import Path

from textual.app import App
from textual.binding import Binding


def default_launcher(cfg):
    """Start training detached (as `rigtune train` does); returns the accelerate argument list."""
    from engine.launch import accelerate_command, launch
    proc, run_dir = launch(cfg)
    return accelerate_command(cfg, run_dir, False)[0]


class RigtuneApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "rigtune"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", show=False, priority=True)]

    def __init__(self, run_dir=None, pick_from=None, sampler=None, wizard: bool = False, preset: str | None = None,
                 run_file: str | None = None, nvml=None, launcher=None, machine=None, chat_run=None,
                 chat_options: dict | None = None, **kw):
        super().__init__(**kw)
        self.run_dir = Path(run_dir) if run_dir else None
        self.pick_from = pick_from
        self.sampler = sampler
        self.start_wizard = wizard or preset is not None or run_file is not None
        self.preset, self.run_file = preset, run_file
        self.nvml = nvml
        self.machine = machine  # a fixed scan (tests, snapshots); None scans this machine
        self.launcher = launcher or default_launcher
        self.wizard = None
        self.chat_run, self.chat_options = (Path(chat_run) if chat_run else None), chat_options or {}

    def on_mount(self) -> None:
        if self.chat_run is not None:
            from .screens.chat import ChatScreen
            self.add_mode("chat", lambda: ChatScreen(self.chat_run, **self.chat_options))
            self.switch_mode("chat")
        elif self.run_dir is not None:
            self.show_dashboard(self.run_dir)
        elif self.pick_from is not None:
            from .screens.picker import RunPicker
            self.add_mode("watch", lambda: RunPicker(self.pick_from))
            self.switch_mode("watch")
        elif self.start_wizard:
            self.open_wizard()

    def open_wizard(self) -> None:
        from engine import runfile
        from engine.runvalues import THIS_MACHINE
        from engine.scan import scan

        from .screens import wizard as W
        self.wizard = W.WizardState(nvml=self.nvml)

        def scanned():
            return self.machine if self.machine is not None else scan(nvml=self.nvml)
        if self.run_file:  # straight to review: the run file is the state
            self.wizard.values = runfile.load(self.run_file).to_dict()
            self.wizard.run_file = self.run_file
            self.wizard.machine = scanned()
            tier = self.wizard.values["hardware"]["tier"]
            self.wizard.tier_id = tier if tier in W.tier_order() else (
                THIS_MACHINE if self.wizard.machine.gpus else W.DEMO)
            self.add_mode("wizard", W.SetupStep)
            self.switch_mode("wizard")
            self.push_screen(W.ReviewStep())
        elif self.preset:  # straight to setup for that tier
            self.wizard.machine = scanned()
            self.wizard.tier_id = self.preset
            self.wizard.values, self.wizard.header = W.initial_values(self.wizard)
            self.add_mode("wizard", W.SetupStep)
            self.switch_mode("wizard")
        else:
            self.wizard.machine = self.machine
            self.add_mode("wizard", W.ScanStep)
            self.switch_mode("wizard")

    def show_dashboard(self, run_dir) -> None:
        if run_dir is None:
            self.exit(0)
            return
        from .screens.dashboard import Dashboard
        self.run_dir = Path(run_dir)
        self.add_mode("dashboard", lambda: Dashboard(self.run_dir, sampler=self.sampler))
        self.switch_mode("dashboard")
