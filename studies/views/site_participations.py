"""The studies part of a site's page (`consortium.pages.sites`): the site's participations across studies,
each with the buttons its admins get. Read-only."""

from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from sites.models import Site
from studies import selectors
from studies.views._context import participation_actions


def site_participation_rows(user: AbstractBaseUser, site: Site, *, administers: bool) -> list[dict[str, Any]]:
    """The site's participations `user` may see, with the actions offered on them (`administers`: the user is one
    of the site's admins). Signing and ethics need the DUA text and dates: they are offered on the study page,
    not here."""
    return [
        {
            "participation": p,
            "actions": [
                a
                for a in participation_actions(p, administers=administers, may_withdraw=False, signed_current=True)
                if a != "ethics"
            ],
        }
        for p in selectors.site_participations(user, site)
    ]
