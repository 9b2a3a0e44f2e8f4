"""sweeps/lr.yaml and sweeps/local.py: a spec W&B's engine accepts, the argv a W&B agent builds from it, and local
sweeps run for real on the JPEG CIFAR-10 copy (proposals, leaderboard, hyperband), read back from their offline runs."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sweeps
import torch
import yaml
from wandb.sdk.launch.sweeps import utils as agent_utils
from wandb.sdk.lib import config_util

from tests.conftest import REPO, call_cli, history, wandb_records, wandb_summary
from train.config import Config, parse_args

LR_YAML = REPO / "sweeps" / "lr.yaml"
FLAGS = {f.name for f in Config.__dataclass_fields__.values()}


def _load_local():
    """sweeps/local.py is a script (sweeps/ must not become a package that shadows the engine): load it by path."""
    spec = importlib.util.spec_from_file_location("sweeps_local", REPO / "sweeps" / "local.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


local = _load_local()


def lr_spec() -> dict:
    return yaml.safe_load(LR_YAML.read_text())


def tiny(data: Path, train: int | None = 20, test: int = 20, epochs: int = 2) -> list[str]:
    """Flags for trials of a few seconds on two CPU cores (``train=None``: the sweep sets the subset)."""
    subset = [f"--train_subset={train}"] if train else []
    return [f"--data_dir={data}", *subset, f"--test_subset={test}", f"--epochs={epochs}", "--batch_size=20",
            "--probe_images=0", "--explain_samples=0"]


# ---- the engine and the spec -------------------------------------------------------------------------------------

def test_import_sweeps_is_the_engine_not_the_repo_folder():
    """The engine is a regular package (its own ``__init__.py``); the repo's ``sweeps/`` folder would be a namespace
    package (``__file__`` None). The engine may well live under the repo: a virtual environment in ``.venv/``."""
    assert not (REPO / "sweeps" / "__init__.py").exists()
    assert hasattr(sweeps, "next_run") and Path(sweeps.__file__).resolve().parent != REPO / "sweeps"
    for first in ([str(REPO)], [str(REPO / "sweeps")]):  # pytest's rootdir, `python sweeps/local.py`
        code = (f"import sys; sys.path[:0] = {first!r}; import sweeps; "
                "print(sweeps.__file__, hasattr(sweeps, 'next_run'))")
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=REPO, capture_output=True, text=True,
                             check=True)
        engine, has_next_run = out.stdout.strip().rsplit(" ", 1)
        assert engine == sweeps.__file__ and has_next_run == "True"
    assert local.sweeps is sweeps


def test_lr_yaml_is_a_valid_w_and_b_sweep():
    spec = lr_spec()
    assert sweeps.schema_violations_from_proposed_config(spec) == []
    assert (REPO / spec["program"]).is_file()
    assert set(spec["parameters"]) <= FLAGS  # every parameter is a train/run.py flag
    assert set(sweeps.SweepConfig(spec)["parameters"]) == set(spec["parameters"])  # nothing nested, nothing dropped
    filled = local.check_spec(spec, str(LR_YAML))  # what a local sweep needs: a per-epoch metric, ${args}, ...
    assert filled["metric"]["name"] in local.epoch_metrics()


def test_engine_pitfalls_are_real():
    """What sweeps/local.py works around, shown on the engine itself (if one goes away, so can the workaround)."""
    nested = {"method": "random", "parameters": {"lr": {"values": [0.1]}, "opt": {"parameters": {"m": {"value": 1}}}}}
    assert sweeps.schema_violations_from_proposed_config(nested) == []
    assert "opt" not in sweeps.next_run(nested, [], validate=True).config  # validation drops nested parameters
    proposal = sweeps.next_run(lr_spec(), [])
    assert isinstance(proposal.config["lr_base"]["value"], np.floating)  # numpy scalars, not plain floats
    grid = {"method": "grid", "parameters": {"lr": {"values": [0.1, 0.2]}}}
    def done(value) -> sweeps.SweepRun:
        return sweeps.SweepRun(name=str(value), state="finished", config={"lr": {"value": value}})

    assert sweeps.next_run(grid, [done(np.float64(0.1))]).config["lr"]["value"] == 0.1  # ...which a grid repeats
    assert sweeps.next_run(grid, [done(0.1), done(0.2)]) is None  # a grid's end
    assert sweeps.SweepConfig({**grid, "early_terminate": {"type": "hyperband", "min_iter": 1}}
                              )["early_terminate"]["strict"] is True  # W&B's default: compare the value at the band


@pytest.mark.parametrize("method", ["bayes", "random"])
def test_agent_argv_of_proposals_parses_to_the_proposed_values(method):
    spec = lr_spec() | {"method": method}
    spec["parameters"] |= {"tta": {"values": [True, False]}, "cutout": {"distribution": "int_uniform", "min": 0,
                                                                         "max": 8}}
    for seed in range(4):
        np.random.seed(seed)
        proposal = sweeps.next_run(spec, [])
        args = agent_utils.create_sweep_command_args({"args": proposal.config})["args"]  # an agent's ${args}
        config, given = parse_args(args)
        assert given == set(spec["parameters"])
        for name, entry in proposal.config.items():
            assert getattr(config, name) == pytest.approx(entry["value"]), name
    assert parse_args(["--tta=False"])[0].tta is False


def test_local_proposals_are_plain_reproducible_and_in_the_agents_form():
    spec = local.check_spec(lr_spec(), "lr.yaml")
    first = local.propose(spec, [], seed=7, index=1)
    assert first == local.propose(spec, [], seed=7, index=1) != local.propose(spec, [], seed=7, index=2)
    assert {type(v) for v in first.values()} == {float}
    argv = local.trial_argv(spec, "train/run.py", first, ["--epochs=2"])
    assert argv[:3] == ["/usr/bin/env", sys.executable, "train/run.py"]
    assert argv[3:] == [f"--{k}={v}" for k, v in first.items()] + ["--epochs=2"]
    config, _ = parse_args(argv[3:])
    assert all(getattr(config, k) == v for k, v in first.items())
    pinned_spec, overrides = lr_spec(), {"lr_base": "0.1", "epochs": "2"}
    assert local.pin_parameters(pinned_spec, overrides) == ["lr_base"] and overrides == {"epochs": "2"}
    assert local.propose(local.check_spec(pinned_spec, "lr.yaml"), [], seed=None, index=1)["lr_base"] == 0.1
    grid = local.check_spec({"method": "grid", "metric": {"name": "val/acc"}, "parameters": {"lr": {"values": [0.1]}}},
                            "grid.yaml")
    done = local.Trial(name="g-001", index=1, config={"lr": 0.1}, state="finished")
    assert local.propose(grid, [done.sweep_run("val/acc")], seed=None, index=2) is None  # exhausted


# ---- bad input: one line, exit status 2 ------------------------------------------------------------------------

def _write(tmp_path: Path, spec: dict | str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))
    return str(path)


def _lr_with(**changes) -> dict:
    spec = lr_spec()
    for key, value in changes.items():
        if key == "parameters":
            spec["parameters"] |= value
        else:
            spec[key] = value
    return spec


@pytest.mark.parametrize("spec, extra, message", [
    (None, [], "does not exist"),
    ("method: [bayes\n", [], "is not valid YAML at line 2"),
    ("- a list\n", [], "must be a YAML mapping"),
    (_lr_with(method="bayesian"), [], "is not a valid W&B sweep spec"),
    (_lr_with(parameters={"lr": {"min": 1.0, "max": 0.1}}), [], "min 1.0 is not less than max 0.1"),
    (_lr_with(parameters={"lrr": {"values": [1]}}), [], "'lrr' is not a train/run.py flag (did you mean --lr?)"),
    (_lr_with(parameters={"batch-size": {"values": [64]}}), [], "did you mean --batch_size?"),
    (_lr_with(parameters={"optim": {"parameters": {"lr": {"value": 1}}}}), [], "'optim' is nested"),
    (_lr_with(parameters={"out_dir": {"value": "x"}}), [], "cannot be swept"),
    (_lr_with(metric={"name": "val_acc", "goal": "maximize"}), [], "did you mean val/acc?"),
    (_lr_with(command=["${env}", "${interpreter}", "${program}"]), [], "${args}"),
    (_lr_with(program="nowhere/run.py"), [], "does not exist"),
    (_lr_with(method="grid"), [], "disallowed type with grid search"),
    (_lr_with(parameters={"epochs": {"min": 1.5, "max": 4.5}}), [], "--epochs expects int"),
    (_lr_with(), ["--count", "0"], "--count must be >= 1"),
    (_lr_with(), [], "--count N is needed"),
    (_lr_with(), ["--count=1", "--epoch=2"], "unknown flag --epoch (did you mean --epochs?)"),
    (_lr_with(), ["--count=1", "--epochs=two"], "--epochs expects int"),
    (_lr_with(), ["--count=1", "--run_name=x"], "set for each trial"),
    (_lr_with(), ["--count=1", "--wandb_mode=disabled"], "--wandb_mode must be offline, online or auto"),
    (_lr_with(), ["--count=1", "--keep_checkpoints=last"], "--keep_checkpoints must be one of best, all, none"),
    (_lr_with(parameters={"keep_checkpoints": {"values": ["all", "none"]}}), [], "cannot be swept"),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, spec, extra, message):
    path = str(tmp_path / "missing.yaml") if spec is None else _write(tmp_path, spec)
    assert local.main([path, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_a_missing_program_names_each_place_it_was_looked_for_once(tmp_path, capsys, monkeypatch):
    spec = _write(tmp_path, _lr_with(program="nowhere/run.py"))
    for cwd, places in ((REPO, f"{REPO.resolve()}"), (tmp_path, f"{tmp_path.resolve()} or {REPO.resolve()}")):
        monkeypatch.chdir(cwd)
        assert local.main([spec, "--count=1"]) == 2
        assert capsys.readouterr().err == (f"error: program 'nowhere/run.py' of the sweep spec does not exist "
                                           f"(relative to {places})\n")


def test_bad_input_from_the_command_line(tmp_path):
    result = call_cli(_write(tmp_path, _lr_with(parameters={"lrr": {"values": [1]}})), "--count=1",
                      script="sweeps/local.py")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_an_out_dir_holding_another_sweep_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"spec_config": {"method": "grid"}, "overrides": {}}))
    assert local.main([str(LR_YAML), "--count=1", f"--out_dir={out}"]) == 2
    assert "holds another sweep" in capsys.readouterr().err


@pytest.fixture
def no_images(tmp_path) -> Path:
    """A data folder ``train/run.py`` refuses at once (its train/ and test/ class folders differ), and never
    downloads into: a trial that a broken up-front check let through fails in seconds."""
    for folder in ("train/a", "test/b"):
        (tmp_path / "no-images" / folder).mkdir(parents=True)
    return tmp_path / "no-images"


def _lr_param(value) -> dict:
    spec = lr_spec()
    spec["parameters"]["lr"] = value
    return spec


@pytest.mark.parametrize("spec, message", [
    (lr_spec() | {"parameters": [{"lr": {"values": [0.1]}}]}, "`parameters` must be a mapping of train/run.py flags"),
    (lr_spec() | {"parameters": "lr"}, "got a string"),
    (lr_spec() | {"parameters": 3}, "got a number"),
    (lr_spec() | {"parameters": None}, "got null"),
    (lr_spec() | {"parameters": True}, "got a boolean"),
    (lr_spec() | {"parameters": {}}, "got an empty mapping"),
    (_lr_param([0.1, 0.2]), "parameter 'lr' must be a mapping ({values: [...]}, {value: ...} or {min: ..., max: ...}), "
                            "got a list"),
    (_lr_param("0.1"), "parameter 'lr' must be a mapping"),
    (_lr_param(0.1), "parameter 'lr' must be a mapping"),
    (_lr_param(None), "got null"),
    (lr_spec() | {"metric": ["val/acc"]}, "is not a valid W&B sweep spec"),
    (lr_spec() | {"metric": "val/acc"}, "is not a valid W&B sweep spec"),
    (lr_spec() | {"early_terminate": "hyperband"}, "is not a valid W&B sweep spec"),
    (lr_spec() | {"early_terminate": ["hyperband"]}, "is not a valid W&B sweep spec"),
    (lr_spec() | {"early_terminate": {"type": "hyperband", "min_iter": 3, "max_iter": 9}},
     "W&B's sweep engine cannot run this spec (KeyError"),
    (lr_spec() | {"method": ["bayes"]}, "is not a valid W&B sweep spec"),
    (lr_spec() | {"command": "python train/run.py ${args}"}, "is not a valid W&B sweep spec"),
    (lr_spec() | {"program": ["train/run.py"]}, "is not a valid W&B sweep spec"),
    (_lr_param({"values": [0.1, 0.2], "probabilities": [0.5, 0.5]}), "W&B's sweep engine cannot run this spec"),
    (_lr_param({"values": [[0.1]]}), "parameter 'lr': value [0.1] is refused by train/run.py"),
], ids=lambda value: "" if isinstance(value, str) else None)
def test_any_yaml_shape_is_one_error_line(tmp_path, capsys, no_images, spec, message):
    assert local.main([_write(tmp_path, spec), "--count=1", f"--out_dir={tmp_path / 'out'}", f"--data_dir={no_images}"]
                      ) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("parameter, message", [
    ({"lr": {"values": [0.1, -1]}}, "parameter 'lr': value -1 is refused by train/run.py (--lr must be > 0"),
    ({"batch_size": {"values": [128, "abc"]}},
     "parameter 'batch_size': value 'abc' is refused by train/run.py (--batch_size expects int, got 'abc')"),
    ({"tta": {"values": [True, "maybe"]}}, "parameter 'tta': value 'maybe' is refused"),
    ({"wandb_project": {"values": ["cifar", "a/b"]}}, "parameter 'wandb_project': value 'a/b' is refused"),
    ({"weight_decay": {"value": -1}}, "parameter 'weight_decay': value -1 is refused"),
    ({"lr": {"min": -1.0, "max": 0.5}}, "parameter 'lr': the range's lower end -1.0 is refused"),
    ({"label_smoothing": {"distribution": "uniform", "min": 0.0, "max": 1.0}},
     "parameter 'label_smoothing': the range's upper end 1.0 is refused by train/run.py (--label_smoothing must be "
     "in [0, 1), got 1.0)"),
    ({"batch_size": {"distribution": "int_uniform", "min": 0, "max": 64}}, "parameter 'batch_size': min 0 is refused"),
    ({"momentum": {"distribution": "q_log_uniform_values", "min": 0.5, "max": 1.0, "q": 0.1}},
     "parameter 'momentum': the range's upper end 1.0 is refused"),
    ({"lr": {"distribution": "normal", "mu": 0.1, "sigma": 0.1}}, "parameter 'lr': its 0.1 % quantile -0.209"),
])
def test_every_value_a_parameter_can_take_is_checked_up_front(parameter, message):
    """A spec whose values are only partly valid is refused before any trial, naming the parameter and the value,
    whichever value the engine would have proposed first."""
    spec = lr_spec()
    spec["parameters"] |= parameter
    with pytest.raises(local.SweepError) as refused:
        local.check_spec(spec, "spec.yaml")
    assert str(refused.value).startswith("spec.yaml: parameter ") and message in str(refused.value)


def test_a_partly_valid_spec_is_one_error_line_before_any_trial(tmp_path, no_images):
    spec = lr_spec()
    spec["parameters"]["lr"] = {"values": [0.1, 0.2, 0.0]}
    out = tmp_path / "out"
    result = call_cli(_write(tmp_path, spec), "--count=3", f"--out_dir={out}", f"--data_dir={no_images}",
                      script="sweeps/local.py")
    assert result.returncode == 2 and result.stdout == "" and not out.exists()
    assert result.stderr == (f"error: {tmp_path / 'spec.yaml'}: parameter 'lr': value 0.0 is refused by train/run.py "
                             f"(--lr must be > 0, got 0.0)\n")


def test_every_kind_of_range_that_train_run_accepts_passes():
    spec = lr_spec()
    spec["parameters"] |= {"batch_size": {"distribution": "q_uniform", "min": 16, "max": 64, "q": 16},
                           "epochs": {"distribution": "int_uniform", "min": 1, "max": 3},
                           "tta": {"values": [True, False]},
                           "momentum": {"distribution": "inv_log_uniform_values", "min": 0.5, "max": 0.99}}
    filled = local.check_spec(spec, "spec.yaml", {"train_subset": "200"})
    assert [what for what, _ in local.possible_values("batch_size", filled["parameters"]["batch_size"])] == [
        "the range's lower end", "the range's upper end"]
    assert local.possible_values("batch_size", filled["parameters"]["batch_size"]) == [
        ("the range's lower end", 16), ("the range's upper end", 64)]  # plain ints, as the engine proposes them


# ---- real runs -------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_started_with_the_agents_argv_trains_with_the_sweep_values(cifar_subset, tmp_path):
    """The argv and environment `wandb agent` gives a run, built with the agent's own helpers, end to end."""
    spec = lr_spec()
    values = {"lr": 0.0123, "weight_decay": 0.0001, "label_smoothing": 0.05, "tta": False}
    command = {"args": {k: {"value": v} for k, v in values.items()}}
    macros = agent_utils.create_sweep_command_args(command) | {
        "env": ["/usr/bin/env"], "interpreter": [sys.executable], "program": [spec["program"]]}
    argv = [part for chunk in agent_utils.create_sweep_command(spec["command"]) for part in macros[chunk[2:-1]]]
    assert argv[3:] == ["--lr=0.0123", "--weight_decay=0.0001", "--label_smoothing=0.05", "--tta=False"]
    param_file = tmp_path / "config-agent123.yaml"
    config_util.save_config_file_from_dict(str(param_file), command["args"])  # what the agent writes for wandb.init
    out = tmp_path / "out"
    env = os.environ | {"WANDB_SWEEP_ID": "swp12345", "WANDB_RUN_ID": "agent123",
                        "WANDB_SWEEP_PARAM_PATH": str(param_file)}
    result = subprocess.run([*argv, *tiny(cifar_subset, epochs=1), f"--out_dir={out}"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    run = wandb_summary(summary["wandb_run_dir"])
    assert run["run_id"] == "agent123" and run["state"] == "finished"
    trained = torch.load(out / "last.pt", weights_only=True)["config"]  # what training used
    for name, value in values.items():
        assert run["config"][name] == value and trained[name] == value, name

    # a sweep command without ${args}: W&B would record other values than those that train, so the run refuses
    mismatched = subprocess.run([*argv[:3], "--lr=0.5", *tiny(cifar_subset, epochs=1), f"--out_dir={tmp_path / 'x'}"],
                                cwd=REPO, env=env | {"WANDB_RUN_ID": "agent124"}, capture_output=True, text=True,
                                timeout=600)
    assert mismatched.returncode == 2
    assert "error: the W&B sweep hands this run lr=0.0123 but the command line says 0.5" in mismatched.stderr


@pytest.mark.slow
def test_local_sweep_continues_where_it_stopped(cifar_subset, tmp_path):
    """One trial, then one more into the same folder: the sweep continues where it stopped."""
    out = tmp_path / "sweep"
    first = call_cli(str(LR_YAML), "--count", "1", "--seed=0", f"--out_dir={out}", *tiny(cifar_subset),
                     script="sweeps/local.py")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("rank  trial") == 1  # a leaderboard after every trial
    result = call_cli(str(LR_YAML), "--count=1", "--seed=0", f"--out_dir={out}", *tiny(cifar_subset),
                      script="sweeps/local.py")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 earlier trials" in result.stdout
    trials = json.loads((out / "leaderboard.json").read_text())
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["sweep"] == "lr" and sweep["metric"] == {"name": "val/acc", "goal": "maximize"}
    assert len(trials) == 2 and {t["state"] for t in trials} == {"finished"}
    assert len({t["config"]["lr_base"] for t in trials}) == 2  # distinct proposals
    assert all(set(t["config"]) == set(lr_spec()["parameters"]) for t in trials)
    metrics = [t["metric"] for t in trials]
    assert metrics == sorted(metrics, reverse=True) and [t["rank"] for t in trials] == [1, 2]
    assert sorted(t["name"] for t in trials) == ["lr-001", "lr-002"]
    for trial in trials:
        run = wandb_summary(trial["wandb_run_dir"])
        assert run["state"] == "finished" and run["name"] == trial["name"]
        assert trial["metric"] == run["summary"]["val/acc"]
        records = wandb_records(trial["wandb_run_dir"])
        assert trial["metric_history"] == [row["val/acc"] for row in history(records) if "val/acc" in row]
        assert trial["epochs"] == 2
        run_record = next(r["run"] for r in records if r["type"] == "run")
        assert run_record["run_group"] == "lr"  # grouped under the sweep's name
        assert all(run["config"][k] == pytest.approx(v) for k, v in trial["config"].items())  # trained with them
        summary = json.loads((Path(trial["out_dir"]) / "summary.json").read_text())
        assert summary["test_acc"] == pytest.approx(trial["metric"])
        resolved = json.loads((Path(trial["out_dir"]) / "config.json").read_text())  # the range follows the batch
        assert resolved["lr"] == pytest.approx(trial["config"]["lr_base"] * resolved["batch_size"] / 128)
        assert not list(Path(trial["out_dir"]).glob("*.png"))  # --explain_samples 0: no pictures, probes included


@pytest.mark.slow
def test_hyperband_stops_a_clearly_worse_trial(cifar_subset, tmp_path):
    """Metric ``lr`` (minimize): the learning rate each epoch ends with, logged per epoch and set by the trial's peak
    lr, so the third trial is worse by construction — deterministically, however loaded the machine is; its stop is
    sent the moment its first epoch's row is written, long before its third epoch ends.

    Bands at epochs 1, 2, 4 (min_iter 1, eta 2): at a band, a run is stopped when its value there is worse than the
    int(n/2)-th best of the n runs that got that far. The first trial is alone; the second is at worst the threshold
    itself (kept); the third is far above the threshold the first two set at epoch 1.
    """
    spec = {"name": "hb", "program": "train/run.py", "method": "grid", "metric": {"name": "lr", "goal": "minimize"},
            "parameters": {"lr": {"values": [0.01, 0.02, 0.5]}},
            "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2}}
    out = tmp_path / "sweep"
    result = call_cli(_write(tmp_path, spec), f"--out_dir={out}", *tiny(cifar_subset, train=60, test=10, epochs=3),
                      script="sweeps/local.py")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "grid exhausted after 3 trials" in result.stdout
    board = json.loads((out / "leaderboard.json").read_text())
    trials = {t["config"]["lr"]: t for t in board}
    assert trials[0.01]["state"] == trials[0.02]["state"] == "finished"
    assert trials[0.01]["epochs"] == trials[0.02]["epochs"] == 3
    bad = trials[0.5]
    assert bad["state"] == "stopped" and 1 <= bad["epochs"] < 3 and bad["returncode"] == 0, bad
    assert "STOP" in bad["stop_reason"] and f"[{bad['name']}] hyperband stops it" in result.stdout
    assert bad["metric_history"] == [row["lr"] for row in history(wandb_records(bad["wandb_run_dir"]))
                                     if "lr" in row]
    assert not (Path(bad["out_dir"]) / "summary.json").exists()
    # --keep_checkpoints none, the sweep's default: no trial keeps weights, a stopped one keeps no checkpoint at all
    assert not list(Path(bad["out_dir"]).glob("*.pt"))
    for trial in (trials[0.01], trials[0.02]):
        folder = Path(trial["out_dir"])
        assert sorted(p.name for p in folder.glob("*.pt")) == ["last.pt"], trial["name"]
        assert torch.load(folder / "last.pt", weights_only=True)["finished"] is True
        assert not [r for r in wandb_records(trial["wandb_run_dir"]) if r["type"] == "artifact"
                    and r["artifact"]["type"] == "model"]
    assert [t["metric"] for t in board] == sorted(t["metric"] for t in board)  # minimize: smallest first


@pytest.mark.slow
def test_a_sweep_whose_trials_all_fail_exits_non_zero(cifar_subset, tmp_path):
    """Two trials (fewer than the ``MAX_FAILED_IN_A_ROW`` that stop a sweep), each failing at its start: more images
    per batch than the training subset holds, which only the trial can tell."""
    spec = {"name": "broken", "program": "train/run.py", "method": "grid", "metric": {"name": "val/acc"},
            "parameters": {"lr": {"values": [0.05, 0.1]}}}
    out = tmp_path / "sweep"
    flags = [f"--data_dir={cifar_subset}", "--train_subset=20", "--test_subset=20", "--epochs=1", "--batch_size=500",
             "--probe_images=0", "--explain_samples=0"]
    result = call_cli(_write(tmp_path, spec), f"--out_dir={out}", *flags, script="sweeps/local.py")
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1] == "error: all 2 trials failed (see their output above)"
    assert [t["state"] for t in json.loads((out / "leaderboard.json").read_text())] == ["failed", "failed"]


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["start-up", "trial"])
def test_ctrl_c_at_any_moment_is_one_line(cifar_subset, tmp_path, moment):
    spec = {"name": "stop", "program": "train/run.py", "method": "grid", "metric": {"name": "val/acc"},
            "parameters": {"lr": {"values": [0.05]}}}
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "sweeps/local.py", _write(tmp_path, spec), f"--out_dir={out}",
                             *tiny(cifar_subset, epochs=1)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    if moment == "start-up":
        time.sleep(1.0)  # importing wandb, torch, the engine
    else:  # the trial has started: it made its folder
        deadline = time.monotonic() + 300
        while not (out / "stop-001").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    if moment == "start-up":
        assert last.startswith("stopped: SIGINT ") and last.endswith("; no trial was started")
    else:
        assert last == f"interrupted: SIGINT; 1 trials kept in {out / 'leaderboard.json'}"
        assert json.loads((out / "leaderboard.json").read_text())[0]["state"] == "interrupted"
