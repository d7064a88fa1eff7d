"""Step 3: model, data and settings, with a live fit meter and a preview of the dataset as training will see
it. Every change re-plans the run (engine.planner) and the fit meter draws the plan."""
from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Footer, Input, Label, Select, Static, Switch, TabbedContent, TabPane

from engine import calibration, runfile, runvalues
from engine import planner as P
from engine.runvalues import THIS_MACHINE
from engine.errors import BadInput

from ...widgets.fitmeter import FitMeter
from ..common import on_ui
from .state import DEMOS, Step
from .form import BAD, FIELDS, SELECTS, SWITCHES, field_of, get_value, key_of, text_of, toml_value

PROBE_HINT = "p measures this box at these settings, in a minute or a few (tab out of a text field first)."


class SetupStep(Step):
    BINDINGS = [Binding("enter", "next", "Review"), Binding("escape", "back", "Back"),
                Binding("ctrl+f", "apply_fix", "Apply fix"), Binding("ctrl+t", "toggle_tab", "Data/Settings"),
                Binding("p", "probe", "Measure", priority=True)]
    probing = False  # a probe is running (engine.probe): its progress is in the fit meter

    model_edited = False
    config_errors: dict  # hub id -> why its config.json could not be fetched (gated, missing, offline)

    def compose(self) -> ComposeResult:
        self.config_errors = {}
        v = self.state.values
        self.opened_with = v["model"]["base"]
        yield self.header(3, "Model, data and settings")
        with Horizontal(id="setup"):
            with TabbedContent(id="setup-tabs", initial="tab-data"):
                with TabPane("Model & data", id="tab-data"):
                    with VerticalScroll():
                        if self.state.tier_id in DEMOS:
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
                                yield Input(text_of(get_value(v, section, key)), id=f"f-{fid}")
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
            yield FitMeter(id="fit", classes="fit")
        yield Footer()

    def on_mount(self) -> None:
        self.suggestion = None
        self.preview = None
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
                value = toml_value(text)
                if value is BAD:
                    errors[fid] = f"{text!r} is not a value; expected {key_of(section, key).describe()}."
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
                self.query_one(f"#e-{field_of(e.key)}", Static).update(Text(e.bare, style="red"))
        self.update_fit(values)

    def update_fit(self, values: dict) -> None:
        """Plan the form's run for the tier and hand the plan to the fit meter."""
        fit = self.query_one("#fit", FitMeter)
        tier = self.state.tier()
        self.suggestion = None
        if tier is None or not tier.gpus:
            self.show_cpu_fit(fit, values)
            return
        base = values["model"]["base"]
        try:
            arch = P.resolve_model(base)
        except BadInput:
            from engine.modelref import HUB_ID, looks_like_path
            if not HUB_ID.match(base) or looks_like_path(base):
                fit.show_message("Fit meter", [("The planner does not know this model; pick one from the list, type "
                                                "a Hugging Face id, or a local folder with a config.json.", "yellow")])
            elif base in self.config_errors:
                fit.show_message("Fit meter", [(self.config_errors[base], "red")])
            else:
                fit.show_message("Fit meter", [(f"fetching the config.json of {base} from the hub (a few KB)...", "dim")])
                self.fetch_config(base)
            return
        cfg = runfile.RunConfig(values)
        inp = P.input_from_run(cfg, arch, list(tier.gpus), tier.ram_gib, tier.link, tier.card)
        tokens = None
        if self.preview is not None and tier.card:
            tokens = self.preview.run_tokens(cfg, inp.micro_batch * inp.accum * P.processes(inp))
        plan = P.plan(inp, total_tokens=tokens)
        if self.state.tier_id == THIS_MACHINE:  # what this box measured (rigtune probe, earlier runs) beside the plan
            m, failed = calibration.for_run(cfg, arch)
            if m and m.get("tokens_per_s") and self.preview is not None and not tokens:
                tokens = self.preview.run_tokens(cfg, inp.micro_batch * inp.accum * P.processes(inp))
            calibration.apply(plan, m, failed, tokens)
        rows, why = P.strategy_table(inp)
        self.suggestion = plan.suggestion
        fit.show_plan(arch.name, plan, rows, why, P.ram_needed(inp), tier.ram_gib, P.link_note(inp),
                      PROBE_HINT if self.state.tier_id == THIS_MACHINE and not plan.measured else None)

    def show_cpu_fit(self, fit: FitMeter, values: dict) -> None:
        """A CPU run (the demo): no GPU memory to plan; what this CPU measured, when it has been probed."""
        if self.probing:
            return
        cfg = runfile.RunConfig(values)
        m = calibration.for_run(cfg)[0] if self.valid else None
        if m is None:
            fit.show_message("Fit meter", [("CPU run: no GPU memory to plan.", "dim"),
                                           ("The demo needs about 1 GB of RAM.", ""), (PROBE_HINT, "dim")])
            return
        lines = [(calibration.describe(m, on_cpu=True), "green")]
        if m.get("max_seq_len"):
            lines.append((f"longest seq {m['max_seq_len']}, max micro-batch {m['max_micro_batch']} (measured)", "dim"))
        if m.get("tokens_per_s") and self.preview is not None:
            tokens = self.preview.run_tokens(cfg, cfg.train.micro_batch_size * cfg.train.gradient_accumulation_steps)
            lines.append((f"time: {P.fmt_estimate(tokens / m['tokens_per_s'])} at the measured speed", "bold"))
        fit.show_message("Fit meter (CPU run)", lines + [("p measures again.", "dim")])


    def check_action(self, action: str, parameters) -> bool | None:
        """p measures this box when it is the run's machine (this machine's tier, or the CPU demo), and only
        outside a text field, where it is a letter to type."""
        if action == "probe":
            return (self.state.tier_id == THIS_MACHINE or self.state.tier_id in DEMOS) and \
                not isinstance(self.focused, Input)
        return True

    def action_probe(self) -> None:
        self.refresh_all()
        if self.probing or not self.valid:
            self.notify("A probe is running." if self.probing else "Fix the fields marked in red first.",
                        severity="warning")
            return
        self.probing = True
        self.query_one("#fit", FitMeter).show_message("Measuring this box", [("starting the first trial...", "dim")])
        self.probe_worker(runfile.validate(self.collect()[0]))

    @work(thread=True, exclusive=True, group="probe")
    def probe_worker(self, cfg) -> None:
        """`rigtune probe` for the form's run (engine.probe): each trial's line in the fit meter as it ends."""
        from engine import probe as PR
        lines: list = []

        def progress(line: str) -> None:
            if lines and lines[-1].endswith("...") and line.split(":")[0] == lines[-1].split(":")[0]:
                lines[-1] = line  # a trial's result replaces its "running" line
            else:
                lines.append(line)
            on_ui(self, self.query_one("#fit", FitMeter).show_message, "Measuring this box",
                  [(text, "dim") for text in lines[-8:]])
        try:
            PR.probe(cfg, progress=progress)
            said = "measured: the fit meter now shows this box's figures"
        except (PR.ProbeFailed, BadInput, RuntimeError) as e:
            said = f"the probe stopped: {e}"
        on_ui(self, self.probe_done, said)

    def probe_done(self, said: str) -> None:
        self.probing = False
        self.notify(said, timeout=8, severity="information" if said.startswith("measured") else "error")
        self.refresh_all()

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
        except BadInput:  # a model the planner does not know: the fit meter says so; keep the user's strategy
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
        if event.select.id == "f-method":  # the data must suit the method: pairs for dpo/orpo
            self.load_preview()

    @on(Switch.Changed)
    def switch_changed(self, event: Switch.Changed) -> None:
        self.refresh_all()

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        self.action_next()

    @work(thread=True, exclusive=True, group="config")
    def fetch_config(self, base: str) -> None:
        """A hub id's config.json into the cache, for the fit meter; only once typing has paused on it."""
        import time

        from engine import hub
        time.sleep(0.6)
        if on_ui(self, lambda: self.collect()[0]["model"]["base"]) != base:
            return  # still being typed, or the screen has gone
        try:
            hub.fetch_config(base, key="model.base")
        except BadInput as e:
            self.config_errors[base] = e.bare
        on_ui(self, self.refresh_all)

    def load_preview(self) -> None:
        """Read the form here, on the UI thread; the worker only tokenizes (a worker must not query widgets)."""
        self.preview_worker(self.collect()[0])

    @work(thread=True, exclusive=True, group="preview")
    def preview_worker(self, values: dict) -> None:
        import time
        time.sleep(0.2)  # let typing settle
        from engine.preview import preview
        base = runvalues.model_path(values["model"]["base"])
        try:
            p = preview(values["data"]["path"], values["data"]["format"], base, values["data"]["max_seq_len"],
                        values["data"]["train_on_prompt"], method=values["train"]["method"],
                        rewards=values["rewards"], max_completion_length=values["train"]["max_completion_length"])
        except BadInput as e:
            on_ui(self, self.show_preview, None, str(e), values)
            return
        on_ui(self, self.show_preview, p, None, values)

    def show_preview(self, p, error, values: dict) -> None:
        now = self.collect()[0]
        if any(now[s][k] != values[s][k] for s, k in (("data", "path"), ("data", "format"), ("model", "base"),
                                                      ("data", "max_seq_len"), ("data", "train_on_prompt"),
                                                      ("train", "method"))):
            return  # the form has changed since: a newer preview is on its way
        self.preview = p
        if p is not None:
            self.update_fit(self.collect()[0])  # the duration needs the dataset's size
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
        limit = (f"{p.max_seq_len} tokens (max_seq_len - max_completion_length)" if p.prompt else
                 f"max_seq_len {p.max_seq_len}")
        t.append(f"{p.truncated} longer than {limit}" + ("" if p.exact else " (estimated: "
                 "the model's tokenizer is not on this machine)") + "\n")
        hist = p.histogram(8)
        top = max(c for _, c in hist) if hist else 1
        for upper, count in hist:
            over = upper > p.max_seq_len
            t.append(f"{'≤' + str(upper):>7} ", style="dim")
            t.append("▇" * max(1 if count else 0, round(count / top * 20)), style="red" if over else "cyan")
            t.append(f" {count}\n", style="dim")
        info.update(t)
        example.update(prompt_text(p) if p.prompt else example_text(p))

    def action_apply_fix(self) -> None:
        """Apply every change of the planner's suggestion (run-file key -> value) and say what changed."""
        if not self.suggestion:
            self.notify("Nothing to fix: the run fits (or nothing the planner can change makes it fit).")
            return
        widgets = {(sec, key): (f"#f-{fid}", Input) for fid, sec, key, _, _ in FIELDS}
        widgets.update({(sec, key): (f"#f-{fid}", Select) for fid, sec, key, _, _ in SELECTS})
        widgets.update({(sec, key): (f"#f-{fid}", Switch) for fid, sec, key, _ in SWITCHES})
        values = self.state.values
        done = []
        for dotted, value in self.suggestion.items():
            section, key = dotted.split(".", 1)
            done.append(f"{key} {text_of(values[section][key])} → {text_of(value)}")
            values[section][key] = value  # keys without a field on this screen keep the value from here
            if (section, key) in widgets:
                wid, kind = widgets[(section, key)]
                self.query_one(wid, kind).value = text_of(value) if kind is Input else value
        self.notify("Applied: " + "; ".join(done), timeout=8)
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
        from .review import ReviewStep
        self.app.push_screen(ReviewStep())


def prompt_text(p) -> Text:
    """grpo: the first prompt as the model sees it (nothing of it trains), and the answer its rewards compare."""
    ex = Text("first prompt - as the model sees it; the model writes the answer:\n", style="bold")
    for piece, _ in p.prompt["pieces"]:
        ex.append(piece[:400], style="dim")
    ex.append(f"\n{p.prompt['answer_field']}: ", style="bold")
    answer = p.prompt["answer"]
    ex.append(str(answer)[:200] if answer is not None else "(none in this record)", style="green")
    return ex


def example_text(p) -> Text:
    """The first example (or pair) with its trained tokens marked."""
    ex = Text("first pair - " if p.pair else "first example - ", style="bold")
    ex.append("trained", style="bold green")
    ex.append(" / masked:\n", style="bold")
    parts = [(f"{name}: ", p.pair[name]) for name in ("prompt", "chosen", "rejected")] if p.pair else [("", p.example)]
    for label, pieces in parts:
        ex.append(label, style="bold")
        for piece, trained in pieces:
            ex.append(piece[:400], style="green" if trained else "dim")
        if label and not ex.plain.endswith("\n"):
            ex.append("\n")
    return ex
