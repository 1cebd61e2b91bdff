"""FACT-L (version 4) scoring: subscale scores, FACT-G, FACT-L total and the Trial Outcome Index.

Pure computation, no I/O. Items are identified by their codes only (e.g. ``GP1``); the wording of
the questionnaire is copyrighted and deliberately appears nowhere in this project.

How a form is scored
--------------------
Each item is answered on a 0-4 scale, or left unanswered (``None``).

* Negatively worded items are reversed, so that a higher score always means better quality of
  life: item score = 4 - response for GP1-GP7, GE1, GE3, GE4, GE5, GE6, B1, C2, L2 and L3.
  Every other scored item: item score = response.
* Subscales and their ranges:

  ====  ===================================  =====
  PWB   physical well-being, GP1-GP7          0-28
  SWB   social/family well-being, GS1-GS7     0-28
  EWB   emotional well-being, GE1-GE6         0-24
  FWB   functional well-being, GF1-GF7        0-28
  LCS   lung cancer subscale: B1, C2, L1,     0-28
        L2, C6, L3, L4
  ====  ===================================  =====

* B5 and L5 are asked but not scored: they must still hold a valid response (0-4 or ``None``),
  but they never change a score and are not counted as answered items.
* Missing items are prorated: subscale score = (sum of answered item scores) x (number of items
  in the subscale) / (number answered). A subscale is reported only when MORE THAN HALF of its
  items are answered (4 of 7, or 4 of 6); with half or fewer it is ``None`` - never 0.
* Totals are sums of subscales:

  ======  =========================  =====  ===========================
  FACT_G  PWB + SWB + EWB + FWB      0-108  needs >= 22 of its 27 items
  FACT_L  FACT_G + LCS               0-136  needs >= 28 of its 34 items
  TOI     PWB + FWB + LCS            0-84   needs >= 17 of its 21 items
  ======  =========================  =====  ===========================

  A total is reported only when every one of its subscales is reported AND more than 80% of its
  scored items are answered (the counts above); otherwise it is ``None``. Each total is judged
  on its own items, so FACT_L can be reported while FACT_G is not (e.g. 21 of the 27 FACT-G
  items plus all 7 LCS items = 28 of 34).
* Nothing is rounded: prorated scores are exact floats (e.g. 17.5). Round only for display.

A response that is not a whole number 0-4 (5, -1, 2.5, ``True``, ``"3"``) or an unknown item code
makes the whole form invalid: :class:`ScoringError` is raised, naming the item.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "ITEM_CODES",
    "REVERSED",
    "SUBSCALES",
    "UNSCORED",
    "FactLScore",
    "ScoringError",
    "score_fact_l",
]

SUBSCALES: dict[str, tuple[str, ...]] = {
    "PWB": ("GP1", "GP2", "GP3", "GP4", "GP5", "GP6", "GP7"),
    "SWB": ("GS1", "GS2", "GS3", "GS4", "GS5", "GS6", "GS7"),
    "EWB": ("GE1", "GE2", "GE3", "GE4", "GE5", "GE6"),
    "FWB": ("GF1", "GF2", "GF3", "GF4", "GF5", "GF6", "GF7"),
    "LCS": ("B1", "C2", "L1", "L2", "C6", "L3", "L4"),
}
"""Scored items of each subscale, in questionnaire order."""

REVERSED: frozenset[str] = frozenset(
    {"GP1", "GP2", "GP3", "GP4", "GP5", "GP6", "GP7"}
    | {"GE1", "GE3", "GE4", "GE5", "GE6"}
    | {"B1", "C2", "L2", "L3"}
)
"""Negatively worded items: item score = 4 - response."""

UNSCORED: frozenset[str] = frozenset({"B5", "L5"})
"""Items that are asked but never scored nor counted as answered."""

ITEM_CODES: frozenset[str] = frozenset(
    {code for items in SUBSCALES.values() for code in items} | UNSCORED
)
"""Every item code a form may contain (scored and unscored)."""


class ScoringError(ValueError):
    """The form cannot be scored: an unknown item code or a response that is not 0-4 or None."""


@dataclass(frozen=True, slots=True)
class FactLScore:
    """Scores of one FACT-L form. A score that cannot be reported (too many items missing) is None.

    Subscales: ``PWB`` (0-28), ``SWB`` (0-28), ``EWB`` (0-24), ``FWB`` (0-28), ``LCS`` (0-28).
    Totals: ``FACT_G`` (0-108), ``FACT_L`` (0-136), ``TOI`` (0-84). Higher is better throughout.
    ``answered`` is the number of scored items answered (0-34; B5 and L5 are not counted).
    Values are unrounded; prorated scores may have a fractional part.
    """

    PWB: float | None
    SWB: float | None
    EWB: float | None
    FWB: float | None
    LCS: float | None
    FACT_G: float | None
    FACT_L: float | None
    TOI: float | None
    answered: int

    def as_dict(self) -> dict[str, float | int | None]:
        """The scores keyed PWB, SWB, EWB, FWB, LCS, FACT_G, FACT_L, TOI, answered (in order)."""
        return {
            "PWB": self.PWB,
            "SWB": self.SWB,
            "EWB": self.EWB,
            "FWB": self.FWB,
            "LCS": self.LCS,
            "FACT_G": self.FACT_G,
            "FACT_L": self.FACT_L,
            "TOI": self.TOI,
            "answered": self.answered,
        }


# Precomputed at import (private copies: editing the public constants cannot change scoring).
# Each answered item adds one packed number to its subscale's accumulator: the item score in the
# low 8 bits plus 1 << 8 to count it as answered, so one addition updates both the sum and the
# count (a subscale sum is at most 28, well below 256). Unscored items (B5, L5) go to a sixth,
# discarded accumulator, after their response has been checked like any other.
_SHIFT = 8
_ANSWERED = 1 << _SHIFT
_SUM_MASK = _ANSWERED - 1
_DISCARD = len(SUBSCALES)
_FORWARD = tuple(_ANSWERED + response for response in range(5))
_REVERSE = tuple(_ANSWERED + 4 - response for response in range(5))
_ITEMS: dict[str, tuple[int, tuple[int, ...]]] = {
    code: (index, _REVERSE if code in REVERSED else _FORWARD)
    for index, items in enumerate(SUBSCALES.values())
    for code in items
} | {code: (_DISCARD, _FORWARD) for code in UNSCORED}
_N_PWB, _N_SWB, _N_EWB, _N_FWB, _N_LCS = (len(items) for items in SUBSCALES.values())
_N_G = _N_PWB + _N_SWB + _N_EWB + _N_FWB
_N_L = _N_G + _N_LCS
_N_TOI = _N_PWB + _N_FWB + _N_LCS


def _min_answered(n_items: int) -> int:
    """Smallest count that is more than 80% of ``n_items`` (integer arithmetic, no float)."""
    return n_items * 4 // 5 + 1


_MIN_G = _min_answered(_N_G)  # 22 of 27
_MIN_L = _min_answered(_N_L)  # 28 of 34
_MIN_TOI = _min_answered(_N_TOI)  # 17 of 21


def _checked(code: str, response: object) -> int:
    """A response that failed the fast check: accept an int subclass 0-4 (not bool), else raise."""
    if isinstance(response, bool) or not isinstance(response, int):
        raise ScoringError(f"item {code}: the response is not a whole number 0-4 or None")
    if not 0 <= response <= 4:
        raise ScoringError(f"item {code}: the response is outside 0-4")
    return int(response)


def _accumulate(responses: Mapping[str, int | None]) -> tuple[int, int, int, int, int]:
    """The packed accumulators of PWB, SWB, EWB, FWB and LCS, every item checked."""
    acc = [0, 0, 0, 0, 0, 0]  # PWB, SWB, EWB, FWB, LCS, discarded (B5, L5)
    get = _ITEMS.get
    for code, response in responses.items():
        entry = get(code)
        if entry is None:
            position = list(responses).index(code) + 1  # the code is input: not repeated
            raise ScoringError(f"unknown item code at position {position} of the responses")
        if response is None:
            continue
        if type(response) is not int or not 0 <= response <= 4:
            response = _checked(code, response)
        index, packed = entry
        acc[index] += packed[response]
    return acc[0], acc[1], acc[2], acc[3], acc[4]


# The fast path of score_fact_l: every valid (code, response) pair -> its packed number shifted
# to its subscale's 16-bit field (PWB lowest, then SWB, EWB, FWB, LCS; B5 and L5 beyond), so
# that one sum over a form gives every accumulator (a field holds at most 7 << 8 | 28).
_PAIR_FIELDS: dict[tuple[str, int | None], int] = {
    (code, response): packed[response] << (16 * index)
    for code, (index, packed) in _ITEMS.items()
    for response in range(5)
} | {(code, None): 0 for code in _ITEMS}
_PLAIN_TYPES = frozenset({int, type(None)})


def score_fact_l(responses: Mapping[str, int | None]) -> FactLScore:
    """Score one FACT-L (version 4) form.

    ``responses`` maps item codes (``"GP1"`` ... ``"L5"``) to the response 0-4, or None when the
    item was not answered; an absent item counts as not answered. Reverse scoring, proration and
    the validity rules are those of the module documentation: a subscale needs more than half of
    its items, a total needs all its subscales and more than 80% of its items.

    Raises :class:`ScoringError` for an unknown item code or a response that is not a whole
    number 0-4 or None (booleans, 2.5 and "3" are all refused).
    """
    # Speed (10.6 -> 8.8 us a form): when every response is a plain int or None and every
    # (code, response) pair is a known valid one, the whole form is one sum of packed numbers;
    # anything else (a bool, 2.5, "3", 7, an unknown code) takes the loop, which checks each
    # item and raises with its code. The type check comes first: True == 1 and 1.0 == 1.
    fields = -1
    if _PLAIN_TYPES.issuperset(map(type, responses.values())):
        try:
            fields = sum(map(_PAIR_FIELDS.__getitem__, responses.items()))
        except KeyError:
            fields = -1
    if fields >= 0:
        return _score(
            fields & 0xFFFF,
            fields >> 16 & 0xFFFF,
            fields >> 32 & 0xFFFF,
            fields >> 48 & 0xFFFF,
            fields >> 64 & 0xFFFF,
        )
    return _score(*_accumulate(responses))


def _score(p: int, s: int, e: int, f: int, lc: int) -> FactLScore:
    """The scores from the packed accumulators of PWB, SWB, EWB, FWB and LCS."""
    n_pwb, n_swb, n_ewb, n_fwb, n_lcs = (
        p >> _SHIFT,
        s >> _SHIFT,
        e >> _SHIFT,
        f >> _SHIFT,
        lc >> _SHIFT,
    )
    pwb = (p & _SUM_MASK) * _N_PWB / n_pwb if 2 * n_pwb > _N_PWB else None
    swb = (s & _SUM_MASK) * _N_SWB / n_swb if 2 * n_swb > _N_SWB else None
    ewb = (e & _SUM_MASK) * _N_EWB / n_ewb if 2 * n_ewb > _N_EWB else None
    fwb = (f & _SUM_MASK) * _N_FWB / n_fwb if 2 * n_fwb > _N_FWB else None
    lcs = (lc & _SUM_MASK) * _N_LCS / n_lcs if 2 * n_lcs > _N_LCS else None

    n_g = n_pwb + n_swb + n_ewb + n_fwb
    fact_g = fact_l = toi = None
    if pwb is not None and swb is not None and ewb is not None and fwb is not None:
        four = pwb + swb + ewb + fwb
        if n_g >= _MIN_G:
            fact_g = four
        if lcs is not None and n_g + n_lcs >= _MIN_L:
            fact_l = four + lcs
    if (
        pwb is not None
        and fwb is not None
        and lcs is not None
        and n_pwb + n_fwb + n_lcs >= _MIN_TOI
    ):
        toi = pwb + fwb + lcs

    return FactLScore(pwb, swb, ewb, fwb, lcs, fact_g, fact_l, toi, n_g + n_lcs)
