"""Losses by name: feature losses (built-ins register with a decorator, other packages through entry points)
and the names of the output losses."""

from __future__ import annotations

import inspect
import warnings
from importlib import metadata

from torch import nn

from ..errors import UserError

ENTRY_POINT_GROUP = "yolodistill.feature_losses"

# The output losses (losses/output.py): two ways of comparing the same head, not a plugin family; named here,
# in the config's tier (tests/test_architecture.py), so that the config checks a name before any data or
# model is loaded.
OUTPUT_LOSSES = ("mse", "kl", "mse_ciou")

FEATURE_LOSSES: dict[str, type[nn.Module]] = {}

# Plugins are imported on the first lookup, not at import: a slow or broken plugin must not
# cost anything to users who never ask for a feature loss.
_plugins_loaded = False


def register_feature_loss(name: str):
    """Class decorator: make `cls` buildable as `build_feature_loss(name, **kwargs)`."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in FEATURE_LOSSES:
            raise ValueError(f"feature loss {name!r} is already registered ({FEATURE_LOSSES[name].__qualname__})")
        FEATURE_LOSSES[name] = cls
        return cls

    return decorator


def _entry_points():
    try:
        return metadata.entry_points(group=ENTRY_POINT_GROUP)
    except TypeError:  # Python 3.9: entry_points() takes no arguments and returns {group: [...]}
        return metadata.entry_points().get(ENTRY_POINT_GROUP, [])


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True  # set first: a plugin that looks up a loss while loading must not recurse
    for ep in _entry_points():
        try:
            cls = ep.load()
        except Exception as e:  # any error in third-party code: skip that plugin, keep the rest usable
            warnings.warn(f"feature loss plugin {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}",
                          stacklevel=3)
            continue
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            warnings.warn(f"feature loss plugin {ep.name!r} ({ep.value}) is not an nn.Module class; skipped",
                          stacklevel=3)
        elif FEATURE_LOSSES.get(ep.name, cls) is not cls:  # the plugin's module may register itself too
            warnings.warn(f"feature loss plugin {ep.name!r} ({ep.value}) clashes with an existing loss; skipped",
                          stacklevel=3)
        else:
            FEATURE_LOSSES[ep.name] = cls


def available_feature_losses() -> list[str]:
    """Sorted names that `build_feature_loss` accepts, plugins included."""
    _load_plugins()
    return sorted(FEATURE_LOSSES)


def check_feature_loss(name: str) -> None:
    """UserError unless `name` is a registered feature loss (built-in or plugin)."""
    _load_plugins()
    if name not in FEATURE_LOSSES:
        raise UserError(f"unknown feature loss {name!r}; available: {', '.join(available_feature_losses())}")


def build_feature_loss(name: str, **kwargs) -> nn.Module:
    """Instantiate the feature loss registered as `name`; a bad name or argument is a UserError."""
    check_feature_loss(name)
    cls = FEATURE_LOSSES[name]
    # kwargs come from the user's config: check them against the signature so a typo is reported
    # as such, rather than as a TypeError from somewhere inside the constructor.
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        raise UserError(f"feature loss {name!r} does not accept {kwargs}: {e}") from None
    return cls(**kwargs)
