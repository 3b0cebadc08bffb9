"""Recompute the audit chain: exit 0 when intact, 1 naming the first broken sequence number.

With `--csv FILE`, recompute it from an export (page or API) instead, without the database."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from consortium.audit.exports import verify_export
from consortium.audit.log import verify_chain


class Command(BaseCommand):
    help = "Verify the hash chain of the audit log (detects edited, deleted and inserted events)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--expect-head",
            metavar="SEQ:HASH",
            help="A head recorded earlier (printed by a previous run); also catches events cut from the end.",
        )
        parser.add_argument("--csv", metavar="FILE", help="Verify an exported CSV file instead of the database.")

    def handle(self, *args, **options):
        if options["csv"]:
            self._check_export(Path(options["csv"]))
            return
        report = verify_chain()
        if not report.intact:
            self.stderr.write(
                f"Audit chain BROKEN at event #{report.broken_seq}: {report.problem}. "
                f"{report.verified} events before it verified."
            )
            raise SystemExit(1)
        if options["expect_head"]:
            self._check_head(options["expect_head"])
        self.stdout.write(
            f"Audit chain intact: {report.verified} events verified. Head: {report.verified}:{report.head_hash}"
        )

    def _check_head(self, expected: str) -> None:
        from consortium.audit.models import AuditEvent

        try:
            seq_text, hash_text = expected.split(":", 1)
            seq = int(seq_text)
        except ValueError as exc:
            raise CommandError("--expect-head takes SEQ:HASH, as printed by an earlier run.") from exc
        row = AuditEvent.objects.filter(seq=seq).values_list("hash", flat=True).first()
        if row != hash_text:
            self.stderr.write(f"Audit chain BROKEN at event #{seq}: it is missing or differs from the recorded head.")
            raise SystemExit(1)

    def _check_export(self, path: Path) -> None:
        try:
            with path.open(encoding="utf-8", newline="") as file:  # keep a CR inside a cell as it was
                text = file.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"Cannot read {path}: {exc}") from exc
        report = verify_export(text)
        if not report.intact:
            self.stderr.write(f"Export BROKEN: {report.problem}. {report.rows} rows before it verified.")
            raise SystemExit(1)
        scope = "the whole chain from its first event" if report.complete_from_genesis else "a filtered export"
        self.stdout.write(f"Export intact: {report.rows} rows verified ({scope}).")
