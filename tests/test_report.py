"""explain.report: the logged table shows the test images pixel for pixel, the overlays add only the heat layer, and
the confusion matrix and its companions are right — all read back from the offline W&B run with ``wandb leet``."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import timm
import torch
from PIL import Image

import train  # noqa: F401  (registers resnet18_cifar)
from explain.cam import compute_cams
from explain.figures import (
    CAM_ROWS,
    PAGE_HEIGHT,
    cam_grid_figure,
    misclassified_figure,
    page_paths,
    save_pages,
    tile_pages,
)
from explain.overlay import overlay_cam
from explain.report import (
    COLUMNS,
    SCALE,
    ExplainSettings,
    check_cam_settings,
    confusion_matrix,
    explain_model,
    find_mistakes,
)
from tests.conftest import copy_images, history, logged_summary, wandb_records
from train.config import Config
from train.data import CIFAR10_CLASSES, Dataset, load_data
from train.tracking import Tracker

CLASSES = list(CIFAR10_CLASSES)  # the JPEG copy's class folders, in label order
SAMPLES = 16


# ---------------------------------------------------------------------------------------------------------------------
# Reading an offline run back


def explain_row(records: list[dict]) -> dict:
    """The one history row holding the explain keys."""
    rows = [row for row in history(records) if any(key.startswith("explain/") for key in row)]
    assert len(rows) == 1, f"expected one explain row, got {len(rows)}"
    return rows[0]


def logged_table(records: list[dict], key: str) -> tuple[dict, dict[str, Path]]:
    """Table ``key`` as W&B stores it for upload, and the files its cells reference (e.g. ``media/images/x.png``).

    wandb 0.31 logs a Table as a ``run_table`` artifact: the run folder's ``files/media/table/...table.json`` names
    cells only by type ("Image"), while the artifact's manifest lists the full table JSON and each image file,
    staged under ``WANDB_DATA_DIR`` until ``wandb sync`` uploads them.
    """
    row = explain_row(records)
    if f"{key}._type" not in row:  # tables are in the summary, except custom charts' and explain/label_issues
        row = logged_summary(records)
    assert row[f"{key}._type"] == "table-file"
    name = f"{key}.table.json"
    manifests = [r["artifact"]["manifest"]["contents"] for r in records
                 if r["type"] == "artifact" and r["artifact"]["type"] == "run_table"]
    contents = next(c for c in manifests if any(entry["path"] == name for entry in c))
    files = {entry["path"]: Path(entry["local_path"]) for entry in contents}
    table = json.loads(files[name].read_text())
    assert table["nrows"] == row[f"{key}.nrows"] == len(table["data"])
    return table, files


def image_cell(cell: dict, files: dict[str, Path]) -> np.ndarray:
    """Decode an image cell of a logged table (checking it is stored as PNG)."""
    assert cell["_type"] == "image-file" and cell["format"] == "png" and cell["path"].endswith(".png")
    return np.asarray(Image.open(files[cell["path"]]))


# ---------------------------------------------------------------------------------------------------------------------
# find_mistakes, confusion_matrix, check_cam_settings


def test_find_mistakes_most_confident_first():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05]])
    labels = torch.tensor([0, 0, 1, 1, 1])  # mistakes: 1 (conf 0.8), 2 (0.6), 4 (0.95)
    assert find_mistakes(probs, labels, 10).tolist() == [4, 1, 2]
    assert find_mistakes(probs, labels, 2).tolist() == [4, 1]
    assert find_mistakes(probs, labels, 0).tolist() == []
    assert find_mistakes(probs, torch.tensor([0, 1, 0, 1, 0]), 5).tolist() == []  # no mistakes


def test_find_mistakes_keeps_input_order_among_equal_confidences():
    probs = torch.tensor([[0.2, 0.5, 0.3]]).repeat(6, 1)
    assert find_mistakes(probs, torch.zeros(6, dtype=torch.long), 4).tolist() == [0, 1, 2, 3]


def test_find_mistakes_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k must be >= 0"):
        find_mistakes(torch.rand(3, 2), torch.zeros(3, dtype=torch.long), -1)
    with pytest.raises(ValueError, match="probs must be"):
        find_mistakes(torch.rand(3, 2), torch.zeros(4, dtype=torch.long), 1)


def test_confusion_matrix_counts_true_pred_pairs():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 0, 2, 0])
    assert confusion_matrix(labels, preds, 3).tolist() == [[1, 1, 0], [0, 1, 0], [2, 0, 1]]


def test_check_cam_settings_fails_fast_on_bad_names():
    model = timm.create_model("resnet18_cifar", num_classes=10)
    assert check_cam_settings(model, "gradcam", "layer3, layer4") == ["layer3", "layer4"]
    with pytest.raises(ValueError, match="unknown CAM method 'gradcamm'"):
        check_cam_settings(model, "gradcamm", "layer4")
    with pytest.raises(ValueError, match=r"unknown layer \['layer5'\]"):
        check_cam_settings(model, "gradcam", "layer4,layer5")
    with pytest.raises(ValueError, match="not a \\[N, C, h, w\\] feature map"):
        check_cam_settings(model, "gradcam", "fc")


# ---------------------------------------------------------------------------------------------------------------------
# A real explain run on real test images, tracked offline


@pytest.fixture(scope="module")
def data(cifar_subset, tmp_path_factory) -> Path:
    """A 10-class image folder of real CIFAR-10 JPEGs: 2 train and 20 test images per class."""
    return copy_images(cifar_subset, tmp_path_factory.mktemp("report-data"), 2, 20)


@pytest.fixture(scope="module")
def explained(data, tmp_path_factory):
    """explain_model on 100 of the 200 test images (every other one) with a seeded random-init ResNet-18."""
    _, test = load_data(data)
    indices = torch.arange(1, len(test), 2)
    subset = test.subset(indices)
    torch.manual_seed(0)
    model = timm.create_model("resnet18_cifar", num_classes=10).eval()
    out_dir = tmp_path_factory.mktemp("report-out")
    tracker = Tracker({"explain_samples": SAMPLES}, mode="offline", project="test", job_type="explain")
    result = explain_model(model, subset, out_dir=out_dir, tracker=tracker, samples=SAMPLES, indices=indices, epoch=3)
    run_dir = tracker.dir
    tracker.finish()
    with torch.no_grad():
        probs = model(subset.images.float() / 255).softmax(1)
    return {"result": result, "records": wandb_records(run_dir), "run_dir": Path(run_dir), "test": test,
            "subset": subset, "indices": indices, "model": model, "probs": probs, "out_dir": out_dir}


def test_result_counts_and_accuracy(explained):
    result, subset, probs = explained["result"], explained["subset"], explained["probs"]
    wrong = probs.argmax(1) != subset.labels
    assert result["images"] == 100 and result["mistakes"] == int(wrong.sum())
    assert result["explained"] == min(SAMPLES, result["mistakes"]) > 0
    assert result["acc"] == pytest.approx(1 - wrong.float().mean().item())


def test_table_has_the_columns_and_the_most_confident_mistakes_first(explained):
    records, probs, subset = explained["records"], explained["probs"], explained["subset"]
    indices = explained["indices"]
    table, _ = logged_table(records, "explain/misclassified")
    assert table["columns"] == list(COLUMNS)
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert len(rows) == explained["result"]["explained"]

    # the same mistakes, recomputed independently of explain.report
    confidence, preds = probs.max(1)
    wrong = torch.nonzero(preds != subset.labels).flatten()
    expected = wrong[torch.argsort(confidence[wrong], descending=True, stable=True)][:SAMPLES]
    assert [row["index"] for row in rows] == indices[expected].tolist()
    confidences = [row["confidence"] for row in rows]
    assert confidences == sorted(confidences, reverse=True)
    for row, position in zip(rows, expected.tolist(), strict=True):
        assert row["true"] == CLASSES[subset.labels[position]] != row["pred"] == CLASSES[preds[position]]
        assert row["confidence"] == pytest.approx(confidence[position].item(), abs=1e-5)
        assert row["p_true"] == pytest.approx(probs[position, subset.labels[position]].item(), abs=1e-5)
        top = re.fullmatch(r"(\w+) (\d\.\d\d), (\w+) (\d\.\d\d), (\w+) (\d\.\d\d)", row["top3"])
        assert top, row["top3"]
        assert top[1] == row["pred"] and {top[1], top[3], top[5]} <= set(CLASSES)
        assert float(top[2]) == pytest.approx(row["confidence"], abs=0.006)
        assert float(top[2]) >= float(top[4]) >= float(top[6])


def test_image_cells_are_the_test_images_pixel_for_pixel(explained):
    table, files = logged_table(explained["records"], "explain/misclassified")
    test = explained["test"]
    for row in table["data"]:
        cell = dict(zip(table["columns"], row, strict=True))
        pixels = image_cell(cell["image"], files)
        assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
        # `index` is the position in the full test set (the subset's images are every other one)
        np.testing.assert_array_equal(pixels, test.images[cell["index"]].permute(1, 2, 0).numpy())
        assert CLASSES[test.labels[cell["index"]]] == cell["true"]


def test_gradcam_cells_differ_from_the_image_only_by_the_heat_layer(explained):
    table, files = logged_table(explained["records"], "explain/misclassified")
    test, model = explained["test"], explained["model"]
    jet = (matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255)  # the 256 colours of the heat layer
    differs = 0
    for row in table["data"]:
        cell = dict(zip(table["columns"], row, strict=True))
        image = test.images[cell["index"]]
        upscaled = image.permute(1, 2, 0).numpy().repeat(SCALE, 0).repeat(SCALE, 1).astype(np.float64)
        overlays = {}
        for column, name in (("gradcam_pred", cell["pred"]), ("gradcam_true", cell["true"])):
            overlay = image_cell(cell[column], files)
            assert overlay.dtype == np.uint8 and overlay.shape == (32 * SCALE, 32 * SCALE, 3)
            # nearest-neighbour upscaling: SCALE×SCALE blocks of one colour
            np.testing.assert_array_equal(overlay, overlay[::SCALE, ::SCALE].repeat(SCALE, 0).repeat(SCALE, 1))
            # undo the blend: what is left of every pixel is one of the colormap's colours (up to rounding)
            heat = (overlay - 0.5 * upscaled)[::SCALE, ::SCALE] / 0.5
            distance = np.abs(heat.reshape(-1, 1, 3) - jet[None]).max(-1).min(-1)
            assert distance.max() <= 1.01, column
            # and it is the overlay of this class's CAM, recomputed here one image at a time (float noise of a
            # different batch size may move a rare pixel to the neighbouring colormap entry)
            cam = compute_cams(model, image[None], CLASSES.index(name))
            expected = overlay_cam(image[None], cam, alpha=0.5, colormap="jet", scale=SCALE)[0]
            error = np.abs(overlay.astype(int) - expected.astype(int))
            assert error.max() <= 4 and (error > 0).mean() < 0.01, column
            overlays[column] = overlay
        differs += not np.array_equal(overlays["gradcam_pred"], overlays["gradcam_true"])
    assert differs == len(table["data"])  # the maps are class-specific


def test_confusion_matrix_and_its_companions_are_logged(explained):
    records, probs, subset = explained["records"], explained["probs"], explained["subset"]
    preds, labels = probs.argmax(1), subset.labels
    counts = np.zeros((10, 10), dtype=int)
    for t, p in zip(labels.tolist(), preds.tolist(), strict=True):
        counts[t, p] += 1
    row = explain_row(records)
    assert row["epoch"] == 3

    # wandb.plot.confusion_matrix: a custom chart whose data W&B stores as `<key>_table`
    charts = [r["config"]["update"] for r in records if r["type"] == "config"]
    chart = next(c["_wandb.visualize.explain/confusion_matrix"] for c in charts
                 if "_wandb.visualize.explain/confusion_matrix" in c)
    assert chart["panel_config"]["panelDefId"] == "wandb/confusion_matrix/v1"
    matrix, _ = logged_table(records, "explain/confusion_matrix_table")
    assert matrix["columns"] == ["Actual", "Predicted", "nPredictions"]
    logged = {(a, p): n for a, p, n in matrix["data"]}
    assert all(logged.get((CLASSES[t], CLASSES[p]), 0) == counts[t, p] for t in range(10) for p in range(10))

    image = explained["run_dir"] / "files" / row["explain/confusion_matrix_image.path"]
    assert row["explain/confusion_matrix_image.format"] == "png" and Image.open(image).size[0] > 400

    per_class, _ = logged_table(records, "explain/per_class_acc")
    assert per_class["columns"] == ["class", "acc", "n"]
    assert [r[0] for r in per_class["data"]] == CLASSES and [r[2] for r in per_class["data"]] == [10] * 10
    assert [r[1] for r in per_class["data"]] == pytest.approx((counts.diagonal() / 10).tolist())

    confused, _ = logged_table(records, "explain/most_confused")
    assert confused["columns"] == ["true", "pred", "count"] and 0 < len(confused["data"]) <= 10
    assert [r[2] for r in confused["data"]] == sorted((r[2] for r in confused["data"]), reverse=True)
    off_diagonal = counts - np.diag(counts.diagonal())
    assert confused["data"][0][2] == off_diagonal.max()
    assert all(t != p and counts[CLASSES.index(t), CLASSES.index(p)] == n for t, p, n in confused["data"])


def test_pictures_are_written(explained):
    result, out_dir = explained["result"], explained["out_dir"]
    for key, name in (("misclassified_png", "misclassified.png"), ("cam_png", "gradcam.png"),
                      ("confusion_matrix_png", "confusion_matrix.png")):
        path = out_dir / name
        assert result[key] == str(path)
        with Image.open(path) as picture:
            assert picture.format == "PNG" and min(picture.size) > 300
    assert result["cam_png_pages"][0] == str(out_dir / "gradcam.png")
    heights = []
    for page in result["cam_png_pages"]:  # rows of 3 mistakes: image | CAM pred | CAM true each, pages a screen high
        with Image.open(page) as picture:
            assert picture.size[0] < 1500 and picture.size[1] <= PAGE_HEIGHT
            heights.append(picture.size[1])
    assert sum(heights) > math.ceil(min(SAMPLES, CAM_ROWS) / 3) * 32 * SCALE
    drawn = {name for name in os.listdir(out_dir) if name.startswith(("gradcam", "misclassified"))}
    assert drawn == {Path(p).name for key in ("misclassified_png_pages", "cam_png_pages") for p in result[key]}


def test_predictions_npz_keeps_every_checked_image_with_its_file_label_and_both_views(explained):
    """Label-issue methods are re-scored from this file without the model (issue 36 item 1)."""
    result, subset, model, indices = explained["result"], explained["subset"], explained["model"], explained["indices"]
    assert result["predictions_npz"] == str(explained["out_dir"] / "predictions.npz")
    with np.load(result["predictions_npz"], allow_pickle=False) as saved:  # no pickled objects: data never runs code
        assert saved["logits"].dtype == saved["logits_flip"].dtype == np.float16
        assert saved["index"].tolist() == indices.tolist() and saved["label"].tolist() == subset.labels.tolist()
        assert saved["file"].tolist() == subset.files and saved["classes"].tolist() == list(subset.classes)
        images = subset.images.float() / 255
        with torch.no_grad():
            logits, mirrored = model(images), model(images.flip(-1))
        # fp32 predictions (explain_model's default), stored as float16: a few units in the 4th decimal at most
        np.testing.assert_allclose(saved["logits"], logits.numpy(), atol=2e-4, rtol=2e-3)
        np.testing.assert_allclose(saved["logits_flip"], mirrored.numpy(), atol=2e-4, rtol=2e-3)
        assert np.abs(saved["logits_flip"] - logits.numpy()).max() > 1e-3  # the mirror's, not the image's again


def _mistakes(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    picture = lambda: rng.integers(0, 256, (32 * SCALE, 32 * SCALE, 3), dtype=np.uint8)  # noqa: E731
    return [{"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "gradcam_pred": picture(),
             "gradcam_true": picture(), "true": "cat", "pred": "dog", "confidence": 0.9, "p_true": 0.05}
            for _ in range(n)]


def test_a_grid_narrower_than_its_title_is_widened_until_every_word_shows():
    """probes.png of a 3-epoch run (5 columns) ran its 97-character title into both edges (1 px to spare)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    title = "Probe images by epoch: CAM of the true class, the predicted class and p(true class)"
    cells = [(np.zeros((128, 128, 3), np.uint8), [("epoch 1", "black")])] * 50
    for page in tile_pages(cells, 5, title, colorbar="jet"):
        renderer = FigureCanvasAgg(page).get_renderer()
        width = page.get_figwidth() * page.dpi
        texts = page.texts + page.axes[0].texts
        assert len(page.texts) == 1 and "page" in page.texts[0].get_text()
        for text in texts:
            box = text.get_window_extent(renderer)
            assert box.x0 >= 10 and box.x1 <= width - 10, (text.get_text(), box.x0, box.x1, width)  # a margin


def test_long_grids_are_split_into_pages_a_screen_high_and_every_mistake_is_drawn_once(tmp_path):
    """Issue 28 item 13: 64 mistakes made one 4,400 px tall gradcam.png; then 6 pages of 900 px (issue 37: 17 PNGs
    for a 3-epoch run). Now the CAM grid draws CAM_ROWS on two pages of at most PAGE_HEIGHT, titled page k of n, every
    mistake on exactly one of them, and misclassified.png all 64 on one; a rewrite with fewer pages leaves no stale
    page."""
    pages = cam_grid_figure(_mistakes(64), "gradcam", ["layer4"])
    assert len(pages) == 2
    drawn = 0
    for k, page in enumerate(pages, 1):
        width, height = page.get_size_inches() * page.dpi
        assert height <= PAGE_HEIGHT and width < 1500
        assert " ".join(t.get_text() for t in page.texts).endswith(f"(page {k} of {len(pages)})")
        drawn += sum(t.get_text() == "CAM of pred" for t in page.axes[0].texts)
    assert drawn == CAM_ROWS == 32
    written = save_pages(pages, tmp_path / "gradcam.png")
    assert written == [str(p) for p in page_paths(tmp_path / "gradcam.png", len(pages))] and \
        sorted(os.listdir(tmp_path)) == sorted(Path(p).name for p in written)
    one = cam_grid_figure(_mistakes(3), "gradcam", ["layer4"])
    assert len(one) == 1 and "page" not in " ".join(t.get_text() for t in one[0].texts)
    assert save_pages(one, tmp_path / "gradcam.png") == [str(tmp_path / "gradcam.png")]
    assert os.listdir(tmp_path) == ["gradcam.png"]  # the pages of the longer grid are gone
    shown = misclassified_figure(_mistakes(64), 64)
    assert sum(sum(t.get_text().startswith("pred: dog") for t in page.axes[0].texts) for page in shown) == 64
    assert len(shown) == 1 and shown[0].get_size_inches()[1] * shown[0].dpi <= PAGE_HEIGHT


def test_no_samples_and_no_tracker_still_writes_the_pictures(data, tmp_path):
    _, test = load_data(data)
    model = timm.create_model("resnet18_cifar", num_classes=10)
    result = explain_model(model, test.subset(torch.arange(0, 200, 10)), out_dir=tmp_path / "out", tracker=None,
                           samples=0, cam_layer="layer3,layer4")
    assert result["explained"] == 0 and result["images"] == 20
    # no mistakes shown (no misclassified.png nor CAM grid), but the trust figures are measured on a sample of all the
    # evaluated images
    assert sorted(os.listdir(tmp_path / "out")) == ["confusion_matrix.png", "faithfulness.png", "label_issues.json",
                                                    "label_issues.png", "predictions.npz", "sanity.png"]
    assert result["trust_images"] == 20  # the CPU default (32) is more than the 20 evaluated: all of them
    assert result["trust_mistakes"] + result["trust_correct"] == 20
    with pytest.raises(ValueError, match="samples must be >= 0"):
        explain_model(model, test, out_dir=tmp_path, samples=-1)


def test_the_explain_step_takes_its_settings_as_one_object_from_the_runs_config(data, tmp_path):
    """Issue 37 item 19: explain_model took 19 keyword arguments; a run's Config now becomes one ExplainSettings,
    and what the config says is what the step does (4 mistakes, no trust pictures, no label issues, fused layers)."""
    _, test = load_data(data)
    model = timm.create_model("resnet18_cifar", num_classes=10)
    config = Config(explain_samples=4, trust=False, label_issues=False, cam_method="layercam",
                    cam_layer="layer3,layer4", eval_batch_size=32, seed=3)
    settings = ExplainSettings.from_config(config)
    assert (settings.samples, settings.cam_method, settings.batch_size, settings.seed) == (4, "layercam", 32, 3)
    result = explain_model(model, test.subset(torch.arange(0, 200, 5)), settings, out_dir=tmp_path / "out")
    assert result["explained"] == 4 and result["cam_png"] == str(tmp_path / "out" / "layercam.png")
    assert sorted(os.listdir(tmp_path / "out")) == ["confusion_matrix.png", "layercam.png", "misclassified.png",
                                                    "predictions.npz"]
    with pytest.raises(TypeError):
        explain_model(model, test, settings, out_dir=tmp_path, smaples=3)  # a misspelt setting is refused


def test_a_thousand_classes_stay_bounded(tmp_path):
    """Explaining a 1,000-class data set: the confusion PNG shows the most confused classes and W&B's confusion
    matrix pools the rest, so neither grows with the square of the classes (a million rows, a 550-inch figure)."""
    from tests.test_cam import TinyNet

    torch.manual_seed(0)
    model = TinyNet(num_classes=1000).eval()
    images = torch.randint(0, 256, (2000, 3, 32, 32), dtype=torch.uint8)
    test = Dataset(images, torch.arange(1000).repeat(2), [f"class{i:03d}" for i in range(1000)])
    tracker = Tracker({}, mode="offline", project="test", job_type="explain")
    result = explain_model(model, test, out_dir=tmp_path, tracker=tracker, samples=4, cam_layer="features",
                           trust=False)
    run_dir = tracker.dir
    tracker.finish()
    assert result["mistakes"] > 1900
    with Image.open(tmp_path / "confusion_matrix.png") as picture:
        assert max(picture.size) < 4000  # 50 classes drawn, not 1,000
    matrix, _ = logged_table(wandb_records(run_dir), "explain/confusion_matrix_table")
    assert len(matrix["data"]) <= 51 * 51 and {row[0] for row in matrix["data"]} >= {"(other classes)"}
    assert sum(row[2] for row in matrix["data"]) == 2000  # every image counted, pooled or not


def test_the_confusion_matrix_speaks_percent_in_cells_colours_and_title():
    """Issue 28: the cells were percentages while the title and the colour bar said fractions."""
    from explain.figures import confusion_figure

    counts = torch.tensor([[90, 10, 0], [1, 299, 0], [0, 0, 5]])
    fig = confusion_figure(counts, ["a", "b", "c"], acc=394 / 405)
    ax, bar = fig.axes
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {(0, 0): "90", (0, 1): "10", (1, 0): "<1", (1, 1): "100", (2, 2): "100"}  # 1 of 300: under 0.5 %
    assert ax.images[0].get_clim() == (0, 100) and bar.get_ylim() == (0, 100)  # colours on the cells' scale
    assert "%" in bar.get_ylabel() and "%" in ax.get_title() and "sum to 1" not in ax.get_title()
