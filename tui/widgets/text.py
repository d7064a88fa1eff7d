"""A text panel for values that change often: `show()` repaints it only when the text differs, and never asks
for a new layout (a Static's update() does), which is what keeps the dashboard cheap at 2 Hz."""
from __future__ import annotations

from rich.console import RenderableType
from textual.widget import Widget


class Panel(Widget):
    DEFAULT_CSS = "Panel { height: 1; }"

    def __init__(self, content: RenderableType = "", **kw):
        super().__init__(**kw)
        self._content = content

    def show(self, content: RenderableType) -> None:
        if str(content) == str(self._content) and getattr(content, "spans", None) == getattr(self._content, "spans", None):
            return
        self._content = content
        self.refresh()

    def render(self) -> RenderableType:
        return self._content
