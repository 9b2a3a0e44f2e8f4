"""The bad-input wall of train/run.py: one `error:` line, exit status 2, no traceback, nothing clobbered."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import timm
import torch

from tests.conftest import CLASSES, run_cli
from tests.test_data import write_cifar_batches
from train.checkpoint import FORMAT
from train.config import Config
from train.data import data_fingerprint, load_data
from train.run import main

SMALL = ["--train_subset=0", "--epochs=1", "--batch_size=40", "--explain_samples=0", "--probe_images=0"]


class Payload:
    """A pickle that would create ``marker`` when loaded: safe loaders must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def cases(small_folder, tmp_path_factory) -> dict[str, Path]:
    """Broken inputs built from the real small image folder (read only by the tests)."""
    tmp_path = tmp_path_factory.mktemp("cases")
    made: dict[str, Path] = {}

    def copy(name: str) -> Path:
        made[name] = tmp_path / name
        shutil.copytree(small_folder, made[name], ignore=shutil.ignore_patterns(".cache"))
        return made[name]

    shutil.rmtree(copy("classes_differ") / "test" / "frog")
    (copy("not_an_image") / "train" / "dog" / "readme.txt").write_text("hi")
    (copy("corrupt_image") / "test" / "cat" / "0000.jpg").write_bytes(b"\xff\xd8 truncated")
    (copy("newline_name") / "train" / "dog" / "two\nlines.jpg").write_bytes(b"\xff\xd8 truncated")
    made["empty"] = tmp_path / "empty"
    made["empty"].mkdir()
    train, test = load_data(small_folder)
    data = data_fingerprint(train, test)  # what this version's checkpoints record of the data
    cifar = tmp_path / "cifar_truncated"
    batch = write_cifar_batches(cifar, train, test) / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:100])
    made["cifar_truncated"] = cifar
    made["a_file"] = tmp_path / "a_file.txt"
    made["a_file"].write_text("I am a file")
    made["bad_yaml"] = tmp_path / "bad.yaml"
    made["bad_yaml"].write_text("lr: [0.1\n")
    made["unknown_key_yaml"] = tmp_path / "unknown.yaml"
    made["unknown_key_yaml"].write_text("batchsize: 64\n")
    made["binary_yaml"] = tmp_path / "binary.yaml"
    made["binary_yaml"].write_bytes(b"\xff\xfe\x00\x81")
    made["truncated_ckpt"] = tmp_path / "truncated.pt"
    torch.save({"format": FORMAT, "model": {"w": torch.zeros(1000)}}, made["truncated_ckpt"])
    made["truncated_ckpt"].write_bytes(made["truncated_ckpt"].read_bytes()[:300])
    made["foreign_ckpt"] = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, made["foreign_ckpt"])
    made["text_ckpt"] = tmp_path / "text.pt"
    made["text_ckpt"].write_text("not a checkpoint")
    config = Config(data_dir=str(small_folder), batch_size=40, epochs=2, explain_samples=0).to_dict()
    good = {"format": FORMAT, "model": timm.create_model("resnet18_cifar", num_classes=10).state_dict(),
            "config": config, "epoch": 1, "metrics": {"val/acc": 0.1}, "classes": CLASSES, "data": data,
            "optimizer": {}, "scheduler": {}, "rng": {"torch": torch.get_rng_state(), "loader": torch.get_rng_state()},
            "state": {"run_uid": "abc", "epoch": 1, "best_acc": 0.1, "best_epoch": 1, "train_seconds": 1.0,
                      "loop_seconds": 1.0, "train_images": 120, "history": [{"epoch": 1, "val/acc": 0.1}],
                      "wandb_run_id": "", "probes": {}}}
    nested: list = [0.5]
    for _ in range(40):
        nested = [nested, nested]  # 2**40 leaves if anyone walked it
    crafted = {
        "mismatch_ckpt": {**good, "model": timm.create_model("resnet18_cifar", num_classes=5).state_dict()},
        "renamed_class_ckpt": {**good, "classes": [("kitty" if c == "cat" else c) for c in CLASSES]},
        "reordered_classes_ckpt": {**good, "classes": sorted(CLASSES, reverse=True)},
        "one_class_more_ckpt": {**good, "classes": [*CLASSES, "zebra"]},
        "model_only_ckpt": {k: v for k, v in good.items() if k not in ("optimizer", "scheduler", "rng", "state")},
        "epoch_text_ckpt": {**good, "epoch": "1"},
        "classes_dict_ckpt": {**good, "classes": {"a": 1}},
        "config_list_ckpt": {**good, "config": ["lr", 0.1]},
        "history_bomb_ckpt": {**good, "state": {**good["state"], "history": nested}},
        "rng_text_ckpt": {**good, "rng": {"torch": "seed", "loader": 3}},
        "config_bad_value_ckpt": {**good, "config": {**config, "lr": -1.0}},
    }
    for name, content in crafted.items():
        made[name] = tmp_path / f"{name}.pt"
        torch.save(content, made[name])
    made["long"] = tmp_path / ("x" * 300)
    return made


# (argv with {placeholders} from the `cases` fixture, the message expected after "error: ")
BAD = {
    "lr not a number": (["--lr=abc"], "--lr expects float, got 'abc'"),
    "lr negative": (["--lr", "-0.1"], "--lr must be > 0"),
    "lr zero": (["--lr=0"], "--lr must be > 0"),
    "epochs zero": (["--epochs=0"], "--epochs must be >= 1"),
    "keep checkpoints unknown": (["--keep_checkpoints=last"], "--keep_checkpoints must be one of best, all, none, "
                                                              "got 'last'"),
    "batch size zero": (["--batch_size=0"], "--batch_size must be >= 1"),
    "subset negative": (["--train_subset=-5"], "--train_subset must be >= 0"),
    "momentum out of range": (["--momentum=1.5"], "--momentum must be in (0, 1)"),
    "ema of one": (["--ema=1"], "--ema must be in [0, 1) (0 = off), got 1.0"),
    "trust images one": (["--trust_images=1"], "--trust_images must be in [2, 10000] (an interval needs two images)"),
    "trust images text": (["--trust_images=many"], "--trust_images expects int, got 'many'"),
    "unknown flag": (["--weight-decay-rate=1"], "unknown flag --weight-decay-rate (did you mean --weight_decay?)"),
    "unknown model": (["--model=resnet18cifar"], "is not a timm model (did you mean resnet18_cifar?)"),
    "unknown cam method": (["--data_dir={small}", "--cam_method=gradcamz", "--explain_samples=4"],
                           "unknown CAM method 'gradcamz'"),
    "unknown cam layer": (["--data_dir={small}", "--cam_layer=layer9", "--explain_samples=4"], "layer9"),
    "config missing": (["--config={tmp}/nope.yaml"], "does not exist"),
    "config invalid yaml": (["--config={bad_yaml}"], "is not valid YAML"),
    "config unreadable": (["--config={binary_yaml}"], "cannot be read"),
    "config unknown key": (["--config={unknown_key_yaml}"], "unknown key 'batchsize' (did you mean --batch_size?)"),
    "data_dir missing": (["--data_dir={tmp}/nowhere"], "--data_dir '{tmp}/nowhere' has no train/ and test/ folders"),
    "data_dir empty": (["--data_dir={empty}"], "downloading CIFAR-10 into it failed"),
    "data_dir nested and missing": (["--data_dir={tmp}/nowhere/a/b"], "downloading CIFAR-10 into it failed"),
    "data_dir is a file": (["--data_dir={a_file}"], "is a file, not a folder"),
    "class folders differ": (["--data_dir={classes_differ}"], "class folders differ (frog)"),
    "non-image file": (["--data_dir={not_an_image}"], "readme.txt is not an image file"),
    "unreadable image": (["--data_dir={corrupt_image}"], "cannot read image"),
    "newline in a file name": (["--data_dir={newline_name}"], "dog/two\\nlines.jpg (UnidentifiedImageError"),
    "fewer images than batch": (["--data_dir={small}", "--batch_size=1000"], "fewer than --batch_size 1000"),
    "truncated cifar batch": (["--data_dir={cifar_truncated}"], "data_batch_2 is not a valid CIFAR-10 batch"),
    "resume missing": (["--resume={tmp}/gone.pt"], "does not exist"),
    "resume truncated": (["--resume={truncated_ckpt}"], "is truncated or corrupt"),
    "resume foreign": (["--resume={foreign_ckpt}"], "is not a cifar-insight checkpoint"),
    "resume text": (["--resume={text_ckpt}"], "checkpoint"),
    "resume model mismatch": (["--resume={mismatch_ckpt}"], "does not fit model 'resnet18_cifar'"),
    "resume onto a renamed class": (["--resume={renamed_class_ckpt}"], "cannot be resumed: the data's classes differ "
                                    "from the checkpoint's (gone: 'kitty'; new: 'cat'); resume on the data it was "
                                    "trained on"),
    "resume onto reordered classes": (["--resume={reordered_classes_ckpt}"], "(the same names in another order: "
                                                                            "class 0 was 'truck', is now 'airplane')"),
    "resume onto fewer classes": (["--resume={one_class_more_ckpt}"], "(11 classes in the checkpoint, 10 in the data; "
                                                                     "gone: 'zebra')"),
    "resume a best.pt": (["--resume={model_only_ckpt}"], "holds a model but not what resume needs (optimizer, "
                                                          "scheduler, rng, state); resume from a run's last.pt"),
    "checkpoint epoch is text": (["--resume={epoch_text_ckpt}"], "its 'epoch' is not what this project writes"),
    "checkpoint classes a dict": (["--resume={classes_dict_ckpt}"], "its 'classes' is not what this project writes"),
    "checkpoint config a list": (["--resume={config_list_ckpt}"], "its 'config' is not what this project writes"),
    "checkpoint history bomb": (["--resume={history_bomb_ckpt}"],
                                "its run state is damaged (its 'history' is missing or malformed)"),
    "checkpoint rng text": (["--resume={rng_text_ckpt}"], "its random state is damaged"),
    "checkpoint config value": (["--resume={config_bad_value_ckpt}"], "has an unusable config (--lr must be > 0"),
    "resume name too long": (["--resume={long}"], "cannot be read (File name too long)"),
    "data_dir name too long": (["--data_dir={long}"], "cannot be read (File name too long"),
    "config name too long": (["--config={long}"], "cannot be read"),
    "out_dir name too long": (["--data_dir={small}", "--out_dir={long}"], "is not writable (its name is too long)"),
    "out_dir is a file": (["--data_dir={small}", "--out_dir={a_file}"], "is a file, not a folder"),
    "out_dir not writable": (["--data_dir={small}", "--out_dir={a_file}/sub"], "is not writable"),
}


def fill(argv: list[str], cases: dict[str, Path], small: Path, tmp: Path) -> list[str]:
    return [a.format(small=small, tmp=tmp, **cases) for a in argv]


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_one_error_line_and_exit_2(name, cases, small_folder, tmp_path, capsys):
    argv, message = BAD[name]
    argv = fill(argv, cases, small_folder, tmp_path)
    if not any(a.startswith("--resume") for a in argv):  # a resumed run takes its data and schedule from the file
        has_data = any(a.startswith("--data_dir") for a in argv)
        argv = [*SMALL, *([] if has_data else [f"--data_dir={small_folder}"]), *argv]
    if not any(a.startswith("--out_dir") for a in argv):
        argv.append(f"--out_dir={tmp_path / 'out'}")
    files = [p for p in [*tmp_path.rglob("*.pt"), *cases.values()] if p.suffix == ".pt" and p.is_file()]
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message.format(tmp=tmp_path) in lines[0]
    assert "Traceback" not in err
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in before}
    assert before == after  # nothing clobbered
    assert not (tmp_path / "nowhere").exists()  # a failed download leaves no folder behind


def test_entry_point_wall_in_a_real_process(cases, small_folder, tmp_path):
    """The same wall through `python train/run.py`: exit status 2 and one line on stderr."""
    result = run_cli("--resume", str(cases["truncated_ckpt"]), "--out_dir", str(tmp_path / "out"), timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")


@pytest.mark.parametrize("env,message", [
    ({"WORLD_SIZE": "2"}, "error: WORLD_SIZE=2 but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set: start several "
                          "processes with torchrun --nproc_per_node=2 train/run.py ..., or unset WORLD_SIZE for one"),
    ({"WORLD_SIZE": "two"}, "error: WORLD_SIZE='two' is not a process count (torchrun sets it; unset it for one "
                            "process)"),
])
def test_a_world_size_without_torchrun_is_one_error_line(env, message, small_folder, tmp_path):
    """``WORLD_SIZE=2 python train/run.py`` without torchrun ended in torch.distributed's "RANK expected" traceback."""
    result = run_cli("--data_dir", str(small_folder), *SMALL, "--out_dir", str(tmp_path / "out"), timeout=300,
                     env=env)
    assert result.returncode == 2 and result.stderr.strip() == message, result.stderr[-2000:]
    assert not (tmp_path / "out").exists()


class BlockedModulePayload:
    """A pickle that would create the folder ``marker`` with ``os.mkdir`` (module ``posix``, which torch's safe loader
    blocks outright rather than listing as an unsupported global)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("payload,code", [(Payload, "getattr"), (BlockedModulePayload, "posix.mkdir")])
def test_crafted_checkpoint_is_refused_and_never_runs(payload, code, small_folder, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "model": {}, "config": {}, "epoch": 1, "metrics": {}, "classes": [],
                "payload": payload(marker)}, evil)
    assert main(["--resume", str(evil)]) == 2
    assert capsys.readouterr().err == f"error: checkpoint {str(evil)!r} holds code ({code}) and was refused by the " \
                                      f"safe loader: a checkpoint is read as data, never run\n"
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is real: an unsafe load would have run it
    assert marker.exists()


def test_diverging_run_stops_naming_epoch_and_step_and_keeps_nothing_bad(small_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--data_dir", str(small_folder), "--epochs=2", "--batch_size=40", "--lr=1e30", "--warmup_epochs=0",
                 "--explain_samples=0", "--out_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    line = [x for x in err.splitlines() if x.startswith("error: ")][0]
    assert "epoch 1: the training loss became NaN or infinite at step" in line and "try a lower --lr" in line
    assert not (out / "last.pt").exists() and not (out / "summary.json").exists()


def test_weights_that_blow_up_in_the_last_step_fail_the_run(small_folder, tmp_path, capsys):
    """One step an epoch at lr 1e30: the step's loss is finite (it is computed before the update), the update is not.
    The run must not end as "finished" with NaN weights and a NaN evaluation loss."""
    out = tmp_path / "out"
    code = main(["--data_dir", str(small_folder), "--epochs=1", "--batch_size=120", "--lr=1e30", "--warmup_epochs=0",
                 "--explain_samples=0", "--label_issues=False", "--out_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    line = [x for x in err.splitlines() if x.startswith("error: ")][0]
    assert line.startswith("error: epoch 1: the weights diverged (") and "try a lower --lr" in line, line
    assert not (out / "best.pt").exists() and not (out / "summary.json").exists()

