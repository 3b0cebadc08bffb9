"""`python manage.py audit_export --out DIR [filters] [--format csv|jsonl]`: a signed, verifiable export.

Writes a bundle (DIR, or DIR.zip when --out ends in .zip) with `consortium.evidence.bundle`, after signing a
fresh checkpoint; verify it offline with `python -m consortium.verify DIR --public-key FILE`. The export is
itself audited. Filters are those of the audit page and the API (`consortium.audit.filters`).
"""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from consortium.audit.bundle import COMMAND_ACTOR, audit_bundle_export
from consortium.audit.checkpoints import HistoryRewritten
from consortium.audit.filters import parse_filter
from consortium.audit.keys import SigningKeyMissing


class Command(BaseCommand):
    help = "Export the audit log as a signed bundle an auditor verifies offline (python -m consortium.verify)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", required=True, help="the bundle: a directory, or a file ending in .zip")
        parser.add_argument("--since", help="events at or after this ISO 8601 time (with its UTC offset)")
        parser.add_argument("--until", help="events before this ISO 8601 time (with its UTC offset)")
        parser.add_argument("--actor", metavar="USERNAME", help="events by this person")
        parser.add_argument("--site", metavar="CODE", help="events about this site")
        parser.add_argument("--study", metavar="ID", help="events about this study")
        parser.add_argument("--object-type", help="events about objects of this type, e.g. aggregation.modelversion")
        parser.add_argument("--object-id", help="events about the object with this id (with --object-type)")
        parser.add_argument("--action", metavar="PREFIX", help="actions starting with this, e.g. studies.dpia.")
        parser.add_argument("--outcome", choices=["done", "denied"], help="done (ok) or denied")
        parser.add_argument("--format", choices=["csv", "jsonl"], default="jsonl", help="events file (default jsonl)")

    def handle(self, *args: Any, **options: Any) -> None:
        out = Path(options["out"])
        if out.suffix != ".zip" and out.exists() and any(out.iterdir()):
            raise CommandError(f"{out} exists and is not empty: choose a new directory.")
        if out.suffix == ".zip" and out.exists():
            raise CommandError(f"{out} exists: choose a new file.")
        values = {name: options.get(name) for name in ("since", "until", "actor", "site", "study", "object_type",
                                                       "object_id", "action", "outcome")}
        form, audit_filter = parse_filter(values)
        if audit_filter is None:
            raise CommandError(f"Invalid filter. {form.error_text()}")
        try:
            manifest = audit_bundle_export(actor=COMMAND_ACTOR, out=out, audit_filter=audit_filter,
                                           events_format=options["format"])
        except (SigningKeyMissing, HistoryRewritten) as exc:
            raise CommandError(str(exc)) from exc
        checkpoint, counts = manifest["checkpoint"], manifest["counts"]
        self.stdout.write(f"Wrote {out}: {counts['included']} events exported, {counts['skipped']} others proven "
                          f"outside the filter; checkpoint of {checkpoint['seq']} events signed by "
                          f"{manifest['key_fingerprint']}.")
        self.stdout.write(f"Verify: python -m consortium.verify {out} --public-key coordinator.pem")
