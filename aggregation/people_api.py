"""The REST API for people (PIs, DPOs, site admins, auditors): a study's rounds, model versions with their
provenance and the sites' metrics, model cards, and the contribution ledger, per study and per site.

Thin: find the study or site as the caller sees it (an invisible one is a 404, audited), call a selector,
serialize. Every GET here reads study data and is audited (`AuditedRead`), like the pages that show it."""

from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from aggregation import ledger, selectors
from aggregation.audit_actions import AggregationAction
from aggregation.model_card import model_card
from consortium.api_base import AuditedRead, ConsortiumApi, IdField, errors
from consortium.audit.services import select_or_deny
from consortium.web import csv_attachment
from sites.models import Site
from sites.selectors import site_get
from studies.models import Study
from studies.permissions import studies_for
from studies.selectors import study_get

FEDERATION = ["federation"]
LEDGER = ["ledger"]

ORDERINGS = [*ledger.SORT_KEYS, *(f"-{key}" for key in ledger.SORT_KEYS)]


def _study(request: Request, pk: int, attempt: str) -> Study:
    return select_or_deny(request.user, attempt, lambda: study_get(request.user, pk), study=pk)


def _site(request: Request, pk: int, attempt: str) -> Site:
    return select_or_deny(request.user, attempt, lambda: site_get(request.user, pk), site=pk)


# --- Rounds and model versions ------------------------------------------------------------------------


class RoundOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    number = serializers.IntegerField()
    kind = serializers.CharField()
    status = serializers.CharField()
    status_reason = serializers.CharField()
    base_version = serializers.IntegerField(source="base_version.number", allow_null=True, default=None)
    produced_version = serializers.SerializerMethodField()
    opened_at = serializers.DateTimeField()
    deadline = serializers.DateTimeField()
    aggregation_started_at = serializers.DateTimeField(allow_null=True)
    closed_at = serializers.DateTimeField(allow_null=True)
    updates = serializers.SerializerMethodField(help_text=(
        "Per site: status, examples declared, update SHA-256, its metrics, and the weight applied if included."))

    class Meta:
        ref_name = "RoundOutput"

    def get_produced_version(self, round_: Any) -> int | None:
        version = getattr(round_, "produced_version", None)
        return version.number if version else None

    def get_updates(self, round_: Any) -> list[dict[str, Any]]:
        version = getattr(round_, "produced_version", None)
        weights = {c["site_id"]: c["weight"] for c in ((version.provenance if version else {}).get("contributors")
                                                        or [])}
        return [{"site_id": u.site_id, "site": u.site.name, "status": u.status, "exclusion_reason": u.exclusion_reason,
                 "num_examples": u.num_examples, "sha256": u.sha256, "metrics": u.metrics,
                 "weight": weights.get(u.site_id), "received_at": u.received_at.isoformat()}
                for u in round_.updates.all()]


class StudyRoundListApi(ConsortiumApi):
    reads = AuditedRead(AggregationAction.ROUND_LISTED)

    @extend_schema(tags=FEDERATION, summary="The study's rounds, newest first, with each site's update and metrics",
                   responses={200: RoundOutputSerializer(many=True), **errors(404)})
    def get(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, AggregationAction.ROUND_LIST)
        rounds = selectors.study_rounds(study)
        self.audit_read(study=study, target=study, rounds=len(rounds))
        return Response(RoundOutputSerializer(rounds, many=True).data)


class VersionOutputSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    sha256 = serializers.CharField()
    size_bytes = serializers.IntegerField()
    round = serializers.IntegerField(source="round.number", allow_null=True, default=None)
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "ModelVersionOutput"


class VersionDetailOutputSerializer(VersionOutputSerializer):
    provenance = serializers.SerializerMethodField(help_text=(
        "Contributors (examples declared, weight applied, update SHA-256), agreement, DPIA, the gate's verdict at "
        "aggregation, strategy, protocol SHA-256, code version, privacy budget."))
    evaluation = serializers.JSONField(help_text="The sites' validation metrics of this model, and their mean.")

    class Meta:
        ref_name = "ModelVersionDetailOutput"

    def get_provenance(self, version: Any) -> dict[str, Any]:
        provenance = dict(version.provenance or {})
        strategy = dict(provenance.get("strategy") or {})
        if strategy.get("settings"):  # never a noise seed, even one left in an old provenance
            strategy["settings"] = {k: v for k, v in strategy["settings"].items() if "seed" not in k}
            provenance["strategy"] = strategy
        return provenance


class StudyVersionListApi(ConsortiumApi):
    reads = AuditedRead(AggregationAction.MODEL_VERSION_LISTED)

    @extend_schema(tags=FEDERATION, summary="The study's model versions, oldest first",
                   responses={200: VersionOutputSerializer(many=True), **errors(404)})
    def get(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, AggregationAction.MODEL_VERSION_LIST)
        versions = list(study.model_versions.select_related("round").order_by("number"))
        self.audit_read(study=study, target=study, versions=[v.number for v in versions])
        return Response(VersionOutputSerializer(versions, many=True).data)


class StudyVersionDetailApi(ConsortiumApi):
    reads = AuditedRead(AggregationAction.MODEL_VERSION_VIEWED)

    @extend_schema(tags=FEDERATION, summary="One model version with its provenance and the sites' metrics",
                   responses={200: VersionDetailOutputSerializer, **errors(404)})
    def get(self, request: Request, pk: int, number: int) -> Response:
        study = _study(request, pk, AggregationAction.MODEL_VERSION_VIEW)
        version = select_or_deny(request.user, AggregationAction.MODEL_VERSION_VIEW,
                                 lambda: selectors.model_version_get(study, number), study=study)
        self.audit_read(study=study, target=version, version=version.number)
        return Response(VersionDetailOutputSerializer(version).data)


class ModelCardApi(ConsortiumApi):
    reads = AuditedRead(AggregationAction.MODEL_CARD_VIEWED)

    @extend_schema(tags=FEDERATION, summary="The model card of a version (JSON): question, protocol, ledger, "
                                            "governance at aggregation, privacy, validation",
                   responses={200: OpenApiTypes.OBJECT, **errors(404)})
    def get(self, request: Request, pk: int, number: int) -> Response:
        study = _study(request, pk, AggregationAction.MODEL_CARD_VIEW)
        card = select_or_deny(request.user, AggregationAction.MODEL_CARD_VIEW, lambda: model_card(study, number),
                              study=study)
        self.audit_read(study=study, target=study, version=number)
        return Response(card)


# --- The contribution ledger --------------------------------------------------------------------------


class _LedgerFilters(serializers.Serializer):
    round = serializers.IntegerField(required=False, min_value=1, max_value=2**31 - 1, help_text="One round number.")
    status = serializers.ChoiceField(choices=ledger.STATUSES, required=False)
    sort = serializers.ChoiceField(choices=ORDERINGS, default="round",
                                   help_text="A column; a leading - sorts descending. Default: round.")


class LedgerQuerySerializer(_LedgerFilters):
    site = IdField(required=False, help_text="One site's rows.")


class SiteLedgerQuerySerializer(_LedgerFilters):
    study = IdField(required=False, help_text="One study's rows.")


class LedgerRowSerializer(serializers.Serializer):
    """Documents the row; rows are written from `LedgerRow.as_dict`."""

    study_id = serializers.IntegerField()
    study = serializers.CharField()
    round = serializers.IntegerField()
    round_id = serializers.IntegerField()
    round_status = serializers.CharField()
    site_id = serializers.IntegerField()
    site = serializers.CharField()
    status = serializers.ChoiceField(choices=ledger.STATUSES)
    reason = serializers.CharField()
    num_examples = serializers.IntegerField(allow_null=True)
    weight = serializers.FloatField(allow_null=True, help_text="The weight the strategy applied; null if not "
                                                               "included in a model.")
    update_sha256 = serializers.CharField()
    base_version = serializers.IntegerField(allow_null=True)
    base_version_sha256 = serializers.CharField()
    resulting_version = serializers.IntegerField(allow_null=True)
    resulting_version_sha256 = serializers.CharField()
    protocol_sha256 = serializers.CharField()
    dua_version = serializers.IntegerField(allow_null=True, help_text="The DUA version the site had signed.")
    audit_seq = serializers.IntegerField(allow_null=True, help_text="The audit event holding the verdict.")
    gate_at_open = serializers.DateTimeField()
    gate_at_aggregation = serializers.CharField(help_text="ISO 8601, or empty before aggregation.")

    class Meta:
        ref_name = "LedgerRow"


class LedgerOutputSerializer(serializers.Serializer):
    rows = LedgerRowSerializer(many=True)
    totals = serializers.DictField()

    class Meta:
        ref_name = "Ledger"


def _sorted(rows: list[ledger.LedgerRow], query: dict[str, Any]) -> list[ledger.LedgerRow]:
    sort = query.get("sort", "round")
    return ledger.filter_rows(rows, round=query.get("round"), site=query.get("site"), status=query.get("status"),
                              sort=sort.lstrip("-"), descending=sort.startswith("-"))


class _LedgerApi(ConsortiumApi):
    """A ledger in one format: JSON (rows and totals), CSV or JSONL."""

    form = "json"

    def answer(self, rows: list[ledger.LedgerRow], filename: str) -> HttpResponse:
        if self.form == "csv":
            return csv_attachment(ledger.ledger_csv(rows), f"{filename}.csv")
        if self.form == "jsonl":
            response = HttpResponse(ledger.ledger_jsonl(rows), content_type="application/x-ndjson; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="{filename}.jsonl"'
            return response
        return Response({"rows": [row.as_dict() for row in rows], "totals": ledger.totals(rows)})


class StudyLedgerApi(_LedgerApi):
    reads = AuditedRead(AggregationAction.LEDGER_VIEWED)
    query_serializer = LedgerQuerySerializer

    @extend_schema(tags=LEDGER, summary="The study's contribution ledger: one row per round and site",
                   responses={200: LedgerOutputSerializer, **errors(404)})
    def get(self, request: Request, pk: int) -> HttpResponse:
        study = _study(request, pk, AggregationAction.LEDGER_VIEW)
        rows = _sorted(ledger.study_ledger(study), self.query)
        self.audit_read(study=study, target=study, format=self.form, rows=len(rows),
                        filters={k: v for k, v in self.query.items() if k != "sort"})
        return self.answer(rows, f"study-{study.pk}-ledger")


class StudyLedgerCsvApi(StudyLedgerApi):
    reads = AuditedRead(AggregationAction.LEDGER_EXPORTED)
    form = "csv"

    @extend_schema(tags=LEDGER, summary="The study's contribution ledger as CSV", operation_id="study_ledger_csv",
                   responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.STR), **errors(404)})
    def get(self, request: Request, pk: int) -> HttpResponse:
        return super().get(request, pk)


class StudyLedgerJsonlApi(StudyLedgerApi):
    reads = AuditedRead(AggregationAction.LEDGER_EXPORTED)
    form = "jsonl"

    @extend_schema(tags=LEDGER, summary="The study's contribution ledger as JSON Lines",
                   operation_id="study_ledger_jsonl",
                   responses={(200, "application/x-ndjson"): OpenApiResponse(OpenApiTypes.STR), **errors(404)})
    def get(self, request: Request, pk: int) -> HttpResponse:
        return super().get(request, pk)


class SiteLedgerApi(_LedgerApi):
    reads = AuditedRead(AggregationAction.LEDGER_VIEWED)
    query_serializer = SiteLedgerQuerySerializer

    @extend_schema(tags=LEDGER, summary="A site's contributions across the studies the caller may see",
                   responses={200: LedgerOutputSerializer, **errors(404)})
    def get(self, request: Request, pk: int) -> HttpResponse:
        site = _site(request, pk, AggregationAction.LEDGER_VIEW)
        studies = studies_for(request.user).filter(participations__site=site).distinct().order_by("pk")
        if self.query.get("study") is not None:
            studies = studies.filter(pk=self.query["study"])
        rows = _sorted(ledger.site_ledger(site, studies), self.query)
        self.audit_read(site=site, target=site, format=self.form, rows=len(rows),
                        studies=sorted({row.study_id for row in rows}))
        return self.answer(rows, f"site-{site.code}-ledger")


class SiteLedgerCsvApi(SiteLedgerApi):
    reads = AuditedRead(AggregationAction.LEDGER_EXPORTED)
    form = "csv"

    @extend_schema(tags=LEDGER, summary="A site's contributions as CSV", operation_id="site_ledger_csv",
                   responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.STR), **errors(404)})
    def get(self, request: Request, pk: int) -> HttpResponse:
        return super().get(request, pk)


class SiteLedgerJsonlApi(SiteLedgerApi):
    reads = AuditedRead(AggregationAction.LEDGER_EXPORTED)
    form = "jsonl"

    @extend_schema(tags=LEDGER, summary="A site's contributions as JSON Lines", operation_id="site_ledger_jsonl",
                   responses={(200, "application/x-ndjson"): OpenApiResponse(OpenApiTypes.STR), **errors(404)})
    def get(self, request: Request, pk: int) -> HttpResponse:
        return super().get(request, pk)
