"""Probe images every epoch (the shared real run, a stopped-and-resumed run) and ``explain/run.py --images``, read back
from disk and from the offline W&B runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import train  # noqa: F401  (registers resnet18_cifar)
from explain import compute_cams
from explain.figures import PAGE_HEIGHT
from explain.probes import Probes, choose_probes
from explain.report import explain_images
from tests.conftest import call_cli, history, logged_summary, wandb_records, wandb_summary
from train.data import load_data, read_images

pytestmark = pytest.mark.slow
CAPTION = re.compile(r"^epoch (\d+): pred (\w+) (\d\.\d\d) · p_true (\d\.\d\d)$")


def test_probes_are_a_fixed_seeded_choice_of_two_per_class():
    labels = torch.arange(10).repeat_interleave(30)
    first = choose_probes(labels, 20, seed=0)
    assert torch.equal(first, choose_probes(labels, 20, seed=0))
    assert not torch.equal(first, choose_probes(labels, 20, seed=1))
    assert torch.bincount(labels[first], minlength=10).tolist() == [2] * 10
    assert labels[choose_probes(labels, 6, seed=0)].tolist() == [0, 0, 1, 1, 2, 2]  # the first classes' worth
    assert torch.bincount(labels[choose_probes(labels, 40, seed=0)]).tolist() == [4] * 10  # more per class if needed
    assert len(choose_probes(labels, 0, seed=0)) == 0


def test_every_probe_is_logged_every_epoch(trained, cifar_subset):
    out = trained["out"]
    saved = json.loads((out / "probes.json").read_text())
    _, test = load_data(cifar_subset)
    assert saved["indices"] == choose_probes(test.labels, 10, seed=0).tolist()  # what any run with seed 0 picks
    assert saved["epochs"] == [0, 1, 2]
    records = wandb_records(trained["run_dir"])
    rows = {int(row["epoch"]): row for row in history(records)}
    assert sorted(rows) == [0, 1, 2]  # epoch 0 (the initial model), then one row per epoch
    for probe in saved["probes"]:
        key = f"probes/{probe['index']}_{probe['class']}"
        assert probe["class"] == test.classes[int(test.labels[probe["index"]])]
        for epoch in (0, 1, 2):
            row = rows[epoch]
            assert row[f"{key}._type"] == "image-file"
            logged = CAPTION.match(row[f"{key}.caption"])
            assert logged and int(logged[1]) == epoch, row[f"{key}.caption"]
            assert logged[2] == probe["epochs"][str(epoch)]["pred"]
            assert float(logged[4]) == pytest.approx(probe["epochs"][str(epoch)]["p_true"], abs=0.006)
    for epoch in (0, 1, 2):  # the scalars agree with the per-probe record
        right = [p["epochs"][str(epoch)]["pred"] == p["class"] for p in saved["probes"]]
        assert rows[epoch]["probes/acc"] == pytest.approx(sum(right) / len(right))
    learned = [p["learned_epoch"] for p in saved["probes"]]
    assert all(e is None or e in (0, 1, 2) for e in learned)
    pages = sorted(out.glob("probes*.png"))  # two probes a row (image + 3 epochs each): 5 rows, one page
    assert pages == [out / "probes.png"]
    with Image.open(pages[0]) as picture:
        assert 5 * 128 < picture.size[1] <= PAGE_HEIGHT and 8 * 128 < picture.size[0] < 1600
    table = logged_summary(records)  # a plain table: in the summary, not in the epoch's history row
    assert table["probes/summary._type"] == "table-file" and table["probes/summary.nrows"] == 10
    assert "probes/summary._type" not in rows[2]


def test_a_probe_cam_is_compute_cams_of_the_same_input(trained, cifar_subset):
    """The CAM stored for the best epoch (the run's record keeps the series) is that epoch's model's CAM (best.pt)."""
    series = torch.load(trained["out"] / "last.pt", weights_only=True)["state"]["probes"]
    best = torch.load(trained["out"] / "best.pt", weights_only=True)
    model = timm.create_model("resnet18_cifar", num_classes=10)
    model.load_state_dict(best["model"])
    _, test = load_data(cifar_subset)
    indices = series["indices"]
    cams = compute_cams(model, test.images[indices], test.labels[indices], method="gradcam", layer="layer4")
    assert series["epochs"] == [0, 1, 2]
    stored = series["cams"][series["epochs"].index(best["epoch"])].float()
    torch.testing.assert_close(stored, torch.round(cams * 255), atol=1, rtol=0)
    probes = Probes(test.images[indices], test.labels[indices], indices, test.classes, "gradcam", ["layer4"], series)
    assert probes.epochs == [0, 1, 2] and probes.row(2)["probes/acc"] == pytest.approx(
        float((series["preds"][-1] == test.labels[indices]).float().mean()))


# ---------------------------------------------------------------------------------------------------------------------
# Any image: explain/run.py --images


@pytest.fixture(scope="module")
def mixed_folder(cifar_subset, tmp_path_factory) -> Path:
    """Real CIFAR images saved in many sizes and modes, a 16-bit PNG among them."""
    folder = tmp_path_factory.mktemp("mixed")
    cat = Image.open(cifar_subset / "test" / "cat" / "0000.jpg")
    ship = Image.open(cifar_subset / "test" / "ship" / "0000.jpg")
    cat.resize((64, 48)).save(folder / "cat_64x48.png")
    ship.convert("L").save(folder / "ship_grey.jpg")
    ship.convert("RGBA").resize((100, 100)).save(folder / "ship_rgba.png")
    cat.convert("P").save(folder / "cat_palette.gif")
    ship.convert("CMYK").save(folder / "ship_cmyk.jpg")
    deep = (np.asarray(cat.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(deep).save(folder / "cat_16bit.png")
    (folder / "sub").mkdir()
    cat.save(folder / "sub" / "cat.jpg")
    return folder


def test_images_of_any_size_and_mode_are_explained(trained, mixed_folder, tmp_path):
    out = tmp_path / "out"
    result = call_cli("--checkpoint", str(trained["out"] / "best.pt"), "--images", str(mixed_folder),
                      "--out_dir", str(out), "--wandb_mode=offline", script="explain/run.py",
                      env={"WANDB_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert "resized 2 images from 64×48 (1), 100×100 (1) to 32×32 (bilinear)" in lines
    assert lines[-1] == f"explained 7 images; wrote {out}/images.png (all), images.json (all) and summary.json"
    pattern = re.compile(r"^\S+\.(png|jpg|gif): \w+ \d\.\d\d \(\w+ \d\.\d\d, \w+ \d\.\d\d\)$")
    per_image = [line for line in lines if pattern.match(line)]
    assert len(per_image) == 7, lines
    rows = json.loads((out / "images.json").read_text())
    assert len(rows) == 7 and all(len(r["top3"]) == 3 for r in rows)
    assert {tuple(r["size"]) for r in rows} >= {(64, 48), (100, 100), (32, 32)}
    with Image.open(out / "images.png") as picture:  # two images a row: 4 rows for 7
        assert picture.size[1] > 4 * 128 and picture.size[0] > 6 * 128
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    row = next(r for r in history(wandb_records(run_dir)) if "explain/images._type" in r)
    assert row["explain/images.nrows"] == 7
    summary = wandb_summary(run_dir)["summary"]
    assert {f"explain/{k}" for k in ("deletion_auc", "insertion_auc", "sanity_rank_corr")} <= set(summary)
    assert (out / "faithfulness.png").exists() and (out / "sanity.png").exists()
    said = (result.stdout + result.stderr).splitlines()
    assert any(line.startswith(("trust: ", "warning: trust: ")) for line in said)


def test_a_non_image_is_refused_or_skipped(trained, mixed_folder, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "fake.png").write_text("not an image at all")
    Image.open(mixed_folder / "sub" / "cat.jpg").save(bad / "cat.jpg")
    common = ["--checkpoint", str(trained["out"] / "best.pt"), "--out_dir", str(tmp_path / "o"),
              "--wandb_mode=disabled"]
    refused = call_cli(*common, "--images", str(bad), script="explain/run.py")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip() == f"error: cannot read image {bad / 'fake.png'} (UnidentifiedImageError: " \
                                    f"cannot identify image file)"
    skipped = call_cli(*common, "--images", str(bad), "--skip_bad=True", "--target_class", "dog",
                       script="explain/run.py")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert f"skipped {bad / 'fake.png'}: cannot read image" in skipped.stdout
    assert re.search(r"cat\.jpg: \w+ \d\.\d\d .*; CAM of dog$", skipped.stdout, flags=re.MULTILINE)
    unknown = call_cli(*common, "--images", str(bad / "cat.jpg"), "--target_class", "dgo", script="explain/run.py")
    assert unknown.returncode == 2 and "--target_class 'dgo' is not a class of the checkpoint (did you mean dog?)" \
        in unknown.stderr


def test_an_images_cam_is_compute_cams_of_the_same_input(mixed_folder, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("resnet18_cifar", num_classes=10).eval()
    images = read_images([mixed_folder])
    classes = [str(i) for i in range(10)]
    result = explain_images(model, images, classes, out_dir=tmp_path, target_class=3, trust=False)
    torch.testing.assert_close(result["cams"], compute_cams(model, images.pixels, 3))
    assert [row["cam_class"] for row in result["rows"]] == ["3"] * len(images.names)


def test_a_run_at_explain_samples_0_writes_no_probe_pictures(small_folder, tmp_path):
    """A sweep trial (--explain_samples 0) wrote probes.png pages although it asked for no pictures (issue 37 item
    13): now it keeps probes.json (the probes' record) and no PNG at all."""
    out = tmp_path / "out"
    result = call_cli("--data_dir", str(small_folder), "--epochs=1", "--batch_size=40", "--explain_samples=0",
                      "--probe_images=4", "--wandb_mode=disabled", "--out_dir", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert not list(out.glob("*.png"))
    saved = json.loads((out / "probes.json").read_text())
    assert len(saved["probes"]) == 4 and saved["epochs"] == [0, 1]
