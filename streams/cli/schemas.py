"""``stepcare schemas``: stepcare's schemas in a schema registry (Confluent API).

``register`` puts the current PatientEvent and Escalation schemas under the subjects of the
input and escalation topics (``<topic>-value``; the dead-letter topic carries raw bytes, so it
has none), with BACKWARD compatibility; ``check`` says whether a candidate ``.avsc`` may be
registered next under a subject (for an integration team's CI); ``list`` shows the subjects.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from streams.errors import UsageError
from streams.formats import avro
from streams.formats.files import FileError, open_input
from streams.kafka.registry import SchemaRegistry, subject_of
from streams.kafka.settings import Settings, SettingsError, env_name

EXIT_INCOMPATIBLE = 1
SCHEMA_FILE_LIMIT = 1024 * 1024  # bytes of a candidate .avsc read


def configure(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        metavar="URL",
        help=f"the registry's Confluent API URL (default: {env_name('schema_registry_url')})",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser(
        "register",
        parents=[common],
        help="register the current PatientEvent and Escalation schemas under <topic>-value "
        "(BACKWARD compatibility); idempotent",
    )
    check = actions.add_parser(
        "check",
        parents=[common],
        help="may a candidate .avsc be registered next under a subject? exit 0 if so, 1 if not",
    )
    check.add_argument("file", metavar="FILE.avsc", help="the candidate schema ('-': stdin)")
    target = check.add_mutually_exclusive_group()
    target.add_argument(
        "--subject", help="the subject (default: by the schema's name, PatientEvent or Escalation)"
    )
    target.add_argument("--topic", help="the topic whose record values use it (<topic>-value)")
    listing = actions.add_parser(
        "list",
        parents=[common],
        help="the subjects, their versions, schema ids and compatibility (stepcare's first)",
    )
    listing.add_argument("--json", action="store_true", help="one JSON document, for machines")


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings = _with_registry(settings, args.registry)
    actions = {"register": _register, "check": _check, "list": _list}
    return actions[args.action](args, settings)


def _with_registry(settings: Settings, url: str | None) -> Settings:
    """The settings with ``--registry`` in force; UsageError if there is no registry URL."""
    name = env_name("schema_registry_url")
    if url is not None:
        try:
            return dataclasses.replace(settings, schema_registry_url=url)
        except SettingsError as exc:
            raise UsageError(str(exc).replace(f"{name}=", "--registry ", 1)) from None
    if not settings.schema_registry_url:
        raise UsageError(
            f"no schema registry: pass --registry URL or set {name} (for development, "
            "`stepcare registry start` runs one and prints its URL)"
        )
    return settings


def stepcare_subjects(settings: Settings) -> dict[str, tuple[str, avro.RecordCodec]]:
    """stepcare's subjects: subject -> (the topic's role, the codec of its record values)."""
    return {
        subject_of(settings.input_topic): ("input", avro.EVENT_CODEC),
        subject_of(settings.escalations_topic): ("escalations", avro.ESCALATION_CODEC),
    }


def _full_name(schema: dict[str, Any]) -> str:
    namespace = schema.get("namespace")
    return f"{namespace}.{schema['name']}" if namespace else str(schema["name"])


# -- register ---------------------------------------------------------------------------------


def _register(args: argparse.Namespace, settings: Settings) -> int:
    registry = SchemaRegistry(settings)
    for subject, (_, codec) in stepcare_subjects(settings).items():
        schema = codec.current.schema
        before = registry.registered(subject, schema)
        schema_id = registry.ensure(subject, schema)  # and BACKWARD on the subject
        found = before or registry.registered(subject, schema)
        version = "?" if found is None else found[0]
        state = "new" if before is None else "already registered"
        print(f"{subject}: {_full_name(schema)} schema id {schema_id}, version {version} ({state})")
    return 0


# -- check ------------------------------------------------------------------------------------


def _check(args: argparse.Namespace, settings: Settings) -> int:
    schema = read_schema(args.file)
    name = "stdin" if args.file == "-" else args.file
    subject = subject_for(schema, args, settings)
    registry = SchemaRegistry(settings)
    latest = registry.latest(subject)
    if latest is None:
        print(f"compatible: {subject} has no schema yet ({name} would be its version 1)")
        return 0
    verdict = registry.compatible(subject, schema)
    level = registry.compatibility(subject)
    version, schema_id = latest
    about = (
        f"{subject} version {version} (the latest, schema id {schema_id}; compatibility {level})"
    )
    if verdict:
        print(f"compatible: {name} with {about}")
        return 0
    print(f"incompatible: {name} with {about}")
    return EXIT_INCOMPATIBLE


def read_schema(name: str) -> Any:
    """The Avro schema (its JSON value) in file ``name``; UsageError/FileError, one line, if
    it cannot be read, is not JSON, or is not a schema fastavro parses."""
    fo = open_input(name)
    try:
        data = fo.read(SCHEMA_FILE_LIMIT + 1)
    except OSError as exc:
        raise FileError(f"cannot read {name}: {exc.strerror}") from None
    finally:
        if name != "-":
            fo.close()
    if len(data) > SCHEMA_FILE_LIMIT:
        raise UsageError(f"{name}: more than {SCHEMA_FILE_LIMIT} bytes: not an Avro schema file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{name}: not UTF-8 text (byte {exc.start + 1})") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{name}: not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    import fastavro

    try:
        fastavro.parse_schema(schema)
    except Exception as exc:  # SchemaParseException, UnknownType, and others on odd values
        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        why = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        raise UsageError(f"{name}: not an Avro schema fastavro can parse: {why}") from None
    return schema


def subject_for(schema: Any, args: argparse.Namespace, settings: Settings) -> str:
    """``--subject``, ``--topic``'s subject, or the one of stepcare's schema of that name."""
    if args.subject is not None or args.topic is not None:
        subject = str(args.subject if args.subject is not None else subject_of(args.topic))
        if not subject.strip() or subject == "-value":
            raise UsageError("--subject/--topic: empty")
        return subject
    name = schema.get("name") if isinstance(schema, dict) else None
    short = name.rsplit(".", 1)[-1] if isinstance(name, str) else None
    for subject, (_, codec) in stepcare_subjects(settings).items():
        if short == codec.current.schema["name"]:
            return subject
    input_, escalations = stepcare_subjects(settings)
    named = f"a schema named {name!r}" if isinstance(name, str) else "a schema without a name"
    raise UsageError(
        f"{args.file}: {named} is not one of stepcare's: pass --subject SUBJECT or --topic TOPIC "
        f"(PatientEvent -> {input_}, Escalation -> {escalations})"
    )


# -- list -------------------------------------------------------------------------------------


def _list(args: argparse.Namespace, settings: Settings) -> int:
    registry = SchemaRegistry(settings)
    ours = stepcare_subjects(settings)
    found = set(registry.subjects())
    rows: list[dict[str, Any]] = []
    for subject in [*ours, *sorted(found - set(ours))]:
        row: dict[str, Any] = {
            "subject": subject,
            "stepcare": ours[subject][0] if subject in ours else None,
            "registered": subject in found,
            "compatibility": None,
            "versions": [],
        }
        if subject in found:
            row["compatibility"] = registry.compatibility(subject)
            row["versions"] = [{"version": v, "id": i} for v, i in registry.versions(subject)]
        rows.append(row)
    if args.json:
        print(json.dumps({"registry": registry.url, "subjects": rows}))
        return 0
    width = max(len(row["subject"]) for row in rows)
    level_width = max(len(row["compatibility"] or "-") for row in rows)
    for row in rows:
        level = row["compatibility"] or "-"
        if row["registered"]:
            versions = row["versions"]
            what = ("versions " if len(versions) > 1 else "version ") + ", ".join(
                f"{v['version']} (id {v['id']})" for v in versions
            )
        else:
            what = "not registered (stepcare schemas register)"
        print(f"{row['subject']:<{width}}  {level:<{level_width}}  {what}".rstrip())
    return 0
