"""Writing a run file over the user's own: the wizard edits a run file it was opened with (`rigtune RUN_FILE`)
and must keep what the user wrote in it - comments, blank lines, key order - while runfile.dumps() writes a
fresh file with our own help lines. tomlkit reads and writes TOML as a document, so the values change in place.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .runfile import REQUIRED, SECTION_KEYS, SECTIONS, TOP_KEYS, RunConfig, _comment, dumps, save, tomllib


def _same(a, b) -> bool:
    """Equal as run-file values: 1 and 1.0 are the same number, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def _insert_after_keys(container, key: str, value) -> None:
    """key = value after the container's last plain key: above the blank line that ends a section, and at the
    top level above the first [section] (and the comment lines right over it), not under it."""
    from tomlkit.items import AoT, InlineTable, Table, Whitespace
    if isinstance(container, InlineTable):  # { a = 1, b = 2 }: one line, order is all there is
        container[key] = value
        return
    if isinstance(container, Table):
        container = container.value
    body = container.body
    last = max((i for i, (k, v) in enumerate(body) if k is not None and not isinstance(v, (Table, AoT))),
               default=None)
    if last is None:  # no plain key yet
        last = next((i for i, (_, v) in enumerate(body) if isinstance(v, (Table, AoT))), len(body))
        while last > 0 and body[last - 1][0] is None and not isinstance(body[last - 1][1], Whitespace):
            last -= 1
        last -= 1
    if last + 1 < len(body):
        try:
            container._insert_at(last + 1, key, value)  # tomlkit has no public insert; add() appends
            return
        except (AttributeError, TypeError):  # a tomlkit without it: append, a cosmetic difference only
            pass
    container.add(key, value)


def _reads_as(read: dict, want: dict, keys: dict) -> bool:
    """Does `read` (a table as parsed) hold exactly the values `want`, where a key left out holds its default?"""
    for name, value in want.items():
        if name in SECTIONS:
            if not isinstance(read.get(name, {}), dict) or not _reads_as(read.get(name, {}), value, SECTION_KEYS[name]):
                return False
        elif value is None:
            if name in read:
                return False
        elif name in read:
            if not _same(read[name], value):
                return False
        elif name not in keys or keys[name].default is REQUIRED or not _same(keys[name].default, value):
            return False
    return all(name in want and (want[name] is not None or name in SECTIONS) for name in read)


def dumps_preserving(cfg: RunConfig | dict, base_text: str, header: str | None = None,
                     fallback: bool = True) -> str | None:
    """The run file `cfg` written as an edit of `base_text` (the user's own file): keys whose value changed are
    updated where they stand, keys it lacks are added unless they hold their default, keys no longer given are
    removed; comments, blank lines, order and untouched values stay as the user wrote them (tomlkit round-trips
    them). Falls back to dumps() - the same values in our layout - when the base is not valid TOML or its
    shape (dotted keys, inline tables) does not take the edit: the result is read back and compared first.
    With fallback=False that case gives None instead (see preserves())."""
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    data = cfg.values if isinstance(cfg, RunConfig) else cfg
    try:
        before = tomllib.loads(base_text)
        doc = tomlkit.parse(base_text)

        def edit(container, old: dict, new: dict, keys: dict) -> None:
            for name in [n for n in old if n not in SECTIONS and new.get(n) is None]:
                del container[name]
            for name, value in new.items():
                if name in SECTIONS or value is None:
                    continue
                if name in old:
                    if not _same(old[name], value):
                        container[name] = value  # where it stands, with its own trailing comment
                elif name not in keys or keys[name].default is REQUIRED or not _same(keys[name].default, value):
                    _insert_after_keys(container, name, value)

        edit(doc, before, data, TOP_KEYS)
        for section, keys in SECTION_KEYS.items():
            new = data.get(section) or {}
            if section in before:
                edit(doc[section], before[section], new, keys)
                continue
            table = tomlkit.table()
            for name, value in new.items():  # a new section: each key with its help line, as dumps() writes it
                k = keys.get(name)
                if value is not None and (k is None or k.default is REQUIRED or not _same(k.default, value)):
                    if k is not None:
                        table.add(tomlkit.comment(_comment(k)[2:-1]))
                    table.add(name, value)
            if len(table):
                if not doc.as_string().endswith("\n\n"):
                    doc.add(tomlkit.nl())
                doc.add(section, table)
        text = tomlkit.dumps(doc)
        if not _reads_as(tomllib.loads(text), data, TOP_KEYS):
            raise ValueError("the edited file does not read back as the run file")
        return text
    except (tomllib.TOMLDecodeError, TOMLKitError, ValueError, KeyError, TypeError, AttributeError):
        return dumps(cfg, header) if fallback else None


def preserves(cfg: RunConfig | dict, base_text: str, header: str | None = None) -> bool:
    """Whether writing `cfg` into `base_text` keeps the user's comments and layout (False: it would fall back to
    our own layout, and their comments would go)."""
    return dumps_preserving(cfg, base_text, header, fallback=False) is not None


def save_preserving(cfg: RunConfig | dict, path, base_text: str | None = None, header: str | None = None) -> Path:
    """save(), but as an edit of the user's own run file: `base_text` (default: the file now at `path`) keeps
    its comments and order, see dumps_preserving(). With no such file it is save()."""
    p = Path(path)
    if p.is_symlink():  # write through the link, not over it
        p = p.resolve()
    if base_text is None:
        try:
            base_text = p.read_text(encoding="utf-8")
        except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
            return save(cfg, p, header)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(dumps_preserving(cfg, base_text, header), encoding="utf-8")
    if p.exists():
        shutil.copymode(p, tmp)  # the user's permissions stay
    os.replace(tmp, p)
    return p
