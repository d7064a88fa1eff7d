"""The rigtune Textual app. Two modes: "wizard" (set up a run) and "dashboard" (watch one). Heavy libraries
are never imported here: the planner, scan and run view are plain Python from engine/."""
from __future__ import annotations

from pathlib import Path

from textual.app import App
from textual.binding import Binding


class RigtuneApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "rigtune"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", show=False, priority=True)]

    def __init__(self, run_dir=None, pick_from=None, sampler=None, **kw):
        super().__init__(**kw)
        self.run_dir = Path(run_dir) if run_dir else None
        self.pick_from = pick_from
        self.sampler = sampler

    def on_mount(self) -> None:
        if self.run_dir is not None:
            self.show_dashboard(self.run_dir)
        elif self.pick_from is not None:
            from .screens.picker import RunPicker
            self.push_screen(RunPicker(self.pick_from), self.show_dashboard)

    def show_dashboard(self, run_dir) -> None:
        if run_dir is None:
            self.exit(0)
            return
        from .screens.dashboard import Dashboard
        self.run_dir = Path(run_dir)
        self.push_screen(Dashboard(self.run_dir, sampler=self.sampler))
