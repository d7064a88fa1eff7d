"""Step 4: the run file as it will be written (with its help comments), editable in $EDITOR, and where to save it.
Opened on the user's own run file (`rigtune RUN_FILE`), it writes the changes into that file, keeping its comments;
it asks before writing over any file that is already there."""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from rich.syntax import Syntax
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Footer, Input, Label, Static

from engine import runedit, runfile
from engine.errors import BadInput
from engine.events import METRICS, RUN_FILE

from ..common import ConfirmScreen
from .state import Step


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
        return self.state.run_file or str(Path("runs") / self.state.values["name"] / RUN_FILE)

    def text(self, values: dict | None = None) -> str:
        values = self.state.values if values is None else values
        if self.base is not None:  # the user's own file, edited in place
            return runedit.dumps_preserving(values, self.base, header=self.state.header)
        return runfile.dumps(values, header=self.state.header)

    def on_mount(self) -> None:
        self.base = None  # the text of the run file the wizard was opened with, whose comments a save keeps
        if self.state.run_file:
            try:
                self.base = Path(self.state.run_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                pass  # gone or unreadable since: the save writes a fresh file
        self.show()

    def show(self) -> None:
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
            if self.base is not None:
                self.base = cfg.text  # what the user wrote in the editor, comments included, is what is kept
            self.show()
            self.query_one("#review-error", Static).update("")
        except BadInput as e:
            self.query_one("#review-error", Static).update(Text(f"not taken: {e}", style="red"))
        finally:
            os.unlink(tmp)

    def action_next(self) -> None:
        path = self.query_one("#save-path", Input).value.strip() or self.default_path()
        taken = runfile.run_dir(runfile.RunConfig(self.state.values))
        if (taken / METRICS).exists():
            self.query_one("#review-error", Static).update(Text(
                f"{taken} already holds a run; go back (Esc) and give this one another name.", style="red"))
            return
        try:
            cfg = runfile.validate(self.state.values, path=path)
            text = self.text(cfg.values)
            there = Path(path).read_text(encoding="utf-8") if Path(path).is_file() else None
        except (BadInput, OSError, UnicodeDecodeError) as e:
            self.query_one("#review-error", Static).update(Text(str(e), style="red"))
            return
        if there is None:
            self.save(path, cfg)
        elif there == text:  # nothing changed: nothing to write, nothing to ask
            self.saved(path)
        else:
            own = self.base is not None and Path(path) == Path(self.state.run_file)
            if own and runedit.preserves(cfg, self.base, self.state.header):
                question = f"{path} is already there.\nWrite your changes into it? Its comments stay."
            elif own:
                question = (f"{path} is already there, in a shape rigtune cannot edit in place (dotted keys or inline "
                            "tables).\nWrite this run file over it? Its comments will be lost.")
            else:
                question = f"{path} is already there.\nWrite this run file over it?"
            self.app.push_screen(ConfirmScreen(question), lambda yes: self.save(path, cfg) if yes else self.kept(path))

    def save(self, path: str, cfg) -> None:
        try:
            if self.base is not None:
                runedit.save_preserving(cfg, path, base_text=self.base, header=self.state.header)
            else:
                runfile.save(cfg, path, header=self.state.header)
        except (BadInput, OSError) as e:
            self.query_one("#review-error", Static).update(Text(str(e), style="red"))
            return
        self.saved(path)

    def kept(self, path: str) -> None:
        self.query_one("#review-error", Static).update(Text(
            f"not saved: {path} is unchanged. Enter asks again; or give another path.",
            style="yellow"))

    def saved(self, path: str) -> None:
        self.query_one("#review-error", Static).update("")
        self.state.run_file = path
        from .launch import LaunchStep
        self.app.push_screen(LaunchStep())
