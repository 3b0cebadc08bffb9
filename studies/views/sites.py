"""The site admin's pages: their sites, and each site's participations across studies.

They live in `studies` because participations are a studies concept (sites must not import studies);
`consortium/web_urls.py` routes them under /sites/."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from consortium.web import domain_errors
from sites.selectors import administered_site_ids, site_get, sites_administered
from studies import selectors
from studies.views._context import participation_actions


@login_required
def sites_list(request: HttpRequest) -> HttpResponse:
    return render(request, "sites/list.html", {"sites": sites_administered(request.user)})


@login_required
@domain_errors
def site_detail(request: HttpRequest, pk: int) -> HttpResponse:
    site = site_get(request.user, pk)
    administers = site.pk in administered_site_ids(request.user)
    # Signing and ethics need the DUA text and dates: they are offered on the study page, not here.
    rows = [
        {
            "participation": p,
            "actions": [
                a
                for a in participation_actions(p, administers=administers, may_withdraw=False, signed_current=True)
                if a != "ethics"
            ],
        }
        for p in selectors.site_participations(request.user, site)
    ]
    return render(request, "sites/detail.html", {"site": site, "rows": rows, "administers": administers})
