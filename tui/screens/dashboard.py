"""The dashboard: live panels for one run directory. It only reads the run directory (through
engine.runview, incrementally) and a sampler thread's snapshot; it redraws at 2 Hz and only what changed.
Leaving it never stops training: the trainer runs in its own session."""
from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, ProgressBar, Sparkline, TabbedContent, TabPane

from engine.events import ADAPTER, RUN_FILE
from engine.runview import RunView, download_fraction, downsample, fmt_download, fmt_duration
from engine.sampler import Sampler

from ..widgets.plot import LinePlot
from ..widgets.text import Panel
from .common import ConfirmScreen, RunFileScreen, on_ui

STATE_STYLE = {"training": "bold green", "evaluating": "bold cyan", "checkpointing": "bold cyan",
               "loading": "bold yellow", "starting": "bold yellow", "finished": "bold green",
               "stopped": "bold yellow", "crashed": "bold red"}


def bar(frac: float, width: int) -> str:
    frac = max(0.0, min(1.0, frac))
    full = int(frac * width)
    return "█" * full + ("▌" if frac * width - full >= 0.5 else "") + "·" * (width - full - (1 if frac * width - full >= 0.5 else 0))


def held_out_text(check: dict, width: int) -> Text:
    """The final held-out check as a table: each question, the base model's answer beside the fine-tune's."""
    def cell(s: str, n: int) -> str:
        s = " ".join(s.split())
        return (s if len(s) <= n else s[:n - 1] + "…").ljust(n)
    q = max(12, (width - 4) * 3 // 10)
    a = max(10, (width - 4 - q) // 2)
    t = Text()
    base = check.get("base_label", "base model")
    t.append(f"held-out check (step {check['step']}): {check['correct']} of {check['total']} answered right; "
             f"the {base}: {check['base_correct']} of {check['total']}\n", style="bold")
    t.append(f"  {cell('question', q)} {cell(base, a)} fine-tuned\n", style="dim")
    for s in check["samples"]:
        t.append("✓ " if s.get("correct") else "✗ ", style="green" if s.get("correct") else "red")
        t.append(cell(s.get("question", ""), q) + " ")
        t.append(cell(s.get("base_completion", ""), a) + " ", style="dim")
        t.append(cell(s.get("completion", ""), a) + "\n", style="green" if s.get("correct") else "yellow")
    return t


class Dashboard(Screen):
    BINDINGS = [
        Binding("q", "detach", "Detach (training keeps running)"),
        Binding("q", "leave", "Quit"),  # the same key once the run is over: nothing keeps running
        Binding("s", "stop", "Stop"),
        Binding("o", "open_run_file", "Run file"),
        Binding("r", "resume", "Resume"),
        Binding("c", "chat", "Chat"),
        Binding("e", "export", "Export"),
        Binding("l", "tab('log')", "Log", show=False),
        Binding("k", "tab('checkpoints')", "Checkpoints", show=False),
        Binding("g", "tab('sample')", "Sample", show=False),
        Binding("a", "tab('answers')", "Answers", show=False),
    ]

    def __init__(self, run_dir, sampler: Sampler | None = None, clock=time.time, **kw):
        super().__init__(**kw)
        self.run_dir = Path(run_dir)
        self.view = RunView(self.run_dir)
        self.sampler = sampler
        self.clock = clock
        self.attached = False
        self._shown_log = 0
        self._log_resized = False
        self._shown_ckpts = None
        self._shown_held_out = False
        self._throughput_rows = 2  # app.tcss's #throughput height

    def compose(self) -> ComposeResult:
        yield Panel(id="status")
        yield ProgressBar(total=100, show_eta=False, id="progress")
        with Horizontal(id="main"):
            with Vertical(id="loss-box"):
                yield LinePlot(id="loss")
            with Vertical(id="side"):
                yield Panel(id="throughput")
                yield Panel("lr", classes="spark-label", id="lr-label")
                yield Sparkline([], id="lr")
                yield Panel("grad norm", classes="spark-label", id="gn-label")
                yield Sparkline([], id="gradnorm")
                yield Panel(id="hardware")
        with TabbedContent(id="bottom", initial="log"):
            with TabPane("Log", id="log"):
                yield Panel(id="logtail")
            with TabPane("Checkpoints", id="checkpoints"):
                yield DataTable(id="ckpts", cursor_type="row", zebra_stripes=False)
            with TabPane("Sample", id="sample"):
                yield Panel(id="sample-text")
            with TabPane("Answers", id="answers"):  # GRPO: a prompt's sampled answers and their rewards
                yield Panel(id="answers-text")
        yield Footer()

    def on_mount(self) -> None:
        self.set_class(self.app.size.width >= 110, "-wide")
        self.set_class(self.app.size.height >= 36, "-tall")
        self.query_one("#loss-box").border_title = "loss  [cyan]raw[/] [yellow]smoothed[/] [magenta]eval[/]"
        table = self.query_one("#ckpts", DataTable)
        table.add_columns("step", "saved", "path")
        if self.sampler is None:
            self.sampler = Sampler(lambda: self.view.status.get("pgid"))
            self.sampler.start()
        self.attach()

    def on_resize(self, event) -> None:
        self._log_resized = True
        if self.attached:
            self.call_after_refresh(self.update_sample)
        self.set_class(event.size.width >= 110, "-wide")
        self.set_class(event.size.height >= 36, "-tall")

    def on_unmount(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()

    @work(thread=True, exclusive=True, group="attach")
    def attach(self) -> None:
        """The first read can be large (a finished run of a million events): do it off the event loop."""
        self.view.poll()
        import numpy  # noqa: F401 - warm the import the plots use, off the event loop
        on_ui(self, self._attached)

    def _attached(self) -> None:
        self.attached = True
        if self.view.start.get("method") != "grpo":  # only a method that samples answers has them to show
            self.query_one("#bottom", TabbedContent).hide_tab("answers")
        self.update_view()
        self.set_interval(0.5, self.tick)

    def tick(self) -> None:
        if self.view.poll():
            self.update_view()
        else:
            self.update_hardware()
            self.update_status()

    # ---------------------------------------------------------------------- drawing
    def update_view(self) -> None:
        self.update_status()
        self.update_plots()
        self.update_hardware()
        self.update_log()
        self.update_checkpoints()
        self.update_sample()
        self.update_answers()

    def update_status(self) -> None:
        v = self.view
        state = v.state
        total = v.total_steps or v.status.get("total_steps") or 0
        t = Text()
        t.append(f" {self.run_dir.name[:24]} ", style="bold")
        t.append(f" {state.upper()} ", style=f"reverse {STATE_STYLE.get(state, 'bold')}")
        # the essentials first; the rest while the line has room
        parts = [(f" step {v.step}/{total or '?'}", "")]
        download = v.download if state in ("loading", "starting") and not v.start else None
        if download is not None:  # the base model's weights are coming: that is the news, with its ETA
            room = self.size.width - len(t.plain) - 1
            parts = [(f" {fmt_download(download, short=room < 90)}"[:room], "")]
        elif v.message and state in ("crashed", "stopped"):  # the reason comes before the rest
            room = self.size.width - len(t.plain) - len(parts[0][0]) - 2
            parts.append((f"  {v.message}"[:max(0, room)], "red" if state == "crashed" else "yellow"))
        else:
            parts.append((f"  ETA {fmt_duration(v.eta_s)}", ""))
        if v.last_loss is not None:
            parts.append((f"  loss {v.last_loss:.4f}", "bold"))
        pref = v.preference
        if pref.get("reward_margin") is not None:  # DPO/ORPO: how far the policy prefers chosen, and how often
            parts.append((f"  margin {pref['reward_margin']:.3f} acc {pref['reward_accuracy']:.2f}", "bold magenta"))
        if pref.get("pref_accuracy") is not None:
            parts.append((f"  held-out pref {pref['pref_accuracy']:.2f}", "magenta"))
        if v.rewards:
            parts.append((f"  reward {v.rewards[-1]:.3f}", "bold magenta"))
        world = v.start.get("world_size") or 1
        if world > 1:  # a multi-process run says how it is spread
            parts.append((f"  {v.start.get('strategy', '')} x{world}", "cyan"))
        parts += [(f"  elapsed {fmt_duration(v.elapsed_s)}", "dim"), (f"  epoch {v.epoch:.2f}", "dim")]
        room = self.size.width - len(t.plain) - 1
        for text, style in parts:
            if len(text) <= room:
                t.append(text, style=style)
                room -= len(text)

        self.query_one("#status", Panel).show(t)
        if state != getattr(self, "_shown_state", None):
            self._shown_state = state
            self.refresh_bindings()
        pb = self.query_one("#progress", ProgressBar)
        want = ((1000, round(1000 * download_fraction(download))) if download is not None else
                (max(1, total), min(v.step, total or v.step)))
        if (pb.total, pb.progress) != want:
            pb.update(total=want[0], progress=want[1])

    def update_plots(self) -> None:
        v = self.view
        if v.rewards:  # GRPO: what it maximises is the news, not its loss
            self.query_one("#loss-box").border_title = "reward  [cyan]mean of the sampled answers[/] [magenta]held-out[/]"
            self.query_one("#loss", LinePlot).set_series([
                (v.steps, v.rewards, "cyan", "line"), (v.eval_reward_steps, v.eval_rewards, "magenta", "points")])
        else:
            self.query_one("#loss", LinePlot).set_series([
                (v.steps, v.losses, "cyan", "line"), (v.steps, v.smooth, "yellow", "line"),
                (v.eval_steps, v.eval_losses, "magenta", "points")])
        width = max(8, self.query_one("#lr", Sparkline).size.width)
        lr = [float(f"{x:.5g}") for x in downsample(v.steps, v.lrs, width)[1]]  # no float noise in flat lines
        gn = [float(f"{x:.5g}") for x in downsample(v.steps, v.grad_norms, width)[1]]
        if lr != self.query_one("#lr", Sparkline).data:
            self.query_one("#lr", Sparkline).data = lr
        if gn != self.query_one("#gradnorm", Sparkline).data:
            self.query_one("#gradnorm", Sparkline).data = gn
        self.query_one("#lr-label", Panel).show(f"lr {v.lrs[-1]:.2e}" if v.lrs else "lr")
        self.query_one("#gn-label", Panel).show(f"grad norm {v.grad_norms[-1]:.3f}" if v.grad_norms else "grad norm")
        tokens = f"{v.tokens_seen / 1e6:.2f}M" if v.tokens_seen >= 1e6 else f"{v.tokens_seen:,}"
        lines = [f"tok/s {v.tokens_per_s:,.0f} (avg {v.tokens_per_s_avg:,.0f})", f"tokens seen {tokens}",
                 *v.energy_lines()]  # energy and cost so far; at the end, the cloud estimate beside them
        panel = self.query_one("#throughput", Panel)
        if len(lines) != self._throughput_rows:  # a Panel never asks for a layout: only when its rows change
            self._throughput_rows = panel.styles.height = len(lines)
        panel.show("\n".join(lines))

    def update_hardware(self) -> None:
        snap = self.sampler.latest if self.sampler else None
        widget = self.query_one("#hardware", Panel)
        if snap is None or not snap.time:
            widget.show("sampling hardware...")
            return
        width = max(6, widget.size.width - 12)
        lines = []
        for g in snap.gpus:
            lines.append(f"GPU{g.index} {g.name[:width + 4]}")
            lines.append(f"{bar(g.used_gib / max(g.total_gib, 1e-9), width)} {g.used_gib:4.1f}/{g.total_gib:.0f}G")
            power = f"{g.power_w:.0f}/{g.power_limit_w:.0f}W" if g.power_w is not None and g.power_limit_w else ""
            lines.append(f"util {g.util:3d}%  {g.temp_c}°C  {power}  run {g.run_gib:.1f}G")
        if not snap.gpus and snap.cpu:
            c = snap.cpu
            lines.append(f"CPU {c.cpu_percent:5.1f}% ({c.processes} proc)")
            lines.append(f"{bar(c.ram_used_gib / max(c.ram_total_gib, 1e-9), width)} {c.ram_used_gib:4.1f}/{c.ram_total_gib:.0f}G")
            lines.append(f"run RSS {c.rss_gib:.2f} GiB")
        text = Text.from_markup("\n".join(lines))
        for extra, style in ((snap.note, "dim"), (snap.error, "red")):
            if extra:
                text.append(("\n" if text.plain else "") + extra, style=style)
        widget.show(text)

    def update_log(self) -> None:
        """The last lines of train.log that fit the panel (the run view keeps at most 200)."""
        if self.view.log_lines_total == self._shown_log and not self._log_resized:
            return
        panel = self.query_one("#logtail", Panel)
        rows, cols = max(1, panel.size.height), max(10, panel.size.width)
        tail = list(self.view.log_tail)[-rows:]
        panel.show(Text("\n".join(line[:cols] for line in tail), no_wrap=True, overflow="crop"))
        self._shown_log, self._log_resized = self.view.log_lines_total, False

    def update_checkpoints(self) -> None:
        """Checkpoints still on disk (older ones are pruned to keep_checkpoints), newest first."""
        ckpts = [(c.step, c.time, c.path) for c in self.view.checkpoints]
        if ckpts == self._shown_ckpts:
            return
        self._shown_ckpts = ckpts
        table = self.query_one("#ckpts", DataTable)
        table.clear()
        kept = [c for c in ckpts if (self.run_dir / c[2]).is_dir()] or ckpts[-1:]
        for step, t, path in reversed(kept):
            table.add_row(str(step), time.strftime("%H:%M:%S", time.localtime(t)) if t else "", path)
        if len(kept) < len(ckpts):
            table.add_row("", "", Text(f"{len(ckpts) - len(kept)} older pruned (keep_checkpoints)", style="dim"))

    def update_answers(self) -> None:
        """GRPO: the latest logged step's answers to its first prompt, best first, with their rewards."""
        c = self.view.completions
        if not c:
            return
        width = max(20, self.query_one("#bottom").size.width - 12)
        t = Text(f"step {c['step']}: {c.get('question', '')}\n", style="bold")
        for a in sorted(c.get("answers", []), key=lambda a: -a["reward"]):
            text = " ".join(str(a["text"]).split())
            t.append(f"{a['reward']:7.3f}  ", style="green" if a["reward"] > 0 else "dim")
            t.append((text if len(text) <= width else text[:width - 1] + "…") + "\n")
        self.query_one("#answers-text", Panel).show(t)

    def update_sample(self) -> None:
        if self.view.held_out:
            width = max(40, self.query_one("#bottom").size.width - 1)
            self.query_one("#sample-text", Panel).show(held_out_text(self.view.held_out, width))
            if self.view.finished and not self._shown_held_out:  # the end of a run: show what it learned
                self._shown_held_out = True
                self.action_tab("sample")
            return
        s = self.view.sample
        text = Text()
        if not s:
            text.append("no eval sample yet (written at each eval)", style="dim")
        else:
            text.append(f"step {self.view.sample_step}\n", style="bold")
            text.append(s.get("prompt", "").strip()[-300:] + "\n", style="dim")
            text.append(s.get("completion", ""), style="green")
        self.query_one("#sample-text", Panel).show(text)

    # ---------------------------------------------------------------------- actions
    def action_tab(self, tab: str) -> None:
        self.query_one("#bottom", TabbedContent).active = tab

    def action_detach(self) -> None:
        self.app.exit(0)

    def action_leave(self) -> None:
        self.app.exit(0)

    def check_action(self, action: str, parameters) -> bool | None:
        if action == "detach":
            return not self.view.finished
        if action == "leave":
            return self.view.finished
        if action == "stop":
            return not self.view.finished
        if action == "resume":
            return self.view.state in ("stopped", "crashed")
        if action in ("chat", "export"):  # the next steps, once the run wrote its adapter
            return self.view.finished and (self.run_dir / ADAPTER / "adapter_model.safetensors").exists()
        return True

    def action_stop(self) -> None:
        def confirmed(yes: bool | None) -> None:
            if not yes:
                return
            from engine.errors import BadInput
            from engine.launch import stop
            try:
                what, _ = stop(self.run_dir)
            except BadInput as e:
                self.notify(e.bare, severity="warning")
                return
            if what == "asked":
                self.notify("Stopping after this step: checkpoint and adapter are being saved.")
            else:
                self.notify("The trainer is not running.", severity="warning")
        self.app.push_screen(ConfirmScreen("Stop training?\nIt finishes the current step, saves a checkpoint "
                                           "and the adapter, then exits."), confirmed)

    def action_chat(self) -> None:
        from .chat import ChatScreen
        self.app.push_screen(ChatScreen(self.run_dir))

    def action_export(self) -> None:
        from .export import ExportScreen
        self.app.push_screen(ExportScreen(self.run_dir))

    def action_open_run_file(self) -> None:
        self.app.push_screen(RunFileScreen(self.run_dir / RUN_FILE))

    def action_resume(self) -> None:
        self.resume_run()

    @work(thread=True, exclusive=True, group="resume")
    def resume_run(self) -> None:
        from engine import runfile
        from engine.errors import BadInput
        from engine.launch import launch
        try:
            cfg = runfile.load(self.run_dir / RUN_FILE)
            launch(cfg, resume=True)
            on_ui(self, self.notify, "Resuming from the newest checkpoint...")
        except BadInput as e:
            on_ui(self, lambda message=str(e): self.notify(message, severity="error"))
