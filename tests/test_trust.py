"""explain.trust: on a model whose evidence is known (a planted patch), Grad-CAM's maps are faithful with intervals
clear of 0 and fail the randomization check the right way; maps that ignore the model (brightness, a centre blob,
noise) and the maps of an untrained model are never called faithful; the verdict is read from intervals, so two
methods whose intervals overlap never get opposite verdicts, and the same inputs always give the same verdict."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
import torch
from PIL import Image

from explain import compute_cams
from explain.trust import (
    FAITHFUL,
    INCONCLUSIVE,
    MIN_IMAGES,
    NOT_FAITHFUL,
    SMALLEST_GAIN,
    SURVIVES,
    bootstrap_interval,
    deletion_insertion,
    randomization_stages,
    randomization_test,
    rank_methods,
    spearman,
    trust_figures,
    verdict,
    verdict_line,
)
from tests.conftest import history, run_cli, wandb_records, wandb_summary
from tests.test_cam import TinyNet, patch_images


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


def figures_for(model, images, labels, explainer, seed: int = 0) -> dict:
    """The trust figures of ``explainer``'s maps (a CAM method name or a function), as the explain step makes them."""
    if isinstance(explainer, str):
        maps = compute_cams(model, images, labels, method=explainer, layer="features")
    else:
        maps = explainer(model, images, labels)
    faithful = deletion_insertion(model, images, labels, maps, steps=8, seed=seed)
    sanity = randomization_test(model, images, labels, explainer, "features", seed=seed)
    return trust_figures(faithful, sanity, seed=seed)


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
    figures = figures_for(patch_net, images, labels, "gradcam")
    assert figures["trust_verdict"] == FAITHFUL and figures["trust_reasons"] == []
    # measured: deletion gain 0.33 [0.31, 0.35], insertion 0.18 [0.17, 0.20], rank corr 0.07 [0.04, 0.11]
    assert figures["deletion_gain_ci"][0] > 0.2 and figures["insertion_gain_ci"][0] > 0.1
    assert figures["sanity_rank_corr_ci"][1] < SURVIVES and figures["trust_images"] == 48
    for key in ("deletion_gain", "insertion_gain", "sanity_rank_corr", "deletion_auc"):
        low, high = figures[f"{key}_ci"]
        assert low <= figures[key] <= high
    line = verdict_line(figures, "gradcam")
    assert line.startswith("trust: faithful — gradcam on 48 images: deletion gain 0.3")
    assert f"[{figures['deletion_gain_ci'][0]:.3f}, {figures['deletion_gain_ci'][1]:.3f}]" in line


def test_an_untrained_model_is_never_called_faithful(held_out):
    """Grad-CAM of a random-init model beats a random order by a consistent but negligible margin (measured 0.0002
    on resnet18_cifar): its intervals lie below the smallest gain that matters."""
    images, labels = held_out
    for seed in range(3):
        torch.manual_seed(seed)
        untrained = TinyNet().eval()
        figures = figures_for(untrained, images, labels, "gradcam", seed=seed)
        assert figures["trust_verdict"] in (NOT_FAITHFUL, INCONCLUSIVE), figures
        assert figures["deletion_gain_ci"][1] < SMALLEST_GAIN or figures["insertion_gain_ci"][1] < SMALLEST_GAIN


def test_noise_maps_are_never_faithful(patch_net, held_out):
    """Fresh noise at every call changes under randomization, so only the gains can judge it: never faithful. The
    same noise at every call (a fixed pattern) survives randomization: not faithful."""
    images, labels = held_out
    verdicts = []
    for seed in range(4):
        generator = torch.Generator().manual_seed(seed)

        def fresh_noise(model, x, classes, g=generator):
            return torch.rand(len(x), 32, 32, generator=g)

        verdicts.append(figures_for(patch_net, images, labels, fresh_noise, seed=seed)["trust_verdict"])
    assert FAITHFUL not in verdicts, verdicts

    def fixed_noise(model, x, classes):
        return torch.rand(len(x), 32, 32, generator=torch.Generator().manual_seed(7))

    fixed = figures_for(patch_net, images, labels, fixed_noise)
    assert fixed["trust_verdict"] == NOT_FAITHFUL and fixed["sanity_rank_corr_ci"][0] > SURVIVES


def test_the_same_inputs_give_the_same_verdict_and_intervals(patch_net, held_out):
    images, labels = held_out
    first = figures_for(patch_net, images[:16], labels[:16], "gradcam")
    second = figures_for(patch_net, images[:16], labels[:16], "gradcam")
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_brightness_maps_do_no_better_than_random_and_survive_randomization(patch_net, held_out):
    images, labels = held_out
    result = deletion_insertion(patch_net, images, labels, brightness(patch_net, images, labels))
    assert result["deletion_auc"] > result["deletion_auc_random"]  # measured: 0.86 vs 0.72
    assert result["insertion_auc"] < result["insertion_auc_random"]  # measured: 0.45 vs 0.72
    sanity = randomization_test(patch_net, images, labels, method=brightness)
    assert sanity["rank_corr"] > 0.99 and sanity["rank_corr_per_stage"] == pytest.approx([1.0, 1.0])
    assert np.allclose(sanity["rank_corr_ci_per_stage"], 1.0)
    figures = trust_figures(result, sanity)
    assert figures["trust_verdict"] == NOT_FAITHFUL
    line = verdict_line(figures, "brightness")
    assert line.startswith("warning: trust: not faithful — brightness on 48 images")
    assert "no better than a random pixel order at deletion and insertion" in line
    assert "survive randomizing the model" in line


def test_a_centre_blob_survives_randomization(patch_net, held_out):
    """A fixed blob ignores model and image alike. It beats a uniformly random pixel order at deletion on this data
    (measured 0.56 vs 0.72): the planted patch never touches the border, a prior of the data set that any central
    map exploits. The randomization check is what exposes it: the map does not change at all."""
    images, labels = held_out
    figures = figures_for(patch_net, images, labels, centre_blob)
    assert figures["deletion_gain_ci"][0] > SMALLEST_GAIN  # the gain alone would pass
    assert figures["sanity_rank_corr"] == pytest.approx(1.0)
    assert figures["trust_verdict"] == NOT_FAITHFUL
    assert "survive randomizing the model" in " ".join(figures["trust_reasons"])


def test_randomizing_the_model_decorrelates_gradcam(patch_net, held_out):
    images, labels = held_out
    sanity = randomization_test(patch_net, images, labels, method="gradcam", layer="features", seed=0)
    assert sanity["stages"] == randomization_stages(patch_net) == ["head", "features"]
    assert sanity["maps"].shape == (3, 48, 32, 32)
    torch.testing.assert_close(sanity["maps"][0], compute_cams(patch_net, images, labels, layer="features"))
    assert sanity["rank_corr"] < 0.3 and sanity["rank_corr"] == sanity["rank_corr_per_stage"][-1]
    assert sanity["rank_corr_per_image"].shape == (2, 48)
    for mean, (low, high) in zip(sanity["rank_corr_per_stage"], sanity["rank_corr_ci_per_stage"], strict=True):
        assert low <= mean <= high
    assert sanity["rank_corr_ci"] == sanity["rank_corr_ci_per_stage"][-1] and sanity["rank_corr_ci"][1] < SURVIVES
    again = randomization_test(patch_net, images, labels, method="gradcam", layer="features", seed=0)
    assert again["rank_corr_per_stage"] == sanity["rank_corr_per_stage"]  # seeded
    assert again["rank_corr_ci_per_stage"] == sanity["rank_corr_ci_per_stage"]
    assert compute_cams(patch_net, images, labels, layer="features").equal(sanity["maps"][0])  # model untouched


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    values = torch.tensor([0.1, 0.4, 0.35, 0.2, 0.8, 0.05, 0.3, 0.25])
    low, high = bootstrap_interval(values, seed=3)
    assert low < float(values.mean()) < high and (low, high) == tuple(bootstrap_interval(values, seed=3))
    # the percentile interval of the mean matches scipy's own, called directly
    theirs = scipy.stats.bootstrap((values.double().numpy(),), np.mean, n_resamples=2000, method="percentile",
                                   rng=np.random.default_rng(3)).confidence_interval
    assert (low, high) == pytest.approx((theirs.low, theirs.high))
    assert list(bootstrap_interval(torch.full((5,), 0.3))) == pytest.approx([0.3, 0.3])  # no spread, no width
    assert all(math.isnan(x) for x in bootstrap_interval(torch.tensor([0.3])))  # one image: no interval
    per_column = bootstrap_interval(torch.rand(20, 4, generator=torch.Generator().manual_seed(0)), axis=0)
    assert per_column.shape == (2, 4) and (per_column[0] < per_column[1]).all()


def _random_figures(rng: np.random.Generator) -> dict:
    def interval(centre: float, spread: float) -> list[float]:
        half = rng.uniform(0, spread)
        mid = rng.uniform(centre - spread, centre + spread)
        return [mid - half, mid + half]

    return {"deletion_gain_ci": interval(0.01, 0.03), "insertion_gain_ci": interval(0.01, 0.03),
            "sanity_rank_corr_ci": interval(0.5, 0.4)}


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def test_overlapping_intervals_never_give_opposite_verdicts():
    """Faithful needs every interval on the good side of its threshold, not faithful one entirely on the bad side:
    two sets of figures whose intervals pairwise overlap can never get faithful and not faithful. Checked on 20,000
    random pairs around the thresholds (where a margin rule flips)."""
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(20_000):
        a, b = _random_figures(rng), _random_figures(rng)
        if all(_overlap(a[key], b[key]) for key in a):
            checked += 1
            assert {verdict(a)[0], verdict(b)[0]} != {FAITHFUL, NOT_FAITHFUL}, (a, b)
    assert checked > 1000


def test_verdict_reads_the_intervals():
    good = {"deletion_gain_ci": [0.2, 0.3], "insertion_gain_ci": [0.1, 0.2], "sanity_rank_corr_ci": [0.0, 0.2]}
    assert verdict(good) == (FAITHFUL, [])
    straddles = {**good, "insertion_gain_ci": [-0.01, 0.05]}
    outcome, reasons = verdict(straddles)
    assert outcome == INCONCLUSIVE and reasons == [f"the insertion gain interval straddles {SMALLEST_GAIN}"]
    below = {**good, "deletion_gain_ci": [-0.05, -0.01]}
    assert verdict(below)[0] == NOT_FAITHFUL and "at deletion" in verdict(below)[1][0]
    survives = {**good, "sanity_rank_corr_ci": [0.6, 0.9]}
    assert verdict(survives)[0] == NOT_FAITHFUL
    unsure = {**good, "sanity_rank_corr_ci": [0.3, 0.7]}
    assert verdict(unsure) == (INCONCLUSIVE, [f"the randomization rank corr interval straddles {SURVIVES}"])
    nothing = {**good, "deletion_gain_ci": [math.nan, math.nan]}
    assert verdict(nothing)[0] == INCONCLUSIVE  # no images, no evidence
    few = {**good, "trust_images": MIN_IMAGES - 1}  # intervals from a handful of images are far too narrow
    assert verdict(few) == (INCONCLUSIVE, [f"only {MIN_IMAGES - 1} images: intervals from fewer than {MIN_IMAGES} "
                                           f"are not reliable"])
    assert verdict({**survives, "trust_images": 3})[0] == INCONCLUSIVE
    assert verdict({**good, "trust_images": MIN_IMAGES}) == (FAITHFUL, [])
    figures = {"deletion_gain": 0.02, "insertion_gain": 0.15, "sanity_rank_corr": 0.1, "trust_images": 16,
               "sanity_rank_corr_ci": [0.0, 0.2], "deletion_gain_ci": [-0.01, 0.05], "insertion_gain_ci": [0.1, 0.2]}
    figures["trust_verdict"], figures["trust_reasons"] = verdict(figures)
    line = verdict_line(figures, "layercam")
    assert line.startswith("warning: trust: inconclusive — layercam on 16 images: deletion gain 0.020 [-0.010, 0.050]")
    assert line.endswith("measure more images with --trust_images 64")


def test_rank_methods_ties_what_the_intervals_do_not_separate():
    def row(name: str, deletion: list[float], insertion: list[float]) -> dict:
        return {"method": name, "deletion_gain_ci": deletion, "insertion_gain_ci": insertion,
                "deletion_gain": sum(deletion) / 2, "insertion_gain": sum(insertion) / 2}

    ranked = rank_methods([row("c", [0.0, 0.1], [0.0, 0.1]), row("a", [0.3, 0.4], [0.2, 0.3]),
                           row("b", [0.25, 0.35], [0.15, 0.25]), row("d", [0.05, 0.5], [-0.1, 0.0])])
    assert [(r["method"], r["rank"], r["tied"]) for r in ranked] == [
        ("a", 1, True), ("b", 1, True), ("d", 3, True), ("c", 3, True)]
    # a and b overlap on both gains: tied; each is above c (deletion) and above d (insertion, overlapping on
    # deletion); c and d are not separated (touching intervals are not separated): tied, ordered by mean gain
    split = rank_methods([row("x", [0.3, 0.4], [0.0, 0.1]), row("y", [0.0, 0.1], [0.3, 0.4])])
    assert [r["rank"] for r in split] == [1, 1]  # each wins one gain: the intervals do not order them


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


# ---------------------------------------------------------------------------------------------------------------------
# With every explain step: the shared real run, and explain/run.py on its checkpoint

SUMMARY_KEYS = ("deletion_auc", "deletion_auc_random", "insertion_auc", "insertion_auc_random", "deletion_gain",
                "deletion_gain_ci", "insertion_gain", "insertion_gain_ci", "sanity_rank_corr", "sanity_rank_corr_ci",
                "trust_images", "trust_verdict")


@pytest.mark.slow
def test_a_training_run_reports_how_far_its_cams_can_be_trusted(trained):
    summary, out = trained["summary"], trained["out"]
    explain = summary["explain"]
    assert set(SUMMARY_KEYS) <= set(explain)
    # a class-stratified sample of the 200 evaluated images (the CPU default, 12), right and wrong predictions
    assert explain["trust_images"] == 12 and 0 <= explain["trust_mistakes"] <= 12
    assert explain["trust_verdict"] in (FAITHFUL, NOT_FAITHFUL, INCONCLUSIVE)
    for key in ("deletion_gain", "insertion_gain", "sanity_rank_corr"):
        low, high = explain[f"{key}_ci"]
        assert low <= explain[key] <= high
    assert explain["deletion_gain"] == pytest.approx(explain["deletion_auc_random"] - explain["deletion_auc"],
                                                     abs=1e-6)
    state = wandb_summary(trained["run_dir"])["summary"]
    for key in SUMMARY_KEYS:
        assert state[f"explain/{key}"] == pytest.approx(explain[key]) if key != "trust_verdict" else \
            state[f"explain/{key}"] == explain[key], key
    said = trained["result"].stdout + trained["result"].stderr
    assert explain["trust_line"] in said and f"trust: {explain['trust_verdict']} — gradcam on 12 images" in said
    assert f"deletion gain {explain['deletion_gain']:.3f} [{explain['deletion_gain_ci'][0]:.3f}, " in said
    rows = history(wandb_records(trained["run_dir"]))
    last = rows[-1]
    # the line plot's data (4 curves x 9 points) and the per-stage sanity table join the last epoch's row
    assert last["explain/faithfulness_curves_table._type"] == "table-file"
    assert last["explain/faithfulness_curves_table.nrows"] == 4 * 7  # 6 steps
    assert last["explain/sanity.nrows"] == 7  # fc, layer4, ..., conv1
    for name in ("faithfulness.png", "sanity.png"):
        with Image.open(out / name) as picture:
            assert picture.format == "PNG" and min(picture.size) > 300


@pytest.mark.slow
def test_compare_ranks_only_what_the_intervals_separate(trained, tmp_path):
    out = tmp_path / "compare"
    args = ("--checkpoint", str(trained["out"] / "best.pt"), "--compare", "gradcam,layercam", "--explain_samples=4",
            "--trust_images=16", "--trust=False", "--label_issues=False", f"--out_dir={out}",
            "--wandb_mode=offline")  # the comparison alone (it draws its own sample): the rest is tested elsewhere
    compared = run_cli(*args, script="explain/run.py", env={"WANDB_DIR": str(tmp_path)})
    assert compared.returncode == 0, compared.stderr[-2000:]
    table = json.loads((out / "cam_methods.json").read_text())
    assert sorted(r["method"] for r in table) == ["gradcam", "layercam"]
    assert [r["rank"] for r in table] == sorted(r["rank"] for r in table)
    first, second = table
    separated = any(first[f"{g}_gain_ci"][0] > second[f"{g}_gain_ci"][1] for g in ("deletion", "insertion"))
    assert (first["rank"] < second["rank"]) == separated and first["tied"] == second["tied"] == (not separated)
    # one weak model, two methods: never opposite verdicts unless their intervals are apart
    if {first["trust_verdict"], second["trust_verdict"]} == {FAITHFUL, NOT_FAITHFUL}:
        assert not all(_overlap(first[k], second[k]) for k in ("deletion_gain_ci", "insertion_gain_ci",
                                                                 "sanity_rank_corr_ci"))
    printed = [line.split()[:2] for line in compared.stdout.splitlines()
               if len(line.split()) > 1 and line.split()[1] in ("gradcam", "layercam")]
    assert printed == [[f"{'=' if r['tied'] else ''}{r['rank']}", r["method"]] for r in table]
    assert all(r["seconds_per_image"] > 0 and r["trust_images"] == 16 for r in table)
    with Image.open(out / "cam_methods.png") as picture:
        assert picture.size[0] > 3 * 128  # the image and one column per method
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    row = next(r for r in history(wandb_records(run_dir)) if "explain/cam_methods._type" in r)
    assert row["explain/cam_methods.nrows"] == 2
    again = run_cli(*args[:-2], f"--out_dir={tmp_path / 'again'}", "--wandb_mode=disabled", script="explain/run.py")
    assert again.returncode == 0, again.stderr[-2000:]
    repeated = json.loads((tmp_path / "again" / "cam_methods.json").read_text())
    assert [(r["method"], r["rank"], r["trust_verdict"], r["deletion_gain_ci"]) for r in repeated] == \
        [(r["method"], r["rank"], r["trust_verdict"], r["deletion_gain_ci"]) for r in table]  # same command, same
