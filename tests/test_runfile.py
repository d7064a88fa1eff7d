"""The run file: defaults, round trip, and a precise, short error for every kind of bad input."""
import pytest

from engine import runfile
from engine.errors import BadInput
from tui.cli import main

GOOD = '''name = "x"
[model]
base = "some/model"
[data]
path = "d.jsonl"
'''


def test_defaults_round_trip_with_help_comments():
    values = runfile.defaults(model={"base": "m"}, data={"path": "d"}, lora={"target_modules": ["q_proj", "v_proj"]})
    text = runfile.dumps(values)
    assert runfile.loads(text).values == values
    assert "# Peak learning rate." in text  # every key carries its help line
    for section, keys in runfile.SECTIONS.items():
        for k in keys:
            assert f"\n{k.name} = " in text, k.name


def test_preset_file_validates():
    import presets
    values = runfile.defaults(**presets.load_run_preset("cpu-demo"))
    cfg = runfile.validate(values)
    assert cfg.hardware.gpus == [] and cfg.model.quantization == "nf4"


def test_trust_remote_code_is_off_by_default():
    assert runfile.loads(GOOD).model.trust_remote_code is False


@pytest.mark.parametrize("text, line, words", [
    ('name = "x"\n[model]\nbase = "a\n', 3, ["not valid TOML"]),
    (GOOD + "[train]\nepochs = 1\nepochs = 2\n", 8, ["defined twice", "train.epochs"]),
    (GOOD + "[train]\nlearnin_rate = 1e-4\n", 7, ["Did you mean 'learning_rate'"]),
    (GOOD + "[trian]\nepochs = 1\n", 6, ["unknown section [trian]", "Did you mean 'train'"]),
    (GOOD + "[train]\nepochs = \"two\"\n", 7, ["'two' is not a number"]),
    (GOOD + "[train]\nlearning_rate = 5.0\n", 7, ["out of range", "> 0 and ≤ 1"]),
    (GOOD + "[lora]\nr = 0\n", 7, ["out of range"]),
    (GOOD + "[train]\noptimizer = \"sgd\"\n", 7, ["'sgd' is not allowed", "adamw_torch"]),
    (GOOD + "[data]\nmax_seq_len = 1024\n", None, ["defined twice"]),
    ('name = "../../etc"\n[model]\nbase = "m"\n[data]\npath = "d"\n', 1, ["could leave output_root"]),
    ('name = ".."\n[model]\nbase = "m"\n[data]\npath = "d"\n', 1, ["could leave output_root"]),
    ('name = "x"\n[model]\nquantization = "nf4"\n[data]\npath = "d"\n', 2, ["needs 'base'"]),
    (GOOD + "[model]\ndtype = \"bf16\"\n", None, ["defined twice"]),
    (GOOD.replace("[data]", "[model]\n").replace('path = "d.jsonl"', "") + "[data]\n", None, ["defined twice"]),
    (GOOD + "[train]\nlora_r = 8\n", 7, ["unknown key"]),
    (GOOD + "[train]\nr = 8\n", 7, ["'r' belongs in [lora]"]),
    (GOOD + "[run]\nelectricity_usd_per_kwh = -0.1\n", 7, ["out of range", "a number from 0 to 10"]),
    (GOOD + "[run]\nelectricity_usd_per_kw = 0.3\n", 7, ["Did you mean 'electricity_usd_per_kwh'"]),
    (GOOD + "[train]\nelectricity_usd_per_kwh = 0.3\n", 7, ["'electricity_usd_per_kwh' belongs in [run]"]),
])
def test_bad_run_files_name_line_and_key(tmp_path, capsys, text, line, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code = main(["check", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and err.count("\n") <= 2
    assert str(path) in err
    if line:
        assert f"{path}:{line}" in err
    for w in words:
        assert w in err


def test_missing_run_file(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.toml")]) == 2
    assert "run file not found" in capsys.readouterr().err


def test_strategy_checks():
    with pytest.raises(BadInput, match="needs at least 2 processes"):
        runfile.loads(GOOD + '[hardware]\nstrategy = "ddp"\n')
    with pytest.raises(BadInput, match="num_processes = 2"):
        runfile.loads(GOOD + '[hardware]\nnum_processes = 2\n')
    cfg = runfile.loads(GOOD + '[hardware]\nstrategy = "ddp"\nnum_processes = 2\n')
    assert cfg.hardware.num_processes == 2


def test_run_dir_is_inside_output_root(tmp_path):
    cfg = runfile.loads(GOOD.replace('name = "x"', f'name = "a.b-c_1"\noutput_root = "{tmp_path}"'))
    assert runfile.run_dir(cfg) == tmp_path / "a.b-c_1"


def test_readme_documents_every_key():
    from conftest import ROOT
    readme = (ROOT / "README.md").read_text()
    for k in runfile.TOP:
        assert f"`{k.name}`" in readme, k.name
    for section, keys in runfile.SECTIONS.items():
        for k in keys:
            assert f"`{section}.{k.name}`" in readme, f"{section}.{k.name}"


MINE = '''# my 7B run: keep this note
name = "mine"  # the folder's name

# the base I always use
[model]
base = "Llama-2-7B"  # local copy
revision = "main"
quantization = "fp4"

[train]
# slow and steady
learning_rate = 2e-4
epochs = 2

[data]
path = "d.jsonl"
'''


def test_an_edit_of_the_users_run_file_keeps_its_comments_and_order():
    from engine import runedit
    values = runfile.loads(MINE).to_dict()
    assert runedit.dumps_preserving(values, MINE) == MINE  # nothing changed: not a byte
    values["train"]["learning_rate"] = 1e-4                # changed: where it stands
    values["model"]["quantization"] = "nf4"                # back to the default: still written, as the user had it
    values["model"]["revision"] = None                     # no longer given: removed
    values["train"]["seed"] = 7                            # new in a section: after its last key
    values["output_root"] = "elsewhere"                    # new at the top: above the first section's comment
    values["lora"]["r"] = 8                                # a new section: at the end, with its help line
    assert runedit.dumps_preserving(values, MINE) == '''# my 7B run: keep this note
name = "mine"  # the folder's name
output_root = "elsewhere"

# the base I always use
[model]
base = "Llama-2-7B"  # local copy
quantization = "nf4"

[train]
# slow and steady
learning_rate = 0.0001
epochs = 2
seed = 7

[data]
path = "d.jsonl"

[lora]
# LoRA rank.
r = 8
'''


@pytest.mark.parametrize("base", ['name = "x"\nmodel.base = "m"\ndata = { path = "d" }\n', "not [toml"])
def test_an_edit_of_a_file_of_another_shape_writes_the_same_values(base, tmp_path):
    """Dotted keys, inline tables, or a base that is not TOML at all: the values are what counts, whatever the
    layout that carries them."""
    from engine import runedit
    values = runfile.defaults(name="y", model={"base": "z"}, data={"path": "d"}, train={"seed": 3})
    path = runedit.save_preserving(values, tmp_path / "run.toml", base_text=base)
    assert runfile.load(path).values == runfile.validate(values).values
    assert runedit.save_preserving(values, tmp_path / "new.toml").read_text() == runfile.dumps(values)
    if base == "not [toml":
        assert not runedit.preserves(values, base)  # so the wizard says the comments will go
    assert runedit.preserves(values, runfile.dumps(values))


def test_an_edit_writes_through_a_link_and_keeps_the_permissions(tmp_path):
    from engine import runedit
    values = runfile.defaults(name="y", model={"base": "z"}, data={"path": "d"})
    real = tmp_path / "kept" / "run.toml"
    real.parent.mkdir()
    real.write_text("# mine\n" + runfile.dumps(values))
    real.chmod(0o640)
    link = tmp_path / "run.toml"
    link.symlink_to(real)
    values["train"]["seed"] = 7
    runedit.save_preserving(values, link)
    assert link.is_symlink() and real.read_text().startswith("# mine\n") and runfile.load(real).train.seed == 7
    assert real.stat().st_mode & 0o777 == 0o640
