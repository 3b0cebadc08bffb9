"""The audit log's signed checkpoints over the API: the list (newest first), the public key they verify
against, and consistency proofs between two of them, for the sites' agents (witnesses) and auditors.

Readers: auditors, DPOs and consortium admins (as for the log itself), and site agents, which witness the
log at each poll. A person's read is audited like a read of the log; an agent's poll is not (it would write
an event per site per poll, burying the log and moving the head the agents are checking), and a refused
attempt always is. The public key is public: anyone checking a signature needs it.
"""

from typing import Any

from django.http import HttpRequest, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from consortium.api_base import AuditedRead, ConsortiumApi, IdField, UnauditedRead, errors
from consortium.audit import checkpoints
from consortium.audit.services import select_or_deny
from consortium.audit_actions import ConsortiumAction
from consortium.errors import DomainError
from consortium.request_limits import MAX_ID

AUDIT = ["audit"]


class CheckpointPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class CheckpointListQuerySerializer(serializers.Serializer):
    page = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID, help_text="Page number, from 1.")
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=CheckpointPagination.max_page_size,
                                         help_text="Checkpoints a page (default 50).")


class CheckpointOutputSerializer(serializers.Serializer):
    number = serializers.IntegerField(help_text="The checkpoint's own sequence number.")
    reason = serializers.CharField(help_text="interval, export or manual.")
    checkpoint = serializers.DictField(source="document", help_text=(
        "The signed checkpoint as published (docs/evidence.md): version, log_id, seq, chain_head, merkle_root, "
        "issued_at, key_fingerprint, signature."))

    class Meta:
        ref_name = "AuditCheckpointOutput"


def _witness(request: Request, attempt: str, select: Any) -> Any:
    """Run a checkpoint read if the caller may: a refusal is audited (403)."""

    def checked() -> Any:
        checkpoints.require_checkpoint_reader(request.user)
        return select()

    return select_or_deny(request.user, attempt, checked)


class CheckpointListApi(ConsortiumApi):
    reads = AuditedRead(ConsortiumAction.AUDIT_CHECKPOINTS_VIEWED, by_service=True)
    query_serializer = CheckpointListQuerySerializer
    pagination_class = CheckpointPagination

    @extend_schema(tags=AUDIT, summary="Signed checkpoints of the audit log, newest first",
                   responses={200: CheckpointOutputSerializer(many=True), **errors(400)})
    def get(self, request: Request) -> Response:
        rows = _witness(request, ConsortiumAction.AUDIT_CHECKPOINTS_VIEW, checkpoints.checkpoints_newest_first)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(rows, request, view=self)
        checkpoints.checkpoints_read(actor=request.user, action=self.reads.action, numbers=[c.number for c in page])
        return paginator.get_paginated_response(CheckpointOutputSerializer(page, many=True).data)


class ConsistencyQuerySerializer(serializers.Serializer):
    first = IdField(min_value=0, required=False, default=0, help_text="The older tree size (a checkpoint's seq).")
    second = IdField(min_value=0, required=False, help_text="The newer tree size, at most the latest checkpoint's "
                     "(default: the latest checkpoint's).")


class ConsistencyApi(ConsortiumApi):
    reads = AuditedRead(ConsortiumAction.AUDIT_CONSISTENCY_VIEWED, by_service=True)
    query_serializer = ConsistencyQuerySerializer

    @extend_schema(tags=AUDIT, summary="RFC 6962 consistency proof between two sizes of the audit log",
                   responses={200: OpenApiTypes.OBJECT, **errors(400)})
    def get(self, request: Request) -> Response:
        first, second = self.query["first"], self.query.get("second")
        proof = _witness(request, ConsortiumAction.AUDIT_CONSISTENCY_VIEW,
                         lambda: checkpoints.consistency_proof(first, second))
        checkpoints.checkpoints_read(actor=request.user, action=self.reads.action, first=proof["first"],
                                     second=proof["second"])
        return Response(proof)


class PublicKeyApi(ConsortiumApi):
    reads = UnauditedRead("The coordinator's public signing key: published for anyone to check signatures.")
    permission_classes = [AllowAny]

    @extend_schema(tags=AUDIT, summary="The public key audit checkpoints and exports are signed with", auth=[],
                   responses={200: OpenApiTypes.OBJECT, **errors(503, public=True)})
    def get(self, request: Request) -> Response:
        return Response(checkpoints.public_key_document())


def well_known_key(request: HttpRequest) -> HttpResponse:
    """/.well-known/consortium-audit-key: the public key as PEM (save it and pass it to `consortium.verify`); its
    fingerprint in the X-Key-Fingerprint header."""
    try:
        document = checkpoints.public_key_document()
    except DomainError as exc:
        return HttpResponse(exc.message, content_type="text/plain; charset=utf-8", status=exc.status)
    response = HttpResponse(document["public_key_pem"], content_type="application/x-pem-file")
    response["X-Key-Fingerprint"] = document["fingerprint"]
    response["Access-Control-Allow-Origin"] = "*"
    return response

