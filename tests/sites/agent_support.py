"""What the agent token tests share: issuing a token as a persona, and proving a secret was never stored."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connection

from sites.models import AgentToken, Site
from sites.services import agent_token_create
from tests.base import Personas


def issue(p: Personas, site: Site | None = None, name: str = "GPU box in radiology") -> tuple[AgentToken, str]:
    """A token of `site` (site A by default), created by its admin; returns the token and its plaintext."""
    site = site or p.site_a
    return agent_token_create(actor=p.site_admin_of(site), site=site, name=name)


def secret_of(plaintext: str) -> str:
    return plaintext.split("_", 2)[2]


def token_rows() -> list[dict[str, Any]]:
    return list(AgentToken.objects.order_by("pk").values())


@contextmanager
def tokens_unchanged() -> Iterator[None]:
    """No agent token row may be created, changed or deleted inside the block."""
    before = token_rows()
    yield
    assert token_rows() == before, "agent tokens changed"


def stored_anywhere(needle: str) -> list[str]:
    """Every table.column of the database whose stored value contains `needle` (the whole database, the
    audit log included): a secret must appear in none."""
    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608 (table names come from introspection)
            columns = [column[0] for column in cursor.description]
            for row in cursor.fetchall():
                found.extend(f"{table}.{col}" for col, value in zip(columns, row, strict=True)
                             if value is not None and needle in str(value))
    return found
