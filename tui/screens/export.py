"""Export from the dashboard: pick a format, and the export runs in its own process (engine.torchside.export)
with its progress lines in a log, as `rigtune export` prints them."""
from __future__ import annotations

import subprocess

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Log, OptionList, Static
from textual.widgets.option_list import Option

from engine.launch import export_command

from .common import on_ui

CHOICES = [("merged", {}, "merged: 16-bit safetensors + tokenizer + model card (transformers, vLLM)"),
           ("gguf", {"quant": "q8_0"}, "gguf q8_0: one file for llama.cpp and LM Studio"),
           ("gguf", {"quant": "f16"}, "gguf f16: one file, full precision"),
           ("gguf-lora", {}, "gguf-lora: the adapter alone, for llama.cpp --lora"),
           ("ollama", {"quant": "q8_0"}, "ollama: model.gguf + Modelfile, then `ollama create`")]


class ExportScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape", "close", "Close")]

    def __init__(self, run_dir):
        super().__init__()
        self.run_dir = run_dir
        self.proc: subprocess.Popen | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="export"):
            yield Static(f"Export {self.run_dir.name} (into {self.run_dir / 'export'}); Enter starts it")
            yield OptionList(*[Option(label, id=str(i)) for i, (_, _, label) in enumerate(CHOICES)], id="formats")
            yield Log(id="export-log", max_lines=200)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#export").border_title = "Export"

    @on(OptionList.OptionSelected, "#formats")
    def chosen(self, event: OptionList.OptionSelected) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.notify("An export is running; wait for it to finish.", severity="warning")
            return
        to, options, _ = CHOICES[int(event.option.id)]
        # no --out: the export's own default under RUN_DIR/export/, as `rigtune export` writes it
        self.run_export(export_command(self.run_dir, to, force=True, **options))

    @work(thread=True, exclusive=True, group="export")
    def run_export(self, argv: list) -> None:
        log = on_ui(self, self.query_one, "#export-log", Log)
        if log is None:
            return  # the window closed before the export started
        on_ui(self, log.write_line, "exporting...")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        for line in self.proc.stdout:
            on_ui(self, log.write_line, line.rstrip())
        code = self.proc.wait()
        on_ui(self, log.write_line, "done." if code == 0 else f"failed (exit {code}).")

    def action_close(self) -> None:
        self.dismiss(None)
