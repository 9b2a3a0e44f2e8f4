"""One typed source of truth for a training run: the defaults, the flags, the YAML file, and their validation.

Every field of :class:`Config` is a flag of ``train/run.py`` and a W&B config key; its docstring is the flag's
``--help`` text. Flags come as ``--batch_size`` or ``--batch-size``, ``--key=value`` or ``--key value``, booleans as
``--compile=False`` or bare (``--compile`` = True); ``--config FILE.yaml`` supplies defaults and the command line
wins. :func:`build_parser` makes the argparse parser of any dataclass (``explain/run.py`` and ``sweeps/local.py``
use it too), :func:`closest` is the one "did you mean" helper. Every problem is a :class:`ConfigError` whose message
the entry points print as one ``error:`` line (:func:`one_line` escapes line breaks).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import re
import sys
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml
from simple_parsing.docstring import get_attribute_docstring

__all__ = [
    "Config",
    "ConfigError",
    "build_parser",
    "closest",
    "coerce",
    "config_from_dict",
    "field_help",
    "one_line",
    "parse_args",
    "parse_bool",
    "parse_flags",
    "read_yaml",
    "resolve",
    "train_parser",
]


@dataclass
class Config:
    """Training settings: each is a flag of train/run.py and a W&B config key."""

    # ---- data ----------------------------------------------------------------------------------------------------
    data_dir: str = "data"
    """Image-folder root (train/ and test/ class folders) or CIFAR-10 python batches; CIFAR-10 is downloaded there
    when neither is present."""
    train_subset: int = 0
    """Class-balanced, seeded subset of the training set, for smoke runs (0 = all)."""
    test_subset: int = 0
    """Class-balanced, seeded subset of the test set (0 = all)."""
    cutout: int = 0
    """Side of the square cut out of each training image (0 = off)."""
    flip: str = "random"
    """Horizontal flips of the training images: random (each image mirrored with probability 1/2 every epoch) or
    alternate (each image's side drawn once, then all mirrored together every other epoch: airbench's scheme)."""
    min_res: int = 16
    """Progressive resizing: the first epoch trains on images scaled down to this side (pixels), rising linearly in
    steps of 4 to their own size over the first --res_ramp of the epochs; the last epoch is always at full size;
    cheaper early epochs (0 = off: every epoch at full size)."""
    res_ramp: float = 0.75
    """Fraction of the epochs over which --min_res rises to the full resolution."""
    # ---- model ---------------------------------------------------------------------------------------------------
    model: str = "resnet18_cifar"
    """Any timm model name; resnet18_cifar is registered by `import train`."""
    stem_init: str = "auto"
    """Initialization of the model's first convolution: whiten (its first filters set to ± the whitening directions
    of the training images' patches, as airbench does; computed on up to 5,000 training images before the first
    step), default (the model's own), or auto (whiten when the model names a first Conv2d in its timm
    pretrained_cfg, else default); W&B's config records what it resolved to."""
    # ---- optimisation: SGD-Nesterov, linear warm-up then linear decay, label smoothing -----------------------------
    epochs: int = 20
    """Passes over the training set."""
    batch_size: int | None = None
    """Images per optimizer step (the global batch under torchrun); unset = 512 (128 on the CPU), halved (not below
    32) until an epoch of the training set takes at least 48 steps."""
    lr: float | None = None
    """Peak learning rate; unset = lr_base * batch_size / lr_base_size (0.4 at the default batch of 512)."""
    lr_base: float = 0.1
    """Learning rate per lr_base_size images of batch, scaled linearly with batch_size when --lr is not given."""
    lr_base_size: int = 128
    """Batch size at which the learning rate is lr_base."""
    warmup_epochs: float | None = None
    """Epochs of linear warm-up from lr/10, may be fractional; unset = 20% of --epochs."""
    weight_decay: float = 5e-4
    """L2 penalty on weights (not on biases or norm layers)."""
    momentum: float = 0.9
    """Nesterov momentum, in (0, 1)."""
    label_smoothing: float = 0.1
    """Cross-entropy label smoothing."""
    ema: float = 0.0
    """Decay of an exponential moving average of the weights (timm's ModelEmaV3, ramped up by its warm-up), which is
    then what is evaluated, explained and saved as the model; 0 = off (e.g. 0.999)."""
    tta: bool = True
    """Evaluate with horizontal-flip test-time augmentation (val/acc); the single pass is logged as val/acc_no_tta."""
    seed: int = 0
    """Seeds the model init, the subsets, the probe images, shuffling and augmentation."""
    # ---- system --------------------------------------------------------------------------------------------------
    device: str = "auto"
    """auto (CUDA when available, else the CPU), cpu, cuda or cuda:N."""
    precision: str = "auto"
    """auto (bf16 autocast on CUDA and on a CPU that runs bf16 natively, fp32 elsewhere), fp32 or bf16."""
    compile: bool = False
    """torch.compile the model; its compile time is reported as compile_seconds."""
    deterministic: bool = False
    """Deterministic kernels (slower on a GPU): a killed and resumed run then ends bit-identical."""
    eval_batch_size: int = 1024
    """Images per evaluation (and explain) forward pass."""
    # ---- outputs and resume ----------------------------------------------------------------------------------------
    out_dir: str = ""
    """Folder of the outputs: checkpoints, metrics.jsonl, summary.json, pictures; empty = runs/<run_name>."""
    run_name: str = ""
    """W&B run name and out_dir's default name; empty = the start time (YYYYmmdd-HHMMSS)."""
    resume: str = ""
    """A last.pt to continue, or auto: the newest last.pt of this out_dir/run_name, else a new run; empty = new."""
    keep_checkpoints: str = "best"
    """What a finished run keeps: best (best.pt, the model), all (best.pt and the whole last.pt, optimizer state
    included) or none (no weights, no W&B model artifact). Until the run finishes last.pt holds everything resume
    needs; at the finish it becomes the run's record (under 100 kB) unless all."""
    # ---- tracking ------------------------------------------------------------------------------------------------
    wandb_project: str = "cifar-insight"
    """W&B project."""
    wandb_entity: str = ""
    """W&B entity (team or user); empty = your default."""
    wandb_mode: str = "auto"
    """auto (online when W&B credentials exist, else offline; never prompts), online, offline or disabled."""
    # ---- explain -------------------------------------------------------------------------------------------------
    explain_samples: int = 64
    """Most confident test mistakes explained with CAMs and tables (0 = no explain step after training)."""
    cam_method: str = "gradcam"
    """torchcam method of the explain step and the probes (gradcam, gradcampp, layercam, scorecam, ...)."""
    cam_layer: str = "layer4"
    """Module the CAMs are computed on; comma-separated names are fused."""
    trust: bool = True
    """Measure how far the explain step's CAMs can be trusted (deletion/insertion vs random, randomization check)."""
    label_issues: bool = True
    """Find the test images whose label is likely wrong (cleanlab), listed in label_issues.json and .png and W&B."""
    trust_images: int | None = None
    """Images the trust figures are measured on: a seeded sample of the explained split stratified by class and by
    right/wrong prediction (half mistakes when there are that many); unset = 256 on a GPU, 32 on the CPU."""
    probe_images: int = 20
    """Fixed test images whose prediction and CAM are logged before training and after every epoch (0 = off)."""

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (what W&B and the checkpoints store)."""
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A bad flag, value or config file; the message is one line meant for the user."""


PRECISIONS = ("auto", "fp32", "bf16")
WANDB_MODES = ("auto", "online", "offline", "disabled")
KEEP_CHECKPOINTS = ("best", "all", "none")
FLIPS = ("random", "alternate")
STEM_INITS = ("auto", "whiten", "default")
MAX_RES = 1024  # --min_res: above any image size this project trains on
DEFAULT_BATCH, MIN_BATCH, MIN_STEPS = 512, 32, 48  # the default batch, fitted to small training sets (fitted_batch)
CPU_BATCH = 128  # the default batch on the CPU: its fastest at full size (bench/results/recipe_cpu.json, profile)
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
MAX_NAME_BYTES = 200  # a run name becomes a folder name (255 bytes on most file systems, W&B adds to it)
MAX_PROBES = 100  # each is a W&B image per epoch and a row of probes.png
MAX_EXPLAINED = 10_000  # rows of the explain/misclassified table (3 images each)
MAX_TRUST_IMAGES = 10_000  # each costs dozens of forwards and a CAM per randomization stage
MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 32


# ---------------------------------------------------------------------------------------------------------------------
# Values


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


LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")  # what str.splitlines() splits at


def one_line(text: str) -> str:
    """``text`` with its line breaks escaped (``\\n`` for a newline): an ``error:`` line stays one line even when a
    file name in it holds a newline."""
    return LINE_BREAKS.sub(lambda match: repr(match[0])[1:-1], text)


def closest(name: str, choices: Iterable[str], prefix: str = "--") -> str:
    """The one "did you mean" helper: `` (did you mean --x?)`` for the choice closest to ``name``, else ``""``."""
    folded = {}  # case-insensitive: --split TEST means test
    for choice in choices:
        folded.setdefault(str(choice).lower(), choice)
    match = difflib.get_close_matches(str(name).replace("-", "_").lower(), list(folded), n=1, cutoff=0.5)
    return f" (did you mean {prefix}{folded[match[0]]}?)" if match else ""


def _base_type(cls: type, name: str) -> type:
    """The type of field ``name`` of dataclass ``cls``, ``X | None`` read as ``X``."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args and typing.get_origin(hint) is not list else hint


def coerce(key: str, value: Any, cls: type = Config) -> Any:
    """Convert ``value`` (a flag's text, a YAML or checkpoint value) to the type of field ``key`` of ``cls``.

    Raises:
        ConfigError: one line naming the flag, e.g. ``--lr expects float, got 'abc'``.
    """
    kind = _base_type(cls, key)
    default = next(f for f in fields(cls) if f.name == key).default
    if value is None and default is None:
        return None  # an optional setting left unset (e.g. `lr: null` in a YAML file)
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
        if typing.get_origin(kind) is list:
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return list(value)
        if value is None or isinstance(value, dict | list | tuple):
            raise ValueError
        return str(value)
    except (TypeError, ValueError, OverflowError):
        name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"--{key} expects {name}, got {value!r}") from None


def _validate(config: Config) -> Config:
    """Check ranges and choices; raise :class:`ConfigError` naming the flag."""
    checks = [
        ("epochs", config.epochs >= 1, "must be >= 1"),
        ("batch_size", config.batch_size is None or config.batch_size >= 1, "must be >= 1"),
        ("eval_batch_size", config.eval_batch_size >= 1, "must be >= 1"),
        ("lr", config.lr is None or config.lr > 0, "must be > 0"),
        ("lr_base", config.lr_base > 0, "must be > 0"),
        ("lr_base_size", config.lr_base_size >= 1, "must be >= 1"),
        ("warmup_epochs", config.warmup_epochs is None or config.warmup_epochs >= 0, "must be >= 0"),
        ("weight_decay", config.weight_decay >= 0, "must be >= 0"),
        ("momentum", 0 < config.momentum < 1, "must be in (0, 1) (Nesterov momentum needs momentum > 0)"),
        ("label_smoothing", 0 <= config.label_smoothing < 1, "must be in [0, 1)"),
        ("ema", 0 <= config.ema < 1, "must be in [0, 1) (0 = off)"),
        ("train_subset", config.train_subset >= 0, "must be >= 0 (0 = all)"),
        ("test_subset", config.test_subset >= 0, "must be >= 0 (0 = all)"),
        ("cutout", 0 <= config.cutout <= 32, "must be in [0, 32]"),
        ("flip", config.flip in FLIPS, f"must be one of {', '.join(FLIPS)}"),
        ("stem_init", config.stem_init in STEM_INITS, f"must be one of {', '.join(STEM_INITS)}"),
        ("min_res", config.min_res == 0 or 8 <= config.min_res <= MAX_RES, f"must be 0 (off) or in [8, {MAX_RES}]"),
        ("res_ramp", 0 < config.res_ramp <= 1, "must be in (0, 1]"),
        ("seed", 0 <= config.seed <= MAX_SEED, f"must be in [0, {MAX_SEED}]"),
        ("explain_samples", 0 <= config.explain_samples <= MAX_EXPLAINED, f"must be in [0, {MAX_EXPLAINED}]"),
        ("probe_images", 0 <= config.probe_images <= MAX_PROBES, f"must be in [0, {MAX_PROBES}]"),
        ("trust_images", config.trust_images is None or 2 <= config.trust_images <= MAX_TRUST_IMAGES,
         f"must be in [2, {MAX_TRUST_IMAGES}] (an interval needs two images)"),
        ("precision", config.precision in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}"),
        ("wandb_mode", config.wandb_mode in WANDB_MODES, f"must be one of {', '.join(WANDB_MODES)}"),
        ("keep_checkpoints", config.keep_checkpoints in KEEP_CHECKPOINTS,
         f"must be one of {', '.join(KEEP_CHECKPOINTS)}"),
        ("device", re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,3})?", config.device) is not None,
         "must be auto, cpu, cuda or cuda:N"),
        ("model", bool(config.model), "must not be empty"),
        ("cam_method", bool(config.cam_method), "must not be empty"),
        ("cam_layer", bool(config.cam_layer.strip(" ,")), "must name a module"),
        ("run_name", _plain_name(config.run_name), f"must be a plain name of at most {MAX_NAME_BYTES} bytes "
                                                    "(no / or \\, not . or ..)"),
    ]
    for key, ok, requirement in checks:
        if not ok:
            raise ConfigError(f"--{key} {requirement}, got {getattr(config, key)!r}")
    for key in ("wandb_project", "wandb_entity"):
        problem = wandb_name_problem(getattr(config, key))
        if problem:
            raise ConfigError(f"--{key} {getattr(config, key)!r} is not a name W&B accepts: {problem}")
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, str) and ("\x00" in value or len(value.encode(errors="replace")) > 4096):
            raise ConfigError(f"--{f.name} must be text without NUL bytes and at most 4096 bytes long")
    return config


def wandb_name_problem(name: str) -> str | None:
    """Why W&B refuses ``name`` as a project (or entity), or None: W&B's own rule (``wandb.Settings`` checks the
    project: at most 128 characters, none of ``/ \\ # ? % :``), applied to the entity too, the other part of a run's
    path. Checked when the flags are parsed: ``wandb.init`` would refuse it with a traceback after the data loaded."""
    if not name:
        return None
    try:
        import wandb
    except ImportError:  # no W&B on this machine (a stock image running the benchmarks): nothing will use the name
        return None
    try:
        wandb.Settings(project=name)
    except wandb.errors.UsageError as exc:
        return str(exc).split(": ", 1)[-1]
    return None


def _plain_name(name: str) -> bool:
    return not name or (len(name.encode(errors="replace")) <= MAX_NAME_BYTES and name not in (".", "..")
                        and not any(c in name for c in "/\\\x00"))


def fitted_batch(train_images: int, world_size: int = 1, start: int = DEFAULT_BATCH) -> int:
    """The default ``batch_size`` for a training set of ``train_images``: ``start`` (DEFAULT_BATCH, CPU_BATCH on the
    CPU), halved down to MIN_BATCH until an epoch takes at least MIN_STEPS steps (a multiple of ``world_size``). At
    512 a 3,000-image epoch is 5 steps at lr 0.4 and the run diverges; at 32 it is 93 steps at lr 0.025
    (BENCHMARKS.md, "The default batch on small data")."""
    batch = start
    while batch > MIN_BATCH and train_images < MIN_STEPS * batch:
        batch //= 2
    return max(world_size, batch - batch % world_size)


def resolve(config: Config, train_images: int | None = None, world_size: int = 1,
            start_batch: int = DEFAULT_BATCH) -> Config:
    """Fill the settings derived from others when not given: ``batch_size`` (:func:`fitted_batch`, once the training
    set's size is known: until then it and an unset ``lr`` stay None), ``lr`` (linear scaling rule, as timm's
    ``lr_base``) and ``warmup_epochs`` (a fifth of the run, so a short run still warms up and decays). W&B and the
    checkpoints record the resolved values."""
    if config.batch_size is None and train_images is not None:
        config.batch_size = fitted_batch(train_images, world_size, start_batch)
    if config.lr is None and config.batch_size is not None:
        config.lr = config.lr_base * config.batch_size / config.lr_base_size
    if config.warmup_epochs is None:
        config.warmup_epochs = 0.2 * config.epochs
    return config


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a validated, resolved :class:`Config` from a stored dict (a checkpoint's), ignoring unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"a stored config must be a mapping, got {type(data).__name__}")
    names = {f.name for f in fields(Config)}
    return resolve(_validate(Config(**{k: coerce(k, v) for k, v in data.items() if k in names})))


# ---------------------------------------------------------------------------------------------------------------------
# YAML: safe (no code runs) and bounded (no alias expansion, no deep nesting, no huge files)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases and with a depth limit: a 60 KB "billion laughs" file of nested aliases
    would expand to gigabytes, and a file nested thousands deep would exhaust the recursion limit."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted",
                                              self.peek_event().start_mark)
        self.depth += 1
        if self.depth > MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep",
                                              self.peek_event().start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def read_yaml(path: str, what: str) -> Any:
    """Parse the YAML file ``path`` safely; problems are one-line :class:`ConfigError` naming ``what`` (e.g.
    ``"--config file"``, ``"sweep spec"``)."""
    file = Path(path)
    try:
        if not file.is_file():
            raise ConfigError(f"{what} {path!r} does not exist")
        if file.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{what} {path!r} is larger than {MAX_YAML_BYTES // 1024} KB")
        return yaml.load(file.read_text(), Loader=_BoundedLoader)  # noqa: S506  (a SafeLoader subclass)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
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
    names = [f.name for f in fields(Config)]
    clean = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise ConfigError(f"--config file {path!r}: unknown key {str(key)[:100]!r}{closest(str(key), names)}")
        clean[name] = value
    return clean


# ---------------------------------------------------------------------------------------------------------------------
# The command line, generated from dataclasses


class _ErrorRaisingParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`ConfigError` (one line) instead of printing usage and exiting."""

    flag_names: list[str]  # every flag's field name, for "did you mean"

    def error(self, message: str) -> typing.NoReturn:
        # argparse names an option by all its spellings ("argument --out_dir/--out-dir: ..."): keep the first
        match = re.fullmatch(r"argument (--[\w-]+)(?:/[^:]*)?: (.*)", message, flags=re.DOTALL)
        raise ConfigError(f"{match[1]}: {match[2]}" if match else message)


def field_help(cls: type, name: str) -> str:
    """The docstring below field ``name`` of dataclass ``cls``, on one line (the flag's ``--help`` text)."""
    return " ".join(get_attribute_docstring(cls, name).docstring_below.split())


def build_parser(prog: str, description: str, groups: Sequence[tuple[type, Sequence[str] | None]],
                 defaults: dict[str, str] | None = None, helps: dict[str, str] | None = None,
                 titles: dict[type, str] | None = None) -> _ErrorRaisingParser:
    """An argparse parser with one flag per field of each dataclass in ``groups``, help from the fields' docstrings.

    Args:
        prog, description: What ``--help`` shows first.
        groups: ``(dataclass, field names or None for all)``; each field becomes ``--name`` (and ``--na-me``), a
            list field takes one or more values, a field without a default is required.
        defaults: Text shown as a flag's default instead of its field default (e.g. "the checkpoint's").
        helps: Help text of a flag instead of its field's docstring (another program's wording of a shared field).
        titles: A group's heading instead of its dataclass's docstring.

    Values are left as given (strings): :func:`coerce` types them, so the command line, YAML files and stored
    configs share one conversion and one set of messages. Flags not given are absent from the parsed namespace,
    which is how callers know what was given explicitly (resume lets those override the checkpoint).
    """
    parser = _ErrorRaisingParser(prog=prog, description=description, allow_abbrev=False)
    parser.flag_names = []
    for cls, names in groups:
        group = parser.add_argument_group((titles or {}).get(cls) or
                                          (cls.__doc__ or cls.__name__).splitlines()[0].rstrip("."))
        for f in fields(cls):
            if names is not None and f.name not in names:
                continue
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            kind = _base_type(cls, f.name)
            is_list = typing.get_origin(kind) is list
            shown = (defaults or {}).get(f.name)
            if shown is None and not required:
                value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                shown = "" if value in (None, "", []) else repr(value)  # the docstring says what unset means
            help_text = (helps or {}).get(f.name) or field_help(cls, f.name)
            help_text += f" (default: {shown})" if shown else ""
            options = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
            parser.flag_names.append(f.name)
            is_bool = kind is bool  # a bare --flag means True (--flag=False and --flag False still work)
            group.add_argument(*options, dest=f.name, required=required,
                               nargs="+" if is_list else "?" if is_bool else None, const="True" if is_bool else None,
                               default=argparse.SUPPRESS, help=help_text.replace("%", "%%"),
                               metavar=getattr(typing.get_args(kind)[0] if is_list else kind, "__name__", "X").upper())
    return parser


def parse_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> dict[str, Any]:
    """The flags given in ``argv`` as ``{name: text}``; an unknown flag or stray argument is a :class:`ConfigError`
    naming the closest known flag."""
    namespace, unknown = parser.parse_known_args(list(argv))
    if unknown:
        known = getattr(parser, "flag_names", [])  # build_parser's parsers list them
        arg = next((u for u in unknown if u.startswith("-")), unknown[0])
        if not arg.startswith("-"):
            raise ConfigError(f"unexpected argument {arg[:100]!r} (flags look like --key=value)")
        flag = arg.split("=", 1)[0][:100]
        raise ConfigError(f"unknown flag {flag}{closest(flag.lstrip('-'), known)}")
    return vars(namespace)


def train_parser() -> _ErrorRaisingParser:
    """``train/run.py``'s parser: every :class:`Config` field, plus ``--config FILE.yaml``."""
    parser = build_parser("train/run.py", "Train a timm classifier on CIFAR-10 (or any image folder), every epoch "
                          "tracked in W&B, its mistakes explained with CAMs.", [(Config, None)])
    parser.add_argument("--config", metavar="FILE.yaml", default=argparse.SUPPRESS,
                        help="YAML file of flag defaults (same keys); the command line wins")
    parser.flag_names.append("config")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, set[str]]:
    """Parse the command line (and its ``--config`` file) into a validated, resolved :class:`Config`.

    Returns:
        The config and the set of keys given explicitly (on the command line or in the file), which resume uses
        to decide what overrides a checkpoint's config.
    """
    given = parse_flags(train_parser(), sys.argv[1:] if argv is None else argv)
    values = load_yaml(given.pop("config")) if "config" in given else {}
    values.update(given)
    config = Config(**{key: coerce(key, value) for key, value in values.items()})
    return resolve(_validate(config)), set(values)
