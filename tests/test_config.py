"""Flags: both spellings, both forms, YAML defaults, and the one-line error wall."""

from __future__ import annotations

import dataclasses

import pytest

from tests.conftest import run_cli
from train.config import Config, ConfigError, parse_args
from train.run import main

# A valid, non-default value for every flag, as the user would type it, and what it parses to.
SAMPLES = {
    "data_dir": ("some/where", "some/where"),
    "train_subset": ("2000", 2000),
    "test_subset": ("1000", 1000),
    "cutout": ("8", 8),
    "model": ("resnet18", "resnet18"),
    "epochs": ("3", 3),
    "batch_size": ("64", 64),
    "lr": ("0.05", 0.05),
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
    "wandb_project": ("proj", "proj"),
    "wandb_entity": ("team", "team"),
    "wandb_mode": ("offline", "offline"),
    "explain_samples": ("16", 16),
    "cam_method": ("layercam", "layercam"),
    "cam_layer": ("layer3", "layer3"),
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


@pytest.mark.parametrize("text,expected", [("True", True), ("False", False), ("true", True), ("false", False),
                                           ("1", True), ("0", False)])
def test_booleans(text, expected):
    assert parse_args([f"--compile={text}"])[0].compile is expected


def test_yaml_file_gives_defaults_and_the_command_line_wins(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("lr: 0.01\nepochs: 5\nbatch-size: 32\ntta: false\n")
    config, given = parse_args(["--config", str(file), "--lr=0.3"])
    assert (config.lr, config.epochs, config.batch_size, config.tta) == (0.3, 5, 32, False)
    assert given == {"lr", "epochs", "batch_size", "tta"}


@pytest.mark.parametrize("argv,message", [
    (["--lr=0"], "--lr must be > 0"),
    (["--lr=-1"], "--lr must be > 0"),
    (["--lr=abc"], "--lr expects float"),
    (["--epochs=0"], "--epochs must be >= 1"),
    (["--epochs=1.5"], "--epochs expects int"),
    (["--batch_size=0"], "--batch_size must be >= 1"),
    (["--batch-size", "-3"], "--batch_size must be >= 1"),
    (["--compile=maybe"], "--compile expects bool"),
    (["--precision=fp16"], "--precision must be one of"),
    (["--wandb_mode=cloud"], "--wandb_mode must be one of"),
    (["--model=resnet18_cifra"], "did you mean resnet18_cifar"),
    (["--learning_rate=0.1"], "unknown flag --learning_rate"),
    (["--batchsize=8"], "did you mean --batch_size"),
    (["--config", "missing.yaml"], "does not exist"),
    (["stray"], "unexpected argument"),
    (["--epochs"], "expected one argument"),
])
def test_bad_values_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_args(["--config", str(bad)])
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("lrr: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'lrr' \\(did you mean --lr\\?\\)"):
        parse_args(["--config", str(unknown)])
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match="--epochs expects int"):
        parse_args(["--config", str(wrong)])


@pytest.mark.parametrize("argv", [["--lr=0"], ["--lrr=0.1"], ["--data_dir={file}"]])
def test_entry_point_exits_2_without_traceback(argv, tmp_path):
    (tmp_path / "file.txt").write_text("not a folder")
    argv = [a.format(file=tmp_path / "file.txt") for a in argv]
    result = run_cli(*argv, "--out_dir", str(tmp_path / "out"), timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr


def test_both_entry_points_run_help():
    for args in (("train/run.py", "--help"), ("-m", "train.run", "--help")):
        result = run_cli(*args[1:], script=args[0], timeout=120)
        assert result.returncode == 0 and "--batch_size" in result.stdout and "--batch-size" in result.stdout
