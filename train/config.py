"""One typed source of truth for a training run: the defaults, the flags, the YAML file, and their validation.

Flags are the W&B config keys (``--batch_size``; ``--batch-size`` is accepted too), in ``--key=value`` or
``--key value`` form, booleans as ``--compile=False``. ``--config FILE.yaml`` supplies defaults; the command line
wins. Every problem is a :class:`ConfigError` whose message the entry points print as one ``error:`` line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Config",
    "ConfigError",
    "ErrorExitParser",
    "closest",
    "config_from_dict",
    "parse_args",
    "parse_bool",
    "read_yaml",
    "reject_unknown",
]


@dataclass
class Config:
    """Every setting of a training run; each field is a flag and a W&B config key."""

    # data
    data_dir: str = "data"  # image-folder root (train/, test/) or CIFAR-10 python batches; downloaded when absent
    train_subset: int = 0  # class-balanced, seeded subset of the training set (0 = all), for smoke runs
    test_subset: int = 0  # same for the test set
    cutout: int = 0  # side of the square cut out of each training image (0 = off)
    # model
    model: str = "resnet18_cifar"  # any timm model name; resnet18_cifar is registered by `import train`
    # optimisation: SGD-Nesterov, linear warm-up then linear decay to zero, label smoothing
    epochs: int = 20  # passes over the training set
    batch_size: int = 512  # images per optimizer step
    lr: float = 0.4  # peak learning rate, reached after warmup_epochs (0.1 per 128 images, linearly scaled)
    warmup_epochs: float = 4.0  # epochs of linear warm-up from lr/10 (may be fractional)
    weight_decay: float = 5e-4  # L2 on weights (not on biases or norm layers)
    momentum: float = 0.9  # Nesterov momentum
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    tta: bool = True  # evaluate with horizontal-flip test-time augmentation (val/acc); val/acc_no_tta is logged too
    seed: int = 0  # seeds the model init, subsets, shuffling and augmentation
    # system
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda, cuda:N
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16
    compile: bool = False  # torch.compile the model
    deterministic: bool = False  # deterministic kernels (slower on GPU): a resumed run then ends bit-identical
    eval_batch_size: int = 1024  # images per evaluation forward pass
    # outputs and resume
    out_dir: str = ""  # where checkpoints, summary.json and pictures go (default runs/<run_name>)
    run_name: str = ""  # W&B run name and default out_dir name (default: a timestamp)
    resume: str = ""  # a last.pt to continue from, or "auto": the newest last.pt of this out_dir/run_name (if any)
    # tracking
    wandb_project: str = "cifar-insight"  # W&B project
    wandb_entity: str = ""  # W&B entity (team or user); empty = your default
    wandb_mode: str = "auto"  # auto (online when W&B credentials exist, else offline), online, offline, disabled
    # explain
    explain_samples: int = 64  # most confident mistakes explained at the end of training (0 = skip explain)
    cam_method: str = "gradcam"  # torchcam method for the explain step
    cam_layer: str = "layer4"  # module(s) the CAM is computed on; comma-separated names are fused

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (what W&B and the checkpoints store)."""
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A bad flag, value or config file; the message is one line meant for the user."""


PRECISIONS = ("auto", "fp32", "bf16")
WANDB_MODES = ("auto", "online", "offline", "disabled")


def parse_bool(value: str | bool | int) -> bool:
    """Parse ``True/False/true/false/1/0/yes/no`` (and real bools) into a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "y", "on"):
        return True
    if text in ("false", "0", "no", "n", "off"):
        return False
    raise ValueError(f"expected True or False, got {value!r}")


def closest(name: str, choices: Sequence[str]) -> str:
    """A ``did you mean`` suffix naming the closest of ``choices`` to ``name`` (empty when none is close)."""
    match = difflib.get_close_matches(name.replace("-", "_"), list(choices), n=1, cutoff=0.5)
    return f" (did you mean --{match[0]}?)" if match else ""


_FIELDS = {f.name: f for f in fields(Config)}


def _coerce(key: str, value: Any) -> Any:
    """Convert ``value`` to the type of field ``key`` or raise a one-line :class:`ConfigError`."""
    kind = type(getattr(Config, key))
    try:
        if kind is bool:
            return parse_bool(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value)) if not isinstance(value, float) else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if value is None:
            return ""
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{key} expects {kind.__name__}, got {value!r}") from None


def _validate(config: Config) -> Config:
    """Check ranges and choices; raise :class:`ConfigError` naming the flag."""
    checks = [
        ("epochs", config.epochs >= 1, "must be >= 1"),
        ("batch_size", config.batch_size >= 1, "must be >= 1"),
        ("eval_batch_size", config.eval_batch_size >= 1, "must be >= 1"),
        ("lr", config.lr > 0, "must be > 0"),
        ("warmup_epochs", config.warmup_epochs >= 0, "must be >= 0"),
        ("weight_decay", config.weight_decay >= 0, "must be >= 0"),
        ("momentum", 0 <= config.momentum < 1, "must be in [0, 1)"),
        ("label_smoothing", 0 <= config.label_smoothing < 1, "must be in [0, 1)"),
        ("train_subset", config.train_subset >= 0, "must be >= 0 (0 = all)"),
        ("test_subset", config.test_subset >= 0, "must be >= 0 (0 = all)"),
        ("cutout", 0 <= config.cutout <= 32, "must be in [0, 32]"),
        ("seed", config.seed >= 0, "must be >= 0"),
        ("explain_samples", config.explain_samples >= 0, "must be >= 0"),
        ("precision", config.precision in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}"),
        ("wandb_mode", config.wandb_mode in WANDB_MODES, f"must be one of {', '.join(WANDB_MODES)}"),
        ("device", config.device == "auto" or config.device.split(":")[0] in ("cpu", "cuda", "mps"),
         "must be auto, cpu, cuda or cuda:N"),
        ("model", bool(config.model), "must not be empty"),
    ]
    for key, ok, requirement in checks:
        if not ok:
            raise ConfigError(f"--{key} {requirement}, got {getattr(config, key)!r}")
    _check_model(config.model)
    return config


def _check_model(name: str) -> None:
    import timm

    import train  # noqa: F401  (registers resnet18_cifar)

    if not timm.is_model(name):
        match = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f" (did you mean {match[0]}?)" if match else ""
        raise ConfigError(f"--model {name!r} is not a timm model{hint}")


def read_yaml(path: str, what: str) -> Any:
    """Parse the YAML file ``path`` safely (no code runs); problems are one-line :class:`ConfigError` naming ``what``
    (e.g. ``"--config file"``, ``"sweep spec"``)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{what} {path!r} does not exist")
    try:
        return yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path!r} cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None)
        raise ConfigError(f"{what} {path!r} is not valid YAML{where}" + (f": {problem}" if problem else "")) from None


def load_yaml(path: str) -> dict[str, Any]:
    """Read a ``--config`` YAML file of flag defaults, refusing unknown keys."""
    data = read_yaml(path, "--config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config file {path!r} must hold a mapping of flag: value")
    clean = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in _FIELDS:
            raise ConfigError(f"--config file {path!r}: unknown key {key!r}{closest(str(key), list(_FIELDS))}")
        clean[name] = value
    return clean


def reject_unknown(unknown: Sequence[str], flags: Sequence[str]) -> None:
    """Raise a :class:`ConfigError` for the first argument argparse did not know, suggesting the closest flag."""
    if not unknown:
        return
    arg = next((u for u in unknown if u.startswith("-")), unknown[0])
    if not arg.startswith("-"):
        raise ConfigError(f"unexpected argument {arg!r} (flags look like --key=value)")
    flag = arg.split("=", 1)[0]
    raise ConfigError(f"unknown flag {flag}{closest(flag.lstrip('-'), flags)}")


class ErrorExitParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`ConfigError` (one line) instead of printing usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def _parser() -> ErrorExitParser:
    parser = ErrorExitParser(prog="train/run.py", allow_abbrev=False,
                             description="Train a timm classifier on CIFAR-10 (or any image folder), tracked in W&B.")
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of flag defaults; the command line wins")
    for f in fields(Config):
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        default = getattr(Config, f.name)
        parser.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, metavar=type(default).__name__.upper(),
                            help=f"(default: {default!r})")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, set[str]]:
    """Parse the command line (and its ``--config`` file) into a validated :class:`Config`.

    Returns:
        The config and the set of keys given explicitly (on the command line or in the file), which resume uses
        to decide what overrides a checkpoint's config.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    namespace, unknown = parser.parse_known_args(argv)
    reject_unknown(unknown, list(_FIELDS))
    given = vars(namespace)
    values = load_yaml(given.pop("config")) if given.get("config") else {}
    given.pop("config", None)
    values.update(given)
    config = Config(**{key: _coerce(key, value) for key, value in values.items()})
    return _validate(config), set(values)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a validated :class:`Config` from a stored dict (a checkpoint's), ignoring keys this version lacks."""
    return _validate(Config(**{k: _coerce(k, v) for k, v in data.items() if k in _FIELDS}))
