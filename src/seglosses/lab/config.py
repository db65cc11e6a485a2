"""A run's configuration as data: typed dataclasses, loaded from YAML or TOML, overridden by
``section.key=value`` strings, saved as YAML into every run folder.

:class:`RunConfig` composes the data (:class:`~seglosses.lab.data.DataConfig`), the model
(:class:`~seglosses.lab.models.ModelConfig`), the loss (:class:`LossConfig`: a registered name and
its options), the optional envelope (:class:`EnvelopeSettings`: a preset of
:data:`seglosses.ENVELOPE_PRESETS` and overrides), the optimiser (:class:`OptimConfig`) and the
loop (:class:`TrainConfig`). Every key is checked: an unknown key is refused with the closest
valid key, a value of the wrong type names its dotted key, what was expected and what was got.

Example:
    >>> config = config_from_dict({"loss": {"name": "dice_ce"}, "train": {"epochs": 3}})
    >>> config = apply_overrides(config, ["train.batch_size=4", "optim.lr=3e-4", "envelope.preset=atk"])
    >>> config.train.epochs, config.train.batch_size, config.optim.lr, config.envelope.preset
    (3, 4, 0.0003, 'atk')
    >>> config_from_dict({"train": {"epcohs": 3}})
    Traceback (most recent call last):
        ...
    ValueError: Expected the keys of `train` to be among [...], but got 'epcohs'. Did you mean 'train.epochs'?
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from seglosses.envelope import ENVELOPE_PRESETS, EnvelopeConfig
from seglosses.lab.data import DataConfig
from seglosses.lab.models import ModelConfig, check_model_name
from seglosses.registry import loss_class

__all__ = [
    "ABSENT",
    "RESUMABLE_CHANGES",
    "AugmentConfig",
    "EnvelopeSettings",
    "LossConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "envelope_config",
    "check_config",
    "config_diff",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
]


@dataclass
class LossConfig:
    """A registered loss (``seglosses.list_losses()``) and its options, e.g. ``{"squared": True}``."""

    name: str = "dice_ce"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EnvelopeSettings:
    """The Top-k / Bottom-all-but-sigma envelope: a preset of ``seglosses.ENVELOPE_PRESETS`` and
    option overrides (``total_epochs`` defaults to ``train.epochs``). The default preset is ``erm``,
    like the envelope's own constructor default: no configuration has yet been shown to beat plain
    training (docs/envelope.md), so an envelope section must name what it tests."""

    preset: str = "erm"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (per step, after a linear warm-up)."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only (Nesterov)
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    poly_power: float = 0.9
    warmup_epochs: float = 0.0


@dataclass
class AugmentConfig:
    """Augmentation of training batches (image, mask and clean mask together), each drawn per image."""

    enabled: bool = True
    flip: bool = True  # random flips along every spatial axis, p = 0.5 each
    rot90: bool = True  # random multiples of 90 degrees in the last two axes (square images only)
    rotation_degrees: float = 0.0  # random rotation in [-d, d] (nearest-neighbour masks); 0 = off
    intensity_scale: float = 0.1  # image * (1 + u), u uniform in [-s, s]
    intensity_shift: float = 0.1  # image + u * std(image), u uniform in [-s, s]


@dataclass
class TrainConfig:
    """The training loop: length, batch, seed, device, precision, validation, output."""

    epochs: int = 50
    batch_size: int = 8  # the global batch (split evenly across DDP processes)
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    amp: bool = True  # float16 autocast + GradScaler on CUDA; CPU runs in float32
    deep_supervision: bool = False
    val_every: int = 1  # validate every N epochs (and after the last); 0: only after the last
    select: Literal["best", "final"] = "best"  # the model evaluated on test: best validation Dice, or last
    num_workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    progress: bool = True  # tqdm bars, only on a terminal
    tensorboard: bool = False  # needs the tensorboard package
    nsd_tolerance: float = 2.0  # normalised surface Dice tolerance, in the units of the spacing
    checkpoint_every_s: float = 60.0  # write last.pt after an epoch when this long passed (0: every epoch)
    flush_denormal: bool = True  # CPU: flush denormal floats to zero (near-zero envelope weights slow backward)
    out_dir: str = "runs/run"


@dataclass
class RunConfig:
    """Everything a run needs; saved as ``config.yaml`` in its folder."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    envelope: EnvelopeSettings | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------- typed construction

# Keys that may differ when resuming: they change where and how fast, not what is computed.
RESUMABLE_CHANGES: tuple[str, ...] = ("train.progress", "train.num_workers", "train.out_dir", "train.tensorboard",
                                      "train.checkpoint_every_s")


def _error(key: str, expected: str, got: Any, source: str | None, error: type[Exception] = ValueError) -> Exception:
    where = f" (in {source})" if source else ""
    return error(f"Expected `{key}` to be {expected}, but got {got!r}{where}.")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _coerce(value: Any, annotation: Any, key: str, source: str | None) -> Any:
    """``value`` checked against (and converted to) the type ``annotation``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if _is_union(annotation):
        if value is None and type(None) in args:
            return None
        arms = [arm for arm in args if arm is not type(None)]
        errors = []
        for arm in arms:
            try:
                return _coerce(value, arm, key, source)
            except (TypeError, ValueError) as error:
                errors.append(error)
        if len(arms) == 1:
            raise errors[0]
        raise _error(key, " or ".join(_describe_type(arm) for arm in args), value, source, TypeError)
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key, source)
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(str(_error(key, f"one of {list(args)}", value, source)) + hint)
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise _error(key, "true or false", value, source, TypeError)
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _error(key, "an integer", value, source, TypeError)
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise _error(key, "a number", value, source, TypeError) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _error(key, "a number", value, source, TypeError)
        if not math.isfinite(value):
            raise _error(key, "a finite number", value, source)
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise _error(key, "a string", value, source, TypeError)
        return value
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise _error(key, f"a list ({_describe_type(annotation)})", value, source, TypeError)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _error(key, f"a list of {len(args)} values", list(value), source)
            pairs = enumerate(zip(value, args, strict=True))
            items = [_coerce(item, arm, f"{key}[{i}]", source) for i, (item, arm) in pairs]
        else:
            arm = args[0] if args else Any
            items = [_coerce(item, arm, f"{key}[{i}]", source) for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise _error(key, "a mapping of options", value, source, TypeError)
        for name in value:
            if not isinstance(name, str):
                raise _error(f"{key}", "a mapping with string keys", name, source, TypeError)
        return dict(value)
    raise TypeError(f"Expected `{key}` to have a supported type annotation, but got {annotation!r}.")


def _describe_type(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _build(cls: type, values: Any, prefix: str, source: str | None) -> Any:
    """An instance of the dataclass ``cls`` from a mapping, refusing unknown keys."""
    if isinstance(values, cls):
        values = config_to_dict(values)
    if not isinstance(values, Mapping):
        raise _error(prefix or "config", "a mapping of keys", values, source, TypeError)
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            dotted = f"{prefix}.{close[0]}" if prefix and close else (close[0] if close else "")
            hint = f" Did you mean {dotted!r}?" if close else ""
            where = f" (in {source})" if source else ""
            raise ValueError(f"Expected the keys of `{prefix or 'config'}` to be among {names}, but got "
                             f"{key!r}{where}.{hint}")
    kwargs = {key: _coerce(value, hints[key], f"{prefix}.{key}" if prefix else key, source)
              for key, value in values.items()}
    return cls(**kwargs)


def _plain(value: Any) -> Any:
    """Dataclasses, tuples and mappings as plain dicts and lists (YAML- and checkpoint-friendly)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as nested plain dicts, lists and scalars (what ``config.yaml`` holds).

    Example:
        >>> config_to_dict(RunConfig())["train"]["epochs"]
        50
    """
    return _plain(config)


def config_from_dict(values: Mapping[str, Any], *, source: str | None = None) -> RunConfig:
    """A checked :class:`RunConfig` from nested mappings (missing keys keep their defaults).

    Args:
        values: sections ``data``, ``model``, ``loss``, ``envelope`` (or None), ``optim``, ``train``.
        source: the file the values came from, named in error messages.
    """
    config = _build(RunConfig, values, "", source)
    check_config(config, source=source)
    return config


def load_config(path: str | Path) -> RunConfig:
    """Read a :class:`RunConfig` from a ``.yaml``/``.yml`` or ``.toml`` file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it cannot be parsed, or a key or value is invalid (the file is named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Expected `config` to be an existing file, but got {str(path)!r}.")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"Expected `config` to be valid YAML, but got a parse error in {path}: {error}") from None
    elif suffix == ".toml":
        import tomllib

        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"Expected `config` to be valid TOML, but got a parse error in {path}: {error}") from None
    else:
        raise ValueError(f"Expected `config` to be a .yaml, .yml or .toml file, but got {str(path)!r}.")
    return config_from_dict(values or {}, source=str(path))


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (readable back with :func:`load_config`)."""
    import yaml

    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")


# --------------------------------------------------------------------------- overrides


def _parse_text(text: str, annotation: Any, key: str) -> Any:
    """A command-line value for a field of type ``annotation``."""
    if _is_union(annotation) and type(None) in typing.get_args(annotation) and text.lower() in ("none", "null", "~"):
        return None
    arms = [arm for arm in typing.get_args(annotation) if arm is not type(None)] if _is_union(annotation) else []
    if annotation is str or (len(arms) == 1 and arms[0] is str):
        return text
    if annotation is bool:
        lowered = text.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise _error(key, "true or false", text, None, TypeError)
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise _error(key, "an integer", text, None, TypeError) from None
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise _error(key, "a number", text, None, TypeError) from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(config: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """A new config with ``"section.key=value"`` overrides applied (the CLI's ``--set``).

    Values are parsed by the type of their key (``train.epochs=3`` an int, ``optim.lr=1e-3`` a
    float, ``data.image_size=[128,128]`` a list); keys inside option mappings take YAML values
    (``loss.options.squared=true``). ``envelope.preset=atk`` creates the envelope section when it
    is absent; ``envelope=none`` removes it.

    Example:
        >>> apply_overrides(RunConfig(), ["loss.options.squared=true", "envelope=none"]).loss.options
        {'squared': True}
        >>> apply_overrides(RunConfig(), ["train.epochs=three"])
        Traceback (most recent call last):
            ...
        TypeError: Expected `train.epochs` to be an integer, but got 'three'.
    """
    values = config_to_dict(config)
    for override in overrides:
        if not isinstance(override, str) or "=" not in override:
            raise ValueError(f"Expected `override` to be a string 'section.key=value', but got {override!r}.")
        dotted, text = (part.strip() for part in override.split("=", 1))
        path = dotted.split(".")
        cls: Any = RunConfig
        node = values
        for depth, name in enumerate(path):
            prefix = ".".join(path[:depth])
            last = depth == len(path) - 1
            if cls is dict:  # inside an options mapping: the rest of the path is one key
                node[".".join(path[depth:])] = _parse_text(text, Any, dotted)
                break
            names = [f.name for f in dataclasses.fields(cls)]
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
                hint = f" Did you mean {'.'.join([*path[:depth], close[0]])!r}?" if close else ""
                raise ValueError(f"Expected the keys of `{prefix or 'config'}` to be among {names}, but got "
                                 f"{name!r}.{hint}")
            annotation = _hints(cls)[name]
            if last:
                node[name] = _parse_text(text, annotation, dotted)
                break
            inner = [arm for arm in typing.get_args(annotation) if arm is not type(None)] or [annotation]
            target = inner[0]
            if node.get(name) is None:
                node[name] = config_to_dict(target()) if dataclasses.is_dataclass(target) else {}
            node = node[name]
            cls = target if dataclasses.is_dataclass(target) else dict
    return config_from_dict(values)


# --------------------------------------------------------------------------- checks and differences


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, Mapping) and (values or prefix.endswith(".options")):  # empty options: no keys
        flat: dict[str, Any] = {}
        for key, value in values.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: values}


def config_diff(first: RunConfig | Mapping[str, Any], second: RunConfig | Mapping[str, Any]) -> dict[str, tuple]:
    """The dotted keys whose values differ, each with (first value, second value); a key one side
    lacks shows as :data:`ABSENT`.

    Example:
        >>> config_diff(RunConfig(), apply_overrides(RunConfig(), ["train.epochs=5"]))
        {'train.epochs': (50, 5)}
    """
    flat_first, flat_second = _flatten(config_to_dict(first)), _flatten(config_to_dict(second))
    keys = sorted({*flat_first, *flat_second})
    return {key: (flat_first.get(key, ABSENT), flat_second.get(key, ABSENT)) for key in keys
            if flat_first.get(key, ABSENT) != flat_second.get(key, ABSENT)}


ABSENT = "<absent>"
"""How :func:`config_diff` shows a key that one side lacks."""


def _check_positive(key: str, value: float, source: str | None, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise _error(key, "non-negative" if allow_zero else "positive", value, source)


def check_config(config: RunConfig, *, source: str | None = None) -> None:
    """Check the values a type cannot express (ranges, registered names, envelope options)."""
    train, optim = config.train, config.optim
    _check_positive("train.epochs", train.epochs, source)
    _check_positive("train.batch_size", train.batch_size, source)
    _check_positive("train.val_every", train.val_every, source, allow_zero=True)
    _check_positive("train.num_workers", train.num_workers, source, allow_zero=True)
    _check_positive("train.nsd_tolerance", train.nsd_tolerance, source)
    _check_positive("train.checkpoint_every_s", train.checkpoint_every_s, source, allow_zero=True)
    _check_positive("optim.lr", optim.lr, source)
    _check_positive("optim.weight_decay", optim.weight_decay, source, allow_zero=True)
    _check_positive("optim.momentum", optim.momentum, source, allow_zero=True)
    _check_positive("optim.poly_power", optim.poly_power, source)
    _check_positive("optim.warmup_epochs", optim.warmup_epochs, source, allow_zero=True)
    augment = train.augment
    _check_positive("train.augment.rotation_degrees", augment.rotation_degrees, source, allow_zero=True)
    _check_positive("train.augment.intensity_scale", augment.intensity_scale, source, allow_zero=True)
    _check_positive("train.augment.intensity_shift", augment.intensity_shift, source, allow_zero=True)
    if augment.intensity_scale >= 1:
        raise _error("train.augment.intensity_scale", "below 1 (the image is scaled by 1 + u, |u| <= s)",
                     augment.intensity_scale, source)
    device = train.device
    if device not in ("auto", "cpu") and not (device == "cuda" or device.startswith("cuda:") or device == "mps"):
        raise _error("train.device", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", device, source)
    try:
        check_model_name(config.model.name, "model.name")
    except ValueError as error:
        raise ValueError(f"{error}{f' (in {source})' if source else ''}") from None
    try:
        loss_class(config.loss.name)
    except ValueError as error:
        where = f" (in {source})" if source else ""
        raise ValueError(str(error).replace("`name`", "`loss.name`", 1) + where) from None
    if config.envelope is not None:
        envelope = config.envelope
        if envelope.preset not in ENVELOPE_PRESETS:
            close = difflib.get_close_matches(envelope.preset, list(ENVELOPE_PRESETS), n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(str(_error("envelope.preset", f"one of {list(ENVELOPE_PRESETS)}", envelope.preset,
                                        source)) + hint)
        try:
            envelope_config(config)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{error} (in `envelope.options`{f' of {source}' if source else ''})") from None


def envelope_config(config: RunConfig) -> EnvelopeConfig:
    """The :class:`~seglosses.EnvelopeConfig` of a run: preset, then ``total_epochs`` = ``train.epochs``,
    then ``envelope.options``.

    Example:
        >>> run = apply_overrides(RunConfig(), ["envelope.preset=atk_sm", "envelope.options.top_fraction=0.2"])
        >>> envelope_config(run).top_fraction, envelope_config(run).total_epochs
        (0.2, 50)
    """
    if config.envelope is None:
        raise ValueError("Expected `envelope` to be set (a preset and options), but got None.")
    options = {**ENVELOPE_PRESETS[config.envelope.preset], "total_epochs": config.train.epochs,
               **config.envelope.options}
    unknown = [name for name in options if name not in {f.name for f in dataclasses.fields(EnvelopeConfig)}]
    if unknown:
        names = [f.name for f in dataclasses.fields(EnvelopeConfig)]
        close = difflib.get_close_matches(unknown[0], names, n=1, cutoff=0.5)
        hint = f" Did you mean 'envelope.options.{close[0]}'?" if close else ""
        raise ValueError(f"Expected the keys of `envelope.options` to be among {names}, but got "
                         f"{unknown[0]!r}.{hint}")
    return EnvelopeConfig(**options)
