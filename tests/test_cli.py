"""The command line's contracts: fast help without torch, and engine/ never importing the terminal UI."""
import subprocess
import sys

from conftest import ROOT, peer, rigtune, run_file


def _modules_after(code: str) -> set:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_help_does_not_import_torch():
    mods = _modules_after("from tui.cli import build_parser\ntry:\n build_parser().parse_args(['--help'])\n"
                          "except SystemExit:\n pass")
    assert "torch" not in mods and "transformers" not in mods
    res = rigtune("--help")
    assert res.returncode == 0 and "rigtune train RUN_FILE" in res.stdout


def test_engine_never_imports_textual():
    code = "import engine.runfile, engine.data, engine.events, engine.launch, engine.model, engine.trainer, engine.tiny, engine.demo"
    mods = _modules_after(code)
    assert not any(m == "textual" or m.startswith("textual.") or m.startswith("tui") for m in mods)
    for path in (ROOT / "engine").glob("*.py"):
        assert "textual" not in path.read_text() and "from tui" not in path.read_text(), path


def test_check_names_each_peer_format(tmp_path, tiny_model):
    for name, fmt in [("alpaca_en_demo.json", "alpaca"), ("glaive_toolcall_en_demo.json", "sharegpt"),
                      ("c4_demo.jsonl", "text"), ("v1_sft_demo.jsonl", "messages")]:
        rf = run_file(tmp_path, tiny_model, peer(name), name=fmt)
        res = rigtune("check", rf)
        assert res.returncode == 0, res.stderr
        assert f"format: {fmt}" in res.stdout and "truncated" in res.stdout


def test_trust_remote_code_warns(tmp_path, tiny_model):
    rf = run_file(tmp_path, tiny_model, peer("identity.json"), model={"base": str(tiny_model),
                                                                      "trust_remote_code": True})
    res = rigtune("check", rf)
    assert res.returncode == 0 and "trust_remote_code" in res.stderr
