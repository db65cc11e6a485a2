"""The one registry of losses: ``create_loss(name, **kwargs)`` and ``list_losses(pattern)``.

Each family module registers its modules with :func:`register_loss` under a stable lower-case
name; importing :mod:`seglosses` imports every family.
"""

from __future__ import annotations

import difflib
import fnmatch
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


def loss_class(name: str) -> type:
    """The module class registered under ``name``; unknown names suggest the closest ones.

    Example:
        >>> loss_class("dice")
        <class 'seglosses.region.DiceLoss'>
        >>> loss_class("dise")
        Traceback (most recent call last):
            ...
        ValueError: Expected `name` to be a registered loss, but got 'dise'. Did you mean [...]? See list_losses().
    """
    check_type("name", name, str)
    registry = _loaded()
    if name not in registry:
        close = difflib.get_close_matches(name, registry, n=3, cutoff=0.5)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"Expected `name` to be a registered loss, but got {name!r}.{hint} "
                         f"See list_losses().")
    return registry[name]


def create_loss(name: str, **kwargs: Any):
    """Instantiate the loss registered under ``name`` with ``kwargs``.

    Example:
        >>> create_loss("dice", squared=False)
        DiceLoss(squared=False, batch=False, include_background=True, eps=1e-05)
    """
    return loss_class(name)(**kwargs)
