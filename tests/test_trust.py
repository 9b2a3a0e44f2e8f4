"""explain.trust: on a model whose evidence is known (a planted patch), Grad-CAM's maps are faithful and fail the
randomization check the right way; maps that ignore the model (brightness, a centre blob) are exposed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats
import torch
from PIL import Image

from explain import compute_cams
from explain.trust import deletion_insertion, randomization_stages, randomization_test, spearman, verdict
from tests.conftest import history, run_cli, wandb_records, wandb_summary
from tests.test_cam import patch_images


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, _ = patch_images(48, seed=1)
    return images, labels


def brightness(model, images: torch.Tensor, class_idx) -> torch.Tensor:
    """A "map" that ignores the model: each pixel's brightness."""
    return images.float().mean(1) / 255


def centre_blob(model, images: torch.Tensor, class_idx) -> torch.Tensor:
    """A "map" that ignores the model and the image: a Gaussian blob in the middle."""
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    blob = torch.exp(-((ys - 15.5) ** 2 + (xs - 15.5) ** 2) / 50)
    return blob.expand(len(images), 32, 32)


def test_gradcam_is_faithful_on_the_patch_model(patch_net, held_out):
    images, labels = held_out
    cams = compute_cams(patch_net, images, labels, method="gradcam", layer="features")
    result = deletion_insertion(patch_net, images, labels, cams, steps=16)
    assert result["fractions"][0] == 0 and result["fractions"][-1] == 1 and len(result["fractions"]) == 17
    assert result["deletion"].shape == result["insertion_random"].shape == (48, 17)
    # both orders start from the same image and end at the same blurred copy
    torch.testing.assert_close(result["deletion"][:, 0], result["deletion_random"][:, 0])
    torch.testing.assert_close(result["insertion"][:, -1], result["deletion"][:, 0])
    torch.testing.assert_close(result["insertion"][:, 0], result["deletion"][:, -1])
    assert result["deletion_auc"] < result["deletion_auc_random"] - 0.2  # measured: 0.36 vs 0.71
    assert result["insertion_auc"] > result["insertion_auc_random"] + 0.1  # measured: 0.94 vs 0.74
    assert torch.allclose(result["deletion_auc_per_image"].mean(), torch.tensor(result["deletion_auc"]))


def figures_of(result: dict, sanity: dict) -> dict:
    return {"deletion_auc": result["deletion_auc"], "deletion_auc_random": result["deletion_auc_random"],
            "insertion_auc": result["insertion_auc"], "insertion_auc_random": result["insertion_auc_random"],
            "sanity_rank_corr": sanity["rank_corr"]}


def test_brightness_maps_do_no_better_than_random_and_survive_randomization(patch_net, held_out):
    images, labels = held_out
    result = deletion_insertion(patch_net, images, labels, brightness(patch_net, images, labels))
    assert result["deletion_auc"] > result["deletion_auc_random"]  # measured: 0.86 vs 0.72
    assert result["insertion_auc"] < result["insertion_auc_random"]  # measured: 0.45 vs 0.72
    sanity = randomization_test(patch_net, images, labels, method=brightness)
    assert sanity["rank_corr"] > 0.99 and sanity["rank_corr_per_stage"] == pytest.approx([1.0, 1.0])
    line = verdict(figures_of(result, sanity))
    assert line.startswith("warning: trust: ")
    assert "no better than a random pixel order at deletion and insertion" in line
    assert "survive randomizing the model" in line


def test_a_centre_blob_survives_randomization(patch_net, held_out):
    """A fixed blob ignores model and image alike. It beats a uniformly random pixel order at deletion on this data
    (measured 0.56 vs 0.72): the planted patch never touches the border, a prior of the data set that any central
    map exploits. The randomization check is what exposes it: the map does not change at all."""
    images, labels = held_out
    result = deletion_insertion(patch_net, images, labels, centre_blob(patch_net, images, labels))
    sanity = randomization_test(patch_net, images, labels, method=centre_blob)
    assert sanity["rank_corr"] == pytest.approx(1.0)
    assert "survive randomizing the model" in verdict(figures_of(result, sanity))


def test_randomizing_the_model_decorrelates_gradcam(patch_net, held_out):
    images, labels = held_out
    sanity = randomization_test(patch_net, images, labels, method="gradcam", layer="features", seed=0)
    assert sanity["stages"] == randomization_stages(patch_net) == ["head", "features"]
    assert sanity["maps"].shape == (3, 48, 32, 32)
    torch.testing.assert_close(sanity["maps"][0], compute_cams(patch_net, images, labels, layer="features"))
    assert sanity["rank_corr"] < 0.3 and sanity["rank_corr"] == sanity["rank_corr_per_stage"][-1]
    assert sanity["rank_corr_per_image"].shape == (2, 48)
    again = randomization_test(patch_net, images, labels, method="gradcam", layer="features", seed=0)
    assert again["rank_corr_per_stage"] == sanity["rank_corr_per_stage"]  # seeded
    assert compute_cams(patch_net, images, labels, layer="features").equal(sanity["maps"][0])  # model untouched


def test_spearman_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (6, 40), generator=g).float()  # many ties, as in ReLU'd maps
    b = a + torch.randn(6, 40, generator=g) * 2
    ours = spearman(a, b)
    theirs = [scipy.stats.spearmanr(x, y).statistic for x, y in zip(a.numpy(), b.numpy(), strict=True)]
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-5)
    assert spearman(torch.zeros(1, 9), torch.rand(1, 9)).item() == 0  # a flat map ranks nothing


def test_deletion_insertion_batches_and_checks_shapes(patch_net, held_out):
    images, labels = held_out
    cams = compute_cams(patch_net, images, labels, layer="features")
    whole = deletion_insertion(patch_net, images, labels, cams, steps=4, batch_size=1000)
    pieces = deletion_insertion(patch_net, images, labels, cams, steps=4, batch_size=7)
    torch.testing.assert_close(whole["insertion"], pieces["insertion"])
    with pytest.raises(ValueError, match="steps must be >= 1"):
        deletion_insertion(patch_net, images, labels, cams, steps=0)
    with pytest.raises(ValueError, match="must match"):
        deletion_insertion(patch_net, images, labels, cams[:3])


def test_verdict_for_maps_that_follow_the_model():
    line = verdict({"deletion_auc": 0.21, "deletion_auc_random": 0.48, "insertion_auc": 0.71,
                    "insertion_auc_random": 0.44, "sanity_rank_corr": 0.08})
    assert line == ("trust: deletion AUC 0.21 vs 0.48 random, insertion 0.71 vs 0.44, randomization rank corr 0.08 "
                    "— the maps follow the model")
    worse = verdict({"deletion_auc": 0.5, "deletion_auc_random": 0.48, "insertion_auc": 0.71,
                     "insertion_auc_random": 0.44, "sanity_rank_corr": 0.08})
    assert worse.startswith("warning: trust:") and "no better than a random pixel order at deletion" in worse


# ---------------------------------------------------------------------------------------------------------------------
# With every explain step: the shared real run, and explain/run.py on its checkpoint

TRUST_KEYS = ("deletion_auc", "deletion_auc_random", "insertion_auc", "insertion_auc_random", "sanity_rank_corr")


@pytest.mark.slow
def test_a_training_run_reports_how_far_its_cams_can_be_trusted(trained):
    summary, out = trained["summary"], trained["out"]
    explain = summary["explain"]
    assert set(TRUST_KEYS) <= set(explain) and explain["trust_images"] == 8  # all 8 explained mistakes (fewer than 10)
    state = wandb_summary(trained["run_dir"])["summary"]
    for key in TRUST_KEYS:
        assert state[f"explain/{key}"] == pytest.approx(explain[key]), key
    said = trained["result"].stdout + trained["result"].stderr
    assert explain["trust_verdict"] in said and explain["trust_verdict"].split("trust: ")[1].startswith(
        f"deletion AUC {explain['deletion_auc']:.2f} vs {explain['deletion_auc_random']:.2f} random")
    rows = history(wandb_records(trained["run_dir"]))
    last = rows[-1]
    # the line plot's data (4 curves x 17 points) and the per-stage sanity table join the last epoch's row
    assert last["explain/faithfulness_curves_table._type"] == "table-file"
    assert last["explain/faithfulness_curves_table.nrows"] == 4 * 9  # 8 steps
    assert last["explain/sanity.nrows"] == 7  # fc, layer4, ..., conv1
    for name in ("faithfulness.png", "sanity.png"):
        with Image.open(out / name) as picture:
            assert picture.format == "PNG" and min(picture.size) > 300


@pytest.mark.slow
def test_compare_ranks_cam_methods(trained, tmp_path):
    out = tmp_path / "compare"
    compared = run_cli("--checkpoint", str(trained["out"] / "best.pt"), "--compare", "gradcam,layercam",
                       "--explain_samples=4", f"--out_dir={out}", "--wandb_mode=offline", script="explain/run.py",
                       env={"WANDB_DIR": str(tmp_path)})
    assert compared.returncode == 0, compared.stderr[-2000:]
    table = json.loads((out / "cam_methods.json").read_text())
    assert sorted(r["method"] for r in table) == ["gradcam", "layercam"]
    scores = [r["insertion_auc"] - r["deletion_auc"] for r in table]
    assert scores == sorted(scores, reverse=True)  # most faithful first
    printed = [line.split()[0] for line in compared.stdout.splitlines()
               if line.split() and line.split()[0] in ("gradcam", "layercam")]
    assert printed == [r["method"] for r in table]
    assert all(r["seconds_per_image"] > 0 and -1 <= r["sanity_rank_corr"] <= 1 for r in table)
    with Image.open(out / "cam_methods.png") as picture:
        assert picture.size[0] > 3 * 128  # the image and one column per method
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    row = next(r for r in history(wandb_records(run_dir)) if "explain/cam_methods._type" in r)
    assert row["explain/cam_methods.nrows"] == 2
