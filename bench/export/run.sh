#!/usr/bin/env bash
# Peak memory of `rigtune export --to merged`, beside the cost of just importing the libraries, in one run.
# usage: bench/export/run.sh RUN_DIR   (a finished run, e.g. the CPU demo's)
set -euo pipefail
py=.venv/bin/python
run="$1"
peak() { /usr/bin/time -v "$@" 2>&1 >/dev/null | awk '/Maximum resident/ {print $6}'; }
imports=$(peak $py -c "import torch, transformers, peft, bitsandbytes, safetensors")
merge=$(peak $py -m engine.torchside.export "$run" --to merged --out "$(mktemp -d)/merged" --force)
echo "imports only: $((imports / 1024)) MiB peak RSS"
echo "merged export: $((merge / 1024)) MiB peak RSS"
