"""Label issues (explain.labels, explain.report_labels, --split): on a folder with planted label errors and ambiguous
blends, a model genuinely trained on the separable planted-patch task flags every planted error and ranks it above
every ambiguous image; a clean folder gets almost none; the outputs reach the JSON, the PNG, summary.json and W&B."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.models import register_model

from explain import run as explain_run
from explain.labels import METHOD, PLAUSIBLE_SHARE, find_label_issues, issue_entries, probabilities
from explain.report import COLUMNS, explain_model
from explain.report_labels import LABEL_COLUMNS
from tests.conftest import wandb_records, wandb_summary
from tests.test_cam import PATCH, TinyNet
from tests.test_report import explain_row, image_cell, logged_table
from train.checkpoint import save_checkpoint
from train.config import Config, parse_args
from train.data import load_data
from train.state import RESUME_OVERRIDABLE
from train.tracking import Tracker

COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}  # folder names in label order
CLASSES = list(COLOURS)
PLANTED = 2  # per class: images of the class filed under the next class
AMBIGUOUS = 2  # per class: images with a patch of the class and one of the next, filed under the class


@register_model
def tiny_label_net(pretrained: bool = False, num_classes: int = 3, **kwargs) -> TinyNet:
    """tests.test_cam.TinyNet as a timm model, so explain/run.py can load a checkpoint of it."""
    return TinyNet(num_classes)


def patch_picture(rng: np.random.Generator, colours: list[str]) -> np.ndarray:
    """Uniform noise with a solid PATCH×PATCH square of each colour, side by side (never overlapping)."""
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    y = int(rng.integers(0, 32 - PATCH + 1))
    xs = [int(rng.integers(0, 32 - PATCH + 1))] if len(colours) == 1 else [int(rng.integers(0, 8)),
                                                                           int(rng.integers(16, 32 - PATCH + 1))]
    for colour, x in zip(colours, xs, strict=True):
        image[y:y + PATCH, x:x + PATCH] = COLOURS[colour]
    return image


def write_folder(root: Path, train: int, test: int, planted: int = 0, ambiguous: int = 0, seed: int = 0) -> Path:
    """An image folder of the planted-patch task (lossless PNGs); in test/, ``planted`` images per class filed
    under the next class (``planted-*``) and ``ambiguous`` two-patch blends per class (``ambiguous-*``)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(patch_picture(rng, [name])).save(root / split / name / f"{i:04d}.png")
    for c, name in enumerate(CLASSES):
        other = CLASSES[(c + 1) % len(CLASSES)]
        for i in range(planted):  # a `name` image in the `other` folder: a label error
            Image.fromarray(patch_picture(rng, [name])).save(root / "test" / other / f"planted-{name}-{i}.png")
        for i in range(ambiguous):  # both classes in one image: ambiguous, not wrong
            Image.fromarray(patch_picture(rng, [name, other])).save(root / "test" / name / f"ambiguous-{i}.png")
    return root


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("noisy"), train=200, test=30, planted=PLANTED, ambiguous=AMBIGUOUS)


@pytest.fixture(scope="module")
def model(noisy) -> TinyNet:
    """TinyNet trained on the folder's (clean) training split: it reads the class off the patch."""
    train, _ = load_data(noisy)
    torch.manual_seed(0)
    net = TinyNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(4):
        for batch in torch.randperm(len(train)).split(64):
            loss = torch.nn.functional.cross_entropy(net(train.images[batch].float() / 255), train.labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


def predict_probs(model: TinyNet, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return probabilities(model(images.float() / 255), model(images.flip(-1).float() / 255))


def test_planted_errors_are_flagged_and_ranked_above_ambiguous_images(noisy, model):
    _, test = load_data(noisy)
    issues = find_label_issues(predict_probs(model, test.images), test.labels)
    entries = issue_entries(issues, test.classes, range(len(test)), test.files)
    files = [entry["file"] for entry in entries]
    planted = [f for f in test.files if "planted-" in f]
    ambiguous = [f for f in test.files if "ambiguous-" in f]
    assert len(planted) == PLANTED * 3 and len(ambiguous) == AMBIGUOUS * 3
    assert set(planted) <= set(files)  # every planted error is flagged ...
    assert files[:len(planted)] == sorted(files[:len(planted)], key=files.index)  # (ranked list, no repeats)
    assert set(files[:len(planted)]) == set(planted)  # ... and ranked first, above anything else flagged
    position = {test.files[i]: i for i in range(len(test))}
    quality = issues.quality
    assert max(quality[position[f]] for f in planted) < min(quality[position[f]] for f in ambiguous)
    for entry in entries[:len(planted)]:  # the suggestion is the class in the picture
        assert re.fullmatch(rf"test/{entry['given']}/planted-{entry['suggested']}-\d\.png", entry["file"])
        assert entry["p_suggested"] > 0.5 > entry["p_given"] and 0 <= entry["quality"] < 0.25
    assert [e["quality"] for e in entries] == sorted(e["quality"] for e in entries)
    assert len(entries) <= len(planted) + len(ambiguous) + 2  # the clean images are not flagged


def test_a_clean_folder_gets_almost_no_issues(tmp_path, model):
    _, test = load_data(write_folder(tmp_path, train=1, test=60, seed=1))
    issues = find_label_issues(predict_probs(model, test.images), test.labels)
    assert issues.checked == 180 and len(issues.ranked) <= 2 and issues.notes == []


def test_flagging_more_than_any_test_set_holds_wrong_labels_is_blamed_on_the_model(noisy, model):
    _, test = load_data(noisy)
    good = find_label_issues(predict_probs(model, test.images), test.labels)
    assert 0 < good.share <= PLAUSIBLE_SHARE and not good.implausible and good.notes == []
    assert good.accuracy == pytest.approx(float((good.probs.argmax(1) == good.labels).mean()))
    untrained = TinyNet().eval()  # the same images through an untrained net: it confuses the classes
    torch.manual_seed(1)
    weak = find_label_issues(predict_probs(untrained, test.images), test.labels)
    assert weak.share == len(weak.ranked) / weak.checked > PLAUSIBLE_SHARE and weak.implausible
    assert weak.accuracy < 0.6
    assert weak.notes == [f"{weak.share:.0%} of the images are flagged, more than the ~10% of wrong labels found in "
                          f"the worst of ten widely used test sets (Northcutt et al. 2021): unless these labels are "
                          f"known to be that noisy, most flags are the model's own confusions (it agrees with "
                          f"{weak.accuracy:.1%} of the labels); read them as label errors once the model is accurate"]


def test_bad_arguments_are_refused():
    probs = torch.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match="at least two classes"):
        find_label_issues(probs, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="probs must be"):
        find_label_issues(probs, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be in 0..2"):
        find_label_issues(probs, torch.tensor([0, 1, 2, 3]))


def test_a_class_of_one_image_is_noted_not_warned(recwarn):
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]])
    issues = find_label_issues(probs, torch.tensor([0, 0, 1]))
    assert issues.notes == ["1 class(es) with a single image cannot be checked (class index 1)"]
    assert not [w for w in recwarn if "too few examples" in str(w.message)]


# ---------------------------------------------------------------------------------------------------------------------
# explain_model: the JSON, the PNG, the W&B table and the misclassified columns


@pytest.fixture(scope="module")
def explained(noisy, model, tmp_path_factory):
    _, test = load_data(noisy)
    indices = torch.arange(len(test) - 1, -1, -1)  # positions in the full split: the subset is the split reversed
    subset = test.subset(indices)
    out_dir = tmp_path_factory.mktemp("labels-out")
    tracker = Tracker({}, mode="offline", project="test", job_type="explain")
    result = explain_model(model, subset, out_dir=out_dir, tracker=tracker, samples=16, cam_layer="features",
                           indices=indices, trust=False, tta=True)
    run_dir = tracker.dir
    tracker.finish()
    return {"result": result, "out_dir": out_dir, "records": wandb_records(run_dir), "run_dir": run_dir,
            "test": test, "subset": subset}


def test_label_issues_json_names_the_planted_files(explained):
    result, test = explained["result"], explained["test"]
    written = json.loads((explained["out_dir"] / "label_issues.json").read_text())
    assert list(written) == ["method", "checked", "issues"] and written["method"] == METHOD
    assert written["checked"] == result["label_issues_checked"] == len(test)
    assert len(written["issues"]) == result["label_issues"] > 0
    for entry in written["issues"]:
        assert list(entry) == ["index", "file", "given", "suggested", "quality", "p_given", "p_suggested"]
        assert entry["file"] == test.files[entry["index"]]  # index: the position in the full split
        assert entry["given"] == test.classes[test.labels[entry["index"]]] != entry["suggested"]
    top = [e["file"] for e in written["issues"][:PLANTED * 3]]
    assert sorted(top) == sorted(f for f in test.files if "planted-" in f)
    assert result["label_issues_line"].startswith(f"label issues: {result['label_issues']} of {len(test)} checked")
    assert str(explained["out_dir"] / "label_issues.json") in result["label_issues_line"]
    with Image.open(result["label_issues_png"]) as picture:
        assert picture.format == "PNG" and 800 < picture.size[0] < 1600


def test_label_issues_reach_the_wandb_summary_and_tables(explained):
    records, result, test = explained["records"], explained["result"], explained["test"]
    summary = wandb_summary(explained["run_dir"])["summary"]
    assert summary["explain/label_issues"] == result["label_issues"]
    assert summary["explain/label_issues_checked"] == len(test)
    table, files = logged_table(records, "explain/label_issues")
    assert table["columns"] == list(LABEL_COLUMNS)
    written = json.loads((explained["out_dir"] / "label_issues.json").read_text())["issues"]
    assert len(table["data"]) == min(16, len(written))
    for row, entry in zip(table["data"], written, strict=False):
        cell = dict(zip(LABEL_COLUMNS, row, strict=True))
        assert {k: cell[k] for k in entry} == pytest.approx(entry)
        np.testing.assert_array_equal(image_cell(cell["image"], files),
                                      test.images[cell["index"]].permute(1, 2, 0).numpy())
        assert image_cell(cell["gradcam_suggested"], files).shape == (128, 128, 3)
    mistakes, _ = logged_table(records, "explain/misclassified")
    assert mistakes["columns"] == list(COLUMNS)
    flagged = {e["index"] for e in written}
    rows = [dict(zip(COLUMNS, row, strict=True)) for row in mistakes["data"]]
    assert rows and all(r["likely_label_error"] == (r["index"] in flagged) for r in rows)
    quality = {e["index"]: e["quality"] for e in written}
    assert all(r["label_quality"] == pytest.approx(quality[r["index"]]) for r in rows if r["index"] in quality)
    assert 0 <= min(r["label_quality"] for r in rows) <= max(r["label_quality"] for r in rows) <= 1
    assert "explain/label_issues._type" in explain_row(records)


def test_label_issues_off_writes_nothing_of_them(noisy, model, tmp_path):
    _, test = load_data(noisy)
    result = explain_model(model, test, out_dir=tmp_path, samples=4, cam_layer="features", trust=False,
                           label_issues=False)
    assert "label_issues" not in result and not (tmp_path / "label_issues.json").exists()
    assert not (tmp_path / "label_issues.png").exists()


def test_the_flag_is_a_config_key_a_resume_may_change():
    assert Config().label_issues is True
    assert parse_args(["--label_issues", "False"])[0].label_issues is False
    assert parse_args(["--label-issues=false"])[0].label_issues is False
    assert "label_issues" in RESUME_OVERRIDABLE and "label_issues" in explain_run.FROM_CHECKPOINT


# ---------------------------------------------------------------------------------------------------------------------
# explain/run.py --split


@pytest.fixture(scope="module")
def checkpoint(noisy, model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("label-ckpt") / "best.pt"
    config = Config(data_dir=str(noisy), model="tiny_label_net", cam_layer="features", trust=False,
                    run_name="tiny").to_dict()
    save_checkpoint(path, {"model": model.state_dict(), "config": config, "epoch": 4, "metrics": {},
                           "classes": CLASSES})
    return path


def test_explain_run_finds_label_issues_on_a_split(checkpoint, noisy, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--checkpoint", str(checkpoint), "--out_dir", str(out), "--wandb_mode=disabled"]
    assert explain_run.main([*args, "--split", "test"]) == 0
    captured = capsys.readouterr()
    written = json.loads((out / "label_issues.json").read_text())
    assert f"label issues: {len(written['issues'])} of {written['checked']} checked images" in captured.out
    assert {e["file"] for e in written["issues"][:PLANTED * 3]} == {
        str(p.relative_to(noisy)) for p in noisy.glob("test/*/planted-*.png")}
    assert "in-sample" not in captured.err and "warning: label issues" not in captured.err  # a good model: no doubt

    assert explain_run.main([*args, "--split=train"]) == 2  # a folder holding a run's outputs is never overwritten
    assert "already holds a run's outputs" in capsys.readouterr().err
    args[3] = str(tmp_path / "out-train")
    assert explain_run.main([*args, "--split=train"]) == 0
    captured = capsys.readouterr()
    assert "on 600 train images" in captured.out
    assert re.search(r"^warning: --split train: .*in-sample.*understated", captured.err, re.M)
    assert json.loads((tmp_path / "out-train" / "label_issues.json").read_text())["checked"] == 600


def test_new_images_need_only_their_split_and_any_of_the_checkpoints_classes(checkpoint, tmp_path, capsys):
    """A user's folder of new labelled images: test/ alone, two of the model's three classes, one image misfiled."""
    rng = np.random.default_rng(5)
    new = tmp_path / "new"
    for name in ("blue", "red"):
        (new / "test" / name).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(patch_picture(rng, [name])).save(new / "test" / name / f"{i:02d}.png")
    Image.fromarray(patch_picture(rng, ["red"])).save(new / "test" / "blue" / "misfiled.png")
    out = tmp_path / "out"
    argv = ["--checkpoint", str(checkpoint), "--data_dir", str(new), "--wandb_mode=disabled", "--trust=False"]
    assert explain_run.main([*argv, "--out_dir", str(out)]) == 0
    captured = capsys.readouterr()
    written = json.loads((out / "label_issues.json").read_text())
    assert written["checked"] == 41 and written["issues"][0]["file"] == "test/blue/misfiled.png"
    assert written["issues"][0]["given"] == "blue" and written["issues"][0]["suggested"] == "red"
    assert "41 test images" in captured.out and captured.err == ""

    assert explain_run.main([*argv, "--out_dir", str(tmp_path / "o2"), "--split=train"]) == 2  # no train/ there
    assert capsys.readouterr().err.strip() == f"error: --data_dir {str(new)!r} has no train/ folder nor " \
                                              f"cifar-10-batches-py/"
    (new / "test" / "purple").mkdir()  # a class the model does not know
    assert explain_run.main([*argv, "--out_dir", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --data_dir {str(new)!r}: test/ has class folder(s) the checkpoint does not know: "
                          f"'purple' (its classes: blue, green, red)") and len(err.splitlines()) == 1
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_the_in_sample_warning_is_for_the_folder_the_model_trained_on(checkpoint, noisy, tmp_path, capsys):
    other = write_folder(tmp_path / "other", train=10, test=2, seed=3)  # same classes, images it never saw
    argv = ["--checkpoint", str(checkpoint), "--split=train", "--wandb_mode=disabled", "--trust=False"]
    assert explain_run.main([*argv, "--data_dir", str(other), "--out_dir", str(tmp_path / "a")]) == 0
    assert "in-sample" not in capsys.readouterr().err
    assert explain_run.main([*argv, "--data_dir", f"{noisy}/../{noisy.name}", "--out_dir", str(tmp_path / "b")]) == 0
    assert "in-sample" in capsys.readouterr().err  # the training folder, however it is spelled


def test_cifar_batches_have_no_files_so_the_json_says_null(noisy, checkpoint, tmp_path, capsys):
    from tests.test_data import write_cifar_batches

    train, test = load_data(noisy)
    write_cifar_batches(tmp_path / "batches", train, test)  # the same images in the torchvision download's format
    out = tmp_path / "out"
    assert explain_run.main(["--checkpoint", str(checkpoint), "--data_dir", str(tmp_path / "batches"),
                             "--out_dir", str(out), "--wandb_mode=disabled"]) == 0
    written = json.loads((out / "label_issues.json").read_text())
    assert written["checked"] == len(test) and written["issues"]
    assert all(entry["file"] is None for entry in written["issues"])  # JSON null: the batches name no files
    planted = {i for i, f in enumerate(test.files) if "planted-" in f}
    assert {e["index"] for e in written["issues"][:len(planted)]} == planted  # the same images, by position
    assert "label issues: " in capsys.readouterr().out


def test_explain_run_warns_when_a_weak_model_flags_too_many(noisy, tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "untrained.pt"
    config = Config(data_dir=str(noisy), model="tiny_label_net", cam_layer="features", trust=False).to_dict()
    save_checkpoint(path, {"model": TinyNet().state_dict(), "config": config, "epoch": 0, "metrics": {},
                           "classes": CLASSES})
    assert explain_run.main(["--checkpoint", str(path), "--out_dir", str(tmp_path / "out"),
                             "--wandb_mode=disabled"]) == 0
    captured = capsys.readouterr()
    written = json.loads((tmp_path / "out" / "label_issues.json").read_text())
    share = len(written["issues"]) / written["checked"]
    assert share > PLAUSIBLE_SHARE and list(written) == ["method", "checked", "issues"]
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: label issues: ")]
    assert len(warnings) == 1 and f"{share:.0%} of the images are flagged" in warnings[0], captured.err
    assert "model's own confusions" in warnings[0] and "warning: label issues" not in captured.out
    with Image.open(tmp_path / "out" / "label_issues.png") as picture:  # the picture says it too: a red line
        pixels = np.asarray(picture.convert("RGB"))[30:60].reshape(-1, 3).astype(int)
    red = (pixels[:, 0] > 180) & (pixels[:, 1] < 110) & (pixels[:, 2] < 110)
    assert red.sum() > 50


def test_the_picture_warning_is_a_line_under_the_title():
    from explain.figures import NOTE_LINE, label_issues_figure

    rows = [{"image": np.zeros((32, 32, 3), np.uint8), "index": i, "given": "red", "suggested": "blue",
             "p_suggested": 0.9, "quality": 0.1} for i in range(3)]
    plain = label_issues_figure(rows, 3, 10)
    warned = label_issues_figure(rows, 3, 10, warning="30% flagged: mostly the model's confusions")
    assert warned.get_size_inches()[1] * warned.dpi == pytest.approx(plain.get_size_inches()[1] * plain.dpi
                                                                      + NOTE_LINE)
    assert "30% flagged: mostly the model's confusions" in [t.get_text() for t in warned.axes[0].texts]


def one_class(root: Path) -> Path:
    """Test images of a single class (the other test folders empty)."""
    write_folder(root, train=2, test=0)
    Image.fromarray(patch_picture(np.random.default_rng(0), ["red"])).save(root / "test" / "red" / "0.png")
    return root


SPLIT_ERRORS = {
    "unknown": (None, ["--split", "validation"], r"--split 'validation': unknown split; valid splits: test, train"),
    "typo": (None, ["--split", "tset"], r"unknown split \(did you mean test\?\)"),
    "one-class": (one_class, [], r"--split test: every image of .* is filed under 'red'; label issues need at least "
                                 r"two classes"),
    "empty": (lambda root: write_folder(root, train=2, test=0), [], r"test/ has no images"),
    "with-images": (None, ["--split", "train", "--images", "x.png"], r"--split applies to .*not to --images"),
}


def test_label_issues_false_on_the_command_line_checks_nothing(checkpoint, tmp_path, capsys):
    data = one_class(tmp_path / "data")  # refused with label issues on (see SPLIT_ERRORS), fine without them
    out = tmp_path / "out"
    assert explain_run.main(["--checkpoint", str(checkpoint), "--data_dir", str(data), "--out_dir", str(out),
                             "--wandb_mode=disabled", "--label_issues", "False"]) == 0
    captured = capsys.readouterr()
    assert "label issues" not in captured.out + captured.err and "explained" in captured.out
    assert (out / "misclassified.png").is_file() and not (out / "label_issues.json").exists()
    assert not (out / "label_issues.png").exists()


def test_a_training_run_checks_labels_unless_told_not_to(noisy, tmp_path, capsys):
    from train.run import main

    base = ["--data_dir", str(noisy), "--model", "tiny_label_net", "--cam_layer", "features", "--epochs", "2",
            "--batch_size", "64", "--lr", "0.05", "--explain_samples", "4", "--trust", "False", "--probe_images", "0",
            "--wandb_mode", "disabled"]
    assert main([*base, "--out_dir", str(tmp_path / "on")]) == 0
    explained = json.loads((tmp_path / "on" / "summary.json").read_text())["explain"]
    written = json.loads((tmp_path / "on" / "label_issues.json").read_text())
    assert explained["label_issues"] == len(written["issues"]) and explained["label_issues_checked"] == 102
    assert bool(explained["label_issues_notes"]) == (len(written["issues"]) / 102 > PLAUSIBLE_SHARE)
    assert f"label issues: {len(written['issues'])} of 102 checked images" in capsys.readouterr().out
    assert main([*base, "--out_dir", str(tmp_path / "off"), "--label_issues", "False"]) == 0
    explained = json.loads((tmp_path / "off" / "summary.json").read_text())["explain"]
    assert not any(key.startswith("label_issues") for key in explained) and explained["images"] == 102
    assert not (tmp_path / "off" / "label_issues.json").exists() and "label issues" not in capsys.readouterr().out


@pytest.mark.parametrize(("folder", "args", "message"), SPLIT_ERRORS.values(), ids=SPLIT_ERRORS.keys())
def test_bad_split_is_one_error_line(folder, args, message, checkpoint, tmp_path, capsys):
    data = ["--data_dir", str(folder(tmp_path / "data"))] if folder else []
    argv = ["--checkpoint", str(checkpoint), "--wandb_mode=disabled", "--out_dir", str(tmp_path / "out"), *data, *args]
    assert explain_run.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert re.search(message, lines[0]), lines[0]


# ---------------------------------------------------------------------------------------------------------------------
# A real training run (the shared 2-epoch CIFAR-10 run): summary.json, the files and W&B


@pytest.mark.slow
def test_training_run_reports_label_issues(trained, cifar_subset):
    out, summary = trained["out"], trained["summary"]
    written = json.loads((out / "label_issues.json").read_text())
    assert summary["explain"]["label_issues"] == len(written["issues"])
    assert summary["explain"]["label_issues_checked"] == written["checked"] == 200
    assert written["method"] == METHOD
    _, test = load_data(cifar_subset)
    for entry in written["issues"]:
        assert entry["file"] == test.files[entry["index"]] and entry["file"].startswith("test/")
    assert (out / "label_issues.png").is_file()
    line = next(x for x in trained["result"].stdout.splitlines() if x.startswith("label issues: "))
    assert f"{len(written['issues'])} of 200 checked images" in line and "label_issues.json" in line
    state = wandb_summary(trained["run_dir"])["summary"]
    assert state["explain/label_issues"] == len(written["issues"])
    assert state["explain/label_issues_checked"] == 200
    records = wandb_records(trained["run_dir"])
    table, _ = logged_table(records, "explain/label_issues")
    assert table["columns"] == list(LABEL_COLUMNS) and len(table["data"]) == min(8, len(written["issues"]))
    mistakes, _ = logged_table(records, "explain/misclassified")
    assert mistakes["columns"][-2:] == ["label_quality", "likely_label_error"]
