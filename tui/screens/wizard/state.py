"""What the wizard's steps share: the state they fill in, the common step screen and the first values of a
run file. Its own module, so the steps and the package that lists them import it without importing each other."""
from __future__ import annotations

from dataclasses import dataclass, field

from rich.text import Text
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Static

from engine import runvalues
from engine.launch import free_name

DEMO = "cpu-demo"
DEMO_DPO = "cpu-demo-dpo"
DEMO_GRPO = "cpu-demo-grpo"
DEMOS = {DEMO: "CPU demo", DEMO_DPO: "DPO demo", DEMO_GRPO: "GRPO demo"}  # the run presets the wizard offers
STEPS = 5


def tier_order() -> list:
    """The wizard's columns: every tier in presets/tiers.toml, this machine, the CPU demo."""
    return runvalues.preset_ids()


@dataclass
class WizardState:
    machine: object = None
    tier_id: str = ""
    values: dict = field(default_factory=dict)
    header: str = ""
    run_file: str = ""
    nvml: object = None

    def tier(self):
        return runvalues.tier_of(self.tier_id, self.machine)


def initial_values(state: WizardState) -> tuple[dict, str]:
    """Run-file values for the chosen tier or preset (engine.runvalues), with a free run name."""
    values, why = runvalues.values_for(state.tier_id, machine=state.machine)
    label = DEMOS.get(state.tier_id, state.tier_id)
    header = f"written by the rigtune wizard for the {why}" if why else f"written by the rigtune wizard: {label}"
    return free_name(values), header


class Step(Screen):
    """Common keys: Enter goes on, Escape goes back, ctrl+q quits (from the app)."""
    BINDINGS = [Binding("enter", "next", "Next"), Binding("escape", "back", "Back")]

    @property
    def state(self) -> WizardState:
        return self.app.wizard

    def header(self, n: int, title: str) -> Static:
        return Static(Text.assemble((f" Step {n}/{STEPS} ", "reverse bold"), f"  {title}"), classes="step-title")

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:  # the mode's first screen has nothing behind it
            self.app.pop_screen()
