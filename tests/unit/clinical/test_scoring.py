"""FACT-L (version 4) scoring: reverse scoring, proration, the 80% rule, unscored items, errors.

Expected tables are written out here independently of ``streams.clinical.scoring`` so that a wrong
table in the module fails these tests. Item codes only: no questionnaire wording anywhere.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.clinical.scoring import (
    ITEM_CODES,
    REVERSED,
    SUBSCALES,
    UNSCORED,
    FactLScore,
    ScoringError,
    score_fact_l,
)

PWB_ITEMS = ("GP1", "GP2", "GP3", "GP4", "GP5", "GP6", "GP7")
SWB_ITEMS = ("GS1", "GS2", "GS3", "GS4", "GS5", "GS6", "GS7")
EWB_ITEMS = ("GE1", "GE2", "GE3", "GE4", "GE5", "GE6")
FWB_ITEMS = ("GF1", "GF2", "GF3", "GF4", "GF5", "GF6", "GF7")
LCS_ITEMS = ("B1", "C2", "L1", "L2", "C6", "L3", "L4")
EXPECTED_SUBSCALES = {
    "PWB": PWB_ITEMS,
    "SWB": SWB_ITEMS,
    "EWB": EWB_ITEMS,
    "FWB": FWB_ITEMS,
    "LCS": LCS_ITEMS,
}
EXPECTED_REVERSED = frozenset(
    (*PWB_ITEMS, "GE1", "GE3", "GE4", "GE5", "GE6", "B1", "C2", "L2", "L3")
)
SCORED = PWB_ITEMS + SWB_ITEMS + EWB_ITEMS + FWB_ITEMS + LCS_ITEMS
FORWARD = tuple(code for code in SCORED if code not in EXPECTED_REVERSED)
ALL_CODES = (*SCORED, "B5", "L5")
SUBSCALE_OF = {code: name for name, items in EXPECTED_SUBSCALES.items() for code in items}
MAX = {
    "PWB": 28,
    "SWB": 28,
    "EWB": 24,
    "FWB": 28,
    "LCS": 28,
    "FACT_G": 108,
    "FACT_L": 136,
    "TOI": 84,
}
KEYS = ("PWB", "SWB", "EWB", "FWB", "LCS", "FACT_G", "FACT_L", "TOI", "answered")


def item_score(code: str, response: int) -> int:
    return 4 - response if code in EXPECTED_REVERSED else response


def response_for(code: str, score: int) -> int:
    """The response that gives ``code`` the item score ``score``."""
    return 4 - score if code in EXPECTED_REVERSED else score


def form_scoring(score: int, *, omit: tuple[str, ...] = ()) -> dict[str, int | None]:
    """Every scored item answered so that its item score is ``score``, except ``omit`` (None)."""
    form: dict[str, int | None] = {code: response_for(code, score) for code in SCORED}
    form.update(dict.fromkeys(omit))
    return form


def only(**responses: int) -> dict[str, int | None]:
    return dict(responses)


# --- constants -----------------------------------------------------------------------------------


def test_public_tables_match_the_contract() -> None:
    assert SUBSCALES == EXPECTED_SUBSCALES
    assert list(SUBSCALES) == ["PWB", "SWB", "EWB", "FWB", "LCS"]
    assert frozenset(REVERSED) == EXPECTED_REVERSED
    assert frozenset({"B5", "L5"}) == UNSCORED
    assert frozenset(ALL_CODES) == ITEM_CODES
    assert len(SCORED) == 34


def test_score_is_frozen_and_as_dict_has_the_documented_keys_in_order() -> None:
    score = score_fact_l(form_scoring(2))
    assert tuple(score.as_dict()) == KEYS
    assert score.as_dict() == {
        "PWB": 14.0,
        "SWB": 14.0,
        "EWB": 12.0,
        "FWB": 14.0,
        "LCS": 14.0,
        "FACT_G": 54.0,
        "FACT_L": 68.0,
        "TOI": 42.0,
        "answered": 34,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        score.PWB = 0.0  # type: ignore[misc]


# --- reverse scoring -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(EXPECTED_REVERSED))
@pytest.mark.parametrize(("response", "expected"), [(0, 4.0), (1, 3.0), (3, 1.0), (4, 0.0)])
def test_each_reversed_item_scores_four_minus_the_response(
    code: str, response: int, expected: float
) -> None:
    # Every other item scores 0, so the subscale equals the score of this one item.
    form = form_scoring(0)
    form[code] = response
    assert getattr(score_fact_l(form), SUBSCALE_OF[code]) == expected


@pytest.mark.parametrize("code", FORWARD)
@pytest.mark.parametrize("response", [0, 1, 3, 4])
def test_each_forward_item_scores_the_response(code: str, response: int) -> None:
    form = form_scoring(0)
    form[code] = response
    assert getattr(score_fact_l(form), SUBSCALE_OF[code]) == float(response)


def test_there_is_a_forward_item_in_every_subscale_except_pwb() -> None:
    assert {SUBSCALE_OF[code] for code in FORWARD} == {"SWB", "EWB", "FWB", "LCS"}


# --- proration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("responses", "subscale", "expected"),
    [
        # PWB 4 of 7: item scores 4+3+2+1 = 10 -> 10 * 7 / 4 = 17.5
        (only(GP1=0, GP2=1, GP3=2, GP4=3), "PWB", 17.5),
        # PWB 3 of 7: invalid (not more than half)
        (only(GP1=0, GP2=1, GP3=2), "PWB", None),
        # SWB 5 of 7: 1+2+3+4+0 = 10 -> 10 * 7 / 5 = 14.0
        (only(GS1=1, GS2=2, GS3=3, GS4=4, GS5=0), "SWB", 14.0),
        # SWB 3 of 7, all at the maximum: still invalid, and None rather than 0
        (only(GS1=4, GS2=4, GS3=4), "SWB", None),
        # EWB 4 of 6: GE1 3 + GE2 3 + GE3 3 + GE4 0 = 9 -> 9 * 6 / 4 = 13.5
        (only(GE1=1, GE2=3, GE3=1, GE4=4), "EWB", 13.5),
        # EWB 3 of 6 is exactly half: invalid
        (only(GE1=0, GE2=4, GE3=0), "EWB", None),
        # FWB 6 of 7: 6 * 4 = 24 -> 24 * 7 / 6 = 28.0
        (only(GF1=4, GF2=4, GF3=4, GF4=4, GF5=4, GF6=4), "FWB", 28.0),
        # FWB 4 of 7: 1+1+1+0 = 3 -> 3 * 7 / 4 = 5.25
        (only(GF1=1, GF2=1, GF3=1, GF4=0), "FWB", 5.25),
        # LCS 4 of 7: B1 0 + C2 2 + L1 3 + L2 4 = 9 -> 9 * 7 / 4 = 15.75
        (only(B1=4, C2=2, L1=3, L2=0), "LCS", 15.75),
        # LCS 3 of 7: invalid
        (only(B1=0, C2=0, L1=4), "LCS", None),
        # PWB 4 of 7, all scoring 0: valid and exactly 0.0 (0 is a real score, not "missing")
        (only(GP1=4, GP2=4, GP3=4, GP4=4), "PWB", 0.0),
    ],
)
def test_proration_and_the_more_than_half_rule(
    responses: dict[str, int | None], subscale: str, expected: float | None
) -> None:
    assert getattr(score_fact_l(responses), subscale) == expected


def test_proration_is_not_rounded() -> None:
    # PWB 6 of 7: item scores 4+4+4+4+4+3 = 23 -> 23 * 7 / 6 = 26.8333...
    score = score_fact_l(only(GP1=0, GP2=0, GP3=0, GP4=0, GP5=0, GP6=1))
    pwb = score.PWB
    assert pwb == 23 * 7 / 6
    assert pwb != round(23 * 7 / 6, 2)


def test_unanswered_given_as_none_or_absent_is_the_same() -> None:
    with_none = form_scoring(3, omit=("GP1", "GE2", "L4"))
    absent = {code: value for code, value in with_none.items() if value is not None}
    assert score_fact_l(with_none) == score_fact_l(absent)


# --- totals and the 80% rule ---------------------------------------------------------------------

# Every answered item scores 4, so each valid subscale (prorated or not) is at its maximum.
TOTALS_CASES = [
    pytest.param(
        # 27 of 34: one missing from each FACT-G subscale (23 of 27) and 3 from LCS (4 of 7).
        ("GP1", "GS1", "GE1", "GF1", "B1", "C2", "L1"),
        dict(FACT_G=108.0, FACT_L=None, TOI=None, answered=27),  # TOI 6+6+4 = 16 of 21
        id="27-of-34",
    ),
    pytest.param(
        # 28 of 34: one missing from each FACT-G subscale and 2 from LCS.
        ("GP1", "GS1", "GE1", "GF1", "B1", "C2"),
        dict(FACT_G=108.0, FACT_L=136.0, TOI=84.0, answered=28),  # TOI 6+6+5 = 17 of 21
        id="28-of-34",
    ),
    pytest.param(
        # FACT-G 21 of 27 (PWB 5/7, SWB 5/7, EWB 5/6, FWB 6/7): all subscales valid, FACT-G not.
        # LCS complete: 21 + 7 = 28 of 34 for FACT-L, which is judged on its own items.
        ("GP1", "GP2", "GS1", "GS2", "GE1", "GF1"),
        dict(FACT_G=None, FACT_L=136.0, TOI=84.0, answered=28),  # TOI 5+6+7 = 18 of 21
        id="fact-g-21-of-27",
    ),
    pytest.param(
        # FACT-G 22 of 27 (PWB 5/7, SWB 6/7, EWB 5/6, FWB 6/7).
        ("GP1", "GP2", "GS1", "GE1", "GF1"),
        dict(FACT_G=108.0, FACT_L=136.0, TOI=84.0, answered=29),
        id="fact-g-22-of-27",
    ),
    pytest.param(
        # TOI 16 of 21 (PWB 5/7, FWB 5/7, LCS 6/7); FACT-G 23 of 27, FACT-L 29 of 34.
        ("GP1", "GP2", "GF1", "GF2", "L4"),
        dict(FACT_G=108.0, FACT_L=136.0, TOI=None, answered=29),
        id="toi-16-of-21",
    ),
    pytest.param(
        # TOI 17 of 21 (PWB 5/7, FWB 6/7, LCS 6/7).
        ("GP1", "GP2", "GF1", "L4"),
        dict(FACT_G=108.0, FACT_L=136.0, TOI=84.0, answered=30),
        id="toi-17-of-21",
    ),
    pytest.param(
        # PWB 3 of 7 invalid: 31 of 34 and 24 of 27 answered, but every total needs PWB.
        ("GP1", "GP2", "GP3", "GP4"),
        dict(FACT_G=None, FACT_L=None, TOI=None, answered=30),
        id="pwb-invalid",
    ),
    pytest.param(
        # LCS 3 of 7 invalid: FACT-G (27 of 27) stands, FACT-L and TOI do not.
        ("B1", "C2", "L1", "L2"),
        dict(FACT_G=108.0, FACT_L=None, TOI=None, answered=30),
        id="lcs-invalid",
    ),
    pytest.param(
        # SWB 3 of 7 invalid: TOI (PWB+FWB+LCS, 21 of 21) stands, FACT-G and FACT-L do not.
        ("GS1", "GS2", "GS3", "GS4"),
        dict(FACT_G=None, FACT_L=None, TOI=84.0, answered=30),
        id="swb-invalid",
    ),
]


@pytest.mark.parametrize(("omit", "expected"), TOTALS_CASES)
def test_totals_need_all_subscales_and_more_than_80_percent(
    omit: tuple[str, ...], expected: dict[str, float | int | None]
) -> None:
    score = score_fact_l(form_scoring(4, omit=omit))
    assert {key: getattr(score, key) for key in expected} == expected


def test_totals_are_sums_of_prorated_subscales() -> None:
    # 29 of 34 answered, item scores 2 except GP2 (1) and GS2 (3):
    # PWB 6/7: 2*5 + 1 = 11 -> 11 * 7 / 6 = 77/6;  SWB 6/7: 2*5 + 3 = 13 -> 91/6
    # EWB 5/6: 10 -> 10 * 6 / 5 = 12.0;  FWB 6/7: 12 -> 14.0;  LCS 6/7: 12 -> 14.0
    form = form_scoring(2, omit=("GP1", "GS1", "GE1", "GF1", "L4"))
    form["GP2"] = response_for("GP2", 1)
    form["GS2"] = response_for("GS2", 3)
    score = score_fact_l(form)
    assert (score.PWB, score.SWB, score.EWB, score.FWB, score.LCS) == (
        77 / 6,
        91 / 6,
        12.0,
        14.0,
        14.0,
    )
    assert score.FACT_G == 77 / 6 + 91 / 6 + 12.0 + 14.0
    assert score.FACT_L == 77 / 6 + 91 / 6 + 12.0 + 14.0 + 14.0
    assert score.TOI == 77 / 6 + 14.0 + 14.0
    assert score.answered == 29


# --- complete forms ------------------------------------------------------------------------------


def test_all_responses_4() -> None:
    # Reversed items score 0, the others 4.
    # PWB: GP1-GP7 all reversed -> 0.   SWB: 7 forward x 4 = 28.
    # EWB: GE2 forward 4, GE1/3/4/5/6 reversed 0 -> 4.   FWB: 7 forward x 4 = 28.
    # LCS: L1, C6, L4 forward 3 x 4 = 12; B1, C2, L2, L3 reversed 0 -> 12.
    # FACT-G 0+28+4+28 = 60; FACT-L 60+12 = 72; TOI 0+28+12 = 40.
    form = dict.fromkeys(ALL_CODES, 4)
    assert score_fact_l(form).as_dict() == {
        "PWB": 0.0,
        "SWB": 28.0,
        "EWB": 4.0,
        "FWB": 28.0,
        "LCS": 12.0,
        "FACT_G": 60.0,
        "FACT_L": 72.0,
        "TOI": 40.0,
        "answered": 34,
    }


def test_all_responses_0() -> None:
    # Reversed items score 4, the others 0.
    # PWB: 7 reversed x 4 = 28.   SWB: 0.   EWB: 5 reversed x 4 = 20.   FWB: 0.
    # LCS: B1, C2, L2, L3 reversed 4 x 4 = 16.
    # FACT-G 28+0+20+0 = 48; FACT-L 48+16 = 64; TOI 28+0+16 = 44.
    form = dict.fromkeys(ALL_CODES, 0)
    assert score_fact_l(form).as_dict() == {
        "PWB": 28.0,
        "SWB": 0.0,
        "EWB": 20.0,
        "FWB": 0.0,
        "LCS": 16.0,
        "FACT_G": 48.0,
        "FACT_L": 64.0,
        "TOI": 44.0,
        "answered": 34,
    }


def test_best_and_worst_possible_forms_hit_the_range_ends() -> None:
    best = score_fact_l(form_scoring(4)).as_dict()
    worst = score_fact_l(form_scoring(0)).as_dict()
    assert best == {**{key: float(value) for key, value in MAX.items()}, "answered": 34}
    assert worst == {**dict.fromkeys(MAX, 0.0), "answered": 34}


def test_empty_form() -> None:
    assert score_fact_l({}) == FactLScore(None, None, None, None, None, None, None, None, 0)


# --- unscored items B5 and L5 --------------------------------------------------------------------


@pytest.mark.parametrize("b5", [None, 0, 1, 2, 3, 4])
@pytest.mark.parametrize("l5", [None, 0, 4])
@pytest.mark.parametrize("base", ["complete", "partial", "empty"])
def test_b5_and_l5_change_nothing(b5: int | None, l5: int | None, base: str) -> None:
    forms: dict[str, dict[str, int | None]] = {
        "complete": form_scoring(3),
        # LCS exactly at 4 of 7: B5/L5 must not tip it over nor be counted as answered.
        "partial": form_scoring(1, omit=("B1", "C2", "L1", "GP1", "GP2", "GP3")),
        "empty": {},
    }
    form = forms[base]
    without = score_fact_l(form)
    with_unscored = score_fact_l({**form, "B5": b5, "L5": l5})
    assert with_unscored == without


def test_b5_and_l5_alone_count_as_nothing_answered() -> None:
    assert score_fact_l({"B5": 4, "L5": 0}) == score_fact_l({})
    # LCS 3 of 7 plus B5 and L5 answered is still 3 of 7: invalid.
    score = score_fact_l({"B1": 0, "C2": 0, "L1": 4, "B5": 4, "L5": 4})
    assert score.LCS is None
    assert score.answered == 3


# --- invalid input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("responses", "message"),
    [
        ({"GP1": 5}, "item GP1: the response is outside 0-4"),
        ({"GE3": -1}, "item GE3: the response is outside 0-4"),
        ({"B5": 5}, "item B5: the response is outside 0-4"),
        ({"L4": 2.5}, "item L4: the response is not a whole number 0-4 or None"),
        ({"GS2": 2.0}, "item GS2: the response is not a whole number 0-4 or None"),
        ({"GF7": True}, "item GF7: the response is not a whole number 0-4 or None"),
        ({"L5": False}, "item L5: the response is not a whole number 0-4 or None"),
        ({"C6": "3"}, "item C6: the response is not a whole number 0-4 or None"),
        ({"XX9": 3}, "unknown item code at position 1 of the responses"),
        ({"GP1": 1, "XX9": None}, "unknown item code at position 2 of the responses"),
        (
            {**dict.fromkeys(SCORED, 2), "GP8": 2},
            f"unknown item code at position {len(SCORED) + 1} of the responses",
        ),
    ],
)
def test_invalid_input_raises_naming_the_item(responses: dict[str, object], message: str) -> None:
    with pytest.raises(ScoringError) as raised:
        score_fact_l(responses)  # type: ignore[arg-type]
    assert str(raised.value) == message
    assert isinstance(raised.value, ValueError)


# --- properties ----------------------------------------------------------------------------------

RESPONSE = st.one_of(st.none(), st.integers(min_value=0, max_value=4))
FORMS = st.fixed_dictionaries({}, optional=dict.fromkeys(ALL_CODES, RESPONSE))
COMPLETE_FORMS = st.fixed_dictionaries(
    {code: st.integers(min_value=0, max_value=4) for code in ALL_CODES}
)


@given(FORMS)
def test_every_score_is_none_or_within_its_range(form: dict[str, int | None]) -> None:
    score = score_fact_l(form)
    for key, maximum in MAX.items():
        value = getattr(score, key)
        assert value is None or (isinstance(value, float) and 0 <= value <= maximum), (key, value)
    assert score.answered == sum(form.get(code) is not None for code in SCORED)


@given(FORMS, st.sampled_from(FORWARD), st.data())
def test_improving_a_forward_item_never_lowers_a_score(
    form: dict[str, int | None], code: str, data: st.DataObject
) -> None:
    before_response = data.draw(st.integers(min_value=0, max_value=3), label="before")
    after_response = data.draw(st.integers(min_value=before_response + 1, max_value=4), "after")
    before = score_fact_l({**form, code: before_response})
    after = score_fact_l({**form, code: after_response})
    for key in MAX:
        old, new = getattr(before, key), getattr(after, key)
        if old is not None and new is not None:
            assert new >= old, (key, old, new)
    # The subscale holding the item is valid in both or neither, and strictly improves when valid.
    old, new = getattr(before, SUBSCALE_OF[code]), getattr(after, SUBSCALE_OF[code])
    assert (old is None) == (new is None)
    if old is not None:
        assert new > old


@given(COMPLETE_FORMS)
def test_complete_form_subscales_are_plain_sums(form: dict[str, int]) -> None:
    score = score_fact_l(form)
    sums = {
        name: sum(item_score(code, form[code]) for code in items)
        for name, items in EXPECTED_SUBSCALES.items()
    }
    for name, total in sums.items():
        assert getattr(score, name) == total, name
    totals = score.as_dict()
    assert totals["FACT_G"] == sums["PWB"] + sums["SWB"] + sums["EWB"] + sums["FWB"]
    assert totals["FACT_L"] == sum(sums.values())
    assert totals["TOI"] == sums["PWB"] + sums["FWB"] + sums["LCS"]
    assert score.answered == 34


@given(
    st.sampled_from(ALL_CODES),
    st.one_of(st.integers(max_value=-1), st.integers(min_value=5)),
)
def test_any_integer_outside_0_to_4_is_refused(code: str, response: int) -> None:
    with pytest.raises(ScoringError, match=f"^item {code}: the response is outside 0-4$"):
        score_fact_l({code: response})
