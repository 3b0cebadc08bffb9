"""The coordinator's side of a secure round: it relays, checks and finally unmasks only the sum.

It holds public keys, ciphertexts it cannot read, masked vectors, and at the end enough shares to
remove the masks of the sum, never those of one site's input. Every step refuses what does not fit
(unknown site, second message, wrong recipients, wrong size) and the last one fails closed, naming the
site, when fewer than `threshold` shares of a needed secret came back or a rebuilt secret does not
match what its owner committed to.
"""

from dataclasses import dataclass

import numpy as np

from consortium.federated.secagg import integers, masks, shamir
from consortium.federated.secagg import keys as crypto
from consortium.federated.secagg.errors import SecAggError
from consortium.federated.secagg.messages import Keys, MaskedInput, Shares, Unmask, UnmaskRequest
from consortium.federated.secagg.roster import Roster, RoundConfig


@dataclass(frozen=True)
class Result:
    """The unmasked weighted mean, the sum of weights, who counted, who dropped out, and the error bound."""

    mean: np.ndarray
    total_weight: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    max_error: float
    sums: np.ndarray | None = None  # "integers" encoding: the exact sums (`integers.decode`); `mean` is empty


class CoordinatorRound:
    """One round's collected messages; stages close in order: keys, shares, masked inputs, unmasking."""

    def __init__(self, config: RoundConfig) -> None:
        self.config = config
        self.roster: Roster | None = None
        self._keys: dict[str, Keys] = {}
        self._shares: dict[str, Shares] = {}
        self._masked: dict[str, np.ndarray] = {}
        self.digests: dict[str, str] = {}
        self.request: UnmaskRequest | None = None
        self._answers: dict[str, Unmask] = {}

    # --- stage 1: keys ------------------------------------------------------------------------------

    def add_keys(self, message: Keys) -> None:
        self._expect(self.roster is None, "keys")
        if message.site in self._keys:
            raise SecAggError(f"Site {message.site} already sent its keys.")
        self._keys[message.site] = message

    def close_keys(self) -> Roster:
        self._expect(self.roster is None, "keys")
        self.roster = Roster.from_keys(self.config, list(self._keys.values()))
        return self.roster

    # --- stage 2: shares ----------------------------------------------------------------------------

    def add_shares(self, message: Shares) -> None:
        roster = self._stage(shares=True)
        if message.site in self._shares:
            raise SecAggError(f"Site {message.site} already sent its shares.")
        if set(message.ciphertexts) != roster.neighbours(message.site):
            raise SecAggError(f"Site {message.site} must send one ciphertext to each of its neighbours, and only them.")
        self._shares[message.site] = message

    def close_shares(self) -> dict[str, dict[str, bytes]]:
        """Each site's mail: the ciphertexts its neighbours sent it (which also tells it who is still in)."""
        self._stage(shares=True)
        self._enough(len(self._shares), "sites completed the shares stage")
        self._shares_closed = True
        mail: dict[str, dict[str, bytes]] = {site: {} for site in self._shares}
        for sender, message in self._shares.items():
            for recipient, ciphertext in message.ciphertexts.items():
                if recipient in mail:
                    mail[recipient][sender] = ciphertext
        return mail

    # --- stage 3: masked inputs ---------------------------------------------------------------------

    def add_masked_input(self, message: MaskedInput) -> None:
        roster = self._stage(masked=True)
        site = message.site
        if site not in self._shares:
            raise SecAggError(f"Site {site} did not complete the shares stage, so its masked input cannot count.")
        if site in self._masked:
            raise SecAggError(f"Site {site} already sent its masked input.")
        if message.vector.dtype != np.uint32 or message.vector.shape != (self.config.vector_length + 1,):
            raise SecAggError(f"A masked input must be {self.config.vector_length + 1} uint32 values.")
        expected = tuple(sorted(roster.neighbours(site) & set(self._shares)))
        if tuple(message.masked_with) != expected:
            raise SecAggError(f"Site {site} masked with {list(message.masked_with)}, not with its neighbours that "
                              f"completed the shares stage {list(expected)}.")
        self._masked[site] = message.vector
        self.digests[site] = message.sha256

    def close_masked_inputs(self, *, excluded: frozenset[str] = frozenset()) -> UnmaskRequest:
        """Fix the survivors. `excluded` (a site revoked since it masked) counts as a dropout: its input is
        discarded, and survivors reveal its mask key, never its self mask, so it stays hidden for ever."""
        self._stage(masked=True)
        for site in excluded & set(self._masked):
            del self._masked[site]
            del self.digests[site]
        survivors = tuple(sorted(self._masked))
        self._enough(len(survivors), "sites have a masked input that counts")
        self.request = UnmaskRequest(survivors, tuple(sorted(set(self._shares) - set(survivors))))
        return self.request

    def masked_vector(self, site: str) -> np.ndarray:
        """What the coordinator holds for a site (for tests and audits): masked, never the update."""
        return self._masked[site]

    # --- stage 4: unmasking -------------------------------------------------------------------------

    def add_unmask(self, message: Unmask) -> None:
        roster, request = self._unmasking()
        if message.site not in request.survivors:
            raise SecAggError(f"Site {message.site} is not a survivor; its answer cannot count.")
        if message.site in self._answers:
            raise SecAggError(f"Site {message.site} already answered.")
        neighbours = roster.neighbours(message.site)
        if not set(message.self_mask_shares) <= neighbours & set(request.survivors):
            raise SecAggError(f"Site {message.site} revealed self-mask shares it was not asked for.")
        if not set(message.mask_key_shares) <= neighbours & set(request.dropped):
            raise SecAggError(f"Site {message.site} revealed mask-key shares it was not asked for.")
        self._answers[message.site] = message

    def finish(self) -> Result:
        """Rebuild the secrets the sum needs, remove every mask, and dequantise the weighted mean."""
        roster, request = self._unmasking()
        self._enough(len(self._answers), "survivors answered the unmasking request")
        self_seeds = {u: self._rebuild(u, "self_mask_shares") for u in request.survivors}
        mask_keys = {d: self._rebuild(d, "mask_key_shares") for d in request.dropped}
        seeds = [(seed, -1) for seed in self_seeds.values()]
        for dropped, private in mask_keys.items():
            for peer in sorted(roster.neighbours(dropped) & set(request.survivors)):
                seed = crypto.pairwise_seed(private, roster.key(peer).mask_key, context=self.config.context)
                seeds.append((seed, -roster.sign(peer, dropped)))
        total = np.zeros(self.config.vector_length + 1, dtype=np.uint32)
        masks.add_and_mask(total, [self._masked[site] for site in request.survivors], seeds)
        if int(total[-1]) > len(request.survivors) * self.config.max_weight:
            raise SecAggError("The unmasked sum of weights is impossible: a masked input was altered.")
        if self.config.encoding == "integers":
            if int(total[-1]) != len(request.survivors):
                raise SecAggError("The unmasked count of inputs is not the number of survivors: an input was altered.")
            sums = integers.decode(total[:-1], sites=len(request.survivors))
            return Result(np.empty(0, np.float32), len(request.survivors), request.survivors, request.dropped, 0.0,
                          sums)
        mean, weight = masks.dequantize(total, clip=self.config.clip, max_weight=self.config.max_weight,
                                        levels=roster.levels)
        bound = masks.quantization_error(sites=len(request.survivors), clip=self.config.clip,
                                         max_weight=self.config.max_weight, levels=roster.levels, total_weight=weight)
        return Result(mean, weight, request.survivors, request.dropped, bound)

    def _rebuild(self, site: str, kind: str) -> bytes:
        roster = self.roster
        assert roster is not None
        shares = {roster.x(v): getattr(a, kind)[site] for v, a in self._answers.items() if site in getattr(a, kind)}
        what = "self mask" if kind == "self_mask_shares" else "pairwise masks"
        if len(shares) < roster.threshold:
            raise SecAggError(f"Only {len(shares)} of the {roster.threshold} shares needed to remove the {what} of "
                              f"site {site} came back: the round fails closed.")
        try:
            secret = shamir.combine(shares, threshold=roster.threshold)
        except SecAggError:
            secret = None  # out of range: the same verdict as a secret that does not match
        if secret is None:
            valid = False
        elif kind == "self_mask_shares":
            valid = crypto.commitment(secret, context=self.config.context, site=site) == self._shares[site].commitment
        else:
            valid = crypto.public_key(secret) == roster.key(site).mask_key
        if not valid:
            raise SecAggError(f"The shares revealed for site {site} do not rebuild the secret it committed to "
                              "(a share was altered): the round fails closed.")
        return secret

    # --- stage bookkeeping --------------------------------------------------------------------------

    _shares_closed = False

    def _expect(self, condition: bool, stage: str) -> None:
        if not condition:
            raise SecAggError(f"The {stage} stage of this round is closed.")

    def _stage(self, *, shares: bool = False, masked: bool = False) -> Roster:
        if self.roster is None:
            raise SecAggError("The keys stage is still open.")
        if shares:
            self._expect(not self._shares_closed, "shares")
        if masked:
            if not self._shares_closed:
                raise SecAggError("The shares stage is still open.")
            self._expect(self.request is None, "masked inputs")
        return self.roster

    def _unmasking(self) -> tuple[Roster, UnmaskRequest]:
        if self.roster is None or self.request is None:
            raise SecAggError("The masked-inputs stage is still open.")
        return self.roster, self.request

    def _enough(self, count: int, what: str) -> None:
        assert self.roster is not None
        if count < self.roster.threshold:
            raise SecAggError(f"Only {count} {what}; the threshold is {self.roster.threshold}: the round fails closed.")
