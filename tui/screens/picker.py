"""`rigtune watch` without a run directory: pick one of the recent runs under ./runs."""
from __future__ import annotations

import time
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from engine.runview import recent_runs


class RunPicker(Screen):
    BINDINGS = [Binding("q,escape", "app.quit", "Quit")]

    def __init__(self, root="runs"):
        super().__init__()
        self.root = Path(root)
        self.runs = recent_runs(self.root)

    def compose(self) -> ComposeResult:
        yield Static(f" Recent runs under {self.root}/ - Enter attaches, q quits", id="picker-title")
        options = []
        for path, st in self.runs:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(st.get("updated", 0))) if st.get("updated") else ""
            options.append(Option(f"{path.name:<28} {st.get('state', '?'):<13} step {st.get('step', 0)}/"
                                  f"{st.get('total_steps', '?')}  {when}", id=str(path)))
        if not options:
            options.append(Option(f"no runs under {self.root}/ yet - start one with rigtune train RUN_FILE",
                                  disabled=True))
        yield OptionList(*options, id="runs")
        yield Footer()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.app.show_dashboard(Path(event.option.id))
