"""Small shared screens (a yes/no confirmation, a read-only run-file viewer) and on_ui, how a worker thread
hands its result to the screen that started it."""
from __future__ import annotations

from pathlib import Path

from rich.syntax import Syntax
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Label, Static


def on_ui(node, fn, *args):
    """fn(*args) on the UI thread, from a worker thread; None, and fn not called, when `node` (the screen that
    started the worker) has left the DOM or the app has stopped meanwhile. A worker outliving its screen must
    not query widgets that are gone: that raises in the worker and takes the whole app down."""
    def run():
        return fn(*args) if node.is_attached else None
    try:
        return node.app.call_from_thread(run)
    except RuntimeError:
        if node.is_attached:
            raise
        return None  # the app stopped while the worker ran


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; No has the focus, so Enter (like n and Escape) answers No."""
    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Grid(id="confirm"):
            yield Label(self.question, id="question")
            yield Button("Yes (y)", variant="error", id="yes")
            yield Button("No (n)", variant="primary", id="no")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class BillScreen(ModalScreen[None]):
    """A bill of parts (engine.build.describe), read-only and scrollable."""
    BINDINGS = [Binding("escape,q,b", "close", "Close")]

    def __init__(self, text: str, title: str):
        super().__init__()
        self.text, self.title_text = text, title

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="bill"):
            yield Static(self.text)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#bill").border_title = self.title_text

    def action_close(self) -> None:
        self.dismiss(None)


class RunFileScreen(ModalScreen[None]):
    """The run file, syntax-highlighted, read-only."""
    BINDINGS = [Binding("escape,q,o", "close", "Close")]

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)

    def compose(self) -> ComposeResult:
        try:
            text = self.path.read_text()
        except OSError as e:
            text = f"# cannot read {self.path}: {e}"
        with VerticalScroll(id="runfile"):
            yield Static(Syntax(text, "toml", theme="ansi_dark", word_wrap=True, background_color="default"))
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#runfile").border_title = str(self.path)

    def action_close(self) -> None:
        self.dismiss(None)
