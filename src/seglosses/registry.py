"""The one registry of losses: ``create_loss(name, **kwargs)`` and ``list_losses(pattern)``.

Each family module registers its modules with :func:`register_loss` under a stable lower-case
name; importing :mod:`seglosses` imports every family.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from seglosses._checks import check_type, fail

LossType = TypeVar("LossType")
_REGISTRY: dict[str, type] = {}


def register_loss(name: str) -> Callable[[LossType], LossType]:
    """Class decorator registering a loss module under ``name``.

    Example:
        >>> from seglosses import DiceLoss
        >>> @register_loss("my_dice")
        ... class MyDiceLoss(DiceLoss):
        ...     pass
        >>> list_losses("my_*"), type(create_loss("my_dice")).__name__, MyDiceLoss.registry_name
        (['my_dice'], 'MyDiceLoss', 'my_dice')
        >>> _ = _REGISTRY.pop("my_dice")  # leave the registry as it was
    """

    def decorate(cls: LossType) -> LossType:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            fail("name", "unique in the loss registry", repr(name))
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return decorate


def _loaded() -> dict[str, type]:
    import seglosses  # noqa: F401  (importing the package registers every family)

    return _REGISTRY


def list_losses(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered losses, optionally filtered by a shell-style ``pattern``.

    Example:
        >>> list_losses("cross*")
        ['cross_entropy']
    """
    if pattern is not None:
        check_type("pattern", pattern, str)
    names = sorted(_loaded())
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def _normalised(name: str) -> str:
    """Case and separators do not matter: "DiceCE", "dice-ce" and "dice_ce" are one name."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def loss_class(name: str) -> type:
    """The module class registered under ``name``; unknown names suggest the closest ones.

    Names match whatever their case and separators ("DiceCE", "dice-ce", "Dice_CE" are ``dice_ce``).

    Example:
        >>> loss_class("dice")
        <class 'seglosses.region.DiceLoss'>
        >>> loss_class("DiceCE")
        <class 'seglosses.compound.DiceCELoss'>
        >>> loss_class("dise")
        Traceback (most recent call last):
            ...
        ValueError: Expected `name` to be a registered loss, but got 'dise'. Did you mean [...]? See list_losses().
    """
    check_type("name", name, str)
    registry = _loaded()
    if name in registry:
        return registry[name]
    by_key = {_normalised(registered): registered for registered in registry}
    key = _normalised(name)
    if key in by_key:
        return registry[by_key[key]]
    close = difflib.get_close_matches(key, by_key, n=3, cutoff=0.5)
    hint = f" Did you mean {[by_key[k] for k in close]}?" if close else ""
    raise ValueError(f"Expected `name` to be a registered loss, but got {name!r}.{hint} See list_losses().")


def loss_options(name: str) -> list[str]:
    """The keyword options of the loss registered under ``name``, in signature order.

    Example:
        >>> loss_options("cross_entropy")
        ['mode', 'class_weights', 'ignore_index', 'label_smoothing', 'pos_weight', 'reduction']
    """
    parameters = inspect.signature(loss_class(name).__init__).parameters.values()
    return [p.name for p in parameters if p.name != "self" and p.kind in _NAMED_KINDS]


_NAMED_KINDS = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def create_loss(name: str, **kwargs: Any):
    """Instantiate the loss registered under ``name`` with ``kwargs``.

    An option the loss does not have is refused with the list of its options and the closest one.

    Example:
        >>> create_loss("dice", squared=False)
        DiceLoss(squared=False, batch=False, include_background=True, eps=1e-05, average='macro', soft_label=False)
        >>> create_loss("dice", smooth_nr=1e-5)
        Traceback (most recent call last):
            ...
        TypeError: Expected the options of `dice` to be among [...], but got 'smooth_nr'. ...
    """
    cls = loss_class(name)
    registered = cls.registry_name
    options = loss_options(registered)
    takes_any = any(
        p.kind == inspect.Parameter.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()
    )
    unknown = [key for key in kwargs if key not in options]
    if unknown and not takes_any:
        hints = " ".join(_option_hint(key, options) for key in unknown)
        raise TypeError(
            f"Expected the options of `{registered}` to be among {options}, but got "
            f"{', '.join(repr(key) for key in unknown)}. {hints} See docs/migrating.md for MONAI's and SMP's options."
        )
    return cls(**kwargs)


# Options of MONAI, SMP and kornia losses that have another name (or no counterpart) here.
PEER_OPTIONS: dict[str, str] = {
    "smooth_nr": "the smoothing term is `eps` (MONAI's smooth_nr = smooth_dr = eps)",
    "smooth_dr": "the smoothing term is `eps` (MONAI's smooth_nr = smooth_dr = eps)",
    "smooth": "the smoothing term is `eps` (SMP's and kornia's smooth)",
    "alpha": "Tversky losses weigh false positives with `fp_weight` (MONAI's alpha)",
    "beta": "Tversky losses weigh false negatives with `fn_weight` (MONAI's beta)",
    "squared_pred": "use `squared`",
    "jaccard": "use the `iou` loss",
    "to_onehot_y": "not needed: integer labels are one-hot encoded internally",
    "softmax": "use `mode='multiclass'`",
    "sigmoid": "use `mode='binary'` or `mode='multilabel'`",
    "other_act": "losses take logits; use `mode`",
    "from_logits": "losses always take logits",
    "weight": "use `class_weights`",
    "ce_weight": "use `class_weights` (the cross-entropy term's weights)",
    "focal_weight": "use `alpha` (the focal term's weights)",
    "label_smoothing": "not an option of this loss",
    "log_loss": "not an option of this loss",
}


def _option_hint(key: str, options: list[str]) -> str:
    """A pointer for one unknown option: the peer's meaning if known, else the closest option."""
    if key in PEER_OPTIONS:
        return f"{key!r}: {PEER_OPTIONS[key]}."
    closest = difflib.get_close_matches(key, options, n=1, cutoff=0.0)
    return f"{key!r}: did you mean {closest[0]!r}?" if closest else ""
