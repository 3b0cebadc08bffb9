"""The agent's loop: ask the coordinator for open rounds and do each one once. Imports no Django.

A statistics round sends counts, sums and sums of squares; a training round downloads the global model,
checks its SHA-256, evaluates it, trains from it and submits the weights; an evaluation round (after the
last training round) downloads the final model, evaluates it and submits only the metrics. Data rows are
never sent.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consortium.federated import codec
from consortium.federated.metric_keys import BASE, TRAINING_SECONDS, VAL_ACCURACY, VAL_AUC, VAL_EXAMPLES
from consortium.federated.secagg import integers

from .client import (
    AgentClient,
    AgentError,
    ApiError,
    CoordinatorUnreachable,
    ModelIntegrityError,
    TokenRefused,
    new_idempotency_key,
)
from .data import (
    DEFAULT_LABEL,
    DataError,
    Dataset,
    Table,
    load_table,
    local_statistics,
    own_standardization,
    split,
    standardize,
)
from .policy import Policy
from .record import LocalRecord, RecordError, default_record_path
from .registration import Registrar
from .secure import DistributedPrivacy, SecureRounds, model_change
from .training import LocalUpdate, Protocol, check_features, evaluate, local_update
from .witness import Witness

MAX_MODEL_BYTES = 512 * 1024 * 1024
# How often a polling agent looks again at its site's studies (a new study, an amended protocol, a changed file).
REGISTER_EVERY_SECONDS = 30.0


class FatalAgentError(AgentError):
    """The agent cannot go on at all (token refused, site refused): stop and tell the site's staff."""


@dataclass
class PendingUpdate:
    """A trained update kept until the coordinator confirms it, so a later retry sends the same key and bytes."""

    body: bytes
    headers: dict[str, Any]
    base_sha256: str
    idempotency_key: str = field(default_factory=new_idempotency_key)


@dataclass
class PassResult:
    """What one pass over the open rounds did."""

    done: int = 0
    failed: int = 0


class Agent:
    """One site's agent: one coordinator, one data table, one settled seed."""

    def __init__(self, client: AgentClient, table: Table, *, label: str | None = None, val_fraction: float = 0.2,
                 seed: int = 0, say: Callable[[str], None] = print, studies: Sequence[int] = (),
                 witness: Witness | None = None, policy: Policy | None = None, record: LocalRecord | None = None,
                 keep_record: bool = False, record_path: str | None = None, data_path: str | None = None,
                 register_every: float = REGISTER_EVERY_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.client, self.table, self.label = client, table, label
        self.witness = witness  # checks the coordinator's audit checkpoints at each poll
        # With `data_path`, a changed data file is read again (and registered again) without a restart.
        self.data_path, self._data_stamp = data_path, _stamp(data_path)
        self.register_every, self.clock = register_every, clock
        self._registered_at: float | None = None
        # With `keep_record`, the record is opened at `record_path`, or by default once the coordinator has named
        # the site (`introduce`).
        self.policy, self.record = policy, record
        self.keep_record, self.record_path = keep_record, record_path
        self.studies = set(studies)  # empty: every study the site takes part in
        self.val_fraction, self.seed, self.say = val_fraction, seed, say
        self.registrar = Registrar(client, label=label, say=say, studies=self.studies)
        self.finished: set[int] = set()  # rounds submitted, or refused for good, by this process
        self.pending: dict[int, PendingUpdate] = {}
        self.secure: SecureRounds | None = None  # once the coordinator has named the site (`introduce`)
        self._idle = False

    def introduce(self) -> dict[str, Any]:
        """GET /me/: proves the token works and names the site."""
        me = _fatal_on_refusal(self.client.me)
        site = me.get("site", {})
        self.secure = SecureRounds(str(site.get("code")), self.client.request)
        if self.record is None and self.keep_record:
            self.record = LocalRecord(self.record_path or default_record_path(str(site.get("code"))))
            self.record.entries()  # a broken chain stops the agent now: its record is the site's evidence
        self.say(f"Connected to {self.client.server} as site {site.get('code')!r} ({site.get('name')}); data: "
                 f"{self.table.values.shape[0]} rows and {len(self.table.columns)} columns in {self.table.source}.")
        return me

    def run(self, *, once: bool, poll: float, sleep: Callable[[float], None] = time.sleep) -> int:
        """Poll until stopped (or one pass with `once`). Returns the process exit code.

        Polling, an unreachable coordinator is waited for (it may still be starting, or restarting); with
        `once` it ends the run. A refused token or site always ends it.
        """
        introduced = False
        try:
            while True:
                try:
                    if not introduced:
                        self.introduce()
                        introduced = True
                    if self._registered_at is None or self.clock() - self._registered_at >= self.register_every:
                        self.register_datasets()
                    result = self.run_once()
                except CoordinatorUnreachable as exc:
                    if once:
                        raise
                    self.say(f"{exc} Trying again in {poll:g} s.")
                    result = PassResult()
                if once:
                    return 1 if result.failed else 0
                sleep(poll)
        except (FatalAgentError, CoordinatorUnreachable, RecordError) as exc:
            self.say(f"Stopping: {exc}")
            return 1

    def register_datasets(self) -> None:
        """Register this site's data set summary for each of its studies where the coordinator does not hold it
        (at start, then every `register_every` seconds: a new study, an amended protocol or a changed file)."""
        self._reload_if_changed()
        try:
            self.registrar.sync(self.table)
        except TokenRefused as exc:
            raise FatalAgentError(str(exc)) from exc
        self._registered_at = self.clock()

    def _reload_if_changed(self) -> None:
        stamp = _stamp(self.data_path)
        if self.data_path is None or stamp == self._data_stamp:
            return
        self._data_stamp = stamp
        try:
            self.table = load_table(self.data_path)
        except DataError as exc:
            self.say(f"The data file changed but cannot be read; keeping the earlier one: {exc}")
            return
        self.say(f"The data file changed: read {self.table.values.shape[0]} rows and {len(self.table.columns)} "
                 f"columns from {self.table.source} again.")

    def run_once(self) -> PassResult:
        """Process every open round not yet submitted, oldest first."""
        result = PassResult()
        if self.witness is not None:
            self.witness.observe()
        rounds = _fatal_on_refusal(self.client.rounds)
        todo = [r for r in rounds if not r.get("submitted") and r["round_id"] not in self.finished
                and (not self.studies or r["study_id"] in self.studies)]
        if not todo and not self._idle:
            self.say("No open rounds for this site; waiting.")
        self._idle = not todo  # say it once per quiet spell, not on every poll
        for round_ in todo:
            if self.process(round_):
                result.done += 1
            else:
                result.failed += 1
        return result

    def process(self, round_: Mapping[str, Any]) -> bool:
        """Do one round. Refusals and data problems are reported and the round is left alone from then on."""
        title = f"round {round_['number']} of study {round_.get('study_title', round_['study_id'])!r}"
        try:
            refusal = self._policy_refusal(round_)
            if refusal:
                self.finished.add(round_["round_id"])
                self.decline(round_, refusal)
                self.say(f"{title}: declined by this site's policy: {refusal}. The coordinator was told.")
                return True
            if round_.get("secure_stage"):
                return self.secure_round(round_, title)
            if round_["kind"] == "statistics":
                message = self.statistics_round(round_)
            elif round_["kind"] == "evaluation":
                message = self.evaluation_round(round_)
            else:
                message = self.training_round(round_)
        except TokenRefused as exc:
            raise FatalAgentError(str(exc)) from exc
        except ApiError as exc:
            self.finished.add(round_["round_id"])
            self.pending.pop(round_["round_id"], None)
            self.say(f"{title}: refused by the coordinator (HTTP {exc.status}): {exc.detail}{_failing_checks(exc)}")
            return False
        except CoordinatorUnreachable:
            raise  # the round stays open to us: the next pass tries again, with the same idempotency key
        except ModelIntegrityError as exc:
            self.say(f"{title}: not done: {exc} The next pass downloads it again.")
            return False
        except (AgentError, DataError) as exc:
            self.finished.add(round_["round_id"])
            self.say(f"{title}: not done: {exc}")
            return False
        self.finished.add(round_["round_id"])
        self.say(f"{title}: {message}")
        return True

    def _policy_refusal(self, round_: Mapping[str, Any]) -> str | None:
        if self.policy is None:
            return None
        return self.policy.refusal(round_, self.record.rounds_in_last_day if self.record else lambda: 0)

    def decline(self, round_: Mapping[str, Any], reason: str) -> None:
        """Tell the coordinator this site will not take part in the round, and why; keep it in the local record."""
        self.client.decline_round(round_["round_id"], reason)
        if self.record:
            self.record.append("declined", round_id=round_["round_id"], study_id=round_["study_id"],
                               round=round_["number"], protocol_sha256=round_.get("protocol_sha256"), reason=reason)

    def _dataset(self, protocol: Protocol) -> Dataset:
        dataset = self.table.dataset(self.label or protocol.label_column or DEFAULT_LABEL, protocol.feature_names)
        check_features(protocol, dataset)
        return dataset

    def secure_round(self, round_: Mapping[str, Any], title: str) -> bool:
        """One step of a secure round (sites.agent.secure): the stage's message, once; at the masked-input stage
        the site trains and sends only its masked change to the model. Done when the round is done or failed."""
        if self.secure is None:
            self.introduce()
        assert self.secure is not None
        before = set(self.secure.sent.get(round_["round_id"], set()))
        protocol = Protocol.from_json(round_["protocol"])
        if round_["kind"] == "statistics":
            stage = self.secure.step(round_["round_id"], lambda: self._masked_statistics(round_))
        else:
            privacy = DistributedPrivacy(protocol.dp_noise_multiplier, protocol.dp_clip_norm,
                                         max(3, protocol.quorum)) if protocol.dp_noise_multiplier > 0 else None
            stage = self.secure.step(round_["round_id"], lambda: self._masked_change(round_), privacy)
        if stage in ("done", "failed"):
            self.finished.add(round_["round_id"])
        elif stage not in before and stage in self.secure.sent.get(round_["round_id"], set()):
            self.say(f"{title}: secure aggregation, sent this site's {stage.replace('_', ' ')}.")
        return True

    def _masked_statistics(self, round_: Mapping[str, Any]) -> tuple[Any, int]:
        """The statistics round under secure aggregation: the count, sums and sums of squares over the training
        rows, in the protocol's feature order, as exact fixed-point limbs; only their sum over sites is unmasked."""
        protocol = Protocol.from_json(round_["protocol"])
        train_set, _ = split(self._dataset(protocol), self.val_fraction, self.seed)
        if list(train_set.features) != list(protocol.feature_names):
            raise DataError("A secure statistics round sums the features in the protocol's order; this data set's "
                            f"features ({', '.join(train_set.features)}) are not the protocol's.")
        stats = local_statistics(train_set)
        self.say(f"round {round_['number']}: masking counts, sums and sums of squares of {len(train_set.features)} "
                 f"features over {len(train_set)} training rows (no rows sent).")
        return integers.encode(np.array([stats["count"], *stats["sum"], *stats["sum_sq"]], dtype=np.float64)), 1

    def _masked_change(self, round_: Mapping[str, Any]) -> tuple[Any, int]:
        """Train as for a plain round, and hand secure aggregation the change to the model (never sent in the
        clear) and the number of examples it was trained on."""
        protocol = Protocol.from_json(round_["protocol"])
        train_set, val_set = self._prepared(protocol, round_.get("standardization"))
        model, global_state = self._download(round_, protocol)
        update = local_update(protocol, global_state, train_set, val_set, seed=self.seed + int(round_["number"]))
        self.say(f"round {round_['number']}: {_describe(protocol, model, update)}; masking the change.")
        return model_change(update.state, global_state), int(update.num_examples)

    def statistics_round(self, round_: Mapping[str, Any]) -> str:
        protocol = Protocol.from_json(round_["protocol"])
        train_set, _ = split(self._dataset(protocol), self.val_fraction, self.seed)
        self.client.submit_statistics(round_["round_id"], local_statistics(train_set))
        return (f"sent counts, sums and sums of squares of {len(train_set.features)} features over "
                f"{len(train_set)} training rows (no rows sent)")

    def training_round(self, round_: Mapping[str, Any]) -> str:
        round_id = round_["round_id"]
        if round_.get("protocol", {}).get("secure_aggregation"):
            # The site agreed to a protocol where nobody sees its update: never send one in the clear.
            raise AgentError("the study's protocol asks for secure aggregation, so this agent sends masked inputs "
                             "only (sites.agent.secure); the coordinator offered a plain update round. Nothing "
                             "was trained or sent.")
        pending = self.pending.get(round_id)
        if pending is None:
            pending, summary = self._train(round_)
            self.pending[round_id] = pending
        else:
            summary = "resending the update trained earlier"
        answer = self.client.submit_update(round_id, pending.body, idempotency_key=pending.idempotency_key,
                                           **pending.headers)
        del self.pending[round_id]
        if self.record:
            self.record.append("update", round_id=round_id, study_id=round_["study_id"], round=round_["number"],
                               protocol_sha256=round_.get("protocol_sha256"),
                               base_version=pending.headers["base_version"], base_sha256=pending.base_sha256,
                               update_sha256=hashlib.sha256(pending.body).hexdigest(),
                               num_examples=pending.headers["num_examples"])
        status = answer.get("status", "accepted")
        outcome = "already submitted earlier" if status == "already_submitted" else f"submitted ({status})"
        return f"{summary}, {outcome}"

    def evaluation_round(self, round_: Mapping[str, Any]) -> str:
        """Score the study's final model on the validation split and send the metrics only (no weights)."""
        protocol = Protocol.from_json(round_["protocol"])
        _, val_set = self._prepared(protocol, round_.get("standardization"))
        model, state = self._download(round_, protocol)
        metrics = evaluate(protocol, state, val_set, histogram=True)
        if not metrics[VAL_EXAMPLES]:
            raise DataError("There are no validation rows to evaluate the model on (raise --val-fraction).")
        answer = self.client.submit_evaluation(round_["round_id"], round_number=int(round_["number"]),
                                               base_version=model.version, metrics=_json_safe(metrics))
        outcome = "already sent earlier" if answer.get("status") == "already_submitted" else "sent the metrics"
        return (f"evaluated model v{model.version} (sha ok) on {metrics[VAL_EXAMPLES]} validation rows: AUC "
                f"{_fmt(metrics[VAL_AUC])}, accuracy {_fmt(metrics[VAL_ACCURACY])}; {outcome} (no rows, "
                "no weights)")

    def _download(self, round_: Mapping[str, Any], protocol: Protocol) -> tuple[Any, dict[str, Any]]:
        """The round's model, its SHA-256 checked (by the client) and its tensors checked against the protocol."""
        model = self.client.download_model(round_["round_id"])
        expected = codec.spec_of(protocol.initial_state())
        try:
            return model, codec.decode(model.data, expected=expected, max_bytes=MAX_MODEL_BYTES)
        except codec.UpdateRejected as exc:
            raise AgentError(f"The downloaded model does not fit the study's protocol: {exc.message}") from exc

    def _train(self, round_: Mapping[str, Any]) -> tuple[PendingUpdate, str]:
        protocol = Protocol.from_json(round_["protocol"])
        train_set, val_set = self._prepared(protocol, round_.get("standardization"))
        model, global_state = self._download(round_, protocol)
        update = local_update(protocol, global_state, train_set, val_set, seed=self.seed + int(round_["number"]))
        headers = {"round_number": int(round_["number"]), "base_version": model.version,
                   "num_examples": update.num_examples, "metrics": _json_safe(update.metrics)}
        return (PendingUpdate(body=codec.encode(update.state), headers=headers, base_sha256=model.sha256),
                _describe(protocol, model, update))

    def _prepared(self, protocol: Protocol, standardization: Mapping[str, Any] | None) -> tuple[Dataset, Dataset]:
        train_set, val_set = split(self._dataset(protocol), self.val_fraction, self.seed)
        if not standardization and protocol.secure_aggregation:
            standardization = own_standardization(train_set)  # no statistics round: the site's own figures
        if standardization:
            train_set, val_set = standardize(train_set, standardization), standardize(val_set, standardization)
        return train_set, val_set


def _stamp(path: str | None) -> tuple[int, int] | None:
    """When and how big the data file was last written: a change means the site edited it."""
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


def _fatal_on_refusal(call: Callable[[], Any]) -> Any:
    """401 and 403 on the site-wide endpoints mean this agent may do nothing at all."""
    try:
        return call()
    except TokenRefused as exc:
        raise FatalAgentError(str(exc)) from exc
    except ApiError as exc:
        if exc.status == 403:
            raise FatalAgentError(f"The coordinator refused this site: {exc.detail}") from exc
        raise FatalAgentError(str(exc)) from exc


def _failing_checks(error: ApiError) -> str:
    checks = error.body.get("checks")
    if not isinstance(checks, list):
        return ""
    reasons = [str(c.get("reason") or c.get("name")) for c in checks if isinstance(c, dict) and not c.get("passed")]
    return f" Failing checks: {'; '.join(reasons)}." if reasons else ""


def _json_safe(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """NaN is not JSON: a metric that could not be computed is sent as null."""
    safe: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            safe[key] = _json_safe(value)
        elif isinstance(value, float) and value != value:
            safe[key] = None
        else:
            safe[key] = value
    return safe


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _describe(protocol: Protocol, model: Any, update: LocalUpdate) -> str:
    m = update.metrics
    epochs = f"{protocol.local_epochs} epoch{'s' if protocol.local_epochs != 1 else ''}"
    prox = f" with FedProx mu {protocol.proximal_mu:g}" if protocol.proximal_mu > 0 else ""
    return (f"downloaded model v{model.version} (sha ok), base val AUC {_fmt(m[BASE][VAL_AUC])}, "
            f"trained {epochs}{prox} on {update.num_examples} rows in {m[TRAINING_SECONDS]:.3f} s, "
            f"val AUC {_fmt(m[VAL_AUC])}, val accuracy {_fmt(m[VAL_ACCURACY])}")
