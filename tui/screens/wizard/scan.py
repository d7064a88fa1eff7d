"""Step 1: what this machine has, and how it holds up against the tiers."""
from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.widgets import Footer, Static

from engine import tiers as T
from engine.runvalues import THIS_MACHINE

from ..common import on_ui
from .state import DEMO, Step


class ScanStep(Step):
    def compose(self) -> ComposeResult:
        yield self.header(1, "This machine")
        yield Static("Scanning the hardware...", id="scan-body")
        yield Static(id="scan-verdict")
        yield Footer()

    def on_mount(self) -> None:
        if self.state.machine is not None:
            self.show(self.state.machine)
        else:
            self.scan()

    @work(thread=True, exclusive=True)
    def scan(self) -> None:
        from engine.scan import scan
        m = scan(nvml=self.state.nvml)
        on_ui(self, self.show, m)

    def show(self, m) -> None:
        from engine.scan import describe
        self.state.machine = m
        body = Text(describe(m) + "\n")
        if not m.gpus:
            body.append("\nNo NVIDIA GPU on this machine. The CPU demo runs a real QLoRA fine-tune of a tiny model "
                        "here in about a minute; or pick a tier to plan a run for hardware you don't own.\n",
                        style="yellow")
        self.query_one("#scan-body", Static).update(body)
        verdict = T.verdict(T.this_machine(m))
        short = any(not ok or why for ok, why in (T.compare(T.this_machine(m), t) for t in T.tiers().values()))
        hint = " (b there: what to buy to reach one)" if short else ""
        self.query_one("#scan-verdict", Static).update(Text(f"\n{verdict}\n\nEnter: choose a tier{hint}", style="bold"))
        if not self.state.tier_id:
            self.state.tier_id = THIS_MACHINE if m.gpus else DEMO

    def action_next(self) -> None:
        if self.state.machine is not None:
            from .tier import TierStep
            self.app.push_screen(TierStep())


