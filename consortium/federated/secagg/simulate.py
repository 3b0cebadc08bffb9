"""A whole secure round in one process, sites and coordinator side by side: for tests and bench/secagg.py.

The real deployment runs the same calls across HTTP (sites/agent and aggregation/); this driver only
wires the messages, so what it proves about the protocol holds there too."""

from collections.abc import Collection, Mapping

import numpy as np

from consortium.federated.secagg.coordinator import CoordinatorRound, Result
from consortium.federated.secagg.roster import RoundConfig
from consortium.federated.secagg.site import SiteSession


def run_round(config: RoundConfig, updates: Mapping[str, tuple[np.ndarray, int]], *,
              drop_after_masking: Collection[str] = (), drop_before_masking: Collection[str] = (),
              excluded: frozenset[str] = frozenset()) -> tuple[CoordinatorRound, Result]:
    """Run every stage; the named sites stop answering at the given point (they drop out)."""
    sessions = {site: SiteSession(config, site) for site in updates}
    coordinator = CoordinatorRound(config)
    for session in sessions.values():
        coordinator.add_keys(session.keys())
    roster = coordinator.close_keys()
    for session in sessions.values():
        coordinator.add_shares(session.shares(roster))
    mail = coordinator.close_shares()
    for site, session in sessions.items():
        if site not in drop_before_masking:
            update, weight = updates[site]
            coordinator.add_masked_input(session.masked_input(mail[site], update, weight))
    request = coordinator.close_masked_inputs(excluded=excluded)
    for site in request.survivors:
        if site not in drop_after_masking:
            coordinator.add_unmask(sessions[site].unmask(request))
    return coordinator, coordinator.finish()
