"""``stepcare fhir-validator``: HAPI FHIR's validator (``streams.devtools.fhir_validator``):
fetch it, or check FHIR R4 JSON files with it (exit 1 if one has an error)."""

from __future__ import annotations

import argparse
from pathlib import Path

from streams.cli.progress import report
from streams.devtools.fhir_validator import HAPI_VERSION, FhirValidator, compile_validator
from streams.kafka.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser(
        "fetch", help=f"download HAPI FHIR {HAPI_VERSION}'s validator from Maven Central"
    )
    check = actions.add_parser(
        "check", help="validate FHIR R4 JSON files (one JVM run); each issue on stdout"
    )
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "fetch":
        classes = compile_validator(settings.cache_dir)
        report(f"HAPI FHIR {HAPI_VERSION}'s validator: {classes.parent}")
        return 0
    results = FhirValidator(settings.cache_dir).validate(args.files)
    for result in results:
        for issue in result.issues:
            print(f"{result.source}: {issue}")
    failed = sum(1 for result in results if result.errors)
    report(f"{len(results)} files: {failed} with errors")
    return 1 if failed else 0
