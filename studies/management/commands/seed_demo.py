"""`python manage.py seed_demo`: a demo consortium of four hospitals and two studies.

Everything governed is built through the services (`sites.services`, `studies.services`) with
the person who would do it in real life as the actor, so the audit log records the whole story
and `verify_audit` checks it. Only users are created directly (`create_user`): managing them is
the consortium admin's job in the Django admin, and there is no user service.

Running it again changes nothing: it says the demo exists and prints the credentials.
"""

from typing import Any

from django.contrib.auth import get_user_model, password_validation
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from consortium.audit.keys import ensure_demo_key
from consortium.roles import Role
from sites.models import Site
from studies.demo import ACTIVE_TITLE, DEMO_PASSWORD, PENDING_TITLE, SITES, URL, USERS, seed
from studies.models import Study


class Command(BaseCommand):
    help = "Create a demo consortium (4 hospital sites, their admins, a PI, two DPOs, an auditor, two studies)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--password", default=DEMO_PASSWORD,
                            help=f"Password for every demo user (default: {DEMO_PASSWORD!r}).")

    def handle(self, *args: Any, password: str, **options: Any) -> None:
        existing = Study.objects.filter(title=ACTIVE_TITLE).exists()
        if existing:
            self.stdout.write("The demo consortium already exists; nothing was changed.")
        else:
            self._check_empty()
            try:
                password_validation.validate_password(password)
            except ValidationError as exc:
                raise CommandError(f"--password: {' '.join(exc.messages)}") from exc
            with transaction.atomic():
                seed(password)
            self.stdout.write(self.style.SUCCESS("Demo consortium created: 4 sites, 2 studies, every step audited."))
        key_file = ensure_demo_key()
        self.stdout.write(f"Audit checkpoints are signed with the demo key in {key_file} (DEBUG=1 only; production "
                          "sets AUDIT_SIGNING_KEY or AUDIT_SIGNING_KEY_FILE).")
        self._print_credentials(password, verify=existing)

    def _check_empty(self) -> None:
        """Refuse to mix the demo into a database that already holds some of its names."""
        taken_users = get_user_model().objects.filter(username__in=[u.username for u in USERS])
        taken_sites = Site.objects.filter(code__in=[s.code for s in SITES])
        clashes = [*taken_users.values_list("username", flat=True), *taken_sites.values_list("code", flat=True)]
        if clashes:
            raise CommandError(
                f"These demo names already exist but the demo study does not: {', '.join(sorted(clashes))}. "
                "seed_demo fills an empty database; start from a fresh one (remove data/consortium.sqlite3)."
            )

    def _print_credentials(self, password: str, *, verify: bool) -> None:
        """The login table. For a demo seeded earlier, show the password only where it still works."""
        users = {u.username: u for u in get_user_model().objects.filter(username__in=[d.username for d in USERS])}
        rows = [("Username", "Password", "Role", "What to try")]
        for demo in USERS:
            user = users.get(demo.username)
            works = user is not None and (not verify or user.check_password(password))
            shown = password if works else "(set when first seeded)"
            role = ", ".join(r.label for r in demo.roles) or Role.SITE_ADMIN.label
            rows.append((demo.username, shown, role, demo.note))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        self.stdout.write("")
        for index, row in enumerate(rows):
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
                              + "  " + row[3])
            if index == 0:
                self.stdout.write("  ".join("-" * width for width in widths) + "  " + "-" * len(row[3]))
        self.stdout.write("")
        self.stdout.write(f"Open {URL} and log in as any of them (Django admin: {URL}admin/ as 'admin').")
        self.stdout.write(f'"{ACTIVE_TITLE}" is active with all 4 sites eligible; '
                          f"one site's ethics approval expires within 30 days.")
        self.stdout.write(f'"{PENDING_TITLE}" awaits approval: log in as pi, then as dpo, and approve it '
                          "(four eyes); its DPIA, submitted by dpo, awaits dpo2's review.")
