"""`rigtune [RUN_FILE] [--preset ID]`: the wizard, the command line's default when no command is named."""
from __future__ import annotations

import argparse
import sys

from engine.errors import BadInput

from .common import BAD_INPUT, USAGE, use_tui
from .watch import left_message


def parse(argv: list[str]):
    """The wizard's arguments (func set to cmd_wizard), or the exit code of a preset that does not exist."""
    wiz = argparse.ArgumentParser(prog="rigtune", usage=USAGE)
    wiz.add_argument("run_file", nargs="?")
    wiz.add_argument("--preset", help="start the wizard at setup for this preset (a tier, this-machine, cpu-demo)")
    wiz.add_argument("--debug", action="store_true")
    args = wiz.parse_args(argv)
    if args.preset:
        from engine.runvalues import preset_ids
        if args.preset not in preset_ids():
            print(f"rigtune: unknown preset '{args.preset}'; presets: {', '.join(preset_ids())}.", file=sys.stderr)
            return BAD_INPUT
    args.command, args.func = "wizard", cmd_wizard
    return args


def cmd_wizard(args) -> int:
    if not use_tui(True):
        raise BadInput("the wizard needs a terminal; in scripts use `rigtune init --preset ID` and "
                       "`rigtune train RUN_FILE --no-tui` (or `rigtune demo --no-tui`).", key="rigtune")
    if args.run_file:
        from engine import runfile
        runfile.load(args.run_file)  # a bad file gets the usual one-paragraph error, not a screen
    from ..app import RigtuneApp
    # RIGTUNE_FAKE_NVML (a profile from tests/profiles) is read by engine.scan: plan on hand-made hardware profiles
    app = RigtuneApp(wizard=True, preset=args.preset, run_file=args.run_file)
    app.run()
    if app.run_dir is not None:
        print(left_message(app.run_dir))
    return 0
