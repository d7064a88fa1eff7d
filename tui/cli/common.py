"""What every command group of the `rigtune` command line shares: the usage text, the exit codes, the one
paragraph an error prints (a traceback only with --debug), and whether a screen can be shown."""
from __future__ import annotations

import sys

from engine.errors import BadInput, Failed

OK, FAILED, BAD_INPUT, INTERRUPTED = 0, 1, 2, 130  # DESIGN.md section 3: 2 bad input, 1 anything else

USAGE = """\
rigtune [RUN_FILE] [--preset ID]   the wizard (on a machine without a GPU it offers the CPU demo)
rigtune demo                  build the tiny demo model and train it on the bundled dataset
rigtune scan [--json]         GPUs, NVLink, driver, CPU, RAM and disk of this machine
rigtune plan [RUN_FILE] [--model M] [--gpus NxGIB|NxCARD] ... [--json]   will it fit, how long? (no download)
rigtune init --preset ID      write a run file (a tier from presets/tiers.toml, this-machine, cpu-demo)
rigtune check RUN_FILE        validate a run file and its dataset without loading the model
rigtune train RUN_FILE        launch training detached and watch it (--no-tui: plain lines)
rigtune watch [RUN_DIR]       re-attach the dashboard to a run (no argument: pick a recent one)
rigtune stop RUN_DIR          stop a run gracefully (it saves a checkpoint and the adapter)
rigtune fetch MODEL           download a model's weights with progress (resumes; checks free disk first)
rigtune build [--tier ID] [--model M] [--seq-len N] [--json]   what to buy to reach a tier or fit a model
rigtune chat RUN_DIR [--checkpoint step-N] [--base] [--system T] [--prompt T]   talk to what a run trained
rigtune export RUN_DIR --to merged|gguf|gguf-lora|ollama [--out PATH] [--quant Q]   use it elsewhere
"""

def use_tui(tui: bool) -> bool:
    """A screen only when asked for and both ends are a terminal; otherwise plain lines."""
    return tui and sys.stdin.isatty() and sys.stdout.isatty()


def run_command(command, args) -> int:
    """Run one command and turn what it raises into the exit code: bad input is one paragraph on stderr and 2,
    a failure one paragraph and 1, a full disk a sentence that says nothing was started. --debug re-raises."""
    try:
        return command(args)
    except BadInput as e:
        if args.debug:
            raise
        print(f"rigtune: {e}", file=sys.stderr)
        return BAD_INPUT
    except Failed as e:
        if args.debug:
            raise
        print(f"rigtune: {e}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        return INTERRUPTED
    except OSError as e:
        from engine.checkpoint import is_disk_full
        if not is_disk_full(e) or args.debug:
            raise
        where = getattr(e, "filename", None) or "the run directory"  # the run-file copy, status.json, init --out
        print(f"rigtune: disk full while writing {where}; nothing was started. Free some space and try again.",
              file=sys.stderr)
        return FAILED
