"""A throwaway federation for a real ASGI server: `python -m tests.aggregation.hostile_server` migrates the
database its environment names (CONSORTIUM_DATA_DIR / DATABASE_URL), makes a governed active study of two
sites with an agent token each, opens round 1 and prints what a client needs as one JSON line.

Used by the live hostile-upload test and `bench/hostile_upload.py`, which then start daphne on the same
environment."""

import json
import os
import sys

import django


def prepare() -> dict:
    from django.conf import settings
    from django.core.management import call_command

    from aggregation.services import round_open_next
    from tests.aggregation.support import agent_for, governed_study
    from tests.base import make_personas

    call_command("migrate", verbosity=0)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # test users, made fast
    p = make_personas()
    study = governed_study(p)
    (_, token_a), (_, token_b) = agent_for(p, p.site_a), agent_for(p, p.site_b)
    round_ = round_open_next(study_id=study.pk)
    return {"study_id": study.pk, "round_id": round_.pk, "round": round_.number,
            "base_version": round_.base_version.number, "token_a": token_a, "token_b": token_b}


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "consortium.settings")
    django.setup()
    sys.stdout.write(json.dumps(prepare()) + "\n")
