"""Step 5: launch the run in the background and open the dashboard."""
from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Static

from engine import runfile, runvalues
from engine.errors import BadInput

from ..common import on_ui
from .state import Step


class LaunchStep(Step):
    BINDINGS = [Binding("enter", "next", "Launch", priority=True), Binding("escape", "back", "Back")]

    def compose(self) -> ComposeResult:
        v = self.state.values
        yield self.header(5, "Launch")
        t = Text()
        t.append(f"Run file: {self.state.run_file}\n", style="bold")
        t.append(f"{v['name']}: {v['model']['base']} on {v['data']['path']}\n")
        hw = v["hardware"]
        t.append(f"{hw['strategy']} x {hw['num_processes']} process(es)"
                 f"{' with CPU offload' if hw['cpu_offload'] else ''}; micro-batch {v['train']['micro_batch_size']}"
                 f" x accumulation {v['train']['gradient_accumulation_steps']}\n\n")
        t.append("Enter starts training in the background and opens the dashboard. Training keeps going when "
                 "you leave the dashboard or lose the connection: re-attach with `rigtune watch`.\n", style="green")
        t.append(f"\nSame thing from a shell: rigtune train {self.state.run_file}\n", style="dim")
        yield Static(t, id="launch-body")
        yield Static(id="launch-status")
        yield Footer()

    def action_next(self) -> None:
        self.query_one("#launch-status", Static).update(Text("starting...", style="yellow"))
        self.start()

    @work(thread=True, exclusive=True)
    def start(self) -> None:
        values = self.state.values
        try:
            if values["model"]["base"] == runvalues.DEMO_MODEL:
                on_ui(self, self.status, Text("building the demo model (once, about 20 s)...", style="yellow"))
                runvalues.build_demo_model(values, log=lambda *a: None)
                runfile.save(values, self.state.run_file, header=self.state.header)
            if values["model"]["adapter"] == runvalues.DEMO_ADAPTER:  # the DPO demo starts from the CPU demo's run
                on_ui(self, self.status, Text("training the CPU demo first, which the DPO demo starts from "
                                              "(about a minute)...", style="yellow"))
                values["model"]["adapter"] = self.train_cpu_demo()
                runfile.save(values, self.state.run_file, header=self.state.header)
            cfg = runfile.load(self.state.run_file)
            self.app.launcher(cfg)
        except (BadInput, RuntimeError, OSError) as e:  # a bad file, a failed demo build, an unwritable folder
            on_ui(self, self.status, Text(str(e), style="red"))
            return
        # the run has started: show it even if the user has left this screen meanwhile (the app is the node)
        on_ui(self.app, self.app.show_dashboard, runfile.run_dir(cfg))

    def train_cpu_demo(self) -> str:
        """The CPU demo, launched like any run and waited for (this worker's thread): its run directory."""
        import time

        from engine.events import ADAPTER, FINAL_STATES, read_status
        from engine.launch import free_name
        sft, _ = runvalues.values_for("cpu-demo")
        runvalues.build_demo_model(sft, log=lambda *a: None)
        cfg = runfile.validate(free_name(sft), path="preset cpu-demo")
        self.app.launcher(cfg)
        run_dir = runfile.run_dir(cfg).absolute()
        while read_status(run_dir).get("state") not in FINAL_STATES:
            time.sleep(0.5)
        if not (run_dir / ADAPTER / "adapter_model.safetensors").is_file():
            raise RuntimeError(f"the CPU demo in {run_dir} did not finish ({read_status(run_dir).get('state')}); "
                               "see its train.log")
        return str(run_dir)

    def status(self, text: Text) -> None:
        self.query_one("#launch-status", Static).update(text)
