"""Flags: generated from the config dataclass (help from the docstrings), both spellings and forms, YAML defaults
(bounded), derived defaults (lr, warm-up), and the one-line error wall."""

from __future__ import annotations

import ast
import dataclasses
import re

import pytest

from explain.run import parse_args as explain_parse_args
from explain.run import parser as explain_parser
from tests.conftest import REPO, run_cli
from train.config import (
    Config,
    ConfigError,
    config_from_dict,
    field_help,
    fitted_batch,
    parse_args,
    resolve,
    train_parser,
)
from train.run import main

# A valid, non-default value for every flag, as the user would type it, and what it parses to.
SAMPLES = {
    "data_dir": ("some/where", "some/where"),
    "train_subset": ("2000", 2000),
    "test_subset": ("1000", 1000),
    "cutout": ("8", 8),
    "flip": ("alternate", "alternate"),
    "min_res": ("16", 16),
    "res_ramp": ("0.5", 0.5),
    "model": ("resnet18", "resnet18"),
    "stem_init": ("whiten", "whiten"),
    "epochs": ("3", 3),
    "batch_size": ("64", 64),
    "lr": ("0.05", 0.05),
    "lr_base": ("0.2", 0.2),
    "lr_base_size": ("256", 256),
    "warmup_epochs": ("0.5", 0.5),
    "weight_decay": ("1e-4", 1e-4),
    "momentum": ("0.8", 0.8),
    "label_smoothing": ("0.2", 0.2),
    "tta": ("False", False),
    "seed": ("7", 7),
    "device": ("cpu", "cpu"),
    "precision": ("bf16", "bf16"),
    "compile": ("True", True),
    "deterministic": ("1", True),
    "eval_batch_size": ("256", 256),
    "out_dir": ("runs/x", "runs/x"),
    "run_name": ("x", "x"),
    "resume": ("runs/x/last.pt", "runs/x/last.pt"),
    "keep_checkpoints": ("none", "none"),
    "wandb_project": ("proj", "proj"),
    "wandb_entity": ("team", "team"),
    "wandb_mode": ("offline", "offline"),
    "explain_samples": ("16", 16),
    "cam_method": ("layercam", "layercam"),
    "cam_layer": ("layer3", "layer3"),
    "trust": ("false", False),
    "trust_images": ("64", 64),
    "ema": ("0.999", 0.999),
    "label_issues": ("no", False),
    "probe_images": ("6", 6),
}


def test_samples_cover_every_flag():
    assert set(SAMPLES) == {f.name for f in dataclasses.fields(Config)}


@pytest.mark.parametrize("key", sorted(SAMPLES))
@pytest.mark.parametrize("form", ["underscore=", "underscore space", "dash=", "dash space"])
def test_every_flag_parses_in_both_spellings_and_forms(key, form):
    text, expected = SAMPLES[key]
    flag = "--" + (key if form.startswith("underscore") else key.replace("_", "-"))
    argv = [f"{flag}={text}"] if form.endswith("=") else [flag, text]
    config, given = parse_args(argv)
    assert getattr(config, key) == expected
    assert given == {key}


def test_every_flag_has_its_docstring_as_help():
    options = {action.dest: action for action in train_parser()._actions if action.option_strings}
    for field in dataclasses.fields(Config):
        text = field_help(Config, field.name)
        assert len(text) > 10, field.name  # every field documents itself
        assert options[field.name].help.startswith(text.replace("%", "%%")), field.name
    flat = " ".join(train_parser().format_help().split())
    assert "Nesterov momentum, in (0, 1). (default: 0.9)" in flat
    assert "unset = lr_base * batch_size / lr_base_size" in flat


def test_explain_help_lists_each_flag_once():
    text = explain_parser().format_help()
    listed = re.findall(r"^\s+(--[\w-]+)", text, flags=re.MULTILINE)
    assert "--checkpoint" in listed and "--device" in listed and "--cam_method" in listed
    assert len(listed) == len(set(listed)), listed
    assert "the checkpoint's" in text


@pytest.mark.parametrize("text,expected", [("True", True), ("False", False), ("true", True), ("false", False),
                                           ("1", True), ("0", False)])
def test_booleans(text, expected):
    assert parse_args([f"--compile={text}"])[0].compile is expected


def test_lr_scales_with_the_batch_unless_given():
    config, given = parse_args([])
    assert config.lr is None and config.batch_size is None and "lr" not in given  # fitted once the data is known
    resolve(config, 50_000)
    assert config.batch_size == 512 and config.lr == pytest.approx(0.4)
    assert parse_args(["--batch_size=128"])[0].lr == pytest.approx(0.1)
    assert parse_args(["--batch_size=64", "--lr_base=0.2", "--lr_base_size=256"])[0].lr == pytest.approx(0.05)
    assert parse_args(["--batch_size=64", "--lr=0.3"])[0].lr == 0.3  # an explicit lr wins


@pytest.mark.parametrize("images", [64, 1_000, 3_000, 10_000, 24_575, 24_576, 50_000, 10**6])
def test_the_default_batch_gives_small_training_sets_enough_steps(images):
    batch = fitted_batch(images)
    assert 32 <= batch <= 512 and batch & (batch - 1) == 0
    assert batch == 32 or images // batch >= 48  # enough steps an epoch, or as small as it goes
    assert batch == 512 or images // (2 * batch) < 48  # and no smaller than needed: twice it had too few steps
    for world in (2, 3, 8):  # under torchrun the global batch splits evenly over the processes
        assert fitted_batch(images, world) % world == 0


def test_an_explicit_batch_is_never_fitted():
    config, _ = parse_args(["--batch_size=512"])
    assert resolve(config, 1_000).batch_size == 512 and config.lr == pytest.approx(0.4)


def test_warmup_is_a_fifth_of_the_run_unless_given():
    assert parse_args([])[0].warmup_epochs == pytest.approx(4.0)
    assert parse_args(["--epochs=2"])[0].warmup_epochs == pytest.approx(0.4)
    assert parse_args(["--epochs=2", "--warmup_epochs=0"])[0].warmup_epochs == 0.0


def test_yaml_file_gives_defaults_and_the_command_line_wins(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("lr: 0.01\nepochs: 5\nbatch-size: 32\ntta: false\nwarmup_epochs: null\n")
    config, given = parse_args(["--config", str(file), "--lr=0.3"])
    assert (config.lr, config.epochs, config.batch_size, config.tta) == (0.3, 5, 32, False)
    assert config.warmup_epochs == pytest.approx(1.0)  # null = unset = a fifth of the 5 epochs
    assert given == {"lr", "epochs", "batch_size", "tta", "warmup_epochs"}


@pytest.mark.parametrize("argv,message", [
    (["--lr=0"], "--lr must be > 0"),
    (["--lr=-1"], "--lr must be > 0"),
    (["--lr=abc"], "--lr expects float"),
    (["--lr=nan"], "--lr expects float"),
    (["--lr=inf"], "--lr expects float"),
    (["--epochs=0"], "--epochs must be >= 1"),
    (["--epochs=1.5"], "--epochs expects int"),
    (["--batch_size=0"], "--batch_size must be >= 1"),
    (["--batch-size", "-3"], "--batch_size must be >= 1"),
    (["--compile=maybe"], "--compile expects bool"),
    (["--precision=fp16"], "--precision must be one of"),
    (["--wandb_mode=cloud"], "--wandb_mode must be one of"),
    (["--momentum=0"], "--momentum must be in (0, 1)"),
    (["--seed=4294967296"], "--seed must be in [0, 4294967295]"),
    (["--seed=-1"], "--seed must be in [0, 4294967295]"),
    (["--probe_images=-1"], "--probe_images must be in [0, 100]"),
    (["--probe_images=101"], "--probe_images must be in [0, 100]"),
    (["--explain_samples=10001"], "--explain_samples must be in [0, 10000]"),
    (["--lr_base_size=0"], "--lr_base_size must be >= 1"),
    (["--flip=sometimes"], "--flip must be one of random, alternate"),
    (["--stem_init=pca"], "--stem_init must be one of auto, whiten, default"),
    (["--min_res=4"], "--min_res must be 0 (off) or in [8, 1024]"),
    (["--min_res=-8"], "--min_res must be 0 (off) or in [8, 1024]"),
    (["--res_ramp=0"], "--res_ramp must be in (0, 1]"),
    (["--res_ramp=1.5"], "--res_ramp must be in (0, 1]"),
    (["--device=cuda:x"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--run_name=a/b"], "--run_name must be a plain name"),
    (["--run_name=" + "x" * 300], "--run_name must be a plain name"),
    (["--out_dir=a\x00b"], "--out_dir must be text without NUL bytes"),
    (["--model=resnet18_cifra"], "did you mean resnet18_cifar"),
    (["--learning_rate=0.1"], "unknown flag --learning_rate"),
    (["--batchsize=8"], "did you mean --batch_size"),
    (["--config", "missing.yaml"], "does not exist"),
    (["stray"], "unexpected argument"),
    (["--epochs"], "--epochs: expected one argument"),
    (["--wandb_project=team/project"], "--wandb_project 'team/project' is not a name W&B accepts: cannot contain "
                                       "characters"),
    (["--wandb_project=a#b"], "found '#'"),
    (["--wandb-entity", "me:team"], "--wandb_entity 'me:team' is not a name W&B accepts"),
    (["--wandb_project=" + "p" * 129], "exceeded 128 characters"),
])
def test_bad_values_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bare_booleans_mean_true_in_every_parser():
    """`--skip_bad` as the README writes it: a bare boolean flag is True, in train, explain and sweeps alike."""
    from tests.test_sweeps import LR_YAML, local

    config, given = parse_args(["--compile", "--tta", "False", "--deterministic=False", "--trust"])
    assert (config.compile, config.tta, config.deterministic, config.trust) == (True, False, False, True)
    assert given == {"compile", "tta", "deterministic", "trust"}
    options, _ = explain_parse_args(["--checkpoint", "x.pt", "--images", "a.png", "--skip_bad"])
    assert options.skip_bad is True
    assert local.parse_options([str(LR_YAML), "--compile", "--count=1"])[2] == {"compile": "True"}


def test_names_wandb_refuses_are_refused_by_every_entry_point(tmp_path, capsys):
    from tests.test_sweeps import LR_YAML, local

    assert local.main([str(LR_YAML), "--count=1", f"--out_dir={tmp_path}", "--wandb_project=a?b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --wandb_project 'a?b' is not a name W&B accepts") and err.count("\n") == 1, err
    with pytest.raises(ConfigError, match="--wandb_entity 'a%b' is not a name W&B accepts"):
        config_from_dict({"wandb_entity": "a%b"})  # what explain/run.py makes of a checkpoint's config and its flags


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_config_file_errors(tmp_path):
    cases = {
        "lr: [0.1\n": "not valid YAML",
        "lrr: 0.1\n": "unknown key 'lrr' \\(did you mean --lr\\?\\)",
        "epochs: many\n": "--epochs expects int",
        "epochs: [1, 2]\n": "--epochs expects int",
        "data_dir: {a: 1}\n": "--data_dir expects str",
        "- 1\n- 2\n": "must hold a mapping",
        billion_laughs(): "aliases \\(\\*name\\) are not accepted",
        "a: " + "[" * 5000 + "]" * 5000 + "\n": "nested more than 32 levels deep",
        "# padding\n" * 200_000: "is larger than 1024 KB",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"c{i}.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            parse_args(["--config", str(path)])
    assert len(billion_laughs()) < 1000  # a small file that would expand to 9**9 strings


def test_explain_flags_are_the_same_flags():
    options, given = explain_parse_args(["--checkpoint", "x.pt", "--cam-layer=layer3", "--explain_samples", "4",
                                         "--images", "a.png", "b/", "--skip-bad=True"])
    assert options.checkpoint == "x.pt" and options.images == ["a.png", "b/"] and options.skip_bad is True
    assert given == {"cam_layer": "layer3", "explain_samples": "4"}
    with pytest.raises(ConfigError, match="--compare: unknown CAM method 'gradcamm' \\(did you mean gradcam\\?\\)"):
        explain_parse_args(["--checkpoint", "x.pt", "--compare", "gradcam,gradcamm"])
    with pytest.raises(ConfigError, match="--target_class and --skip_bad apply to --images"):
        explain_parse_args(["--checkpoint", "x.pt", "--target_class", "cat"])
    with pytest.raises(ConfigError, match=r"unknown flag --epochs"):
        explain_parse_args(["--checkpoint", "x.pt", "--epochs=3"])  # a training flag explain does not take


@pytest.mark.parametrize("module", ["data", "config"])
def test_data_and_config_import_nothing_from_the_model(module):
    """DESIGN.md's data flow: config → data → loader → model; neither config nor data may reach back to the model
    (or load timm's registry to validate a config)."""
    tree = ast.parse((REPO / "train" / f"{module}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    assert not {name for name in imported if name.startswith(("train.model", "timm"))}, imported


def test_entry_point_exits_2_without_traceback(tmp_path):
    (tmp_path / "file.txt").write_text("not a folder")
    result = run_cli(f"--data_dir={tmp_path / 'file.txt'}", "--out_dir", str(tmp_path / "out"), timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # a failed start leaves no folder behind


def test_module_form_runs_help():
    result = run_cli("train.run", "--help", script="-m", timeout=120)
    assert result.returncode == 0 and "--batch_size" in result.stdout and "--batch-size" in result.stdout
