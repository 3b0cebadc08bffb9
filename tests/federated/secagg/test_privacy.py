"""What secure aggregation hides and how it refuses tampering: the coordinator's copy of a site's input is
not the update, fewer than t shares tell nothing, and altered shares or inputs are caught or fail closed."""

import dataclasses
import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consortium.federated.secagg import (
    CoordinatorRound,
    Keys,
    MaskedInput,
    RoundConfig,
    SecAggError,
    Shares,
    SiteSession,
    Unmask,
    masks,
    shamir,
)

LENGTH = 4096
SITES = ("a", "b", "c", "d", "e")


class Round:
    """Drives the stages one by one, so a test can interfere between them."""

    def __init__(self, sites=SITES, context=b"study-9/round-2") -> None:
        self.config = RoundConfig(context=context, vector_length=LENGTH, clip=1.0, max_weight=100)
        rng = np.random.default_rng(11)
        self.updates = {s: (rng.normal(0, 0.2, LENGTH).astype(np.float32), 10 + i) for i, s in enumerate(sites)}
        self.sessions = {s: SiteSession(self.config, s) for s in sites}
        self.coordinator = CoordinatorRound(self.config)
        for session in self.sessions.values():
            self.coordinator.add_keys(session.keys())
        self.roster = self.coordinator.close_keys()
        for session in self.sessions.values():
            self.coordinator.add_shares(session.shares(self.roster))
        self.mail = self.coordinator.close_shares()

    def mask(self, site: str) -> MaskedInput:
        update, weight = self.updates[site]
        return self.sessions[site].masked_input(self.mail[site], update, weight)

    def mask_all(self) -> None:
        for site in self.sessions:
            self.coordinator.add_masked_input(self.mask(site))
        self.request = self.coordinator.close_masked_inputs()


def test_what_the_coordinator_holds_for_a_site_is_not_its_update():
    run = Round()
    run.mask_all()
    update, weight = run.updates["a"]
    quantized = masks.quantize(update, weight, clip=1.0, max_weight=100, levels=run.roster.levels)
    held = run.coordinator.masked_vector("a")
    assert np.count_nonzero(held == quantized) < 5  # chance agreements of 4096 uniform 32-bit words only
    read_as_update = held[:-1].view(np.int32).astype(np.float64) * 100 / (run.roster.levels * weight)
    assert abs(np.corrcoef(read_as_update, update)[0, 1]) < 0.1
    assert np.abs(read_as_update).mean() > 10  # spread over the whole ring, not near the update (|x| < 1)


@settings(max_examples=30, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), other=st.binary(min_size=32, max_size=32),
       threshold=st.integers(2, 6))
def test_fewer_than_t_shares_fit_every_secret_equally(secret, other, threshold):
    """t - 1 shares of `secret` plus one more point chosen for `other` rebuild `other`: they rule nothing out."""
    xs = list(range(1, threshold + 3))
    shares = shamir.split(secret, threshold=threshold, xs=xs)
    known = dict(list(shares.items())[: threshold - 1])
    with pytest.raises(SecAggError, match="Only"):
        shamir.combine(known, threshold=threshold)
    # The polynomial through (0, other) and the t - 1 known points, evaluated at a fresh x.
    points = [(0, int.from_bytes(other, "big"))] + [(x, int.from_bytes(y, "big")) for x, y in known.items()]
    fresh = threshold + 10
    value = 0
    for i, (x_i, y_i) in enumerate(points):
        term = y_i
        for j, (x_j, _) in enumerate(points):
            if i != j:
                term = term * (fresh - x_j) * pow(x_i - x_j, -1, shamir.PRIME) % shamir.PRIME
        value = (value + term) % shamir.PRIME
    forged = {**known, fresh: value.to_bytes(shamir.SHARE_BYTES, "big")}
    assert shamir.combine(forged, threshold=threshold) == other
    assert shamir.combine(shares, threshold=threshold) == secret


def test_the_coordinator_cannot_unmask_a_site_with_fewer_than_t_answers():
    run = Round()
    run.mask_all()
    for site in ("a", "b"):  # threshold is 3 of 4 neighbours
        run.coordinator.add_unmask(run.sessions[site].unmask(run.request))
    with pytest.raises(SecAggError, match="threshold is 3"):
        run.coordinator.finish()


def test_a_tampered_ciphertext_is_detected_by_its_recipient():
    run = Round()
    mail = run.mail["b"]
    mail["a"] = mail["a"][:-1] + bytes([mail["a"][-1] ^ 1])
    with pytest.raises(SecAggError, match="from site a failed authentication"):
        run.mask("b")


def test_a_ciphertext_redirected_to_another_site_is_detected():
    run = Round()
    run.mail["c"]["a"] = run.mail["b"]["a"]
    with pytest.raises(SecAggError, match="failed authentication"):
        run.mask("c")


def test_a_ciphertext_from_another_round_is_detected():
    first, second = Round(context=b"round-1"), Round(context=b"round-2")
    second.mail["b"]["a"] = first.mail["b"]["a"]
    with pytest.raises(SecAggError, match="failed authentication"):
        second.mask("b")


def test_a_tampered_revealed_share_fails_closed():
    run = Round()
    run.mask_all()
    for site in ("a", "b", "c", "d"):
        answer = run.sessions[site].unmask(run.request)
        if site == "a":
            share = answer.self_mask_shares["b"]
            answer = dataclasses.replace(answer, self_mask_shares={
                **answer.self_mask_shares, "b": share[:-1] + bytes([share[-1] ^ 1])})
        run.coordinator.add_unmask(answer)
    with pytest.raises(SecAggError, match="site b do not rebuild"):
        run.coordinator.finish()


def test_a_tampered_mask_key_share_of_a_dropout_fails_closed():
    run = Round()
    for site in ("a", "b", "c", "d"):
        run.coordinator.add_masked_input(run.mask(site))
    request = run.coordinator.close_masked_inputs()
    assert request.dropped == ("e",)
    for site in ("a", "b", "c", "d"):
        answer = run.sessions[site].unmask(request)
        if site == "c":
            answer = dataclasses.replace(answer, mask_key_shares={"e": bytes(shamir.SHARE_BYTES - 1) + b"\x07"})
        run.coordinator.add_unmask(answer)
    with pytest.raises(SecAggError, match="site e do not rebuild"):
        run.coordinator.finish()


def test_a_masked_input_altered_in_transit_is_refused():
    run = Round()
    message = run.mask("a")
    original = message.to_safetensors()
    data = bytearray(original)
    data[-7] ^= 0xFF
    with pytest.raises(SecAggError, match="does not match its SHA-256"):
        MaskedInput.from_safetensors(bytes(data), length=LENGTH + 1, sha256=hashlib.sha256(original).hexdigest())
    with pytest.raises(SecAggError, match="not a safetensors file"):
        MaskedInput.from_safetensors(bytes(data[:-4]), length=LENGTH + 1)
    with pytest.raises(SecAggError, match=f"exactly one tensor \"masked\" of {LENGTH + 2} uint32"):
        MaskedInput.from_safetensors(original, length=LENGTH + 2)


def test_an_altered_weight_makes_the_sum_fail_closed():
    run = Round()
    for site in SITES:
        message = run.mask(site)
        if site == "a":
            vector = message.vector.copy()
            vector[-1] ^= np.uint32(1 << 30)
            message = dataclasses.replace(message, vector=vector)
        run.coordinator.add_masked_input(message)
    request = run.coordinator.close_masked_inputs()
    for site in SITES:
        run.coordinator.add_unmask(run.sessions[site].unmask(request))
    with pytest.raises(SecAggError, match="sum of weights is impossible"):
        run.coordinator.finish()


def test_the_coordinator_refuses_what_does_not_fit_the_stage():
    run = Round()
    message = run.mask("a")
    with pytest.raises(SecAggError, match="masked with"):
        run.coordinator.add_masked_input(dataclasses.replace(message, masked_with=("b", "c")))
    with pytest.raises(SecAggError, match="uint32 values"):
        run.coordinator.add_masked_input(dataclasses.replace(message, vector=message.vector[:-1]))
    with pytest.raises(SecAggError, match="shares stage of this round is closed"):
        run.coordinator.add_shares(Shares("a", bytes(32), {}))
    with pytest.raises(SecAggError, match="masked-inputs stage is still open"):
        run.coordinator.add_unmask(Unmask("a", {}, {}))
    run.coordinator.add_masked_input(message)
    with pytest.raises(SecAggError, match="already sent"):
        run.coordinator.add_masked_input(message)


def test_a_site_refuses_a_roster_that_does_not_carry_its_keys():
    run = Round()
    stranger = SiteSession(run.config, "a")
    with pytest.raises(SecAggError, match="does not carry this site's keys"):
        stranger.shares(run.roster)


def test_an_answer_revealing_both_shares_of_one_site_is_refused_on_the_wire():
    wire = Unmask("a", {"b": bytes(66)}, {"b": bytes(66)}).to_wire()
    with pytest.raises(SecAggError, match="both kinds"):
        Unmask.from_wire(wire)


def test_wire_forms_round_trip_and_refuse_bad_base64():
    run = Round()
    keys = run.sessions["a"].keys()
    assert Keys.from_wire(keys.to_wire()) == keys
    with pytest.raises(SecAggError, match="base64"):
        Keys.from_wire({"site": "a", "encryption_key": "%%%", "mask_key": keys.to_wire()["mask_key"]})
    with pytest.raises(SecAggError, match="32 bytes"):
        Keys.from_wire({**keys.to_wire(), "mask_key": "AAAA"})
