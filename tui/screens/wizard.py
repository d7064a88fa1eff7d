"""The wizard: one screen per step - scan, tier, setup (with a live fit meter), review, launch. The steps share
one WizardState; Escape goes back a step without losing anything typed. Everything heavy (torch, transformers)
stays out of this process: scan, tiers, planner, run-file checks and the dataset preview are plain Python."""
from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rich.syntax import Syntax
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label, Select, Static, Switch, TabbedContent, TabPane

import presets
from engine import planner as P
from engine import runfile
from engine import tiers as T
from engine.errors import BadInput

DEMO = "cpu-demo"
TIER_ORDER = ["1500", "3000", "this-machine", DEMO]


@dataclass
class WizardState:
    machine: object = None
    tier_id: str = ""
    values: dict = field(default_factory=dict)
    header: str = ""
    run_file: str = ""
    nvml: object = None

    def tier(self):
        if self.tier_id == "this-machine":
            return T.this_machine(self.machine)
        return T.tiers().get(self.tier_id)


class Step(Screen):
    """Common keys: Enter goes on, Escape goes back, ctrl+q quits (from the app)."""
    BINDINGS = [Binding("enter", "next", "Next"), Binding("escape", "back", "Back")]
    TITLE = ""

    @property
    def state(self) -> WizardState:
        return self.app.wizard

    def header(self, n: int, title: str) -> Static:
        return Static(Text.assemble((f" Step {n}/5 ", "reverse bold"), f"  {title}"), classes="step-title")

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:  # the mode's first screen has nothing behind it
            self.app.pop_screen()


# ---------------------------------------------------------------------------- 1. scan

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
        self.app.call_from_thread(self.show, m)

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
        self.query_one("#scan-verdict", Static).update(Text(f"\n{verdict}\n\nEnter: choose a tier", style="bold"))
        if not self.state.tier_id:
            self.state.tier_id = "this-machine" if m.gpus else DEMO

    def action_next(self) -> None:
        if self.state.machine is not None:
            self.app.push_screen(TierStep())


# ---------------------------------------------------------------------------- 2. tier

def _cap_cell(cap) -> Text:
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
                Binding("left", "move(-1)", "◀ ▶ tier", priority=True), Binding("right", "move(1)", show=False,
                                                                              priority=True)]

    def compose(self) -> ComposeResult:
        yield self.header(2, "Budget tier: plan for the box you have, or one you might buy")
        yield DataTable(id="tiers", cursor_type="column", zebra_stripes=True)
        yield Static(id="tier-detail")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#tiers", DataTable)
        m = self.state.machine
        tiers = T.tiers()
        columns = {"1500": tiers["1500"], "3000": tiers["3000"], "this-machine": T.this_machine(m)}
        table.add_column("", key="aspect")
        table.add_column("$1,500", key="1500")
        table.add_column("$3,000", key="3000")
        table.add_column("this machine", key="this-machine")
        table.add_column("CPU demo", key=DEMO)
        caps = {tid: {c.size: c for c in T.capabilities(t)} for tid, t in columns.items()}
        checks = {tid: T.checks(t, "70B" if len(t.gpus) > 1 else "13B") for tid, t in columns.items() if t.gpus}
        short = lambda t: f"{len(t.gpus)}x{min(t.gpus):.0f}GB {t.ram_gib:.0f}G" if t.gpus else "no GPU"
        table.add_row("GPUs / RAM", *(short(columns[k]) for k in ("1500", "3000", "this-machine")), "this CPU")
        for size in ("7B", "13B", "34B", "70B"):
            cells = [(_cap_cell(caps[k][size]) if caps[k] else Text("✗ no GPU", style="red"))
                     for k in ("1500", "3000", "this-machine")]
            table.add_row(f"fine-tunes {size}", *cells, Text("tiny only", style="dim"))
        for name, label in (("ram_2x_vram", "RAM ≥ 2x VRAM"), ("nvme", "NVMe"), ("nvlink", "NVLink")):
            table.add_row(label, *(_check_cell(checks.get(k, []), name) for k in ("1500", "3000", "this-machine")),
                          Text("-", style="dim"))
        here = [Text("-", style="dim")] * 2
        mt = columns["this-machine"]
        for k in ("1500", "3000"):
            ok, why = T.compare(mt, columns[k])
            label = "yes" if ok and not why else ("GPUs yes" if ok else "what-if")
            here[TIER_ORDER.index(k)] = Text(label, style="green" if ok and not why else ("yellow" if ok else "cyan"))
        table.add_row("on this box", *here, Text("yes" if mt.gpus else "-", style="green" if mt.gpus else "dim"),
                      Text("yes", style="green"))
        self.col = TIER_ORDER.index(self.state.tier_id or DEMO) + 1
        table.focus()
        self.call_after_refresh(self.action_move, 0)

    def action_move(self, delta: int) -> None:
        """Left and right walk the tiers (column 0 holds the labels, not a tier)."""
        self.col = min(len(TIER_ORDER), max(1, self.col + delta))
        self.query_one("#tiers", DataTable).move_cursor(column=self.col)
        self.show_detail(self.col)

    def show_detail(self, col: int) -> None:
        tid = TIER_ORDER[col - 1]
        if tid == DEMO:
            text = "CPU demo: a tiny Llama built here (no download) fine-tuned with real NF4 QLoRA on a bundled dataset."
        else:
            t = self.state.tier() if tid == self.state.tier_id else (T.this_machine(self.state.machine)
                                                                      if tid == "this-machine" else T.tiers()[tid])
            if not t.gpus:
                text = "This machine has no NVIDIA GPU: plan for a tier instead, or run the CPU demo."
            else:
                warn = [c.message for c in T.checks(t, "70B" if len(t.gpus) > 1 else "13B") if not c.ok]
                text = f"{t.label}: {t.summary}. {t.article}" + (f"\nwarn: {'; '.join(warn)}" if warn else "")
                if tid != "this-machine" and self.state.machine is not None:
                    ok, short = T.compare(T.this_machine(self.state.machine), t)
                    text += ("\nthis machine: " + ("meets it" if ok and not short else
                             ("its GPUs match; " if ok else "") + "; ".join(short)))
        self.query_one("#tier-detail", Static).update(text)

    def action_next(self) -> None:
        tid = TIER_ORDER[self.col - 1]
        if tid == "this-machine" and not self.state.machine.gpus:
            self.notify("This machine has no NVIDIA GPU; choose a tier to plan for, or the CPU demo.",
                        severity="warning")
            return
        if tid != self.state.tier_id or not self.state.values:
            self.state.tier_id = tid
            self.state.values, self.state.header = initial_values(self.state)
        self.app.push_screen(SetupStep())


def initial_values(state: WizardState) -> tuple[dict, str]:
    """Run-file values for the chosen tier: the preset's, with the planner's choices for GPU tiers."""
    from engine.launch import free_name
    if state.tier_id == DEMO:
        values = runfile.defaults(**presets.load_run_preset(DEMO))
        values["data"]["path"] = str(presets.DEMO_DATA)
        return free_name(values), "written by the rigtune wizard: CPU demo"
    tier = state.tier()
    values, why = T.run_values(tier, P.resolve_model(tier.run["model"]))
    values["data"]["path"] = str(presets.DEMO_DATA)
    return free_name(values), f"written by the rigtune wizard for the {why}"


# ---------------------------------------------------------------------------- 3. setup

# field id -> (section, key, kind); kind "str" takes the text as is, anything else is read as a TOML value
FIELDS = [
    ("name", None, "name", "str", "run name"),
    ("r", "lora", "r", "toml", "LoRA r"),
    ("alpha", "lora", "alpha", "toml", "LoRA alpha"),
    ("targets", "lora", "target_modules", "targets", "LoRA targets"),
    ("seq", "data", "max_seq_len", "toml", "max seq len"),
    ("mbs", "train", "micro_batch_size", "toml", "micro-batch"),
    ("accum", "train", "gradient_accumulation_steps", "toml", "grad accum"),
    ("epochs", "train", "epochs", "toml", "epochs"),
    ("steps", "train", "max_steps", "toml", "max steps (0=epochs)"),
    ("lr", "train", "learning_rate", "toml", "learning rate"),
]
SELECTS = [
    ("optimizer", "train", "optimizer", ["adamw_torch", "adamw_8bit", "paged_adamw_8bit"], "optimizer"),
    ("strategy", "hardware", "strategy", ["single", "ddp", "fsdp"], "strategy"),
]
SWITCHES = [("gc", "train", "gradient_checkpointing", "grad checkpointing"),
            ("offload", "hardware", "cpu_offload", "CPU offload")]
SEGMENTS = [("weights", "blue"), ("adapters", "green"), ("gradients", "green"), ("optimizer", "cyan"),
            ("activations", "yellow"), ("logits", "magenta"), ("overhead", "white")]


def _get(values, section, key):
    return values[section][key] if section else values[key]


def _text_of(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class SetupStep(Step):
    BINDINGS = [Binding("enter", "next", "Review"), Binding("escape", "back", "Back"),
                Binding("f", "apply_fix", "Apply fix"), Binding("ctrl+t", "toggle_tab", "Data/Settings")]

    model_edited = False

    def compose(self) -> ComposeResult:
        v = self.state.values
        self.opened_with = v["model"]["base"]
        yield self.header(3, "Model, data and settings")
        with Horizontal(id="setup"):
            with TabbedContent(id="setup-tabs", initial="tab-data"):
                with TabPane("Model & data", id="tab-data"):
                    with VerticalScroll():
                        if self.state.tier_id == DEMO:
                            yield Label("model: the tiny demo model, built on this machine")
                            yield Input(v["model"]["base"], id="f-model", disabled=True)
                        else:
                            names = list(P.load_models())
                            yield Select([(n, n) for n in names], prompt="pick a model, or type one below",
                                         id="model-pick", allow_blank=True)
                            yield Input(v["model"]["base"], placeholder="HF id, local folder", id="f-model")
                        yield Static(id="e-model", classes="field-error")
                        yield Label("dataset (file, folder or HF id)")
                        yield Input(v["data"]["path"], id="f-data")
                        yield Static(id="e-data", classes="field-error")
                        yield Static("reading the dataset...", id="data-info")
                        yield Static(id="data-example")
                with TabPane("Settings", id="tab-settings"):
                    with VerticalScroll():
                        for fid, section, key, kind, label in FIELDS:
                            with Horizontal(classes="field"):
                                yield Label(label, classes="field-label")
                                yield Input(_text_of(_get(v, section, key)), id=f"f-{fid}")
                            yield Static(id=f"e-{fid}", classes="field-error")
                        for fid, section, key, options, label in SELECTS:
                            with Horizontal(classes="field"):
                                yield Label(label, classes="field-label")
                                yield Select([(o, o) for o in options], value=v[section][key], allow_blank=False,
                                             id=f"f-{fid}")
                            yield Static(id=f"e-{fid}", classes="field-error")
                        for fid, section, key, label in SWITCHES:
                            with Horizontal(classes="field"):
                                yield Label(label, classes="field-label")
                                yield Switch(v[section][key], id=f"f-{fid}")
                            yield Static(id=f"e-{fid}", classes="field-error")
            yield Static(id="fit", classes="fit")
        yield Footer()

    def on_mount(self) -> None:
        self.suggestion = None
        self.valid = True
        self.refresh_all()
        self.load_preview()

    def on_screen_resume(self) -> None:
        """Coming back (from the tier table or with esc from the review), the cursor is in the first field
        to edit, so typing edits it instead of setting off the screen's keys."""
        model = self.query_one("#f-model", Input)
        (self.query_one("#f-data", Input) if model.disabled else model).focus()

    # -- reading the form
    def collect(self) -> tuple[dict, dict]:
        """The run-file values from the form, and {field id: parse error} for text that is not a value."""
        import copy
        v = copy.deepcopy(self.state.values)
        errors = {}
        v["model"]["base"] = self.query_one("#f-model", Input).value.strip()
        v["data"]["path"] = self.query_one("#f-data", Input).value.strip()
        for fid, section, key, kind, _ in FIELDS:
            text = self.query_one(f"#f-{fid}", Input).value.strip()
            if kind == "str":
                value = text
            elif kind == "targets":
                value = "all-linear" if text in ("", "all-linear") else [t.strip() for t in text.split(",") if t.strip()]
            else:
                value = _toml_value(text)
                if value is _BAD:
                    errors[fid] = f"{text!r} is not a value; expected {_key(section, key).describe()}."
                    continue
            if section:
                v[section][key] = value
            else:
                v[key] = value
        for fid, section, key, _, _ in SELECTS:
            v[section][key] = self.query_one(f"#f-{fid}", Select).value
        for fid, section, key, _ in SWITCHES:
            v[section][key] = self.query_one(f"#f-{fid}", Switch).value
        hw = v["hardware"]
        tier = self.state.tier()
        if tier is not None and tier.gpus:
            n = len(tier.gpus) if hw["strategy"] != "single" else 1
            hw["num_processes"], hw["gpus"] = n, list(range(n))
        return v, errors

    def refresh_all(self) -> None:
        values, errors = self.collect()
        for widget in self.query(".field-error"):
            widget.update("")
        for fid, msg in errors.items():
            self.query_one(f"#e-{fid}", Static).update(Text(msg, style="red"))
        self.valid = not errors
        if not errors:
            try:
                runfile.validate(values)
                self.state.values = values
            except BadInput as e:
                self.valid = False
                self.query_one(f"#e-{_field_of(e.key)}", Static).update(Text(e.bare, style="red"))
        self.update_fit(values)

    def update_fit(self, values: dict) -> None:
        fit = self.query_one("#fit", Static)
        tier = self.state.tier()
        out = Text()
        if tier is None or not tier.gpus:
            out.append("Fit meter\n", style="bold")
            out.append("CPU run: no GPU memory to plan.\n", style="dim")
            out.append("The demo needs about 1 GB of RAM.\n")
            self.suggestion = None
            fit.update(out)
            return
        try:
            arch = P.resolve_model(values["model"]["base"])
        except BadInput:
            out.append("Fit meter\n", style="bold")
            out.append("The planner does not know this model; pick one from the list, or a local folder "
                       "with a config.json.", style="yellow")
            fit.update(out)
            return
        cfg = runfile.RunConfig(values)
        inp = P.input_from_run(cfg, arch, list(tier.gpus), tier.ram_gib, tier.link)
        p = P.plan(inp)
        ratio = p.per_gpu_peak_gib / p.gpu_gib
        color = "green" if p.fits and ratio < 0.9 else ("yellow" if p.fits else "red")
        out.append(f"Fit meter: {arch.name}\n", style="bold")
        out.append(f"per GPU {p.per_gpu_peak_gib:.1f} / {p.gpu_gib:g} GiB\n", style=f"bold {color}")
        width = 26
        scale = max(p.gpu_gib, p.per_gpu_peak_gib)
        used = 0
        for name, style in SEGMENTS:
            n = round(p.breakdown_gib[name] / scale * width)
            out.append("█" * n, style=style)
            used += n
        cap = round(p.gpu_gib / scale * width)
        out.append("·" * max(0, cap - used), style="dim")
        out.append("\n")
        for i, (name, style) in enumerate(SEGMENTS):
            out.append("■", style=style)
            short = {"gradients": "grads", "activations": "activs", "optimizer": "optim"}.get(name, name)
            out.append(f" {short:<8} {p.breakdown_gib[name]:4.1f}" + ("\n" if i % 2 else " "))
        out.append("\n" if len(SEGMENTS) % 2 else "")
        ram = P.ram_needed(inp)
        out.append(f"RAM {ram:.0f} / {tier.ram_gib:.0f} GiB\n", style="green" if ram <= tier.ram_gib else "red")
        out.append("strategies:\n")
        best, why = P.choose_strategy(inp)
        for label, strat, off in (("single", "single", False), ("ddp", "ddp", False), ("fsdp", "fsdp", False),
                                  ("fsdp+offload", "fsdp", True)):
            if strat != "single" and len(tier.gpus) < 2:
                continue
            cand = P.replace(inp, strategy=strat, cpu_offload=off)
            ok = P._fits(cand)
            pick = " ◀" if (best.strategy, best.cpu_offload) == (strat, off) and P._fits(best) else ""
            out.append(f" {'✓' if ok else '✗'} {label:<13}{P.peak(cand):5.1f} GiB{pick}\n",
                       style="green" if ok else "red")
        if len(tier.gpus) > 1:
            out.append(why + "\n", style="dim")
        link = P.link_note(inp)
        if link:
            out.append(link + "\n", style="yellow")
        self.suggestion = p.suggestion
        if p.fits:
            out.append(f"longest seq {p.max_seq_len}, max micro-batch {p.max_micro_batch}\n", style="dim")
        elif p.suggestion:
            out.append(f"does not fit. f: {p.suggestion['why']}\n", style="red")
        else:
            out.append("does not fit on this tier.\n", style="red")
        fit.update(out)

    @on(Input.Changed)
    def field_changed(self, event: Input.Changed) -> None:
        if event.input.id == "f-model":
            self.pick_strategy()
        self.refresh_all()
        if event.input.id in ("f-data", "f-model", "f-seq"):
            self.load_preview()

    def pick_strategy(self) -> None:
        """A new model on a multi-GPU tier: take the planner's strategy (ddp when each card holds the model,
        fsdp when only shards fit, plus CPU offload when even those do not). The user can still change it."""
        tier = self.state.tier()
        values, _ = self.collect()
        self.model_edited = self.model_edited or values["model"]["base"] != self.opened_with
        if tier is None or len(tier.gpus) < 2 or not self.model_edited:
            return  # the model the screen opened with keeps the strategy it came with
        try:
            arch = P.resolve_model(values["model"]["base"])
        except BadInput:
            return
        inp = P.input_from_run(runfile.RunConfig(values), arch, list(tier.gpus), tier.ram_gib, tier.link)
        best, _ = P.choose_strategy(inp)
        self.query_one("#f-strategy", Select).value = best.strategy
        self.query_one("#f-offload", Switch).value = best.cpu_offload

    @on(Select.Changed)
    def select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "model-pick" and event.value is not Select.BLANK:
            self.query_one("#f-model", Input).value = P.load_models()[event.value].hf_id
            return
        self.refresh_all()

    @on(Switch.Changed)
    def switch_changed(self, event: Switch.Changed) -> None:
        self.refresh_all()

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        self.action_next()

    @work(thread=True, exclusive=True, group="preview")
    def load_preview(self) -> None:
        import time
        time.sleep(0.2)  # let typing settle
        values, _ = self.collect()
        from engine.preview import preview
        base = values["model"]["base"]
        if base == "rigtune:tiny-demo":
            from engine.demo import DEMO_MODEL_VERSION
            from engine.tiny import cache_dir
            base = str(cache_dir() / f"tiny-demo-v{DEMO_MODEL_VERSION}")
        try:
            p = preview(values["data"]["path"], values["data"]["format"], base, values["data"]["max_seq_len"],
                        values["data"]["train_on_prompt"])
        except BadInput as e:
            self.app.call_from_thread(self.show_preview, None, str(e))
            return
        self.app.call_from_thread(self.show_preview, p, None)

    def show_preview(self, p, error) -> None:
        info = self.query_one("#data-info", Static)
        example = self.query_one("#data-example", Static)
        if error:
            self.query_one("#e-data", Static).update(Text(error, style="red"))
            info.update("")
            example.update("")
            self.valid = False
            return
        self.query_one("#e-data", Static).update("")
        t = Text()
        t.append(f"{p.records} records, format {p.format}; ", style="bold")
        t.append(f"{p.truncated} longer than max_seq_len {p.max_seq_len}" + ("" if p.exact else " (estimated: "
                 "the model's tokenizer is not on this machine)") + "\n")
        hist = p.histogram(8)
        top = max(c for _, c in hist) if hist else 1
        for upper, count in hist:
            over = upper > p.max_seq_len
            t.append(f"{'≤' + str(upper):>7} ", style="dim")
            t.append("▇" * max(1 if count else 0, round(count / top * 20)), style="red" if over else "cyan")
            t.append(f" {count}\n", style="dim")
        info.update(t)
        ex = Text("first example - ", style="bold")
        ex.append("trained", style="bold green")
        ex.append(" / masked:\n", style="bold")
        for piece, trained in p.example:
            ex.append(piece[:400], style="green" if trained else "dim")
        example.update(ex)

    def action_apply_fix(self) -> None:
        if not self.suggestion:
            self.notify("Nothing to fix: the run fits (or no single change makes it fit).")
            return
        change = self.suggestion["change"]
        mapping = {"micro_batch": ("mbs", None), "seq_len": ("seq", None), "gradient_checkpointing": ("gc", "switch"),
                   "optimizer": ("optimizer", "select"), "strategy": ("strategy", "select"),
                   "cpu_offload": ("offload", "switch"), "attn": (None, None)}
        for key, value in change.items():
            fid, kind = mapping.get(key, (None, None))
            if fid is None:
                continue
            if kind == "switch":
                self.query_one(f"#f-{fid}", Switch).value = bool(value)
            elif kind == "select":
                self.query_one(f"#f-{fid}", Select).value = value
            else:
                if key == "micro_batch":  # keep the effective batch
                    old = int(self.query_one("#f-mbs", Input).value or 1)
                    accum = self.query_one("#f-accum", Input)
                    accum.value = str(max(1, int(accum.value or 1) * old // max(1, value)))
                self.query_one(f"#f-{fid}", Input).value = str(value)
        self.notify(f"Applied: {self.suggestion['why']}")
        self.refresh_all()

    def action_toggle_tab(self) -> None:
        tabs = self.query_one("#setup-tabs", TabbedContent)
        tabs.active = "tab-settings" if tabs.active == "tab-data" else "tab-data"
        # the cursor follows: a field still focused in the other pane would switch the tabs right back
        for widget in self.query_one(f"#{tabs.active}").query("Input, Select, Switch"):
            if widget.focusable:
                widget.focus()
                break

    def action_next(self) -> None:
        self.refresh_all()
        if not self.valid:
            self.notify("Fix the fields marked in red first.", severity="error")
            return
        self.app.push_screen(ReviewStep())


_BAD = object()


def _toml_value(text: str):
    import tomllib
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return _BAD


def _key(section, key):
    return runfile.SECTION_KEYS[section][key] if section else runfile.TOP_KEYS[key]


def _field_of(dotted: str | None) -> str:
    """The form field showing a run-file key's error."""
    if not dotted:
        return "name"
    section, _, key = dotted.partition(".")
    for fid, s, k, *_ in FIELDS + SELECTS:
        if (s, k) == (section, key) or (s is None and k == dotted):
            return fid
    for fid, s, k, _ in SWITCHES:
        if (s, k) == (section, key):
            return fid
    return {"model": "model", "data": "data", "hardware": "strategy"}.get(section, "name")


# ---------------------------------------------------------------------------- 4. review

class ReviewStep(Step):
    BINDINGS = [Binding("enter", "next", "Save", priority=True), Binding("escape", "back", "Back"),
                Binding("ctrl+e", "edit", "Edit in $EDITOR")]

    def compose(self) -> ComposeResult:
        yield self.header(4, "Review the run file")
        with VerticalScroll(id="review"):
            yield Static(id="toml")
        with Horizontal(classes="field"):
            yield Label("save to", classes="field-label")
            yield Input(self.default_path(), id="save-path")
        yield Static(id="review-error", classes="field-error")
        yield Footer()

    def default_path(self) -> str:
        return self.state.run_file or str(Path("runs") / self.state.values["name"] / "run.toml")

    def text(self) -> str:
        return runfile.dumps(self.state.values, header=self.state.header)

    def on_mount(self) -> None:
        self.query_one("#toml", Static).update(Syntax(self.text(), "toml", theme="ansi_dark",
                                                      background_color="default", word_wrap=True))
        if self.state.values["model"].get("trust_remote_code"):
            self.query_one("#review-error", Static).update(Text(
                "warning: trust_remote_code = true runs Python code shipped with the model.", style="yellow"))
        self.query_one("#save-path", Input).focus()

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        self.action_next()

    def action_edit(self) -> None:
        editor = os.environ.get("EDITOR") or os.environ.get("VISUAL") or "vi"
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(self.text())
            tmp = f.name
        with self.app.suspend():
            subprocess.run([editor, tmp])
        try:
            cfg = runfile.load(tmp)
            self.state.values = cfg.to_dict()
            self.on_mount()
            self.query_one("#review-error", Static).update("")
        except BadInput as e:
            self.query_one("#review-error", Static).update(Text(f"not taken: {e}", style="red"))
        finally:
            os.unlink(tmp)

    def action_next(self) -> None:
        path = self.query_one("#save-path", Input).value.strip() or self.default_path()
        taken = runfile.run_dir(runfile.RunConfig(self.state.values))
        if (taken / "metrics.jsonl").exists():
            self.query_one("#review-error", Static).update(Text(
                f"{taken} already holds a run; go back (Esc) and give this one another name.", style="red"))
            return
        try:
            cfg = runfile.validate(self.state.values, path=path)
            runfile.save(cfg, path, header=self.state.header)
        except (BadInput, OSError) as e:
            self.query_one("#review-error", Static).update(Text(str(e), style="red"))
            return
        self.state.run_file = path
        self.app.push_screen(LaunchStep())


# ---------------------------------------------------------------------------- 5. launch

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
            if values["model"]["base"] == "rigtune:tiny-demo":
                from engine.demo import demo_model
                self.app.call_from_thread(self.query_one("#launch-status", Static).update,
                                          Text("building the demo model (once, about 30 s)...", style="yellow"))
                values["model"]["base"] = str(demo_model(log=lambda *a: None))
                runfile.save(values, self.state.run_file, header=self.state.header)
            cfg = runfile.load(self.state.run_file)
            self.app.launcher(cfg)
        except BadInput as e:
            self.app.call_from_thread(self.query_one("#launch-status", Static).update, Text(str(e), style="red"))
            return
        self.app.call_from_thread(self.app.show_dashboard, runfile.run_dir(cfg))
