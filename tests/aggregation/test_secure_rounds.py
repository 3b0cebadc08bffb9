"""Secure-aggregation rounds on the coordinator (`aggregation.services.secure`), driven through the services by
the sites' real `SiteSession`s: the new model is FedAvg of the sites' changes within the quantisation error,
the coordinator stores only masked inputs, dropouts are recovered, a site revoked after masking is left out
as a dropout, too few fail closed with the reason, and every stage is audited and shown."""

import base64
import hashlib
from datetime import timedelta

import numpy as np
import pytest
from django.urls import reverse
from django.utils import timezone

from aggregation.choices import RoundStatus, SecureStage
from aggregation.models import ModelVersion, SecureMessage, SecureRound, SiteStatistics, Standardization
from aggregation.services import round_aggregate, rounds_tick
from aggregation.services.secure import (
    secure_keys_submit,
    secure_masked_input_submit,
    secure_shares_submit,
    secure_state,
    secure_unmask_submit,
)
from aggregation.storage import absolute, version_tensors
from consortium.audit.models import AuditEvent
from consortium.errors import Conflict, GateRefused, ValidationFailed
from consortium.federated.secagg import (
    Keys,
    MaskedInput,
    Roster,
    RoundConfig,
    SiteSession,
    UnmaskRequest,
    integers,
    masks,
)
from consortium.federated.secagg.distributed_dp import privatize, ring_clip, site_noise_std
from sites.agent.secure import DistributedPrivacy
from sites.models import Site
from sites.services import agent_token_create
from studies.models import Participation, StudyEvent
from studies.services import participation_suspend
from tests.aggregation.support import agent_for, open_round
from tests.aggregation.test_api_agent import agent_client
from tests.base import active_study, appoint_site_admin
from tests.studies.test_views_study import client_for

pytestmark = pytest.mark.usefixtures("no_broker")


def fourth_site(p, code: str, name: str) -> Site:
    site = Site.objects.create(name=name, code=code, city="Somewhere", country="SE")
    appoint_site_admin(p.admin, site, p.site_b_admin)
    return site


def secure_study(p, extra_sites: int = 1, **protocol):
    sites = [p.site_a, p.site_b] + [fourth_site(p, f"s{i}", f"Site {i}") for i in range(extra_sites)]
    study = active_study(p, sites=tuple(sites), **{"federated_statistics": False, "num_features": 4, "quorum": 3,
                                                   "secure_aggregation": True, **protocol})
    return study, {site.code: agent_for(p, site)[0] for site in sites}


def started(p, extra_sites: int = 1, **protocol):
    """A secure study's first round, open at its keys stage, and its sites' side (codes sorted)."""
    study, agents = secure_study(p, extra_sites, **protocol)
    round_ = open_round(study)
    return study, round_, Sites(round_, agents), sorted(agents)


def suspend(p, study, site, reason: str) -> None:
    participation_suspend(actor=p.site_admin_of(site), participation=Participation.objects.get(study=study, site=site),
                          reason=reason)


class Sites:
    """The sites' side, as their agents run it: one SiteSession each, messages through the services."""

    def __init__(self, round_, agents, privacy=None):
        self.round, self.agents, self.privacy = round_, agents, privacy
        config = RoundConfig.from_wire(SecureRound.objects.get(round=round_).config)
        self.sessions = {code: SiteSession(config, code) for code in agents}
        rng = np.random.default_rng()
        if config.encoding == "integers":  # a statistics round: count, per feature sum and sum of squares
            width = (config.vector_length // integers.LIMBS - 1) // 2
            self.statistics = {code: np.array([50 + 10 * i, *rng.normal(0.1, 0.02, width) * 50,
                                               *(rng.normal(2500, 300, width) ** 2 * 50)])
                               for i, code in enumerate(sorted(agents))}
            self.changes = {code: (integers.encode(values), 1) for code, values in self.statistics.items()}
        else:
            self.changes = {code: (rng.normal(0, 0.05, config.vector_length).astype(np.float32), 10 * (i + 1))
                            for i, code in enumerate(sorted(agents))}

    def state(self, code):
        return secure_state(actor=self.agents[code], round_id=self.round.pk)

    def keys(self, *codes):
        for code in codes:
            secure_keys_submit(actor=self.agents[code], round_id=self.round.pk,
                               payload=self.sessions[code].keys().to_wire())

    def shares(self, *codes):
        for code in codes:
            state = self.state(code)
            config = RoundConfig.from_wire(state["config"])
            roster = Roster.from_keys(config, [Keys.from_wire(k) for k in state["roster"]])
            secure_shares_submit(actor=self.agents[code], round_id=self.round.pk,
                                 payload=self.sessions[code].shares(roster).to_wire())

    def masked_input(self, code):
        mail = {s: base64.b64decode(t) for s, t in self.state(code)["mail"].items()}
        change, weight = self.changes[code]
        if self.privacy is not None:  # as the agent does (sites.agent.secure): clip, noise, weight 1
            change, weight = privatize(change, noise_multiplier=self.privacy.noise_multiplier,
                                       clip_norm=self.privacy.clip_norm, min_sites=self.privacy.min_sites), 1
        masked = self.sessions[code].masked_input(mail, change, weight)
        return masked, masked.to_safetensors()

    def mask(self, *codes):
        for code in codes:
            masked, body = self.masked_input(code)
            secure_masked_input_submit(actor=self.agents[code], round_id=self.round.pk, body=body,
                                       sha256=hashlib.sha256(body).hexdigest(), masked_with=list(masked.masked_with))

    def unmask(self, *codes):
        for code in codes:
            request = UnmaskRequest.from_wire(self.state(code)["request"])
            secure_unmask_submit(actor=self.agents[code], round_id=self.round.pk,
                                 payload=self.sessions[code].unmask(request).to_wire())

    def every_stage(self, *codes):
        """Keys, shares, masked inputs and unmasking answers from each of these sites, in order."""
        for step in (self.keys, self.shares, self.mask, self.unmask):
            step(*codes)

    def expected_change(self, codes):
        total = sum(self.changes[c][1] for c in codes)
        return sum(self.changes[c][0].astype(np.float64) * self.changes[c][1] for c in codes) / total


def stage(round_):
    return SecureRound.objects.get(round=round_).stage


def deadline_passes(round_):
    rounds_tick(moment=SecureRound.objects.get(round=round_).stage_deadline + timedelta(seconds=1))


def new_model_change(round_, version):
    base, new = version_tensors(round_.base_version), version_tensors(version)
    return masks.flatten({k: new[k] - base[k] for k in base}).astype(np.float64)


def test_three_sites_get_fedavg_of_their_changes_and_the_coordinator_holds_only_masked_inputs(p):
    study, round_, sites, codes = started(p)

    sites.keys(*codes)
    assert stage(round_) == SecureStage.SHARES
    sites.shares(*codes)
    assert stage(round_) == SecureStage.MASKED_INPUTS
    sites.mask(*codes)
    assert stage(round_) == SecureStage.UNMASKING
    sites.unmask(*codes)
    round_.refresh_from_db()
    assert round_.status == RoundStatus.AGGREGATING

    version = round_aggregate(round_id=round_.pk)

    round_.refresh_from_db()
    assert round_.status == RoundStatus.CLOSED and version.number == 1
    secure = SecureRound.objects.get(round=round_)
    assert secure.stage == SecureStage.DONE and secure.result["total_weight"] == 60
    error = np.abs(new_model_change(round_, version) - sites.expected_change(codes)).max()
    assert error <= secure.result["max_error"] + 1e-6
    # What the coordinator stores for a site is its masked input, nothing like its change to the model.
    length = len(sites.changes[codes[0]][0]) + 1
    for row in SecureMessage.objects.filter(round=round_, stage=SecureStage.MASKED_INPUTS).select_related("site"):
        stored = MaskedInput.from_safetensors(absolute(row.path).read_bytes(), length=length, sha256=row.sha256)
        change, weight = sites.changes[row.site.code]
        own = masks.quantize(change, weight, clip=1.0, max_weight=1_000_000, levels=masks.levels(3))
        assert np.mean(stored == own) < 0.01
    contributors = version.provenance["contributors"]
    assert sorted(c["site"] for c in contributors) == sorted(Site.objects.filter(code__in=codes)
                                                             .values_list("name", flat=True))
    assert all(c["num_examples"] is None and c["weight"] is None for c in contributors)
    assert version.provenance["secure_aggregation"]["survivors"] == codes
    closed = AuditEvent.objects.filter(action="aggregation.secure.stage_closed", study_id=study.pk)
    assert [e.details["stage"] for e in closed.order_by("seq")] == ["keys", "shares", "masked_inputs", "unmasking"]
    shown = [e.payload for e in StudyEvent.objects.filter(study=study, kind="secure.stage").order_by("seq")
             if e.payload["round_id"] == round_.pk]
    # Each of the four stages opened and closed on the live dashboard.
    assert [(e["stage"], e["opened"]) for e in shown] == [
        ("keys", True), ("keys", False), ("shares", True), ("shares", False), ("masked_inputs", True),
        ("masked_inputs", False), ("unmasking", True), ("unmasking", False)]
    assert stage(round_.study.rounds_run.get(number=2)) == SecureStage.KEYS  # the next secure round opened


def test_a_site_that_drops_out_after_sharing_is_recovered_at_the_deadline(p):
    study, round_, sites, codes = started(p, extra_sites=2)
    sites.keys(*codes)
    sites.shares(*codes)
    gone, kept = codes[0], codes[1:]
    sites.mask(*kept)
    assert stage(round_) == SecureStage.MASKED_INPUTS  # it waits for the fourth site until the deadline
    deadline_passes(round_)
    assert SecureRound.objects.get(round=round_).request["dropped"] == [gone]
    sites.unmask(*kept)

    version = round_aggregate(round_id=round_.pk)

    secure = SecureRound.objects.get(round=round_)
    error = np.abs(new_model_change(round_, version) - sites.expected_change(kept)).max()
    assert error <= secure.result["max_error"] + 1e-6
    assert secure.result["dropped"] == [gone]


def test_a_survivor_suspended_during_unmasking_fails_the_round_closed_since_its_input_is_in_the_sum(p):
    study, round_, sites, codes = started(p, extra_sites=2)
    sites.keys(*codes)
    sites.shares(*codes)
    sites.mask(*codes)
    revoked = Site.objects.get(code=codes[0])
    suspend(p, study, revoked, "Our DPO withdrew consent.")
    sites.unmask(*codes[1:])  # the others answer; the stage closes without waiting for the suspended site

    round_.refresh_from_db()
    assert round_.status == RoundStatus.BLOCKED
    assert "one input can never be taken out of a masked sum" in round_.status_reason
    assert not ModelVersion.objects.filter(round=round_).exists()


def test_a_site_suspended_while_masked_inputs_are_open_is_a_dropout(p):
    study, round_, sites, codes = started(p, extra_sites=2)
    sites.keys(*codes)
    sites.shares(*codes)
    sites.mask(*codes[:3])
    revoked = Site.objects.get(code=codes[0])
    suspend(p, study, revoked, "Our DPO withdrew consent.")
    sites.mask(codes[3])  # the last site the gate still allows: the stage closes
    secure = SecureRound.objects.get(round=round_)
    assert secure.stage == SecureStage.UNMASKING
    assert secure.request["survivors"] == codes[1:] and secure.request["dropped"] == [codes[0]]
    sites.unmask(*codes[1:])
    version = round_aggregate(round_id=round_.pk)
    assert np.abs(new_model_change(round_, version) - sites.expected_change(codes[1:])).max() <= \
        SecureRound.objects.get(round=round_).result["max_error"] + 1e-6
    excluded = AuditEvent.objects.get(action="aggregation.secure.excluded", study_id=study.pk)
    assert excluded.site_id == revoked.pk and excluded.details["treated_as"] == "dropout"


def test_below_the_quorum_the_round_fails_closed_with_the_reason_and_stores_nothing(p):
    study, round_, sites, codes = started(p)
    sites.keys(*codes)
    sites.shares(*codes)
    sites.mask(*codes[:2])
    deadline_passes(round_)
    round_.refresh_from_db()
    secure = SecureRound.objects.get(round=round_)
    assert round_.status == RoundStatus.FAILED and secure.stage == SecureStage.FAILED
    assert "Only 2 sites' masked inputs count; the study's quorum is 3" in secure.reason
    assert "fails closed" in round_.status_reason
    assert not ModelVersion.objects.filter(round=round_).exists()


def test_too_few_unmasking_answers_fail_the_round_closed(p):
    study, round_, sites, codes = started(p, extra_sites=2)
    sites.keys(*codes)
    sites.shares(*codes)
    sites.mask(*codes)
    sites.unmask(codes[0])
    deadline_passes(round_)
    round_.refresh_from_db()
    assert round_.status == RoundStatus.FAILED
    assert "Only 1 survivors answered the unmasking request; the threshold is" in round_.status_reason


def test_a_tampered_masked_input_is_refused_with_a_clear_reason_and_recorded(p):
    study, round_, sites, codes = started(p)
    sites.keys(*codes)
    sites.shares(*codes)
    masked, body = sites.masked_input(codes[0])
    digest = hashlib.sha256(body).hexdigest()
    tampered = body[:-5] + bytes([body[-5] ^ 1]) + body[-4:]
    with pytest.raises(ValidationFailed, match="does not match its SHA-256"):
        secure_masked_input_submit(actor=sites.agents[codes[0]], round_id=round_.pk, body=tampered, sha256=digest,
                                   masked_with=list(masked.masked_with))
    with pytest.raises(ValidationFailed, match="masked with"):
        secure_masked_input_submit(actor=sites.agents[codes[0]], round_id=round_.pk, body=body, sha256=digest,
                                   masked_with=list(masked.masked_with)[:1])
    denials = AuditEvent.objects.filter(action="aggregation.secure.submit", outcome="denied", study_id=study.pk)
    assert denials.count() == 2
    assert not SecureMessage.objects.filter(round=round_, stage=SecureStage.MASKED_INPUTS).exists()


def test_a_message_for_another_stage_or_another_site_or_twice_is_refused(p):
    study, round_, sites, codes = started(p)
    with pytest.raises(Conflict, match="keys stage"):
        secure_shares_submit(actor=sites.agents[codes[0]], round_id=round_.pk, payload={})
    with pytest.raises(ValidationFailed, match="speaks for site"):
        secure_keys_submit(actor=sites.agents[codes[0]], round_id=round_.pk, payload=sites.sessions[codes[1]].keys()
                           .to_wire())
    sites.keys(codes[0])
    with pytest.raises(Conflict, match="already sent its keys"):
        sites.keys(codes[0])


def test_the_gate_is_asked_for_each_message(p):
    study, round_, sites, codes = started(p)
    site = Site.objects.get(code=codes[0])
    suspend(p, study, site, "Paused.")
    with pytest.raises(GateRefused):
        sites.keys(site.code)


def test_stage_deadlines_never_reopen_a_finished_round(p):
    study, round_, sites, codes = started(p)
    sites.keys(codes[0])
    deadline_passes(round_)  # one site's keys: fewer than the round needs
    round_.refresh_from_db()
    assert round_.status == RoundStatus.FAILED and "needs 3" in round_.status_reason
    rounds_tick(moment=timezone.now() + timedelta(hours=1))
    assert SecureRound.objects.get(round=round_).stage == SecureStage.FAILED


def test_with_dp_each_site_noises_its_own_change_counts_once_and_the_round_spends_the_budget(p):
    study, round_, sites, codes = started(p, dp_noise_multiplier=0.5, dp_clip_norm=2.0, dp_target_epsilon=100.0)
    config = RoundConfig.from_wire(SecureRound.objects.get(round=round_).config)
    assert config.max_weight == 1 and config.clip == ring_clip(noise_multiplier=0.5, clip_norm=2.0, min_sites=3)
    sites.privacy = DistributedPrivacy(noise_multiplier=0.5, clip_norm=2.0, min_sites=3)
    sites.every_stage(*codes)

    version = round_aggregate(round_id=round_.pk)

    secure = SecureRound.objects.get(round=round_)
    assert secure.result["total_weight"] == 3  # every site counted once, whatever its examples
    unweighted = np.mean([sites.changes[c][0].astype(np.float64) for c in codes], axis=0)
    noise_of_mean = site_noise_std(noise_multiplier=0.5, clip_norm=2.0, min_sites=3) * np.sqrt(3) / 3
    assert np.abs(new_model_change(round_, version) - unweighted).max() < 6 * noise_of_mean
    study.refresh_from_db()
    assert study.privacy_spent() == {0.5: 1}
    assert version.provenance["privacy"]["epsilon_spent"] > 0


def test_the_study_page_shows_the_secure_rounds_stage_and_the_rounds_page_why_one_failed(p):
    study, round_, sites, codes = started(p)
    sites.keys(*codes)
    page = client_for(p.pi).get(reverse("studies:detail", args=[study.pk])).content.decode()
    assert 'data-stage="shares"' in page and "the coordinator holds only masked inputs" in page
    deadline_passes(round_)  # nobody sent shares: the round fails closed, and the next one opens at its keys
    page = client_for(p.pi).get(reverse("studies:detail", args=[study.pk])).content.decode()
    assert 'data-stage="keys"' in page
    rounds = client_for(p.pi).get(reverse("aggregation:rounds", args=[study.pk])).content.decode()
    assert "Secure aggregation stopped: Only 0 sites completed the shares stage" in rounds


def test_the_statistics_round_is_masked_too_and_only_the_pooled_figures_come_out(p):
    names = ["age", "lactate", "crp", "heart_rate"]
    study, round_, sites, codes = started(p, federated_statistics=True, feature_names=names)
    assert round_.kind == "statistics"
    sites.every_stage(*codes)

    round_aggregate(round_id=round_.pk)

    round_.refresh_from_db()
    assert round_.status == RoundStatus.CLOSED
    assert not SiteStatistics.objects.filter(round=round_).exists()  # no site's figures were ever held
    total = sum(sites.statistics.values())
    standardization = Standardization.objects.get(study=study)
    assert standardization.features == names and standardization.examples == int(total[0])
    assert np.allclose(standardization.mean, total[1:5] / total[0], rtol=1e-9)
    assert np.allclose(standardization.std, np.sqrt(total[5:] / total[0] - (total[1:5] / total[0]) ** 2), rtol=1e-6)
    assert study.rounds_run.get(number=2).kind == "training"  # training follows, securely too
    assert stage(study.rounds_run.get(number=2)) == SecureStage.KEYS


def test_a_statistics_round_whose_counts_exceed_the_registered_rows_fails_closed(p):
    study, round_, sites, codes = started(p, federated_statistics=True, feature_names=["age", "lactate", "crp", "hr"])
    liar = codes[0]
    sites.statistics[liar][0] = 10**7  # more rows than its registration says it holds
    sites.changes[liar] = (integers.encode(sites.statistics[liar]), 1)
    sites.every_stage(*codes)
    round_aggregate(round_id=round_.pk)
    round_.refresh_from_db()
    assert round_.status == RoundStatus.FAILED and "no statistics are released" in round_.status_reason
    assert not Standardization.objects.filter(study=study).exists()


def test_a_server_optimiser_takes_its_step_from_the_unmasked_aggregate(p):
    study, round_, sites, codes = started(p, strategy="fedadam", server_learning_rate=0.5)
    sites.every_stage(*codes)

    version = round_aggregate(round_id=round_.pk)

    # FedAdam's first step moves every coordinate by the same amount in the aggregate's direction (Adam normalises
    # it), not by the aggregate itself (FedAvg's result), and keeps its optimiser state for the next round.
    change, mean = new_model_change(round_, version), sites.expected_change(codes)
    moved = np.abs(mean) > 1e-3
    assert np.all(np.sign(change[moved]) == np.sign(mean[moved]))
    assert np.ptp(np.abs(change[moved])) < 1e-3 * np.abs(change).max() and not np.allclose(change, mean, atol=1e-3)
    assert version.optimizer_state_path


def test_over_http_a_malformed_masked_input_header_is_a_clear_audited_400_and_a_plain_round_has_no_stages(p, fed):
    study, round_, sites, codes = started(p)
    token = agent_token_create(actor=p.site_admin_of(p.site_a), site=p.site_a, name="HTTP agent")[1]
    api = agent_client(token)
    state = api.get(f"/api/agent/rounds/{round_.pk}/secagg/").json()
    assert state["stage"] == "keys" and RoundConfig.from_wire(state["config"]).min_sites == 3
    response = api.post(f"/api/agent/rounds/{round_.pk}/secagg/masked-input/", data=b"x",
                        content_type="application/octet-stream", HTTP_X_SHA256="nope", HTTP_X_MASKED_WITH="[]")
    assert response.status_code == 400 and "X-SHA256" in response.json()["detail"]
    assert AuditEvent.objects.filter(action="aggregation.secure.submit", outcome="denied").exists()
    plain = open_round(fed.study)
    answer = agent_client(fed.plaintext_a).get(f"/api/agent/rounds/{plain.pk}/secagg/")
    assert answer.status_code == 404 and "not a secure-aggregation round" in answer.json()["detail"]
