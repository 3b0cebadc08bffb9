"""The Flower API: thin adapters over `aggregation.services.flower` and `sites.flower_nodes`.

Under /api/agent/flower/ the study's Flower coordinator (`aggregation.flower.GovernedStrategy`) asks before each
round which nodes may take part, reports the results and uploads the new parameters; a refusal answers 409 with
the reason, and the strategy stops (fail closed). The PI issues the coordinator's token and site admins register
their SuperNodes' public keys through the endpoints at the end."""

import json
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from aggregation.api import read_body, require_identity_encoding
from aggregation.audit_actions import AggregationAction
from aggregation.flower_auth import FlowerTokenAuthentication, IsFlowerCoordinator
from aggregation.models import FlowerCoordinatorToken
from aggregation.services import flower as services
from consortium.api_base import ConsortiumApi, ReasonInputSerializer, StrictSerializer, UnauditedRead, errors
from consortium.api_errors import summarise
from consortium.audit.log import record_denial
from consortium.audit.services import select_or_deny
from consortium.errors import DomainError, NotFound, ValidationFailed
from sites.audit_actions import SiteAction
from sites.flower_nodes import flower_node_get, flower_node_register, flower_node_revoke, site_flower_nodes
from sites.models import FlowerNode
from sites.selectors import site_get
from studies.permissions import can_lead
from studies.selectors import study_get

FLOWER = ["flower"]
MAX_ACTED_ON_CHARS = 65536


class FlowerApi(ConsortiumApi):
    authentication_classes = [FlowerTokenAuthentication]
    permission_classes = [IsFlowerCoordinator]


def _answer(outcome: services.FlowerOutcome, code: str = "gate_refused") -> Response:
    """Go ahead (200), or stop (409, with why): a coordinator that reads only the status fails closed."""
    body = outcome.as_dict()
    if outcome.allowed:
        return Response(body)
    return Response({**body, "code": code, "detail": outcome.reason}, status=status.HTTP_409_CONFLICT)


class FlowerMeApi(FlowerApi):
    reads = UnauditedRead("Which study the coordinator's token is for: its id and title, no study data.")

    @extend_schema(tags=FLOWER, responses={200: OpenApiTypes.OBJECT, **errors()}, summary="The coordinator's study")
    def get(self, request: Request) -> Response:
        study = request.user.token.study
        return Response({"study": {"id": study.pk, "title": study.title, "quorum": study.quorum,
                                   "revocation_policy": study.revocation_policy}})


class FlowerInitialModelApi(FlowerApi):
    @extend_schema(tags=FLOWER, request={"application/octet-stream": OpenApiTypes.BINARY},
                   responses={200: OpenApiTypes.OBJECT, **errors(400, 409)},
                   summary="Record the Flower app's initial parameters (safetensors) as the study's v0")
    def post(self, request: Request) -> Response:
        try:
            require_identity_encoding(request)
            body = read_body(request)
        except DomainError as exc:
            record_denial(actor=request.user, action=AggregationAction.FLOWER_INITIAL_MODEL, reason=exc.message,
                          study=request.user.study_id, details={"code": exc.code})
            raise
        version = services.flower_initial_version(actor=request.user, body=body)
        return Response({"version": version.number, "sha256": version.sha256})


class FlowerNodeSerializer(StrictSerializer):
    node_id = serializers.IntegerField(min_value=0, max_value=2**64 - 1)
    public_key = serializers.CharField(max_length=4096, help_text="The public key (PEM), as the SuperLink has it.")

    class Meta:
        ref_name = "FlowerNodeInput"


class FlowerRoundOpenApi(FlowerApi):
    class InputSerializer(StrictSerializer):
        server_round = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
        base_sha256 = serializers.RegexField(r"^[0-9a-f]{64}$", help_text="SHA-256 of the parameters it starts from.")
        nodes = FlowerNodeSerializer(many=True, max_length=services.MAX_NODES)

        class Meta:
            ref_name = "FlowerRoundOpenInput"

    @extend_schema(tags=FLOWER, request=InputSerializer, responses={200: OpenApiTypes.OBJECT, **errors(400, 409)},
                   summary="Before a Flower round: which connected nodes may take part (the gate, by site)")
    def post(self, request: Request) -> Response:
        data = _valid(self.InputSerializer, request, AggregationAction.FLOWER_ROUND_OPEN)
        return _answer(services.flower_round_open(actor=request.user, **data))


class FlowerResultSerializer(StrictSerializer):
    node_id = serializers.IntegerField(min_value=0, max_value=2**64 - 1)
    num_examples = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    sha256 = serializers.RegexField(r"^[0-9a-f]{64}$", help_text="SHA-256 of the result's parameters (safetensors).")
    size_bytes = serializers.IntegerField(min_value=1, max_value=2**62)
    weight_norm = serializers.FloatField(min_value=0)
    delta_norm = serializers.FloatField(min_value=0)
    metrics = serializers.DictField(required=False, default=dict)

    class Meta:
        ref_name = "FlowerResultInput"


class FlowerRoundResultsApi(FlowerApi):
    class InputSerializer(StrictSerializer):
        results = FlowerResultSerializer(many=True, max_length=services.MAX_NODES)
        acted_on = serializers.DictField(help_text="The answer to the round's opening the strategy acted on.")

        class Meta:
            ref_name = "FlowerRoundResultsInput"

    @extend_schema(tags=FLOWER, request=InputSerializer, responses={200: OpenApiTypes.OBJECT, **errors(400, 404, 409)},
                   summary="The results received: which of them the strategy may aggregate (the gate, again)")
    def post(self, request: Request, round_id: int) -> Response:
        data = _valid(self.InputSerializer, request, AggregationAction.FLOWER_RESULTS)
        if len(json.dumps(data["acted_on"])) > MAX_ACTED_ON_CHARS:
            raise ValidationFailed("acted_on is too large.")
        return _answer(services.flower_round_results(actor=request.user, round_id=round_id, **data))


class FlowerRoundVersionApi(FlowerApi):
    @extend_schema(tags=FLOWER, request={"application/octet-stream": OpenApiTypes.BINARY},
                   responses={200: OpenApiTypes.OBJECT, **errors(400, 404, 409)},
                   summary="The aggregated parameters (safetensors; headers X-Flower-Strategy, X-Acted-On)")
    def post(self, request: Request, round_id: int) -> Response:
        try:
            require_identity_encoding(request)
            body = read_body(request)
            strategy = request.headers.get("X-Flower-Strategy", "").strip()[:100] or "unnamed"
            acted_on = _json_header(request, "X-Acted-On")
        except DomainError as exc:
            record_denial(actor=request.user, action=AggregationAction.FLOWER_VERSION, reason=exc.message,
                          study=request.user.study_id, details={"code": exc.code})
            raise
        outcome = services.flower_round_version(actor=request.user, round_id=round_id, body=body, strategy=strategy,
                                                acted_on=acted_on)
        if not outcome.allowed and outcome.round_id and outcome.nodes and outcome.dropped:
            return _answer(outcome, code="aggregate_again")
        return _answer(outcome)


def _json_header(request: Request, name: str) -> dict[str, Any]:
    raw = request.headers.get(name, "{}")
    if len(raw) > MAX_ACTED_ON_CHARS:
        raise ValidationFailed(f"Header {name} is too large.", code="bad_header")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise ValidationFailed(f"Header {name} must be a JSON object.", code="bad_header")
    return value


def _valid(serializer_class: type[serializers.Serializer], request: Request, action: str) -> dict[str, Any]:
    """Parsed input, or a 400 that is audited like the service's own refusals."""
    serializer = serializer_class(data=request.data)
    if not serializer.is_valid():
        record_denial(actor=request.user, action=action, reason=summarise(serializer.errors),
                      study=getattr(request.user, "study_id", None), details={"code": "validation_failed"})
        raise serializers.ValidationError(serializer.errors)
    return serializer.validated_data


# --- The PI's coordinator tokens ----------------------------------------------------------------------------


class FlowerTokenOutputSerializer(serializers.ModelSerializer):
    study = serializers.IntegerField(source="study_id", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True)
    is_revoked = serializers.BooleanField(read_only=True)

    class Meta:
        model = FlowerCoordinatorToken
        ref_name = "FlowerTokenOutput"
        fields = ("id", "study", "name", "prefix", "created_by", "created_at", "is_revoked", "revoked_at",
                  "revoke_reason")
        read_only_fields = fields


class StudyFlowerTokenListCreateApi(ConsortiumApi):
    reads = UnauditedRead("The study's Flower coordinator credentials, for its PI: names and prefixes, never a "
                          "secret; issuing and revoking them is audited.")

    class InputSerializer(StrictSerializer):
        name = serializers.CharField(max_length=100, allow_blank=True)

        class Meta:
            ref_name = "FlowerTokenCreateInput"

    @extend_schema(tags=FLOWER, responses={200: FlowerTokenOutputSerializer(many=True), **errors(404)},
                   summary="The study's Flower coordinator tokens (its PI)")
    def get(self, request: Request, pk: int) -> Response:
        study = select_or_deny(request.user, AggregationAction.FLOWER_TOKEN_LIST, lambda: _led(request, pk), study=pk)
        tokens = FlowerCoordinatorToken.objects.filter(study=study).select_related("created_by")
        return Response(FlowerTokenOutputSerializer(tokens, many=True).data)

    @extend_schema(tags=FLOWER, request=InputSerializer, responses={201: OpenApiTypes.OBJECT, **errors(400, 404, 409)},
                   summary="Issue the study's Flower coordinator token; the response holds it, once (its PI)")
    def post(self, request: Request, pk: int) -> Response:
        study = select_or_deny(request.user, AggregationAction.FLOWER_TOKEN_CREATE, lambda: study_get(request.user, pk),
                               study=pk)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token, plaintext = services.flower_token_create(actor=request.user, study=study, **serializer.validated_data)
        response = Response({**FlowerTokenOutputSerializer(token).data, "token": plaintext},
                            status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response


def _led(request: Request, pk: int) -> Any:
    study = study_get(request.user, pk)
    if not can_lead(request.user, study):
        raise NotFound("No such study.")
    return study


class FlowerTokenRevokeApi(ConsortiumApi):
    @extend_schema(tags=FLOWER, request=ReasonInputSerializer,
                   responses={200: FlowerTokenOutputSerializer, **errors(400, 404, 409)},
                   summary="Revoke a Flower coordinator token at once and for good (the study's PI)")
    def post(self, request: Request, pk: int) -> Response:
        def select() -> FlowerCoordinatorToken:
            token = FlowerCoordinatorToken.objects.select_related("study").filter(pk=pk).first()
            if token is None or not can_lead(request.user, token.study):
                raise NotFound("No such Flower coordinator token.")
            return token

        token = select_or_deny(request.user, AggregationAction.FLOWER_TOKEN_REVOKE, select)
        serializer = ReasonInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token = services.flower_token_revoke(actor=request.user, token=token, **serializer.validated_data)
        return Response(FlowerTokenOutputSerializer(token).data)


# --- The site admins' SuperNode keys ------------------------------------------------------------------------


class FlowerNodeOutputSerializer(serializers.ModelSerializer):
    site = serializers.IntegerField(source="site_id", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True)
    is_revoked = serializers.BooleanField(read_only=True)

    class Meta:
        model = FlowerNode
        ref_name = "FlowerNodeOutput"
        fields = ("id", "site", "name", "fingerprint", "public_key", "created_by", "created_at", "is_revoked",
                  "revoked_at", "revoke_reason")
        read_only_fields = fields


class SiteFlowerNodeListCreateApi(ConsortiumApi):
    reads = UnauditedRead("A site's Flower SuperNode public keys, for its own admins: public keys, no study data. "
                          "Registering and revoking them is audited.")

    class InputSerializer(StrictSerializer):
        name = serializers.CharField(max_length=100, allow_blank=True)
        public_key = serializers.CharField(max_length=4096, allow_blank=True,
                                           help_text="OpenSSH line (ecdsa-sha2-nistp384 ...) or PEM.")

        class Meta:
            ref_name = "FlowerNodeRegisterInput"

    @extend_schema(tags=FLOWER, responses={200: FlowerNodeOutputSerializer(many=True), **errors(404)},
                   summary="The site's Flower SuperNodes (its admins)")
    def get(self, request: Request, pk: int) -> Response:
        nodes = select_or_deny(request.user, SiteAction.FLOWER_NODE_LIST,
                               lambda: site_flower_nodes(request.user, site_get(request.user, pk)), site=pk)
        return Response(FlowerNodeOutputSerializer(nodes, many=True).data)

    @extend_schema(tags=FLOWER, request=InputSerializer,
                   responses={201: FlowerNodeOutputSerializer, **errors(400, 404, 409)},
                   summary="Register a Flower SuperNode's public key for the site (its admins)")
    def post(self, request: Request, pk: int) -> Response:
        site = select_or_deny(request.user, SiteAction.FLOWER_NODE_REGISTER, lambda: site_get(request.user, pk),
                              site=pk)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        node = flower_node_register(actor=request.user, site=site, **serializer.validated_data)
        return Response(FlowerNodeOutputSerializer(node).data, status=status.HTTP_201_CREATED)


class FlowerNodeRevokeApi(ConsortiumApi):
    @extend_schema(tags=FLOWER, request=ReasonInputSerializer,
                   responses={200: FlowerNodeOutputSerializer, **errors(400, 404, 409)},
                   summary="Revoke a Flower SuperNode's key at once and for good (its site's admins)")
    def post(self, request: Request, pk: int) -> Response:
        node = select_or_deny(request.user, SiteAction.FLOWER_NODE_REVOKE, lambda: flower_node_get(request.user, pk))
        serializer = ReasonInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        node = flower_node_revoke(actor=request.user, node=node, **serializer.validated_data)
        return Response(FlowerNodeOutputSerializer(node).data)
