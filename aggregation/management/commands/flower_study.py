"""Prepare a study for a Flower federation: the demo consortium (migrated and seeded), a fresh, fully governed,
active study over some demo sites, and each site's data partition for its SuperNode. The PI then issues the
study's Flower coordinator token and the site admins register their SuperNodes' keys (docs/flower.md)."""

import io
import json
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from aggregation import demo
from studies.demo import SITES, federation_study


class Command(BaseCommand):
    help = "Create a governed, active study for a Flower federation over demo sites; print its id and data files."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--sites", nargs="+", default=[site.code for site in SITES][:3],
                            choices=[site.code for site in SITES], help="demo sites taking part (default: three)")
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument("--quorum", type=int, default=2)
        parser.add_argument("--json", action="store_true", help="print one JSON line")

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", verbosity=0)
        call_command("seed_demo", stdout=io.StringIO())
        study = federation_study(title=f"Flower federation {timezone.now():%Y-%m-%d %H:%M:%S}",
                                 rounds=options["rounds"], site_codes=options["sites"], quorum=options["quorum"],
                                 federated_statistics=False)
        files = demo.ensure_partitions()
        answer = {"study_id": study.pk, "data": {code: str(files[code]) for code in options["sites"]}}
        self.stdout.write(json.dumps(answer) if options["json"] else
                          f"Study {study.pk} ({study.title}); site data: {answer['data']}")
