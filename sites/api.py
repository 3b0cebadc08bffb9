"""The sites REST API: the hospital sites the caller may see, and each site's agent tokens (its admins)."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from consortium.api_base import ConsortiumApi, ReasonInputSerializer, StrictSerializer, UnauditedRead, errors
from consortium.audit.services import select_or_deny
from sites.audit_actions import SiteAction
from sites.models import AgentToken, Site
from sites.selectors import agent_token_get, site_agent_tokens, site_get, site_list
from sites.services import agent_token_create, agent_token_revoke

AGENT_TOKENS = ["agent tokens"]


class SiteListApi(ConsortiumApi):
    reads = UnauditedRead("The consortium's directory of sites (names, codes, places): no study data.")

    class OutputSerializer(serializers.ModelSerializer):
        class Meta:
            model = Site
            ref_name = "SiteOutput"
            fields = ("id", "name", "code", "city", "country", "timezone")
            read_only_fields = fields

    @extend_schema(tags=["sites"], summary="The sites the caller may see (all, for PIs and overseers)",
                   responses={200: OutputSerializer(many=True), **errors()})
    def get(self, request: Request) -> Response:
        return Response(self.OutputSerializer(site_list(request.user), many=True).data)


class AgentTokenOutputSerializer(serializers.ModelSerializer):
    """A token as its site's admins see it: never the secret (nothing stored could show it)."""

    site = serializers.IntegerField(source="site_id", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True)
    revoked_by = serializers.CharField(source="revoked_by.username", read_only=True, allow_null=True)
    is_revoked = serializers.BooleanField(read_only=True)

    class Meta:
        model = AgentToken
        ref_name = "AgentTokenOutput"
        fields = ("id", "site", "name", "prefix", "created_by", "created_at", "last_seen_at", "is_revoked",
                  "revoked_at", "revoked_by", "revoke_reason")
        read_only_fields = fields


class AgentTokenCreatedSerializer(AgentTokenOutputSerializer):
    token = serializers.CharField(read_only=True, help_text="The token itself (cst_<prefix>_<secret>). "
                                  "Returned only in this response: only its hash is stored.")

    class Meta(AgentTokenOutputSerializer.Meta):
        ref_name = "AgentTokenCreatedOutput"
        fields = (*AgentTokenOutputSerializer.Meta.fields, "token")
        read_only_fields = fields


class SiteAgentTokenListCreateApi(ConsortiumApi):
    reads = UnauditedRead("A site's agent credentials, for its own admins: names and prefixes, never a secret; "
                          "no study data. Creating and revoking them is audited.")

    class InputSerializer(StrictSerializer):
        # Blank passes parsing on purpose: the service says a name is needed, and audits the refusal.
        name = serializers.CharField(max_length=100, allow_blank=True,
                                     help_text="Where the agent runs, e.g. 'GPU box in radiology'.")

        class Meta:
            ref_name = "AgentTokenCreateInput"

    @extend_schema(tags=AGENT_TOKENS, summary="The site's agent tokens, newest first (its admins)",
                   responses={200: AgentTokenOutputSerializer(many=True), **errors(404)})
    def get(self, request: Request, pk: int) -> Response:
        tokens = select_or_deny(request.user, SiteAction.AGENT_TOKEN_LIST,
                                lambda: site_agent_tokens(request.user, site_get(request.user, pk)), site=pk)
        return Response(AgentTokenOutputSerializer(tokens, many=True).data)

    @extend_schema(tags=AGENT_TOKENS, summary="Create an agent token; the response holds it, once (its admins)",
                   request=InputSerializer, responses={201: AgentTokenCreatedSerializer, **errors(400, 404)})
    def post(self, request: Request, pk: int) -> Response:
        site = select_or_deny(request.user, SiteAction.AGENT_TOKEN_CREATE, lambda: site_get(request.user, pk), site=pk)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token, plaintext = agent_token_create(actor=request.user, site=site, **serializer.validated_data)
        token.token = plaintext
        response = Response(AgentTokenCreatedSerializer(token).data, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response


class AgentTokenRevokeApi(ConsortiumApi):
    @extend_schema(tags=AGENT_TOKENS, summary="Revoke an agent token at once and for good, with a reason "
                   "(its site's admins)", request=ReasonInputSerializer,
                   responses={200: AgentTokenOutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        token = select_or_deny(request.user, SiteAction.AGENT_TOKEN_REVOKE, lambda: agent_token_get(request.user, pk))
        serializer = ReasonInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token = agent_token_revoke(actor=request.user, token=token, **serializer.validated_data)
        return Response(AgentTokenOutputSerializer(token).data)
