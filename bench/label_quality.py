"""Label issues scored against people: how many of the CIFAR-10 test images that people judged mislabelled a run
flags, and how many labels people kept it flags too.

The candidates are ``../shared/data/cifar10-test-label-candidates-dev.csv`` (its README): test images that confident
learning flagged in Northcutt, Athalye & Mueller (NeurIPS 2021), each judged by five people; ``label_error`` when
fewer than three kept the given label. A run's flags are matched to them by file (``test/<class>/<k>.jpg``). Only
candidates were judged, so a flag outside them is not known to be wrong, and is counted only in ``flags``.

Scored: the run's own ``label_issues.json`` (the method it ran), and, from its ``predictions.npz`` (the logits of
every checked image and of its mirror image), the variants of the method (:func:`variants`): which views are
averaged (``flip_translate`` too where ``bench/tta_views.py --out`` added the shifted views; ``ensemble_flip``: the
flip views of the models of ``--ensemble`` folders too, same images), how the probabilities are made (softmax; less
label smoothing's floor; a temperature fitted out of sample by two-fold cross-fitting on the given labels; each
image's centred logits normalized to unit length, then such a temperature: ``logit_norm``),
cleanlab's filter (``filter_by``) and ranking (``rank_by``).
Figures per method: ``errors_flagged`` (of ``errors``), errors in the top 25 / 50 / 100 flags, ``kept_flagged`` (of
``kept``), ``flags``. With ``--data_dir`` (the JPEG copy) and ``--png``, a picture: the errors the run flagged beside
the kept labels it flagged, each with its given and suggested class.

    python bench/label_quality.py docs/real-run --data_dir cifar10-jpeg --png docs/label_quality.png
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python bench/label_quality.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench import common

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = REPO.parent / "shared" / "data" / "cifar10-test-label-candidates-dev.csv"
TOPS = (25, 50, 100)
VERDICTS = ("label_error", "label_kept")
FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given")
RANKINGS = ("normalized_margin", "self_confidence")
PREDICTIONS = ("file", "label", "logits", "logits_flip")  # what the variants read of a predictions.npz


def read_candidates(path: Path) -> dict[str, str]:
    """``file`` → ``human_verdict`` of the candidates file; a malformed file is the script's one-line error."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        common.fail(f"--candidates {str(path)!r} cannot be read ({exc})")
    if not rows or not {"file", "human_verdict"} <= set(rows[0]):
        common.fail(f"--candidates {str(path)!r} has no file and human_verdict columns")
    bad = [row["human_verdict"] for row in rows if row["human_verdict"] not in VERDICTS]
    if bad:
        common.fail(f"--candidates {str(path)!r}: human_verdict must be label_error or label_kept, got {bad[0]!r}")
    return {row["file"]: row["human_verdict"] for row in rows}


def score(flagged_files: list[str], candidates: dict[str, str]) -> dict[str, int]:
    """The figures of one ranked list of flagged files (likeliest label error first)."""
    verdicts = [candidates.get(name) for name in flagged_files]
    result = {"errors": sum(v == "label_error" for v in candidates.values()),
              "kept": sum(v == "label_kept" for v in candidates.values()), "flags": len(flagged_files),
              "errors_flagged": verdicts.count("label_error"), "kept_flagged": verdicts.count("label_kept")}
    for top in TOPS:
        result[f"errors_top{top}"] = verdicts[:top].count("label_error")
    return result


def fitted_temperature(logits, labels):
    """Per image, the logits divided by a temperature fitted on the other half of the images (even / odd positions,
    negative log-likelihood of the given labels): calibrated out of sample, as the images' own labels are judged."""
    import numpy as np
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    def fit(idx):
        def nll(log_t):
            return -log_softmax(logits[idx] / np.exp(log_t), axis=1)[np.arange(len(idx)), labels[idx]].mean()

        return float(np.exp(minimize_scalar(nll, bounds=(-6, 3), method="bounded").x))  # T in [0.0025, 20]

    even, odd = np.arange(0, len(labels), 2), np.arange(1, len(labels), 2)
    scaled = logits.copy()
    temperatures = (fit(odd), fit(even))
    scaled[even] /= temperatures[0]
    scaled[odd] /= temperatures[1]
    return scaled, temperatures


def variants(saved, others: list | None = None) -> list[dict]:
    """Every variant of the method on the saved logits: its settings and ranked flagged positions. ``others``: the
    saved logits of other models over the same images; their flip views averaged with this one's are the
    ``ensemble_flip`` view, whose flags are also ranked by cleanlab's ``get_label_quality_ensemble_scores`` (each
    model's scores averaged, weighted by its accuracy: ``rank_by`` ``ensemble_normalized_margin`` and
    ``ensemble_self_confidence``)."""
    import numpy as np
    from scipy.special import softmax

    from explain.labels import _cleanlab, without_floor

    cleanlab = _cleanlab()
    labels = saved["label"].astype(np.int64)
    single, mirror = saved["logits"].astype(np.float64), saved["logits_flip"].astype(np.float64)
    views = [("single", single), ("flip", (single + mirror) / 2)]
    if "logits_translate" in saved:  # bench/tta_views.py --out: airbench's tta_level 2, half flip, half translate
        translate = (saved["logits_translate"].astype(np.float64) + saved["logits_translate_flip"].astype(np.float64))
        views.append(("flip_translate", (single + mirror) / 4 + translate / 4))
    members = {}  # view -> each model's own flip logits, for cleanlab's ensemble scores
    if others:  # each model's flip view, averaged over the models (logits: their scales are alike, all trained here)
        flips = [(other["logits"].astype(np.float64) + other["logits_flip"].astype(np.float64)) / 2 for other in others]
        views.append(("ensemble_flip", ((single + mirror) / 2 + sum(flips)) / (1 + len(flips))))
        members["ensemble_flip"] = [(single + mirror) / 2, *flips]
    rows = []

    def transforms(logits):
        scaled, temperatures = fitted_temperature(logits, labels)
        # logit normalization (Wei et al. 2022's LogitNorm, at prediction time): each image's centred logits at unit
        # length, then one temperature fitted out of sample as above: confidence from the logits' direction only
        centred = logits - logits.mean(1, keepdims=True)
        normed, norm_temperatures = fitted_temperature(
            centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12), labels)
        for probs_name, probs, fitted in (("softmax", softmax(logits, axis=1), None),
                                          ("without_floor", without_floor(softmax(logits, axis=1)), None),
                                          ("temperature", softmax(scaled, axis=1), temperatures),
                                          ("logit_norm", softmax(normed, axis=1), norm_temperatures)):
            yield probs_name, np.ascontiguousarray(probs / probs.sum(1, keepdims=True)), fitted

    for view, logits in views:
        member_probs = {}  # probabilities name -> each model's, made the same way as the averaged ones
        for member in members.get(view, []):
            for probs_name, probs, _ in transforms(member):
                member_probs.setdefault(probs_name, []).append(probs)
        for probs_name, probs, temperatures in transforms(logits):
            rankings = {rank_by: cleanlab.rank.get_label_quality_scores(labels, probs, method=rank_by)
                        for rank_by in RANKINGS}
            if probs_name in member_probs:  # cleanlab's scores of each model, averaged weighted by accuracy
                rankings |= {f"ensemble_{rank_by}": cleanlab.rank.get_label_quality_ensemble_scores(
                    labels, member_probs[probs_name], method=rank_by, weight_ensemble_members_by="accuracy",
                    verbose=False) for rank_by in RANKINGS}
            for filter_by in FILTERS:
                flagged = cleanlab.filter.find_label_issues(labels, probs, filter_by=filter_by, n_jobs=1)
                where = np.flatnonzero(flagged)
                for rank_by, quality in rankings.items():
                    ranked = where[np.argsort(quality[where], kind="stable")]
                    rows.append({"view": view, "probs": probs_name, "filter_by": filter_by, "rank_by": rank_by,
                                 "temperatures": temperatures,
                                 "ranked": ranked})
    return rows


def ensemble_member(folder: Path, files: list[str], labels, shape: tuple[int, ...]) -> dict:
    """The logits of another model's ``predictions.npz`` over the same images (same files, order and labels, logits
    of the run's ``shape``: the same classes), or the script's one-line error."""
    import numpy as np

    npz = folder / "predictions.npz"
    member = common.read_predictions(npz, PREDICTIONS, flag="--ensemble")
    if member["file"].tolist() != files or not np.array_equal(member["label"], labels):
        common.fail(f"--ensemble {npz} holds other images (or another order or labels) than the run's: an ensemble "
                    f"needs predictions of the same images")
    if member["logits"].shape != shape or member["logits_flip"].shape != shape:
        common.fail(f"--ensemble {npz} has logits of shape {member['logits'].shape}, the run's {shape}: an ensemble "
                    f"needs models of the same classes")
    return member


def picture(run_flags: list[dict], candidates: dict[str, str], data_dir: Path, path: Path, title: str) -> None:
    """The flagged label errors (top row) beside the flagged kept labels (bottom rows), each captioned with its given
    and suggested class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    groups = {verdict: [flag for flag in run_flags if candidates.get(flag["file"]) == verdict][:16]
              for verdict in VERDICTS}
    columns = 8
    rows = {verdict: max(1, -(-len(items) // columns)) for verdict, items in groups.items()}
    figure, axes = plt.subplots(sum(rows.values()), columns, figsize=(columns * 1.6, sum(rows.values()) * 1.9 + 0.9),
                                squeeze=False)
    figure.suptitle(title, fontsize=11)
    row = 0
    for verdict, items in groups.items():
        for k in range(rows[verdict] * columns):
            axis = axes[row + k // columns][k % columns]
            axis.axis("off")
            if k < len(items):
                flag = items[k]
                with Image.open(data_dir / flag["file"]) as image:
                    axis.imshow(image.convert("RGB"), interpolation="nearest")
                people = "people: wrong label" if verdict == "label_error" else "people: label kept"
                axis.set_title(f"given {flag['given']}\nmodel {flag['suggested']}\n{people}", fontsize=8,
                               color="#b00020" if verdict == "label_error" else "#333333")
        row += rows[verdict]
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = common.Parser(__doc__)
    parser.add_argument("run", type=common.folder("label_issues.json"), help="a run (or explain) folder")
    parser.add_argument("--candidates", type=common.file, default=str(CANDIDATES),
                        help="the human verdicts (the dev half: ../shared/data/cifar10-test-label-candidates-dev.csv)")
    parser.add_argument("--data_dir", type=common.folder("test"), default=None,
                        help="the image folder the run checked (for --png's thumbnails)")
    parser.add_argument("--png", type=common.out_file, default=None, help="the picture to write (needs --data_dir)")
    parser.add_argument("--top", type=common.count(1, 10_000), default=20, help="variants printed, best first")
    parser.add_argument("--ensemble", type=common.folder("predictions.npz"), action="append", default=[],
                        help="another model's run (or explain) folder over the same images (repeatable): the "
                             "ensemble_flip variants average its flip logits with the run's")
    parser.add_json(REPO / "bench" / "results" / "label_quality.json")
    args = parser.parse(argv)
    if args.png is not None and args.data_dir is None:
        common.fail("--png needs --data_dir (the images the run checked)")
    candidates = read_candidates(args.candidates)
    try:
        issues = json.loads((args.run / "label_issues.json").read_text())
        run_flags = list(issues["issues"])
        run_files = [flag["file"] for flag in run_flags]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        common.fail(f"{args.run / 'label_issues.json'} is not a label_issues.json ({type(exc).__name__})")
    if any(not isinstance(name, str) for name in run_files):
        common.fail(f"{args.run / 'label_issues.json'} names no files (a run on CIFAR-10's python batches): the "
                    f"candidates are matched by file")
    result = {"run": str(args.run), "candidates": str(args.candidates), "checked": issues.get("checked"),
              "run_method": {"method": issues.get("method"), **score(run_files, candidates)}}
    print(f"{args.run}: {line(result['run_method'])} ({issues.get('method')})")
    npz = args.run / "predictions.npz"
    if npz.is_file():
        saved = common.read_predictions(npz, PREDICTIONS)
        files, labels, shape = saved["file"].tolist(), saved["label"], saved["logits"].shape
        others = [ensemble_member(folder, files, labels, shape) for folder in args.ensemble]
        try:
            rows = variants(saved, others)
        except (ValueError, KeyError) as exc:  # arrays that do not fit together (a translate view without its mirror)
            common.fail(f"{npz} is not a predictions.npz ({type(exc).__name__}: {exc})")
        result["ensemble"] = [str(folder) for folder in args.ensemble]
        for row in rows:
            row.update(score([files[i] for i in row.pop("ranked").tolist()], candidates))
        rows.sort(key=lambda r: (-r["errors_top100"], -r["errors_flagged"], r["kept_flagged"], r["flags"]))
        result["variants"] = rows
        print(f"{len(rows)} variants from {npz}, best first (errors in the top 100, then errors flagged):")
        for row in rows[:args.top]:
            print(f"  {row['view']:14} {row['probs']:13} {row['filter_by']:19} {row['rank_by']:26} {line(row)}")
    elif args.ensemble:
        common.fail(f"--ensemble needs {npz} (the run's own predictions to average with)")
    else:
        print(f"(no {npz}: only the run's own flags are scored)")
    if args.png is not None:
        own = result["run_method"]
        picture(run_flags, candidates, args.data_dir, args.png,
                f"{args.run.name}: {own['errors_flagged']} of {own['errors']} human-confirmed label errors flagged "
                f"(red), {own['kept_flagged']} of {own['kept']} kept labels flagged (black); likeliest 16 of each "
                f"shown; {own['flags']} flags")
        result["png"] = str(args.png)
        print(f"wrote {args.png}")
    results = common.Results(args.json, None, depth=1)
    return results.finish({Path(args.run).resolve().name: {**result, **common.stamp("bench/label_quality.py", argv)}},
                          measured=True)


def line(row: dict) -> str:
    """One method's figures in words."""
    return (f"{row['errors_flagged']}/{row['errors']} errors flagged ({row['errors_top25']}/{row['errors_top50']}/"
            f"{row['errors_top100']} in the top 25/50/100), {row['kept_flagged']}/{row['kept']} kept labels flagged, "
            f"{row['flags']} flags")


if __name__ == "__main__":
    common.entry(main)
