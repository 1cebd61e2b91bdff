"""Hospital interfaces: FHIR and HL7 v2 in as patient events, FHIR out; files, or live on Kafka.

Offline: fhir-import, hl7-import (to a PatientEvent log), fhir-export (escalations to FHIR
Bundles), questionnaire. Live, until SIGTERM or Ctrl-C: fhir-in, hl7-in, fhir-out, and mllp-in
(an MLLP listener: HL7 v2 ADT over TCP, ACK after Kafka's; streams/interfaces/mllp.py). The -in
actions need the pseudonym secret (STEPCARE_PSEUDONYM_SECRET_FILE or STEPCARE_PSEUDONYM_SECRET).
Refused input is reported and skipped (exit 0), or stops a --strict run (exit 2); a live bridge
exits 1 if a record could not be delivered. See docs/integration.md, "Hospital interfaces".
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from streams.errors import UsageError
from streams.interfaces import convert, live
from streams.interfaces.errors import AdapterError, Ignored
from streams.interfaces.live import (
    ESCALATIONS_TOPIC,
    FHIR_BUNDLES_DLQ_TOPIC,
    FHIR_BUNDLES_TOPIC,
    FHIR_RESPONSES_TOPIC,
    HL7_ADT_TOPIC,
    PATIENT_EVENTS_DLQ_TOPIC,
    PATIENT_EVENTS_TOPIC,
    REPORT_EVERY,
    Output,
)
from streams.kafka.settings import Settings

if TYPE_CHECKING:
    from datetime import tzinfo

    from streams.interfaces.fhir_events import FhirFeed
    from streams.interfaces.pseudonym import Pseudonymizer


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    fhir_in = actions.add_parser(
        "fhir-import",
        help="FHIR resources (dir, NDJSON, JSON or Bundle) -> PatientEvent JSONL: "
        "QuestionnaireResponse, EpisodeOfCare, Encounter, Patient, MedicationRequest, CarePlan",
    )
    fhir_in.add_argument("--input", required=True, help="directory, .ndjson or .json file")
    fhir_in.add_argument("--output", required=True, help="PatientEvent log (JSONL), or -")
    fhir_in.add_argument(
        "--fhir-base",
        default="",
        help="base URL of the FHIR server the resources came from: relative subject "
        "references (Patient/123) are read as BASE/Patient/123",
    )
    fhir_in.add_argument("--source", default="fhir", help="the events' source (default fhir)")
    _fhir_options(fhir_in)
    _common(fhir_in)
    fhir_in.set_defaults(action_handler=_fhir_import)

    hl7_in = actions.add_parser("hl7-import", help="HL7 v2 ADT messages -> PatientEvent JSONL")
    hl7_in.add_argument("--input", required=True, help="a file of messages, or a directory")
    hl7_in.add_argument("--output", required=True, help="PatientEvent log (JSONL), or -")
    hl7_in.add_argument(
        "--timezone",
        default="UTC",
        help="IANA zone of HL7 times without an offset (default UTC), e.g. America/New_York",
    )
    hl7_in.add_argument(
        "--inpatient-classes",
        default="I",
        help="PV1-2 patient classes whose A03 is a hospital discharge (comma-separated; default I)",
    )
    hl7_in.add_argument(
        "--identifier-type",
        help="use the first PID-3 identifier of this type (CX-5, e.g. MR) instead of the first",
    )
    hl7_in.add_argument("--source", default="adt", help="the events' source (default adt)")
    _common(hl7_in)
    hl7_in.set_defaults(action_handler=_hl7_import)

    fhir_out = actions.add_parser(
        "fhir-export", help="escalations (JSONL) -> FHIR transaction Bundles (NDJSON)"
    )
    fhir_out.add_argument("--input", required=True, help="escalation log (JSONL), or -")
    fhir_out.add_argument("--output", required=True, help="Bundles, one per line, or -")
    _common(fhir_out)
    fhir_out.set_defaults(action_handler=_fhir_export)

    questionnaire = actions.add_parser(
        "questionnaire", help="write the FACT-L Questionnaire (item codes only) as FHIR JSON"
    )
    questionnaire.add_argument("--output", default="-", help="file to write, or -")
    questionnaire.set_defaults(action_handler=_questionnaire)

    live_in = actions.add_parser(
        "fhir-in",
        help="live: FHIR resources (as fhir-import) from Kafka -> PatientEvents (until Ctrl-C)",
    )
    _live(live_in, "fhir-in", FHIR_RESPONSES_TOPIC, "STEPCARE_INPUT_TOPIC",
          "STEPCARE_DEAD_LETTER_TOPIC")  # fmt: skip
    live_in.add_argument(
        "--fhir-base", default="", help="base URL of the FHIR server (as for fhir-import)"
    )
    live_in.add_argument("--source", default="fhir", help="the events' source (default fhir)")
    _fhir_options(live_in)

    live_hl7 = actions.add_parser(
        "hl7-in", help="live: HL7 v2 ADT messages from Kafka -> PatientEvents (until Ctrl-C)"
    )
    _live(live_hl7, "hl7-in", HL7_ADT_TOPIC, "STEPCARE_INPUT_TOPIC", "STEPCARE_DEAD_LETTER_TOPIC")
    live_hl7.add_argument(
        "--timezone", default="UTC", help="IANA zone of HL7 times without an offset (default UTC)"
    )
    live_hl7.add_argument(
        "--inpatient-classes",
        default="I",
        help="PV1-2 patient classes whose A03 is a hospital discharge (comma-separated; default I)",
    )
    live_hl7.add_argument(
        "--identifier-type", help="use the first PID-3 identifier of this type (CX-5, e.g. MR)"
    )
    live_hl7.add_argument("--source", default="adt", help="the events' source (default adt)")

    _mllp(actions)

    live_out = actions.add_parser(
        "fhir-out", help="live: escalations from Kafka -> FHIR transaction Bundles (until Ctrl-C)"
    )
    _live(live_out, "fhir-out", "STEPCARE_ESCALATIONS_TOPIC", FHIR_BUNDLES_TOPIC,
          FHIR_BUNDLES_DLQ_TOPIC)  # fmt: skip


def _live(
    parser: argparse.ArgumentParser, name: str, source: str, target: str, dead_letters: str
) -> None:
    """The options every live bridge has; a default named STEPCARE_* is that setting's value."""

    def default(topic: str) -> str:
        if topic in _SETTING_TOPICS:
            return f"default: {topic}, or {_SETTING_TOPICS[topic]}"
        return f"default: {topic}"

    parser.add_argument("--from-topic", help=f"topic to read ({default(source)})")
    parser.add_argument("--to-topic", help=f"topic to write ({default(target)})")
    parser.add_argument(
        "--dead-letter-topic", help=f"topic of refused input ({default(dead_letters)})"
    )
    parser.add_argument("--group", default=f"stepcare-bridge-{name}", help="consumer group id")
    parser.add_argument(
        "--bootstrap-servers", help="Kafka bootstrap servers (default: STEPCARE_BOOTSTRAP_SERVERS)"
    )
    parser.add_argument(
        "--max-messages",
        type=int,
        metavar="N",
        help="stop after this many records (tests, backfills)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        metavar="S",
        help="stop after this many seconds without a record",
    )
    parser.add_argument(
        "--report-every",
        type=float,
        default=REPORT_EVERY,
        metavar="S",
        help=f"seconds between summary lines on stderr (default {REPORT_EVERY:g})",
    )
    _metrics_options(parser, name)
    parser.set_defaults(action_handler=None, live=(name, source, target, dead_letters))


def _metrics_options(parser: argparse.ArgumentParser, name: str) -> None:
    from streams.interfaces.bridge_metrics import DEFAULT_HOST, DEFAULT_PORTS

    parser.add_argument(
        "--metrics-host",
        default=DEFAULT_HOST,
        metavar="HOST",
        help=f"/metrics address (default {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_PORTS[name],
        metavar="N",
        help=f"/metrics port (default {DEFAULT_PORTS[name]}; 0: none)",
    )


def _metrics_port(args: argparse.Namespace) -> int:
    if not 0 <= args.metrics_port <= 65535:
        raise UsageError("--metrics-port must be 0 to 65535")
    return int(args.metrics_port)


_SETTING_TOPICS = {
    "STEPCARE_INPUT_TOPIC": PATIENT_EVENTS_TOPIC,
    "STEPCARE_DEAD_LETTER_TOPIC": PATIENT_EVENTS_DLQ_TOPIC,
    "STEPCARE_ESCALATIONS_TOPIC": ESCALATIONS_TOPIC,
}


def _fhir_options(parser: argparse.ArgumentParser) -> None:
    """The options of a FHIR feed (fhir-import, fhir-in): streams.interfaces.fhir_events."""
    parser.add_argument(
        "--questionnaire-url",
        action="append",
        metavar="CANONICAL",
        help="a FACT-L Questionnaire canonical a response may name (URL or URL|VERSION; "
        "repeatable; default: STEPCARE_FHIR_QUESTIONNAIRE_URLS)",
    )
    parser.add_argument(
        "--palliative-code",
        action="append",
        metavar="SYSTEM|CODE",
        help="a coding of the palliative-care program (EpisodeOfCare.type) and visits "
        "(Encounter.type, serviceType); repeatable (default: http://snomed.info/sct|103735009)",
    )
    parser.add_argument(
        "--treatment-code",
        action="append",
        metavar="SYSTEM|CODE",
        help="a coding that marks a cancer treatment (MedicationRequest and CarePlan category, "
        "medication code); repeatable (default: SNOMED CT 367336001 chemotherapy, 108290001 "
        "radiotherapy; ATC L01 and L02 medication codes always count)",
    )

    parser.add_argument(
        "--patient-identifier-system",
        default="",
        help="name a Patient resource (its death) by its identifier of this system (e.g. the "
        "MRN's, urn:oid:...) instead of by its id",
    )


def _fhir_feed(args: argparse.Namespace, settings: Settings) -> FhirFeed:
    """The FhirFeed of the options (a usage error names a bad one) and settings."""
    from streams.interfaces.fhir_events import (
        DEFAULT_PALLIATIVE_CODES,
        DEFAULT_TREATMENT_CODES,
        FhirFeed,
        parse_coding,
    )
    from streams.kafka.settings import SettingsError, env_name, questionnaire_canonicals

    try:
        if args.questionnaire_url:
            urls = questionnaire_canonicals(",".join(args.questionnaire_url), "--questionnaire-url")
        else:
            urls = questionnaire_canonicals(
                settings.fhir_questionnaire_urls, env_name("fhir_questionnaire_urls")
            )
    except SettingsError as exc:
        raise UsageError(str(exc)) from None

    def codings(given: list[str] | None, option: str, default: frozenset[tuple[str, str]]) -> Any:
        try:
            return frozenset(parse_coding(text) for text in given) if given else default
        except ValueError as exc:
            raise UsageError(f"{option}: {exc}") from None

    return FhirFeed(
        fhir_base=args.fhir_base,
        source=args.source,
        questionnaires=urls,
        palliative_codes=codings(args.palliative_code, "--palliative-code",
                                 DEFAULT_PALLIATIVE_CODES),
        treatment_codes=codings(args.treatment_code, "--treatment-code", DEFAULT_TREATMENT_CODES),
        patient_identifier_system=args.patient_identifier_system,
    )  # fmt: skip


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rejects", help="also write rejects here as JSONL")
    parser.add_argument("--strict", action="store_true", help="exit 2 on the first reject")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "mllp", False):
        return _run_mllp(args, settings)
    if getattr(args, "live", None):
        return _run_live(args, settings)
    return int(args.action_handler(args, settings))


# -- the offline converters ----------------------------------------------------------------------


def _fhir_import(args: argparse.Namespace, settings: Settings) -> int:
    feed = _fhir_feed(args, settings)
    convert.fhir_import(_files(args), _pseudonymizer(), strict=args.strict, feed=feed)
    return 0


def _hl7_import(args: argparse.Namespace, settings: Settings) -> int:
    pseudonymizer = _pseudonymizer()
    zone, classes = _hl7_options(args)
    convert.hl7_import(
        _files(args),
        pseudonymizer,
        timezone=zone,
        inpatient_classes=classes,
        identifier_type=args.identifier_type,
        source=args.source,
        strict=args.strict,
    )
    return 0


def _fhir_export(args: argparse.Namespace, settings: Settings) -> int:
    convert.fhir_export(_files(args), strict=args.strict)
    return 0


def _questionnaire(args: argparse.Namespace, settings: Settings) -> int:
    convert.questionnaire(args.output)
    return 0


def _files(args: argparse.Namespace) -> convert.Files:
    return convert.Files(args.input, args.output, args.rejects)


def _pseudonymizer() -> Pseudonymizer:
    from streams.interfaces.pseudonym import PseudonymError, Pseudonymizer

    try:
        return Pseudonymizer.from_env()
    except PseudonymError as exc:
        raise UsageError(str(exc)) from None


def _hl7_options(args: argparse.Namespace) -> tuple[tzinfo, tuple[str, ...]]:
    """The zone of ``--timezone`` (a usage error if unknown) and the ``--inpatient-classes``."""
    from streams.interfaces import hl7

    classes = tuple(c.strip() for c in args.inpatient_classes.split(",") if c.strip())
    try:
        zone = hl7.zone(args.timezone)
    except AdapterError as exc:
        raise UsageError(f"--timezone: {exc.detail}") from None
    return zone, classes


# -- the live bridges ----------------------------------------------------------------------------


def _run_live(args: argparse.Namespace, settings: Settings) -> int:
    """``stepcare bridge fhir-in|hl7-in|fhir-out``: 0 after a clean stop (SIGTERM, Ctrl-C,
    ``--max-messages``, ``--idle-timeout``), 1 if a record could not be delivered, 2 for a
    usage error (no pseudonym secret, no broker, a bad option)."""
    name, source, target, dead_letters = args.live

    def topic(option: str | None, default: str) -> str:
        if option:
            return option
        return getattr(settings, default.removeprefix("STEPCARE_").lower(), default)

    source, target = topic(args.from_topic, source), topic(args.to_topic, target)
    dead_letters = topic(args.dead_letter_topic, dead_letters)
    # Reading its own output, a bridge would loop forever (a dead letter refused again).
    if len({source, target, dead_letters}) < 3:
        raise UsageError(
            f"bridge {name}: the topics to read ({source}), to write ({target}) and of dead "
            f"letters ({dead_letters}) must differ"
        )
    if args.max_messages is not None and args.max_messages < 1:
        raise UsageError("--max-messages must be at least 1")
    if args.idle_timeout is not None and not args.idle_timeout > 0:
        raise UsageError("--idle-timeout must be more than 0 seconds")
    if not args.report_every > 0:
        raise UsageError("--report-every must be more than 0 seconds")
    metrics_port = _metrics_port(args)

    from streams.kafka.registry import framing_for, reader_for

    fingerprint = None
    if name == "fhir-out":  # reads escalations in either framing
        decode = reader_for(settings).decode_escalation
        converter: live.Converter = partial(live.fhir_out_record, decode=decode)
    else:  # writes events in the configured framing
        framing = framing_for(settings, events_topic=target)
        from streams.interfaces.pseudonym import fingerprint as secret_fingerprint

        pseudonymizer = _pseudonymizer()  # exit 2 at once without the secret
        fingerprint = secret_fingerprint(pseudonymizer)
        if name == "fhir-in":
            converter = _values_only(
                partial(
                    live.fhir_in_record,
                    pseudonymizer=pseudonymizer,
                    event_value=framing.event_value,
                    feed=_fhir_feed(args, settings),
                )
            )
        else:
            zone, classes = _hl7_options(args)
            converter = _values_only(
                partial(
                    live.hl7_in_record,
                    pseudonymizer=pseudonymizer,
                    timezone=zone,
                    inpatient_classes=classes,
                    identifier_type=args.identifier_type,
                    source=args.source,
                    event_value=framing.event_value,
                )
            )
    return live.run_live(
        name, converter, settings, source=source, target=target, dead_letters=dead_letters,
        group=args.group, bootstrap_servers=args.bootstrap_servers,
        max_messages=args.max_messages, idle_timeout=args.idle_timeout,
        report_every=args.report_every, fingerprint=fingerprint,
        metrics_host=args.metrics_host, metrics_port=metrics_port,
    )  # fmt: skip


def _values_only(convert_value: Callable[[bytes | None], Output | Ignored]) -> live.Converter:
    """An -in converter called as (value, headers): the headers are not read."""
    return lambda value, headers: convert_value(value)


# -- HL7 v2 over MLLP ----------------------------------------------------------------------------


def _mllp(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from streams.interfaces import mllp

    parser = actions.add_parser(
        "mllp-in",
        help="live: an MLLP listener, HL7 v2 ADT over TCP -> PatientEvents, ACK after Kafka's",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; any other is your choice: see the docs)",
    )
    parser.add_argument(
        "--port", type=int, default=mllp.DEFAULT_PORT, help="TCP port (default 2575; 0: any)"
    )
    parser.add_argument(
        "--to-topic", help=f"topic to write (default: STEPCARE_INPUT_TOPIC, {PATIENT_EVENTS_TOPIC})"
    )
    parser.add_argument(
        "--dead-letter-topic",
        help=f"refused messages (default: STEPCARE_DEAD_LETTER_TOPIC, {PATIENT_EVENTS_DLQ_TOPIC})",
    )
    parser.add_argument(
        "--bootstrap-servers", help="Kafka bootstrap servers (default: STEPCARE_BOOTSTRAP_SERVERS)"
    )
    parser.add_argument("--timezone", default="UTC", help="as for hl7-in (default UTC)")
    parser.add_argument("--inpatient-classes", default="I", help="as for hl7-in (default I)")
    parser.add_argument("--identifier-type", help="as for hl7-in (CX-5, e.g. MR)")
    parser.add_argument("--source", default="adt", help="the events' source (default adt)")
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=mllp.MAX_MESSAGE_BYTES,
        help=f"larger messages get AR and the connection closes (default {mllp.MAX_MESSAGE_BYTES})",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=mllp.MAX_CONNECTIONS,
        help=f"connections open at once; more are closed (default {mllp.MAX_CONNECTIONS})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=mllp.IDLE_TIMEOUT,
        help=f"close a connection quiet this many seconds (default {mllp.IDLE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--delivery-timeout",
        type=float,
        default=mllp.DELIVERY_TIMEOUT,
        help="seconds Kafka has to acknowledge a record before the message gets AR "
        f"(default {mllp.DELIVERY_TIMEOUT:g})",
    )
    parser.add_argument(
        "--report-every",
        type=float,
        default=REPORT_EVERY,
        help=f"seconds between summary lines on stderr (default {REPORT_EVERY:g})",
    )
    _metrics_options(parser, "mllp-in")
    parser.set_defaults(action_handler=None, mllp=True)


def _run_mllp(args: argparse.Namespace, settings: Settings) -> int:
    """``stepcare bridge mllp-in``: 0 after SIGTERM or Ctrl-C, 1 after a fatal Kafka error, 2
    for a usage error (no secret, no broker, a bad option, a port it cannot listen on)."""
    from streams.interfaces import mllp
    from streams.interfaces.pseudonym import fingerprint
    from streams.kafka.registry import framing_for

    target = args.to_topic or settings.input_topic
    dead_letters = args.dead_letter_topic or settings.dead_letter_topic
    if target == dead_letters:
        raise UsageError(f"bridge mllp-in: the topic to write and of dead letters ({target}) "
                         "must differ")  # fmt: skip
    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be 0 to 65535")
    metrics_port = _metrics_port(args)
    for option, value, least in (
        ("--max-message-bytes", args.max_message_bytes, 16),
        ("--max-connections", args.max_connections, 1),
    ):
        if value < least:
            raise UsageError(f"{option} must be at least {least}")
    for option, seconds in (
        ("--idle-timeout", args.idle_timeout),
        ("--delivery-timeout", args.delivery_timeout),
        ("--report-every", args.report_every),
    ):
        if not seconds > 0:
            raise UsageError(f"{option} must be more than 0 seconds")
    pseudonymizer = _pseudonymizer()  # exit 2 at once without the secret
    zone, classes = _hl7_options(args)
    framing = framing_for(settings, events_topic=target)
    convert = partial(
        live.hl7_in_record,
        pseudonymizer=pseudonymizer,
        timezone=zone,
        inpatient_classes=classes,
        identifier_type=args.identifier_type,
        source=args.source,
        event_value=framing.event_value,
    )
    limits = mllp.Limits(
        max_message_bytes=args.max_message_bytes,
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        delivery_timeout=args.delivery_timeout,
    )
    return mllp.run_mllp(
        convert, settings, host=args.host, port=args.port, target=target,
        dead_letters=dead_letters, bootstrap_servers=args.bootstrap_servers, limits=limits,
        report_every=args.report_every, fingerprint=fingerprint(pseudonymizer),
        metrics_host=args.metrics_host, metrics_port=metrics_port,
    )  # fmt: skip
