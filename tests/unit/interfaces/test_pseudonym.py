"""Pseudonymous patient ids: a keyed hash, deterministic, secret-dependent, and never the source."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.interfaces.pseudonym import (
    MIN_SECRET_BYTES,
    SECRET_ENV,
    SECRET_FILE_ENV,
    PseudonymError,
    Pseudonymizer,
    fingerprint,
)

SECRET = b"stepcare-test-secret-0123456789abcdef"  # 37 bytes, tests only
OTHER = b"another-site-secret-0123456789abcdefgh"
MRN_SYSTEM = "urn:oid:2.999.1.1"


def test_the_id_is_hmac_sha256_of_system_bar_value_truncated_to_128_bits() -> None:
    expected = hmac.new(SECRET, b"urn:oid:2.999.1.1|MRN-900417", hashlib.sha256).hexdigest()
    assert Pseudonymizer(SECRET).patient_id(MRN_SYSTEM, "MRN-900417") == "pt-" + expected[:32]


def test_same_identifier_same_id_and_the_shape_is_fixed() -> None:
    a, b = Pseudonymizer(SECRET), Pseudonymizer(bytes(SECRET))
    first = a.patient_id(MRN_SYSTEM, "MRN-900417")
    assert first == a.patient_id(MRN_SYSTEM, "MRN-900417") == b.patient_id(MRN_SYSTEM, "MRN-900417")
    assert re.fullmatch(r"pt-[0-9a-f]{32}", first)


def test_another_secret_gives_another_id() -> None:
    assert Pseudonymizer(SECRET).patient_id(MRN_SYSTEM, "MRN-900417") != Pseudonymizer(
        OTHER
    ).patient_id(MRN_SYSTEM, "MRN-900417")


def test_the_system_is_part_of_the_identity() -> None:
    p = Pseudonymizer(SECRET)
    assert p.patient_id("urn:oid:2.999.1.1", "123") != p.patient_id("urn:oid:2.999.1.2", "123")
    assert p.patient_id("Patient", "123") != p.patient_id("urn:oid:2.999.1.1", "123")


@given(
    st.tuples(st.text(min_size=1).filter(lambda s: "|" not in s), st.text(min_size=1)),
    st.tuples(st.text(min_size=1).filter(lambda s: "|" not in s), st.text(min_size=1)),
)
def test_ids_are_equal_exactly_when_identifiers_are(
    one: tuple[str, str], two: tuple[str, str]
) -> None:
    p = Pseudonymizer(SECRET)
    assert (p.patient_id(*one) == p.patient_id(*two)) == (one == two)


def test_the_id_does_not_contain_the_identifier() -> None:
    pid = Pseudonymizer(SECRET).patient_id(MRN_SYSTEM, "900417")
    assert "900417" not in pid and "2.999" not in pid


@pytest.mark.parametrize(
    ("system", "value", "message"),
    [
        ("", "1", "non-empty system"),
        ("a|b", "1", "cannot contain '|'"),
        (MRN_SYSTEM, "", "non-empty value"),
    ],
)
def test_unusable_identifiers_are_refused(system: str, value: str, message: str) -> None:
    with pytest.raises(PseudonymError, match=re.escape(message)):
        Pseudonymizer(SECRET).patient_id(system, value)


def test_tokens_are_deterministic_keyed_and_never_patient_ids() -> None:
    p = Pseudonymizer(SECRET)
    token = p.token("hl7", "GHH|CTRL-1")
    assert token == p.token("hl7", "GHH|CTRL-1") != p.token("fhir", "GHH|CTRL-1")
    assert re.fullmatch(r"[0-9a-f]{32}", token)
    assert token != Pseudonymizer(OTHER).token("hl7", "GHH|CTRL-1")
    assert "pt-" + p.token("x", "y") != p.patient_id("x", "y")


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(PseudonymError, match=f"at least {MIN_SECRET_BYTES}"):
        Pseudonymizer(b"x" * (MIN_SECRET_BYTES - 1))
    Pseudonymizer(b"x" * MIN_SECRET_BYTES)


def test_the_secret_never_shows() -> None:
    p = Pseudonymizer(SECRET)
    assert SECRET.decode() not in repr(p) and SECRET.decode() not in str(p)
    assert fingerprint(p) == fingerprint(Pseudonymizer(SECRET)) != fingerprint(Pseudonymizer(OTHER))
    assert re.fullmatch(r"[0-9a-f]{8}", fingerprint(p))


# -- the secret from the environment ----------------------------------------------------------


def test_secret_from_the_variable() -> None:
    p = Pseudonymizer.from_env({SECRET_ENV: SECRET.decode()})
    assert p.patient_id("s", "v") == Pseudonymizer(SECRET).patient_id("s", "v")


def test_secret_from_a_file_without_its_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    p = Pseudonymizer.from_env({SECRET_FILE_ENV: str(path)})
    assert p.patient_id("s", "v") == Pseudonymizer(SECRET).patient_id("s", "v")


def test_no_secret_is_a_clear_error() -> None:
    with pytest.raises(PseudonymError) as caught:
        Pseudonymizer.from_env({})
    assert SECRET_ENV in str(caught.value) and SECRET_FILE_ENV in str(caught.value)


def test_both_sources_set_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    with pytest.raises(PseudonymError, match="not both"):
        Pseudonymizer.from_env({SECRET_ENV: SECRET.decode(), SECRET_FILE_ENV: str(path)})


def test_a_short_or_unreadable_secret_names_its_source(tmp_path: Path) -> None:
    with pytest.raises(PseudonymError, match=f"{SECRET_ENV}: the pseudonym secret has 5 bytes"):
        Pseudonymizer.from_env({SECRET_ENV: "short"})
    missing = tmp_path / "nope"
    with pytest.raises(PseudonymError, match=f"{SECRET_FILE_ENV}: cannot read"):
        Pseudonymizer.from_env({SECRET_FILE_ENV: str(missing)})
