"""Step 2: the budget tiers (from presets/tiers.toml) side by side with this machine and the CPU demo: what
each fine-tunes, the seed article's checks, and whether this box meets it."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Static

from engine import tiers as T
from engine.errors import BadInput
from engine.runvalues import THIS_MACHINE, tier_of

from .state import DEMO, DEMO_DPO, DEMO_GRPO, DEMOS, Step, initial_values, tier_order


def _cap_cell(cap) -> Text:
    if cap.verdict == "tight":  # under the card, but within the planner's error margin: may run out of memory
        return Text("~ tight", style="yellow")
    if not cap.fits:
        return Text("✗ no", style="red")
    how = cap.strategy + ("+off" if cap.cpu_offload else "")
    return Text(f"✓ {how}", style="green")


def _check_cell(checks, name) -> Text:
    c = next((c for c in checks if c.name == name), None)
    if c is None:
        return Text("-", style="dim")
    return Text("pass", style="green") if c.ok else Text("warn", style="yellow")


class TierStep(Step):
    BINDINGS = [Binding("enter", "next", "Choose", priority=True), Binding("escape", "back", "Back"),
                Binding("b", "bill", "What to buy"),
                Binding("left", "move(-1)", "◀ ▶ tier", priority=True), Binding("right", "move(1)", show=False,
                                                                              priority=True)]

    def compose(self) -> ComposeResult:
        yield self.header(2, "Budget tier: plan for the box you have, or one you might buy")
        yield DataTable(id="tiers", cursor_type="column", zebra_stripes=True)
        yield Static(id="tier-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.order = tier_order()
        self._bills = {}  # tier id -> what this machine needs to reach it (engine.build), computed once
        table = self.query_one("#tiers", DataTable)
        m = self.state.machine
        machine = T.this_machine(m)
        columns = {**T.tiers(), THIS_MACHINE: machine}  # the GPU columns; the run presets (CPU demo) follow
        presets_after = [p for p in self.order if p not in columns]
        table.add_column("", key="aspect")
        for tid, tier in columns.items():
            table.add_column(tier.label, key=tid)
        for pid in presets_after:
            table.add_column({DEMO_DPO: "DPO", DEMO_GRPO: "GRPO"}.get(pid, DEMOS.get(pid, pid)), key=pid)  # 80 columns
        caps = {tid: {c.size: c for c in T.capabilities(t) + T.capabilities(t, T.MOE)} for tid, t in columns.items()}
        checks = {tid: T.checks(t, "70B" if len(t.gpus) > 1 else "13B") for tid, t in columns.items() if t.gpus}
        rest = [Text("-", style="dim")] * len(presets_after)
        short = lambda t: f"{len(t.gpus)}x{min(t.gpus):.0f}G {t.ram_gib:.0f}G" if t.gpus else "no GPU"
        table.add_row("GPUs / RAM", *(short(t) for t in columns.values()), *(["CPU"] * len(presets_after)))
        for size in T.SIZES:
            cells = [(_cap_cell(caps[k][size]) if caps[k] else Text("✗ no GPU", style="red")) for k in columns]
            table.add_row(f"fine-tunes {size}", *cells, *([Text("tiny", style="dim")] * len(presets_after)))
        for label in (m for m in T.MOE if any(m in c for c in caps.values())):  # MoE, every expert 4-bit
            cells = [(_cap_cell(caps[k][label]) if caps[k] else Text("✗ no GPU", style="red")) for k in columns]
            table.add_row(label, *cells, *([Text("-", style="dim")] * len(presets_after)))
        for name, label in (("ram_2x_vram", "RAM ≥ 2x VRAM"), ("nvme", "NVMe"), ("nvlink", "NVLink")):
            table.add_row(label, *(_check_cell(checks.get(k, []), name) for k in columns), *rest)
        here = []
        for tid, tier in columns.items():
            if tid == THIS_MACHINE:
                here.append(Text("yes" if machine.gpus else "-", style="green" if machine.gpus else "dim"))
                continue
            ok, why = T.compare(machine, tier)
            label = "yes" if ok and not why else ("GPUs yes" if ok else "what-if")
            here.append(Text(label, style="green" if ok and not why else ("yellow" if ok else "cyan")))
        table.add_row("on this box", *here, *([Text("yes", style="green")] * len(presets_after)))
        self.col = self.order.index(self.state.tier_id or DEMO) + 1
        table.focus()
        self.call_after_refresh(self.action_move, 0)

    def action_move(self, delta: int) -> None:
        """Left and right walk the tiers (column 0 holds the labels, not a tier)."""
        self.col = min(len(self.order), max(1, self.col + delta))
        self.query_one("#tiers", DataTable).move_cursor(column=self.col)
        self.show_detail(self.col)

    def show_detail(self, col: int) -> None:
        tid = self.order[col - 1]
        if tid == DEMO:
            text = "CPU demo: a tiny Llama built here (no download) fine-tuned with real NF4 QLoRA on a bundled dataset."
        elif tid == DEMO_DPO:
            text = ("DPO demo: preference tuning on the CPU, from the CPU demo's adapter (trained first when this "
                    "folder has none): it learns to sign off its answers. No second model in memory.")
        elif tid == DEMO_GRPO:
            text = ("GRPO demo: reinforcement learning on the CPU: the tiny base model samples answers to sums and is "
                    "rewarded for the right one; held-out sums show what it learnt.")
        else:
            t = tier_of(tid, self.state.machine)
            if not t.gpus:
                text = "This machine has no NVIDIA GPU: plan for a tier instead, or run the CPU demo."
            else:
                warn = [c.message for c in T.checks(t, "70B" if len(t.gpus) > 1 else "13B") if not c.ok]
                text = f"{t.label}: {t.summary}. {t.article}" + (f"\nwarn: {'; '.join(warn)}" if warn else "")
                if tid != THIS_MACHINE and self.state.machine is not None:
                    ok, short = T.compare(T.this_machine(self.state.machine), t)
                    text += ("\nthis machine: " + ("meets it" if ok and not short else
                             ("its GPUs match; " if ok else "") + "; ".join(short)))
                    text += "\n" + self.bill_line(tid)
        self.query_one("#tier-detail", Static).update(text)

    def bill(self, tid: str):
        """What this machine needs to reach tier `tid` (engine.build), computed once per tier."""
        from engine import build as B
        if tid not in self._bills:
            self._bills[tid] = B.for_tier(self.state.machine, T.tiers()[tid])
        return self._bills[tid]

    def bill_line(self, tid: str) -> str:
        try:
            bill = self.bill(tid)
        except BadInput as e:  # a tier whose default model the planner cannot read: said, not fatal
            return f"what to buy: not known ({e.bare})"
        if not bill.items:
            return "what to buy: nothing (b: what the box fine-tunes)"
        names = ", ".join(i.kind.upper() if i.kind in ("psu", "cpu") else {"gpu": i.part.split(" (")[0],
                          "bridge": "NVLink bridge", "ram": "RAM", "disk": "NVMe SSD"}[i.kind] for i in bill.items)
        unknown = (" + " + ", ".join(i.kind.upper() for i in bill.items if i.usd_low is None) + " (price not known)"
                   if bill.prices_unknown else "")
        return f"what to buy: {names}: ${bill.usd_low:,.0f}-{bill.usd_high:,.0f}{unknown} (b: the full bill)"

    def action_bill(self) -> None:
        tid = self.order[self.col - 1]
        if tid not in T.tiers():
            self.notify("Highlight a tier (a column with a price) to see what to buy for it.", severity="warning")
            return
        from ..common import BillScreen
        from engine import build as B
        self.app.push_screen(BillScreen(B.describe(self.bill(tid)), f"What to buy for the {T.tiers()[tid].label} tier"))

    def action_next(self) -> None:
        tid = self.order[self.col - 1]
        if tid == THIS_MACHINE and not self.state.machine.gpus:
            self.notify("This machine has no NVIDIA GPU; choose a tier to plan for, or the CPU demo.",
                        severity="warning")
            return
        if tid != self.state.tier_id or not self.state.values:
            self.state.tier_id = tid
            self.state.values, self.state.header = initial_values(self.state)
        from .setup import SetupStep
        self.app.push_screen(SetupStep())


