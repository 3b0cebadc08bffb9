"""The site agent's side of a secure-aggregation round (docs/secure-aggregation.md): Django-free.

The agent keeps one `SiteSession` per round in memory (its private keys and seeds never touch the disk:
an agent that restarts mid-round is a dropout, which the protocol tolerates) and, at each poll, does the
one thing the round's stage asks of it. What it masks is its change to the model (update - base), so the
coordinator adds the unmasked weighted mean of the changes to the base: FedAvg of the models.

The contract with the coordinator (all under /api/agent/rounds/<id>/secagg/):
    GET  ./                 {"stage", "config", "roster"?, "mail"?, "request"?, "reason"?}
    POST ./keys/            Keys.to_wire()
    POST ./shares/          Shares.to_wire()
    POST ./masked-input/    safetensors of one uint32 tensor "masked"; headers X-SHA256 (of the body), X-Masked-With
                            (JSON list of sites)
    POST ./unmask/          Unmask.to_wire()
Stages: keys, shares, masked_inputs, unmasking, then done or failed (with a reason).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consortium.federated.secagg import Keys, Roster, RoundConfig, SecAggError, SiteSession, UnmaskRequest, masks
from consortium.federated.secagg.distributed_dp import privatize, ring_clip
from sites.agent.client import AgentError, Response

Request = Callable[..., Response]  # AgentClient.request


@dataclass(frozen=True)
class DistributedPrivacy:
    """The protocol's DP settings, as this site reviewed them: it adds its share of the noise itself, and takes
    part only in rounds whose setup cannot strip that noise (a range too narrow for it, fewer survivors than
    the quorum the noise was scaled for)."""

    noise_multiplier: float
    clip_norm: float
    min_sites: int

    def check(self, config: RoundConfig) -> None:
        needed = ring_clip(noise_multiplier=self.noise_multiplier, clip_norm=self.clip_norm, min_sites=self.min_sites)
        if config.clip < needed or config.max_weight != 1:
            raise SecAggError(f"The round's setup (range {config.clip:g}, largest weight {config.max_weight}) would "
                              f"clip this site's DP noise or weight its input (range {needed:g} and weight 1 "
                              "needed); not taking part.")

    def check_survivors(self, request: UnmaskRequest) -> None:
        if len(request.survivors) < self.min_sites:
            raise SecAggError(f"The unmasking request names {len(request.survivors)} survivors; this site's noise "
                              f"protects a sum of at least {self.min_sites}. Not answering.")


@dataclass
class SecureRounds:
    """The sessions of the rounds this agent is masking for, by round id."""

    site: str
    request: Request
    sessions: dict[int, SiteSession] = field(default_factory=dict)
    sent: dict[int, set[str]] = field(default_factory=dict)

    def step(self, round_id: int, change: Callable[[], tuple[np.ndarray, int]],
             privacy: DistributedPrivacy | None = None) -> str:
        """Do what the round's current stage needs from this site, once; returns the stage seen.

        `change` is called only at the masked-input stage: (update - base as one float vector, num_examples).
        With `privacy` the change is clipped and noised here, before masking, and counts with weight 1."""
        base = f"/api/agent/rounds/{round_id}/secagg/"
        state = self.request("GET", base).json()
        stage = state["stage"]
        if stage in ("done", "failed"):
            self.sessions.pop(round_id, None)
            return stage
        config = RoundConfig.from_wire(state["config"])
        session = self.sessions.setdefault(round_id, SiteSession(config, self.site))
        if session.config != config:
            raise AgentError(f"Round {round_id} changed its secure-aggregation settings mid-round; not masking.")
        done = self.sent.setdefault(round_id, set())
        try:
            if privacy is not None:
                privacy.check(config)
            if stage == "keys" and stage not in done:
                self._post_json(base + "keys/", session.keys().to_wire())
            elif stage == "shares" and stage not in done:
                roster = Roster.from_keys(config, [Keys.from_wire(k) for k in state["roster"]])
                self._post_json(base + "shares/", session.shares(roster).to_wire())
            elif stage == "masked_inputs" and stage not in done:
                mail = {sender: base64.b64decode(text) for sender, text in state["mail"].items()}
                vector, weight = change()
                if privacy is not None:
                    vector, weight = privatize(vector, noise_multiplier=privacy.noise_multiplier,
                                               clip_norm=privacy.clip_norm, min_sites=privacy.min_sites), 1
                masked = session.masked_input(mail, vector, weight)
                body = masked.to_safetensors()
                self.request("POST", base + "masked-input/", body=body,
                             headers={"Content-Type": "application/octet-stream",
                                      "X-SHA256": hashlib.sha256(body).hexdigest(),
                                      "X-Masked-With": json.dumps(list(masked.masked_with))})
            elif stage == "unmasking" and stage not in done:
                request = UnmaskRequest.from_wire(state["request"])
                if privacy is not None:
                    privacy.check_survivors(request)
                answer = session.unmask(request)
                self._post_json(base + "unmask/", answer.to_wire())
            else:
                return stage
        except SecAggError as error:
            self.sessions.pop(round_id, None)  # fail closed: forget the secrets, answer nothing more
            raise AgentError(f"Secure aggregation for round {round_id} stopped: {error.reason}") from error
        done.add(stage)
        return stage

    def _post_json(self, path: str, payload: Mapping[str, Any]) -> None:
        self.request("POST", path, body=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})


def model_change(update: Mapping[str, Any], base: Mapping[str, Any]) -> np.ndarray:
    """The site's change to the model, as the one vector secure aggregation masks (tensors in name order)."""
    return masks.flatten(update) - masks.flatten(base)
