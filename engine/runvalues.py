"""Run-file values from a preset: the one place that turns a preset id into complete run-file values, and
resolves the placeholders presets use. `rigtune init --preset`, `rigtune demo` and the wizard all come here.

A preset id is a tier from presets/tiers.toml (its ids are read from there, never written in code), "this
machine" (the scanned machine as a tier), or a run preset shipped in presets/ (cpu-demo). Two placeholders
stand for things built or shipped locally:
  rigtune:tiny-demo  the tiny demo model, built once into the cache (engine.demo)
  rigtune:demo-data  the bundled demo dataset
  rigtune:demo-eval  the demo's held-out questions
  rigtune:demo-pref, rigtune:demo-pref-eval  the preference demo's pairs and held-out pairs
  rigtune:demo-adapter  the CPU demo's SFT adapter (runs/cpu-demo), which the preference demo starts from
  rigtune:demo-grpo, rigtune:demo-grpo-eval  the GRPO demo's prompts and held-out prompts
"""
from __future__ import annotations

import presets

from . import planner as P
from . import runfile
from . import tiers as T
from .errors import BadInput
from .modelref import DEMO_MODEL

THIS_MACHINE = "this-machine"
DEMO_DATA = "rigtune:demo-data"
DEMO_EVAL = "rigtune:demo-eval"
DEMO_ADAPTER = "rigtune:demo-adapter"
SHIPPED = {DEMO_DATA: "DEMO_DATA", DEMO_EVAL: "DEMO_EVAL", "rigtune:demo-pref": "DEMO_PREF",
           "rigtune:demo-pref-eval": "DEMO_PREF_EVAL", "rigtune:demo-grpo": "DEMO_GRPO",
           "rigtune:demo-grpo-eval": "DEMO_GRPO_EVAL"}  # placeholder -> the presets attribute naming its file


def preset_ids() -> list:
    """Every preset id, in the order the wizard shows them: the tiers, this machine, the run presets."""
    return [*T.tiers(), THIS_MACHINE, *presets.preset_ids()]


def tier_of(preset: str, machine=None):
    """The Tier a preset id stands for (None for a run preset such as cpu-demo)."""
    if preset == THIS_MACHINE:
        return T.this_machine(machine if machine is not None else _scan())
    return T.tiers().get(preset)


def _scan():
    from .scan import scan
    return scan()


def values_for(preset: str, model: str | None = None, dataset: str | None = None, machine=None) -> tuple[dict, str]:
    """Complete run-file values for `preset` (model and dataset overridden when given), and the lines that
    say why (the tier's plan); the demo-data placeholder is resolved, the demo model is not (build_demo_model)."""
    why = ""
    if preset in presets.RUN_PRESETS:
        values = runfile.defaults(**presets.load_run_preset(preset))
        if model:
            values["model"]["base"] = model
    elif preset in T.tiers() or preset == THIS_MACHINE:
        tier = tier_of(preset, machine)
        if not tier.gpus:
            raise BadInput("this machine has no NVIDIA GPU; use --preset cpu-demo, or a tier ("
                           f"{', '.join(T.tiers())}) to write a run file for hardware you don't own.", key="--preset")
        arch = P.resolve_model(model or tier.run["model"])
        values, why = T.run_values(tier, arch, base=model if model and not arch.hf_id else None)
    else:
        raise BadInput(f"unknown preset '{preset}'; presets: {', '.join(preset_ids())}.", key="--preset")
    if dataset:
        values["data"]["path"] = dataset
    if values["data"]["path"] is None:
        values["data"]["path"] = DEMO_DATA
    shipped = values["data"]["path"] in SHIPPED
    if shipped:
        values["data"]["path"] = str(getattr(presets, SHIPPED[values["data"]["path"]]))
    if values["data"]["eval_path"] in SHIPPED:  # a shipped held-out set goes with its own shipped data only
        values["data"]["eval_path"] = str(getattr(presets, SHIPPED[values["data"]["eval_path"]])) if shipped else ""
    if values["model"]["adapter"] == DEMO_ADAPTER:
        values["model"]["adapter"] = demo_adapter() or DEMO_ADAPTER
    return values, why


def demo_adapter(root: str = "runs") -> str | None:
    """The CPU demo's finished run (ROOT/cpu-demo, its adapter written), as an absolute path; None when there
    is none yet (rigtune demo --method dpo trains it first)."""
    from pathlib import Path

    from .events import ADAPTER
    run = Path(root).absolute() / "cpu-demo"
    return str(run) if (run / ADAPTER / "adapter_model.safetensors").is_file() else None


def model_path(base: str) -> str:
    """Where the model a run file names is, without building anything (the demo model's cache folder)."""
    if base == DEMO_MODEL:
        from .demo import demo_model_dir
        return str(demo_model_dir())
    return base


def build_demo_model(values: dict, log=print) -> dict:
    """Replace the demo-model placeholder with the built model's folder (building it once if needed)."""
    if values["model"]["base"] == DEMO_MODEL:
        from .demo import demo_model
        values["model"]["base"] = str(demo_model(log))
    return values
