"""The chat screen: talk to what a run trained, token by token. The model runs in the chat backend's own
process (engine.chat starts it; this process never imports torch). ctrl+b asks the base model (adapter off)
the same question and shows its answer beside the fine-tune's."""
from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from engine.chat import ChatBackend, messages_for
from engine.errors import BadInput

from .common import on_ui


class Reply(Static):
    """One answer, growing as its tokens arrive."""

    def __init__(self, who: str, style: str, **kw):
        super().__init__(**kw)
        self.who, self.style, self.text = who, style, ""

    def on_mount(self) -> None:
        self.show(self.text)  # "…" until the first token; a copied answer at once

    def add(self, piece: str) -> None:
        self.text += piece
        self.show(self.text)

    def show(self, body: str, style: str | None = None) -> None:
        t = Text(f"{self.who}: ", style=f"bold {self.style}")
        t.append(body.strip() or "…", style=style or self.style)
        self.update(t)


class ChatScreen(Screen):
    BINDINGS = [Binding("ctrl+b", "compare", "Ask the base too"), Binding("ctrl+l", "clear", "Clear"),
                Binding("ctrl+s", "system", "System prompt"), Binding("escape", "leave", "Back")]

    def __init__(self, run_dir, checkpoint: str | None = None, system: str | None = None,
                 max_new_tokens: int = 256, backend_argv: list | None = None):
        super().__init__()
        self.run_dir, self.checkpoint, self.system = run_dir, checkpoint, system or ""
        self.max_new_tokens, self.backend_argv = max_new_tokens, backend_argv
        self.backend: ChatBackend | None = None
        self.history: list = []          # the fine-tune's conversation (base answers are asides, not history)
        self.last: tuple | None = None   # (history before the last question, the question, the fine-tune's Reply)
        self.busy = False

    def compose(self) -> ComposeResult:
        yield Static(id="chat-title")
        yield VerticalScroll(id="transcript")
        yield Input(self.system, placeholder="system prompt (Enter keeps it; empty for none)", id="system",
                    classes="hidden")
        yield Input(placeholder="loading the model...", id="prompt", disabled=True)
        yield Footer()

    def on_mount(self) -> None:
        where = self.checkpoint or "adapter"
        self.query_one("#chat-title", Static).update(Text.assemble(
            (" chat ", "reverse bold"), f"  {self.run_dir.name} ({where}), greedy  ",
            ("Enter sends · ctrl+b base beside it · ctrl+l clears", "dim")))
        self.start_backend()

    def on_unmount(self) -> None:
        if self.backend is not None:
            self.backend.close()

    @work(thread=True, exclusive=True, group="backend")
    def start_backend(self) -> None:
        try:
            self.backend = ChatBackend(self.run_dir, self.checkpoint, argv=self.backend_argv)
            info = self.backend.ready()
        except (BadInput, RuntimeError, OSError) as e:
            on_ui(self, self.note, f"the model could not be loaded: {e}", "red")
            return
        on_ui(self, self.ready, info)

    def ready(self, info: dict) -> None:
        prompt = self.query_one("#prompt", Input)
        prompt.disabled, prompt.placeholder = False, "ask something"
        prompt.focus()
        self.note(f"{info.get('model', '')} with {info.get('adapter', 'the adapter')}", "dim")

    def note(self, text: str, style: str) -> None:
        self.query_one("#transcript").mount(Static(Text(text, style=style)))

    # ---------------------------------------------------------------------- asking
    @on(Input.Submitted, "#prompt")
    def submitted(self, event: Input.Submitted) -> None:
        question = event.value.strip()
        if not question or self.backend is None:
            return
        if self.busy:  # one request at a time on the backend's pipe; the question stays in the field
            self.notify("still answering; Enter sends this once the reply is in.", timeout=3)
            return
        event.input.value = ""
        transcript = self.query_one("#transcript")
        transcript.mount(Static(Text.assemble(("you: ", "bold"), question)))
        reply = Reply("fine-tuned", "green")
        transcript.mount(reply)
        self.last = (list(self.history), question, reply)
        self.start_asking(list(self.history), question, reply, adapter=True)

    def action_compare(self) -> None:
        """The base model's answer to the last question, beside the fine-tune's."""
        if self.busy:
            self.notify("still answering; ctrl+b asks the base once the reply is in.", timeout=3)
            return
        if self.last is None:
            self.notify("Ask something first; ctrl+b then asks the base model the same.", severity="warning")
            return
        history, question, tuned = self.last
        left, right = Reply("fine-tuned", "green"), Reply("base", "yellow")
        left.text = tuned.text
        self.query_one("#transcript").mount(Horizontal(left, right, classes="compare"))
        self.start_asking(history, question, right, adapter=False)

    def start_asking(self, history: list, question: str, reply: Reply, adapter: bool) -> None:
        """busy is set here, on the UI thread, before the worker exists: a second Enter, however quick, sees
        it. Only answered() clears it, on the UI thread too, whatever way the request ends."""
        self.busy = True
        self.query_one("#prompt", Input).placeholder = "answering... (type on; Enter sends when it is done)"
        self.ask(history, question, reply, adapter)

    @work(thread=True, group="ask")
    def ask(self, history: list, question: str, reply: Reply, adapter: bool) -> None:
        done = None
        try:
            for ev in self.backend.ask(messages_for(question, self.system or None, history), adapter=adapter,
                                       max_new_tokens=self.max_new_tokens):
                if ev["event"] == "token":
                    on_ui(self, reply.add, ev["text"])
                elif ev["event"] == "done" and adapter:
                    done = history + [{"role": "user", "content": question},
                                      {"role": "assistant", "content": ev["text"]}]
                elif ev["event"] == "error":
                    on_ui(self, reply.show, ev["message"], "red")
        except RuntimeError as e:  # the backend died: say so where the answer would be
            on_ui(self, reply.show, str(e), "red")
        except (OSError, ValueError) as e:  # its pipe is closed (it died before): the same, not a crash
            on_ui(self, reply.show, f"the chat backend stopped ({e}); Esc, then open the chat again.", "red")
        finally:
            on_ui(self, self.answered, done)

    def answered(self, history: list | None) -> None:
        if history is not None:
            self.history = history
        self.busy = False
        self.query_one("#prompt", Input).placeholder = "ask something"
        self.query_one("#transcript").scroll_end(animate=False)

    def action_leave(self) -> None:
        """Back to the dashboard it was opened from, or out of `rigtune chat`."""
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()
        else:
            self.app.exit(0)

    # ---------------------------------------------------------------------- history and system prompt
    def action_clear(self) -> None:
        if self.busy:  # the reply being written belongs to the history it would clear
            self.notify("still answering; ctrl+l clears once the reply is in.", timeout=3)
            return
        self.history, self.last = [], None
        self.query_one("#transcript").remove_children()
        self.note("history cleared", "dim")

    def action_system(self) -> None:
        field = self.query_one("#system", Input)
        field.remove_class("hidden")
        field.focus()

    @on(Input.Submitted, "#system")
    def system_set(self, event: Input.Submitted) -> None:
        self.system = event.value.strip()
        event.input.add_class("hidden")
        self.note(f"system prompt: {self.system}" if self.system else "no system prompt", "dim")
        self.query_one("#prompt", Input).focus()
