"""The `rigtune` command line: one module per command group, each registering its subcommands on the parser
built here (machine: scan, plan, probe, build; run: init, check, demo, train; watch: watch, stop; model: fetch, chat,
export; wizard: the bare `rigtune`). Heavy libraries (torch, transformers) are imported inside the commands
that need them, so `rigtune --help` stays instant."""
from __future__ import annotations

import argparse
import sys

from . import machine, model, run, watch, wizard
from .common import USAGE, run_command

# the order `rigtune --help` lists the subcommands in
HELP_ORDER = ("demo", "watch", "scan", "plan", "probe", "init", "check", "train", "chat", "export", "build", "fetch", "stop")
PARSERS = {**machine.PARSERS, **run.PARSERS, **watch.PARSERS, **model.PARSERS}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rigtune", description="QLoRA fine-tuning on your own GPU box, from a terminal.",
                                 usage=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command")
    for name in sorted(PARSERS, key=HELP_ORDER.index):  # a command missing from HELP_ORDER fails here, loudly
        PARSERS[name](sub)
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # "wizard" is no subcommand, yet `rigtune wizard` goes to the subcommand parser (which refuses it), as always
    if not argv or argv[0] not in PARSERS and argv[0] not in ("wizard", "-h", "--help", "--debug"):
        args = wizard.parse(argv)
        if isinstance(args, int):
            return args
    else:
        args = build_parser().parse_args(argv)
        if args.command is None:
            args.command, args.run_file, args.preset, args.func = "wizard", None, None, wizard.cmd_wizard
    return run_command(args.func, args)
