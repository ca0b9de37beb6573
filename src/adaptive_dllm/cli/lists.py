"""List-valued options and values of the ``adllm`` commands.

- :func:`floats`: comma-separated numbers (``--select 0.1,0.3``), as the evaluation commands take them.
- :func:`add_list`: a list option whose values may be space- or comma-separated (``adllm bench``).
- :func:`layer_range`: ``FIRST:LAST`` layer ranges (``prune`` and ``importance estimate``).
- :func:`renamed`: the ``type=`` of a retired option name, an error naming its replacement.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

from adaptive_dllm.errors import AdllmError


def floats(text: str, name: str) -> tuple[float, ...]:
    """Comma-separated numbers (``--select 0.1,0.3``); ``name`` is the flag in the error."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise AdllmError(f"{name} {text!r} is not a comma-separated list of numbers") from None
    if not values:
        raise AdllmError(f"{name} is empty")
    return values


class _FlatList(argparse.Action):
    """``nargs="+"`` whose items may also be comma-separated: the parts, in order, as one list."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, [v for part in values for v in part])


def add_list(p: argparse.ArgumentParser | argparse._ArgumentGroup, flag: str, *,
             convert: Callable[[str], Any] = str, choices: Iterable[str] | None = None,
             **kwargs: Any) -> None:
    """A list option that takes values space- or comma-separated (``--lengths 4096 16384`` or
    ``--lengths 4096,16384``, as the evaluation commands write them); each value is checked by
    ``convert`` and, if given, against ``choices``."""
    allowed = tuple(choices) if choices is not None else None

    def parse(text: str) -> list[Any]:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"{text!r} holds no value")
        if allowed is not None:
            bad = [part for part in parts if part not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"invalid choice {bad[0]!r} (choose from {', '.join(allowed)})")
        return [convert(part) for part in parts]

    if allowed is not None:
        kwargs.setdefault("metavar", "{" + ",".join(allowed) + "}")
    kwargs["help"] = "; ".join(filter(None, [kwargs.get("help"), "space- or comma-separated"]))
    p.add_argument(flag, nargs="+", type=parse, action=_FlatList, **kwargs)


def renamed(new_flag: str, meaning: str) -> Callable[[str], Any]:
    """``type=`` of a retired option name: always an error naming its replacement."""

    def refuse(text: str) -> Any:
        raise argparse.ArgumentTypeError(f"renamed: use {new_flag} {text} ({meaning})")

    return refuse


def layer_range(text: str | None) -> tuple[int, int] | None:
    """``"A:B"`` (inclusive, negative from the end) or ``"A"`` -> (A, B); None passes through."""
    if text is None:
        return None
    first, colon, last = text.partition(":")
    try:
        return int(first), int(last if colon else first)
    except ValueError:
        raise AdllmError(f"--layers {text!r} must be FIRST:LAST (inclusive), e.g. 0:-1") from None
