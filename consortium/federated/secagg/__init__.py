"""Secure aggregation (SecAgg, Bonawitz et al. 2017; SecAgg+, Bell et al. 2020) without Django.

The coordinator learns the weighted sum of the sites' updates and nothing about any one of them:
each site adds to its quantised update a self mask and, for each neighbour, a pairwise mask that the
neighbour subtracts; both kinds of seed are Shamir-shared among the neighbours, encrypted to each, so
that the masks of sites that drop out can still be removed. See docs/secure-aggregation.md.

    site.py         SiteSession: the site agent's side (keys, shares, masked input, unmask)
    coordinator.py  CoordinatorRound: collects, checks, and unmasks only the sum
    roster.py       RoundConfig, Roster: the public setup and the SecAgg+ neighbour graph
    messages.py     what crosses the wire, with its JSON-safe form
    masks.py        the uint32 ring, AES-CTR mask expansion, quantisation
    keys.py         X25519, HKDF, ChaCha20-Poly1305, seed commitments
    shamir.py       Shamir secret sharing over GF(2^521 - 1)
"""

from consortium.federated.secagg.coordinator import CoordinatorRound, Result
from consortium.federated.secagg.errors import SecAggError
from consortium.federated.secagg.messages import Keys, MaskedInput, Shares, Unmask, UnmaskRequest
from consortium.federated.secagg.roster import Roster, RoundConfig
from consortium.federated.secagg.site import SiteSession

__all__ = ["CoordinatorRound", "Keys", "MaskedInput", "Result", "Roster", "RoundConfig", "SecAggError", "Shares",
           "SiteSession", "Unmask", "UnmaskRequest"]
