"""The dashboard at many sites: past `SITE_DETAIL_LIMIT` sites, a chart of one line per site or a heatmap and a
governance table of one row per site is unreadable (and 200 legend entries are no legend). The dashboard then
summarises: the per-site charts keep the spread band over every site and draw lines only for the worst sites;
the heatmap and the governance panel show one page of sites, worst first, narrowed by a name filter.

"Worst" is what a coordinator looks at first: sites the gate refuses now, then sites that missed, were
excluded from or refused in the most rounds they were eligible for, then by name. Computed from what the
dashboard already read, so it costs no query.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from math import ceil
from typing import Any, Protocol

from aggregation.choices import ROUND_LIVE


class SiteRef(Protocol):  # `aggregation.dashboard.SiteRef` (which imports this module)
    site_id: int
    name: str


class RoundView(Protocol):  # `aggregation.dashboard.RoundView`
    round: Any
    eligible: frozenset[int] | None
    cells: Mapping[int, tuple[str, str]]

SITE_DETAIL_LIMIT = 12  # up to this many sites, every site gets its own line and row
WORST_LINES = 8  # lines drawn past the limit
PAGE_SIZE = 25  # heatmap and governance rows per page past the limit
MAX_FILTER_CHARS = 100


@dataclass(frozen=True)
class SiteSummary:
    """Which sites the page details: `lines` in the per-site charts, `rows` in the heatmap and the governance
    panel (this page of the filtered, ranked sites)."""

    summarised: bool
    lines: list["SiteRef"]
    rows: list["SiteRef"]
    total: int
    matching: int
    page: int = 1
    pages: int = 1
    filter: str = ""
    refused_now: int = 0
    row_ids: list[int] = field(default_factory=list)
    misses: dict[int, int] = field(default_factory=dict)  # per site, the ended rounds it was eligible for and missed
    refused_ids: list[int] = field(default_factory=list)  # the sites the gate refuses now

    def as_state(self) -> dict:
        """What `static/js/dashboard.js` needs to keep live updates within the summary, and to re-rank the
        worst sites as rounds end (the same order as `summarise`)."""
        return {"summarised": self.summarised, "line_site_ids": [s.site_id for s in self.lines],
                "row_site_ids": self.row_ids, "total": self.total, "matching": self.matching, "page": self.page,
                "pages": self.pages, "filter": self.filter, "worst_lines": WORST_LINES, "misses": self.misses,
                "refused_site_ids": self.refused_ids}


def summarise(sites: Sequence["SiteRef"], views: Sequence["RoundView"], eligible_now: frozenset[int], *,
              site_filter: str = "", page: int = 1) -> SiteSummary:
    """Every site in detail up to the limit; past it, the worst sites' lines and one page of ranked rows."""
    sites = list(sites)
    if len(sites) <= SITE_DETAIL_LIMIT and not site_filter:
        return SiteSummary(False, sites, sites, len(sites), len(sites), row_ids=[s.site_id for s in sites])
    misses = {s.site_id: _misses(s.site_id, views) for s in sites}
    ranked = sorted(sites, key=lambda s: (0 if s.site_id not in eligible_now else 1, -misses[s.site_id],
                                          s.name.casefold(), s.site_id))
    needle = site_filter.strip()[:MAX_FILTER_CHARS].casefold()
    matching = [s for s in ranked if needle in s.name.casefold()] if needle else ranked
    pages = max(1, ceil(len(matching) / PAGE_SIZE))
    page = min(max(1, page), pages)
    rows = matching[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]
    refused = [s.site_id for s in sites if s.site_id not in eligible_now]
    return SiteSummary(True, ranked[:WORST_LINES], rows, len(sites), len(matching), page, pages, site_filter.strip(),
                       len(refused), [s.site_id for s in rows], misses, refused)


def _misses(site_id: int, views: Sequence["RoundView"]) -> int:
    """Ended rounds the site was eligible for but is not counted in. Worst first: refused by the gate now,
    then the most misses."""
    return sum(1 for view in views if view.eligible and site_id in view.eligible
               and view.round.status not in ROUND_LIVE  # a live round: nobody is late yet
               and view.cells.get(site_id, ("missing", ""))[0] != "submitted")
