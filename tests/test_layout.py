"""The architecture's rules that are not behaviour: short functions, modules one person reads in a sitting, no
import cycles, a training loop that reads in one sitting, and tiers that are data (a third one in presets/tiers.toml, with no Python edit, shows everywhere). The
import layers are import-linter contracts (pyproject.toml), run by `make test` before pytest."""
import ast
import json
import shutil
import subprocess

import pytest

import presets
from conftest import ROOT
from engine import runfile
from engine import tiers as T

THIRD_TIER = '''
[tiers."2500"]
label = "$2,500"
summary = "one RTX 5090 (32 GB), 96 GB DDR5, NVMe SSD"
gpu_name = "RTX 5090"
gpus = [32.0]
ram_gib = 96
nvme = true
nvlink = false
article = "A test tier: one 32 GB card."

[tiers."2500".run]
model = "Llama-3.1-8B"
max_seq_len = 4096
micro_batch_size = 4
gradient_accumulation_steps = 4
optimizer = "adamw_8bit"
'''


def functions(folder):
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(ROOT), node.name, node.end_lineno - node.lineno + 1


def test_no_function_is_longer_than_100_lines_and_the_loop_fits_80():
    long = [f"{p}:{name} ({n} lines)" for folder in ("engine", "tui") for p, name, n in functions(folder) if n > 100]
    assert not long, long
    loop = [n for p, name, n in functions("engine/torchside") if p.name == "trainer.py" and name == "train"]
    assert loop and loop[0] <= 80, loop


MAX_MODULE_LINES = 500
PACKAGES = ("engine", "tui", "presets")


def test_no_module_is_longer_than_500_lines():
    long = [f"{p.relative_to(ROOT)} ({n} lines)" for folder in ("engine", "tui") for p in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long, long


def import_graph(root, packages=PACKAGES) -> dict:
    """{module: {modules it imports}} over our own packages, from every import statement in each file, those
    inside functions included (a lazy import is still a dependency). Relative imports are resolved; `from a
    import b` counts as importing the module a.b where that is a module, else a."""
    files = {}
    for pkg in packages:
        for path in (root / pkg).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = (path, parts[-1] == "__init__")
    graph = {}
    for name, (path, is_pkg) in files.items():
        here = name if is_pkg else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[:len(here.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in files:  # import a.b.c where only a.b is ours as a file: the module a.b
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_there_is_no_import_cycle():
    assert cycles(import_graph(ROOT)) == []


def test_the_cycle_check_finds_a_cycle_through_a_lazy_import(tmp_path):
    """The check above can fail: a package whose modules import each other, one of them inside a function."""
    pkg = tmp_path / "engine"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import g\n")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def g():\n    from ..a import f\n    return f\n")
    (pkg / "c.py").write_text("import engine.a\n")
    graph = import_graph(tmp_path, ("engine",))
    assert graph["engine.a"] == {"engine.sub.b"} and graph["engine.c"] == {"engine.a"}
    assert cycles(graph) == [["engine.a", "engine.sub.b"]]
    (pkg / "sub" / "b.py").write_text("def g():\n    return 1\n")
    assert cycles(import_graph(tmp_path, ("engine",))) == []


def test_the_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(ROOT / ".venv" / "bin")) or shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (make install brings it)")
    res = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:]
    assert "0 broken" in res.stdout


@pytest.fixture
def third_tier(tmp_path, monkeypatch):
    """presets/tiers.toml plus a third tier, in a copy that presets reads instead of the shipped file."""
    path = tmp_path / "tiers.toml"
    path.write_text(presets.TIERS.read_text() + THIRD_TIER)
    monkeypatch.setattr(presets, "TIERS", path)
    return path


def test_a_third_tier_needs_no_python(tmp_path, third_tier, monkeypatch, capsys):
    from tui.cli import main
    assert "2500" in T.tiers()
    out = tmp_path / "r.toml"
    assert main(["init", "--preset", "2500", "--out", str(out)]) == 0
    cfg = runfile.load(out)
    assert cfg.hardware.tier == "2500" and cfg.hardware.gpus == [0] and cfg.data.max_seq_len == 4096

    # rigtune scan on a machine with one 32 GB card: the verdict names the new tier
    profile = tmp_path / "rtx5090.json"
    profile.write_text(json.dumps({"driver": "575.0", "cuda": 12080, "gpus": [
        {"name": "NVIDIA GeForce RTX 5090", "memory_total_mib": 32607, "memory_used_mib": 300, "cc": [12, 0],
         "bus_id": "00000000:01:00.0", "pcie": [5, 16], "temperature": 40, "power_limit_w": 575}]}))
    monkeypatch.setenv("RIGTUNE_FAKE_NVML", str(profile))
    capsys.readouterr()
    assert main(["scan"]) == 0
    assert "fits the $2,500 tier" in capsys.readouterr().out

    # and the wizard's --preset lists it
    assert main(["--preset", "nope"]) == 2
    assert "2500" in capsys.readouterr().err


async def test_the_wizard_shows_a_third_tier(third_tier, tmp_path, monkeypatch):
    from test_wizard import fixed_machine, settle  # the same fixed machine as the wizard tests
    from textual.widgets import DataTable

    from tui.app import RigtuneApp
    from tui.screens import wizard as W
    monkeypatch.chdir(tmp_path)
    app = RigtuneApp(wizard=True, machine=fixed_machine("rtx4090"))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, W.ScanStep)
        await pilot.press("enter")
        await settle(pilot, W.TierStep)
        table = pilot.app.screen.query_one("#tiers", DataTable)
        labels = [str(c.label) for c in table.columns.values()]
        assert "$2,500" in labels and labels.index("$2,500") < labels.index("this machine")
        # the cursor starts on this machine; the new tier is just left of it: its bill, then choose it
        await pilot.press("left")
        await pilot.pause(0.2)
        detail = str(pilot.app.screen.query_one("#tier-detail").render())
        assert "what to buy: 1 x RTX 5090" in detail and "+ GPU, PSU (price not known)" in detail  # not in parts.toml
        await pilot.pause(0.1)
        await pilot.press("enter")
        await settle(pilot, W.SetupStep)
        assert app.wizard.tier_id == "2500" and app.wizard.values["hardware"]["tier"] == "2500"
