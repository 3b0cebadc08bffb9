"""The site's side of a secure round: one `SiteSession` per site per round, kept in memory only.

Its private keys and seeds never leave the process: the coordinator gets public keys, encrypted
shares, a masked vector and, at the end, only the shares the protocol allows. The session answers
each stage once, in order; the unmasking stage in particular answers one request only and never
reveals both a site's self-mask share and its mask-key share.
"""

import os

import numpy as np

from consortium.federated.secagg import integers, masks, shamir
from consortium.federated.secagg import keys as crypto
from consortium.federated.secagg.errors import SecAggError
from consortium.federated.secagg.messages import Keys, MaskedInput, Shares, Unmask, UnmaskRequest
from consortium.federated.secagg.roster import Roster, RoundConfig

_SHARE = shamir.SHARE_BYTES


class SiteSession:
    """A site's secrets and progress for one round (stages: keys, shares, masked input, unmask)."""

    def __init__(self, config: RoundConfig, site: str) -> None:
        self.config = config
        self.site = site
        self._encryption_private = crypto.new_private_key()
        self._mask_private = crypto.new_private_key()
        self._self_seed = os.urandom(shamir.SECRET_BYTES)
        self._roster: Roster | None = None
        self._held: dict[str, tuple[bytes, bytes]] | None = None  # sender -> (self-mask share, mask-key share)
        self._answered = False

    def keys(self) -> Keys:
        return Keys(self.site, crypto.public_key(self._encryption_private), crypto.public_key(self._mask_private))

    def shares(self, roster: Roster) -> Shares:
        """Split the self-mask seed and the mask key among the neighbours, each share encrypted to its holder."""
        if self._roster is not None:
            raise SecAggError("This site already sent its shares for this round.")
        if roster.config != self.config or self.keys() not in roster.keys:
            raise SecAggError("The roster is not for this round or does not carry this site's keys.")
        self._roster = roster
        neighbours = sorted(roster.neighbours(self.site))
        points = [roster.x(v) for v in neighbours]
        seed_shares = shamir.split(self._self_seed, threshold=roster.threshold, xs=points)
        key_shares = shamir.split(self._mask_private, threshold=roster.threshold, xs=points)
        context = self.config.context
        ciphertexts = {
            v: crypto.encrypt_for(self._encryption_private, roster.key(v).encryption_key,
                                  seed_shares[roster.x(v)] + key_shares[roster.x(v)],
                                  context=context, sender=self.site, recipient=v)
            for v in neighbours
        }
        return Shares(self.site, crypto.commitment(self._self_seed, context=context, site=self.site), ciphertexts)

    def masked_input(self, delivered: dict[str, bytes], update: np.ndarray, weight: int) -> MaskedInput:
        """Decrypt the shares meant for this site, then mask the quantised update.

        `delivered` maps each neighbour that completed the shares stage to its ciphertext for this site; the
        pairwise masks are applied with exactly those neighbours (the coordinator can check which)."""
        roster = self._require_roster()
        if self._held is not None:
            raise SecAggError("This site already sent its masked input for this round.")
        strangers = set(delivered) - roster.neighbours(self.site)
        if strangers:
            raise SecAggError(f"Shares arrived from sites that are not this site's neighbours: {sorted(strangers)}.")
        held = {}
        for sender, ciphertext in delivered.items():
            plaintext = crypto.decrypt_from(self._encryption_private, roster.key(sender).encryption_key, ciphertext,
                                            context=self.config.context, sender=sender, recipient=self.site)
            if len(plaintext) != 2 * _SHARE:
                raise SecAggError(f"The shares from site {sender} have the wrong size.")
            held[sender] = (plaintext[:_SHARE], plaintext[_SHARE:])
        if len(held) < roster.threshold:
            raise SecAggError(f"Only {len(held)} neighbours completed the shares stage; the round needs "
                              f"{roster.threshold}.")
        if self.config.encoding == "integers":  # exact fixed-point limbs (`integers.py`): summed as they are
            limbs = np.asarray(update)
            if limbs.dtype != np.uint32 or (limbs >> integers.LIMB_BITS).any():
                raise SecAggError("An exact sum takes uint32 limbs below 2**16 (`integers.encode`).")
            vector = np.append(limbs, np.uint32(1)).astype(masks.RING)
        else:
            vector = masks.quantize(update, weight, clip=self.config.clip, max_weight=self.config.max_weight,
                                    levels=roster.levels)
        if vector.size != self.config.vector_length + 1:
            raise SecAggError(f"The update has {vector.size - 1} values; the round expects "
                              f"{self.config.vector_length}.")
        seeds = [(self._self_seed, 1)] + [
            (crypto.pairwise_seed(self._mask_private, roster.key(peer).mask_key, context=self.config.context),
             roster.sign(self.site, peer))
            for peer in sorted(held)]
        masks.apply(vector, seeds)
        self._held = held
        return MaskedInput(self.site, vector, tuple(sorted(held)))

    def unmask(self, request: UnmaskRequest) -> Unmask:
        """Reveal the self-mask shares of survivors and the mask-key shares of dropouts: once, never both."""
        roster = self._require_roster()
        if self._held is None:
            raise SecAggError("This site has not sent a masked input, so it has nothing to unmask.")
        if self._answered:
            raise SecAggError("This site already answered the unmasking request of this round.")
        survivors, dropped = set(request.survivors), set(request.dropped)
        if survivors & dropped:
            raise SecAggError("The request names a site both as a survivor and as a dropout.")
        if self.site not in survivors:
            raise SecAggError("The request does not count this site among the survivors.")
        if len(survivors) < roster.threshold:
            raise SecAggError(f"Only {len(survivors)} survivors; unmasking needs at least {roster.threshold}.")
        unknown = (survivors | dropped) - set(roster.sites)
        if unknown:
            raise SecAggError(f"The request names sites outside the roster: {sorted(unknown)}.")
        unaccounted = set(self._held) - survivors - dropped
        if unaccounted:
            raise SecAggError(f"The request leaves out neighbours whose shares this site holds: {sorted(unaccounted)}.")
        self._answered = True
        return Unmask(self.site,
                      {u: self._held[u][0] for u in sorted(survivors & set(self._held))},
                      {u: self._held[u][1] for u in sorted(dropped & set(self._held))})

    def _require_roster(self) -> Roster:
        if self._roster is None:
            raise SecAggError("The round has not reached the shares stage for this site.")
        return self._roster
