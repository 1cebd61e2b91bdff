"""Pseudonymous ids for patients (and for the source ids of their events): keyed hashes.

:class:`Pseudonymizer` computes them with the site's secret (``STEPCARE_PSEUDONYM_SECRET_FILE``
or ``STEPCARE_PSEUDONYM_SECRET``); :func:`fingerprint` names a secret in logs without revealing
it. The formula, the secret's rules and why: docs/integration.md, "Pseudonymous ids and the
secret".
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

from streams.clinical.files import read_small_file
from streams.errors import StepcareError
from streams.kafka.settings import warn_if_exposed

SECRET_ENV = "STEPCARE_PSEUDONYM_SECRET"
SECRET_FILE_ENV = "STEPCARE_PSEUDONYM_SECRET_FILE"
MIN_SECRET_BYTES = 32
MAX_SECRET_FILE_BYTES = 4096  # read at most this much of the secret file
PATIENT_PREFIX = "pt-"
HEX_CHARS = 32  # 128 bits


class PseudonymError(StepcareError, ValueError):
    """No usable secret, or an identifier that cannot be pseudonymized (message says which)."""


class Pseudonymizer:
    """Keyed hashes of patient identifiers and source ids (docs/integration.md, "Pseudonymous ids
    and the secret")."""

    __slots__ = ("_patient_key", "_token_key")

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes | bytearray):
            raise PseudonymError("the pseudonym secret must be bytes")
        if len(secret) < MIN_SECRET_BYTES:
            raise PseudonymError(
                f"the pseudonym secret has {len(secret)} bytes; it needs at least "
                f"{MIN_SECRET_BYTES} (make one with: openssl rand -base64 48)"
            )
        self._patient_key = bytes(secret)
        self._token_key = hmac.digest(self._patient_key, b"stepcare source-id token v1", "sha256")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Pseudonymizer:
        """The pseudonymizer of this site, its secret from the file or the variable."""
        environ = os.environ if environ is None else environ
        path, value = environ.get(SECRET_FILE_ENV, ""), environ.get(SECRET_ENV, "")
        if path and value:
            raise PseudonymError(f"set {SECRET_FILE_ENV} or {SECRET_ENV}, not both")
        if path:
            try:
                secret = read_small_file(path, MAX_SECRET_FILE_BYTES).strip()
            except OSError as exc:
                raise PseudonymError(
                    f"{SECRET_FILE_ENV}: cannot read {path}: {exc.strerror}"
                ) from None
            except ValueError as exc:  # a FIFO, a device (/dev/zero), a huge file
                raise PseudonymError(f"{SECRET_FILE_ENV}: {exc}") from None
            warn_if_exposed(path, SECRET_FILE_ENV)
            where = f"{SECRET_FILE_ENV} ({path})"
        elif value:
            # The bytes of the variable as the environment holds them (surrogateescape: the
            # original bytes of a value that is not UTF-8), as a file of those bytes gives.
            secret, where = value.encode("utf-8", "surrogateescape"), SECRET_ENV
        else:
            raise PseudonymError(
                f"no pseudonym secret: set {SECRET_FILE_ENV} (a file) or {SECRET_ENV} "
                f"(at least {MIN_SECRET_BYTES} bytes; make one with: openssl rand -base64 48)"
            )
        try:
            return cls(secret)
        except PseudonymError as exc:
            raise PseudonymError(f"{where}: {exc}") from None

    def patient_id(self, system: str, value: str) -> str:
        """``pt-`` + 32 hex digits of HMAC-SHA256(secret, ``system|value``).

        ``system`` must not contain ``|`` (URIs and OIDs cannot), so that ``system|value``
        names exactly one pair. Empty strings are refused: they identify nobody.
        """
        if not isinstance(system, str) or not system:
            raise PseudonymError("an identifier needs a non-empty system (its issuer)")
        if "|" in system:
            raise PseudonymError("an identifier system cannot contain '|'")
        if not isinstance(value, str) or not value:
            raise PseudonymError("an identifier needs a non-empty value")
        digest = hmac.digest(self._patient_key, f"{system}|{value}".encode(), "sha256")
        return PATIENT_PREFIX + digest.hex()[:HEX_CHARS]

    def token(self, kind: str, value: str) -> str:
        """32 hex digits naming ``value`` of ``kind`` (e.g. an HL7 message control id),
        keyed by a key derived from the secret: deterministic, and not a patient id."""
        message = f"{kind}\x00{value}".encode()
        return hmac.digest(self._token_key, message, "sha256").hex()[:HEX_CHARS]

    def __repr__(self) -> str:  # never show the secret, not even a hash of it
        return "Pseudonymizer(<secret>)"


def fingerprint(pseudonymizer: Pseudonymizer) -> str:
    """A short public check value of the secret (8 hex digits), to compare two deployments'
    secrets in logs without revealing them: equal fingerprints, same ids."""
    return hashlib.sha256(pseudonymizer.token("fingerprint", "stepcare").encode()).hexdigest()[:8]
