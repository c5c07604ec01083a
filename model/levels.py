"""A pruning level, in one place: the keep fraction f in (0, 1] and everything derived from it.

Checkpoints, bundles, the CLI, the server and the bench all name and parse levels through this
module, so "full" and "1/2" mean the same everywhere. No torch, no numpy: the server imports it.

    fraction   name     file                 units kept of U
    1          "full"   level-full.onnx      U
    1/2        "1/2"    level-1_2.onnx       round(U / 2), at least 1

A family with a second knob (a Neural Interpreter's iterations) names its levels the same way, by
their cost relative to full: `split_evenly` spends a fraction 1/2^k on the knobs, each halving
once in turn, so "1/4" of a (functions, iterations) family keeps half of each. NAC names do not
change: with one knob a level's cost fraction is its keep fraction.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

DEFAULT: tuple[Fraction, ...] = (Fraction(1), Fraction(1, 2), Fraction(1, 4), Fraction(1, 8))
FULL = "full"
MAX_DENOMINATOR = 1024  # the float 1/3 reads as 1/3, not as its 54-bit binary expansion


class LevelError(ValueError):
    """A level that cannot be read or is out of range; the message says which and why."""


def parse(spec: str | float | Fraction) -> Fraction:
    """A level from its name ("full", "1/2"), a fraction string ("0.5", "1") or a number (0.5)."""
    if isinstance(spec, bool):
        raise LevelError(f"not a level: {spec!r}")
    text = spec.strip() if isinstance(spec, str) else spec
    if text == FULL:
        return Fraction(1)
    try:
        fraction = Fraction(text).limit_denominator(MAX_DENOMINATOR)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:
        raise LevelError(f"cannot read level {spec!r}: give a keep fraction such as 1/2 or 0.25") from exc
    if not 0 < fraction <= 1:
        raise LevelError(f"keep fractions must be in (0, 1], got {spec!r}")
    return fraction


def validate(levels: Iterable[Fraction]) -> list[Fraction]:
    """The levels as given, refused if empty, duplicated or outside (0, 1]."""
    out = list(levels)
    if not out:
        raise LevelError("no levels given")
    bad = [str(f) for f in out if not 0 < f <= 1]
    if bad:
        raise LevelError(f"keep fractions must be in (0, 1]: {', '.join(bad)}")
    if len(set(out)) != len(out):
        raise LevelError(f"duplicate level in {', '.join(map(str, out))}")
    return out


def parse_list(text: str) -> list[Fraction]:
    """'1,1/2,0.25' or 'full,1/2' -> [1, 1/2, 1/4], validated."""
    return validate(parse(part) for part in text.split(",") if part.strip())


def to_text(levels: Iterable[Fraction]) -> str:
    """The inverse of parse_list: [1, 1/2] -> '1,1/2' (the CLI's defaults are written with it)."""
    return ",".join(str(f) for f in levels)


def name(fraction: Fraction) -> str:
    return FULL if fraction == 1 else f"{fraction.numerator}/{fraction.denominator}"


def canonical(spec: str | float | Fraction) -> str:
    """Any spelling of a level -> its name: "1" and 1.0 -> "full", "0.5" -> "1/2"."""
    return name(parse(spec))


def file_name(fraction: Fraction) -> str:
    return (
        f"level-{FULL}.onnx" if fraction == 1 else f"level-{fraction.numerator}_{fraction.denominator}.onnx"
    )


def units_kept(total: int, fraction: Fraction | float) -> int:
    """Units kept at a keep fraction of `total`: round to nearest, at least one."""
    if not 0 < fraction <= 1:
        raise LevelError(f"keep fraction must be in (0, 1], got {fraction}")
    return max(1, round(total * fraction))


def split_evenly(fraction: Fraction, totals: tuple[int, ...]) -> tuple[int, ...] | None:
    """Knob values whose cost is `fraction` of full, for knobs that each cost linearly: a fraction
    1/2^k is k halvings, taken by the knobs in turn (the first knob first) while a knob still
    halves to a whole number. None if `fraction` is no power of 1/2 or the knobs run out.
    (1/4, (8, 4)) -> (4, 2); (1/8, (8, 4)) -> (2, 2); (1/2, (8, 4)) -> (4, 4)."""
    if not 0 < fraction <= 1:
        raise LevelError(f"keep fraction must be in (0, 1], got {fraction}")
    if fraction.numerator != 1 or fraction.denominator & (fraction.denominator - 1):
        return None
    values, halvings = list(totals), fraction.denominator.bit_length() - 1
    turn = 0
    while halvings:
        for i in (*range(turn, len(values)), *range(turn)):
            if values[i] % 2 == 0:
                values[i] //= 2
                halvings -= 1
                turn = (i + 1) % len(values)
                break
        else:
            return None
    return tuple(values)


DEFAULT_TEXT = to_text(DEFAULT)
