"""model.levels: the one home of a level's name, file name, parsing and validation."""

from fractions import Fraction

import pytest

from model import levels


@pytest.mark.parametrize(
    ("spec", "fraction"),
    [
        ("full", 1),
        ("1", 1),
        (1, 1),
        (1.0, 1),
        ("1/2", Fraction(1, 2)),
        (" 0.25 ", Fraction(1, 4)),
        (0.125, Fraction(1, 8)),
        (1 / 3, Fraction(1, 3)),
    ],
)
def test_parse_reads_every_spelling(spec, fraction):
    assert levels.parse(spec) == fraction


@pytest.mark.parametrize("spec", ["0", "2", "-1/2", "half", "", "1/0", True, float("nan"), 1.5])
def test_parse_refuses_what_is_not_a_level(spec):
    with pytest.raises(levels.LevelError):
        levels.parse(spec)


def test_names_and_files_round_trip():
    for f in levels.DEFAULT:
        assert levels.parse(levels.name(f)) == f
    assert [levels.name(f) for f in levels.DEFAULT] == ["full", "1/2", "1/4", "1/8"]
    assert levels.file_name(Fraction(1)) == "level-full.onnx"
    assert levels.file_name(Fraction(1, 8)) == "level-1_8.onnx"
    assert levels.canonical("1") == levels.canonical(1.0) == "full" and levels.canonical("0.5") == "1/2"


def test_parse_list_validates():
    assert levels.parse_list(levels.DEFAULT_TEXT) == list(levels.DEFAULT)
    assert levels.parse_list("full, 0.5") == [1, Fraction(1, 2)]
    with pytest.raises(levels.LevelError, match="duplicate"):
        levels.parse_list("1,1/2,0.5")
    with pytest.raises(levels.LevelError, match=r"\(0, 1\]"):
        levels.parse_list("1,2")
    with pytest.raises(levels.LevelError, match="no levels"):
        levels.parse_list(" , ")


def test_units_kept_rounds_and_keeps_one():
    assert levels.units_kept(64, Fraction(1, 8)) == 8
    assert levels.units_kept(5, 0.01) == 1
    assert levels.units_kept(10, Fraction(1, 4)) == 2  # 2.5 rounds to even, as before
    with pytest.raises(levels.LevelError):
        levels.units_kept(64, 0)


def test_split_evenly_spends_a_cost_fraction_over_the_knobs_in_turn():
    assert levels.split_evenly(Fraction(1), (8, 4)) == (8, 4)
    assert levels.split_evenly(Fraction(1, 2), (8, 4)) == (4, 4)
    assert levels.split_evenly(Fraction(1, 4), (8, 4)) == (4, 2)
    assert levels.split_evenly(Fraction(1, 8), (8, 4)) == (2, 2)
    assert levels.split_evenly(Fraction(1, 32), (8, 4)) == (1, 1)
    assert levels.split_evenly(Fraction(1, 64), (8, 4)) is None  # the knobs run out
    assert levels.split_evenly(Fraction(1, 4), (8, 1)) == (2, 1)  # a knob at 1 leaves it to the other
    assert levels.split_evenly(Fraction(1, 3), (8, 4)) is None
    assert levels.split_evenly(Fraction(1, 8), (64,)) == (8,)  # one knob: as units_kept
    with pytest.raises(levels.LevelError):
        levels.split_evenly(Fraction(0), (8,))
