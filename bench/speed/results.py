"""RESULTS.md holds one section per benchmark of this folder (run.py: SFT; dpo.py: DPO against TRL;
dpo_reference.py: DPO's two ways to hold the reference; grpo.py: GRPO against TRL). Each script rewrites only its own section, between
its two marker comments, so re-running one keeps the others' recorded results."""
from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ORDER = ("sft", "dpo", "dpo-reference", "grpo")   # where a section that is not in the file yet goes


def write_section(name: str, lines: list, path: Path = RESULTS) -> None:
    """Replace section `name` (its lines between <!-- section: NAME --> and <!-- end: NAME -->) or add it."""
    start, end = f"<!-- section: {name} -->", f"<!-- end: {name} -->"
    block = "\n".join([start, *lines, end])
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        later = [n for n in ORDER[ORDER.index(name) + 1:] if f"<!-- section: {n} -->" in text] if name in ORDER else []
        if later:
            marker = f"<!-- section: {later[0]} -->"
            before, rest = text.split(marker, 1)
            text = before + block + "\n\n" + marker + rest
        else:
            text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + block + "\n"
    path.write_text(text)
