"""The studies REST API: thin adapters that parse input, call a selector or service, and serialize.

Every lookup goes through a selector scoped to the caller, so another study's or site's object is a
404; services check the rest (403 for a visible object the caller may not act on, 409 for a wrong
state) and audit both outcomes. A lookup refused before any service runs is audited here, through
`select_or_deny`.
"""

from collections.abc import Callable
from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from consortium.api_base import (
    AuditedRead,
    AwareDateTimeField,
    ConsortiumApi,
    IdField,
    OptionalReasonInputSerializer,
    ReasonInputSerializer,
    StrictMixin,
    StrictSerializer,
    errors,
)
from consortium.audit.services import select_or_deny
from sites.selectors import site_get
from studies import services
from studies.audit_actions import StudyAction
from studies.choices import GateAction, RiskLevel
from studies.governance import evaluate
from studies.models import (
    PROTOCOL_FIELDS,
    AgreementSignature,
    AgreementVersion,
    Approval,
    Dpia,
    EthicsApproval,
    Participation,
    Study,
)
from studies.permissions import allowed_actions
from studies.selectors import (
    agreement_version_get,
    participation_get,
    study_agreements,
    study_approvals,
    study_dpia,
    study_get,
    study_list,
    study_participations_for,
)

STUDIES = ["studies"]
GOVERNANCE = ["governance"]
PARTICIPATION = ["participation"]


def _study(request: Request, pk: int, attempt: str) -> Study:
    """The study as the caller sees it; an invisible one is a 404, and the attempt is audited."""
    return select_or_deny(request.user, attempt, lambda: study_get(request.user, pk), study=pk)


def _participation(request: Request, pk: int, attempt: str) -> Participation:
    """The participation as the caller sees it (another site's is a 404); the refusal is audited."""
    return select_or_deny(request.user, attempt, lambda: participation_get(request.user, pk))


# --- Output serializers shared by several endpoints -------------------------------------------------


class StudyOutputSerializer(serializers.ModelSerializer):
    pi = serializers.CharField(source="pi.username", read_only=True)
    status_changed_by = serializers.CharField(source="status_changed_by.username", read_only=True, allow_null=True)
    protocol_sha256 = serializers.CharField(read_only=True, help_text="SHA-256 of the protocol approvals bind to.")

    class Meta:
        model = Study
        fields = ("id", "title", "pi", "status", "status_reason", "status_changed_at", "status_changed_by",
                  *PROTOCOL_FIELDS, "protocol_sha256", "created_at", "updated_at")
        read_only_fields = fields


class ApprovalOutputSerializer(serializers.ModelSerializer):
    decided_by = serializers.CharField(source="decided_by.username", read_only=True)
    agreement_version = serializers.IntegerField(source="agreement.version", read_only=True)

    class Meta:
        model = Approval
        fields = ("id", "role", "decision", "decided_by", "decided_at", "comment", "protocol_sha256",
                  "agreement_version", "agreement_sha256", "voided_at", "void_reason")
        read_only_fields = fields


class StudyDetailOutputSerializer(StudyOutputSerializer):
    """A study with what the caller may do now and every approval decision; both come in the context."""

    allowed_actions = serializers.SerializerMethodField(help_text="What the caller may do now (checked again).")
    approvals = serializers.SerializerMethodField(help_text="Every approval decision, newest first.")

    class Meta(StudyOutputSerializer.Meta):
        fields = (*StudyOutputSerializer.Meta.fields, "allowed_actions", "approvals")
        read_only_fields = fields

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_allowed_actions(self, study: Study) -> list[str]:
        return self.context["allowed_actions"]

    @extend_schema_field(ApprovalOutputSerializer(many=True))
    def get_approvals(self, study: Study) -> list[dict[str, Any]]:
        return ApprovalOutputSerializer(self.context["approvals"], many=True).data


def _study_detail(request: Request, study: Study) -> dict[str, Any]:
    context = {"allowed_actions": sorted(allowed_actions(request.user, study)), "approvals": study_approvals(study)}
    return StudyDetailOutputSerializer(study, context=context).data


class ParticipationOutputSerializer(serializers.ModelSerializer):
    study = serializers.IntegerField(source="study_id", read_only=True)
    site = serializers.IntegerField(source="site_id", read_only=True)
    site_name = serializers.CharField(source="site.name", read_only=True)
    invited_by = serializers.CharField(source="invited_by.username", read_only=True)
    decided_by = serializers.CharField(source="decided_by.username", read_only=True, allow_null=True)

    class Meta:
        model = Participation
        fields = ("id", "study", "site", "site_name", "status", "invited_by", "invited_at", "decided_by",
                  "decided_at", "reason")
        read_only_fields = fields


class SignatureOutputSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="agreement.version", read_only=True)
    site = serializers.IntegerField(source="site_id", read_only=True)
    site_name = serializers.CharField(source="site.name", read_only=True)
    signed_by = serializers.CharField(source="signed_by.username", read_only=True)

    class Meta:
        model = AgreementSignature
        fields = ("id", "version", "site", "site_name", "signed_by", "signed_at", "agreement_sha256")
        read_only_fields = fields


class AgreementOutputSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", read_only=True)
    signatures = SignatureOutputSerializer(many=True, read_only=True)

    class Meta:
        model = AgreementVersion
        fields = ("id", "version", "text", "sha256", "effective_from", "effective_until", "created_by",
                  "created_at", "signatures")
        read_only_fields = fields


class DpiaOutputSerializer(serializers.ModelSerializer):
    study = serializers.IntegerField(source="study_id", read_only=True)
    prepared_by = serializers.CharField(source="prepared_by.username", read_only=True)
    submitted_by = serializers.CharField(source="submitted_by.username", read_only=True, allow_null=True,
                                         help_text="Who last put it under review; another DPO decides on it.")
    decided_by = serializers.CharField(source="decided_by.username", read_only=True, allow_null=True)

    class Meta:
        model = Dpia
        fields = ("study", "status", "risk_level", "summary", "valid_until", "prepared_by", "submitted_by",
                  "submitted_at", "decided_by", "decided_at", "comment", "updated_at")
        read_only_fields = fields


# --- Studies -----------------------------------------------------------------------------------------


class StudyListCreateApi(ConsortiumApi):
    reads = AuditedRead(StudyAction.STUDY_LISTED)

    class InputSerializer(StrictMixin, serializers.ModelSerializer):
        agreement_text = serializers.CharField(required=False, allow_blank=True, default="",
                                               help_text="Text of the data use agreement; attached as v1.")

        class Meta:
            model = Study
            ref_name = "StudyCreateInput"
            fields = ("title", *PROTOCOL_FIELDS, "agreement_text")

    @extend_schema(tags=STUDIES, summary="List the studies the caller may see",
                   responses={200: StudyOutputSerializer(many=True), **errors()})
    def get(self, request: Request) -> Response:
        studies = list(study_list(request.user))
        self.audit_read(studies=sorted(study.pk for study in studies))
        return Response(StudyOutputSerializer(studies, many=True).data)

    @extend_schema(tags=STUDIES, summary="Create a draft study (PI); the creator becomes its lead",
                   request=InputSerializer, responses={201: StudyDetailOutputSerializer, **errors(400)})
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        study = services.study_create(actor=request.user, **serializer.validated_data)
        return Response(_study_detail(request, study), status=status.HTTP_201_CREATED)


class StudyDetailApi(ConsortiumApi):
    reads = AuditedRead(StudyAction.STUDY_VIEWED)

    class InputSerializer(StrictMixin, serializers.ModelSerializer):
        class Meta:
            model = Study
            ref_name = "StudyProtocolUpdateInput"
            fields = ("title", *PROTOCOL_FIELDS)

    @extend_schema(tags=STUDIES, summary="A study, its protocol and approvals (the read is audited)",
                   responses={200: StudyDetailOutputSerializer, **errors(404)})
    def get(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.STUDY_VIEW)
        self.audit_read(study=study, target=study)
        return Response(_study_detail(request, study))

    @extend_schema(tags=STUDIES, summary="Change the title or protocol (PI); a protocol change voids approvals",
                   request=InputSerializer, responses={200: StudyDetailOutputSerializer, **errors(400, 404, 409)})
    def patch(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.STUDY_UPDATE)
        serializer = self.InputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        study = services.study_update_protocol(actor=request.user, study=study, **serializer.validated_data)
        return Response(_study_detail(request, study))


class StudySubmitApi(ConsortiumApi):
    @extend_schema(tags=STUDIES, summary="Submit a draft for approval (PI)", request=None,
                   responses={200: StudyDetailOutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.STUDY_SUBMIT)
        return Response(_study_detail(request, services.study_submit(actor=request.user, study=study)))


class StudyApproveApi(ConsortiumApi):
    class InputSerializer(StrictSerializer):
        comment = serializers.CharField(required=False, allow_blank=True, default="")

        class Meta:
            ref_name = "StudyApproveInput"

    @extend_schema(tags=STUDIES, summary="Give the PI's or a DPO's approval (four eyes)", request=InputSerializer,
                   responses={200: StudyDetailOutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.STUDY_APPROVE)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.study_approve(actor=request.user, study=study, **serializer.validated_data)
        return Response(_study_detail(request, study_get(request.user, pk)))


class StudyRejectApi(ConsortiumApi):
    @extend_schema(tags=STUDIES, summary="Reject the study with a reason (a DPO who is not its PI)",
                   request=ReasonInputSerializer, responses={200: StudyDetailOutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.STUDY_REJECT)
        serializer = ReasonInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.study_reject(actor=request.user, study=study, **serializer.validated_data)
        return Response(_study_detail(request, study_get(request.user, pk)))


class StudyActivateApi(ConsortiumApi):
    @extend_schema(tags=STUDIES, summary="Activate an approved study (PI)", request=None,
                   responses={200: StudyDetailOutputSerializer, **errors(404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.STUDY_ACTIVATE)
        return Response(_study_detail(request, services.study_activate(actor=request.user, study=study)))


class StudySuspendApi(ConsortiumApi):
    class InputSerializer(StrictSerializer):
        justification = serializers.CharField(allow_blank=True,
                                              help_text="Why the study is stopped; recorded and shown.")

        class Meta:
            ref_name = "StudySuspendInput"

    @extend_schema(tags=STUDIES, summary="Emergency stop (PI or DPO); resuming needs both approvals again",
                   request=InputSerializer, responses={200: StudyDetailOutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.STUDY_SUSPEND)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        study = services.study_suspend(actor=request.user, study=study, **serializer.validated_data)
        return Response(_study_detail(request, study))


class StudyCloseApi(ConsortiumApi):
    @extend_schema(tags=STUDIES, summary="Close the study for good (PI)", request=ReasonInputSerializer,
                   responses={200: StudyDetailOutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.STUDY_CLOSE)
        serializer = ReasonInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        study = services.study_close(actor=request.user, study=study, **serializer.validated_data)
        return Response(_study_detail(request, study))


# --- The gate ----------------------------------------------------------------------------------------


class GateQuerySerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=GateAction.choices, default=GateAction.AGGREGATE,
                                     help_text="Defaults to aggregate.")
    site = IdField(required=False, help_text="Only this site's checks (and the study's).")


class StudyGateApi(ConsortiumApi):
    reads = AuditedRead(StudyAction.GATE_VIEWED)
    query_serializer = GateQuerySerializer

    class OutputSerializer(serializers.Serializer):
        study_id = serializers.IntegerField()
        action = serializers.ChoiceField(choices=GateAction.choices)
        moment = serializers.DateTimeField()
        allowed = serializers.BooleanField()
        eligible_site_ids = serializers.ListField(child=serializers.IntegerField())
        checks = serializers.ListField(child=serializers.DictField(), help_text=(
            "Each check: name, passed, reason, site_id, site, expires_at."))

        class Meta:
            ref_name = "GateResult"

    @extend_schema(
        tags=GOVERNANCE, summary="The governance gate's verdict now, with every check and its reason",
        responses={200: OutputSerializer, **errors(400, 404)},
    )
    def get(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.GATE_VIEW)
        action, site = self.query["action"], self.query.get("site")
        result = evaluate(study, action, site=site)
        self.audit_read(study=study, site=site, target=study, action=action)
        return Response(self.OutputSerializer(result.as_dict()).data)


# --- Data use agreements -----------------------------------------------------------------------------


class AgreementListPublishApi(ConsortiumApi):
    reads = AuditedRead(StudyAction.AGREEMENT_LISTED)

    class InputSerializer(StrictSerializer):
        text = serializers.CharField(help_text="The full agreement text; any change is a new version.")

        class Meta:
            ref_name = "AgreementPublishInput"

    @extend_schema(tags=GOVERNANCE, summary="The study's agreement versions, newest first, with signatures",
                   responses={200: AgreementOutputSerializer(many=True), **errors(404)})
    def get(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.AGREEMENT_LIST)
        self.audit_read(study=study, target=study)
        return Response(AgreementOutputSerializer(study_agreements(study), many=True).data)

    @extend_schema(tags=GOVERNANCE, summary="Publish a new agreement version (PI); voids earlier approvals",
                   request=InputSerializer, responses={201: AgreementOutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.AGREEMENT_PUBLISH)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = services.agreement_publish(actor=request.user, study=study, **serializer.validated_data)
        return Response(AgreementOutputSerializer(version).data, status=status.HTTP_201_CREATED)


class AgreementSignApi(ConsortiumApi):
    class InputSerializer(StrictSerializer):
        version = serializers.IntegerField(min_value=1, max_value=2**31 - 1,
                                           help_text="The version the signer read: must be current.")

        class Meta:
            ref_name = "AgreementSignInput"

    @extend_schema(tags=GOVERNANCE, summary="Sign the current agreement version for this site (its admin)",
                   request=InputSerializer, responses={201: SignatureOutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        participation = _participation(request, pk, StudyAction.AGREEMENT_SIGN)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        agreement = select_or_deny(request.user, StudyAction.AGREEMENT_SIGN,
            lambda: agreement_version_get(participation.study, serializer.validated_data["version"]),
            site=participation.site,
        )
        signature = services.agreement_sign(actor=request.user, agreement=agreement, participation=participation)
        return Response(SignatureOutputSerializer(signature).data, status=status.HTTP_201_CREATED)


# --- DPIA --------------------------------------------------------------------------------------------


class DpiaDetailApi(ConsortiumApi):
    reads = AuditedRead(StudyAction.DPIA_VIEWED)

    class InputSerializer(StrictSerializer):
        summary = serializers.CharField(allow_blank=True)
        risk_level = serializers.ChoiceField(choices=RiskLevel.choices)
        valid_until = AwareDateTimeField(allow_null=True, help_text="ISO 8601 with offset; the gate's DPIA expiry.")

        class Meta:
            ref_name = "DpiaSaveInput"

    @extend_schema(tags=GOVERNANCE, summary="The study's DPIA", responses={200: DpiaOutputSerializer, **errors(404)})
    def get(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.DPIA_VIEW)
        dpia = select_or_deny(request.user, StudyAction.DPIA_VIEW, lambda: study_dpia(request.user, study))
        self.audit_read(study=study, target=dpia)
        return Response(DpiaOutputSerializer(dpia).data)

    @extend_schema(tags=GOVERNANCE, summary="Create or edit the DPIA while it is a draft (DPO)",
                   request=InputSerializer, responses={200: DpiaOutputSerializer, **errors(400, 404, 409)})
    def put(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.DPIA_SAVE)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        dpia = services.dpia_save(actor=request.user, study=study, **serializer.validated_data)
        return Response(DpiaOutputSerializer(dpia).data)


class DpiaSubmitApi(ConsortiumApi):
    @extend_schema(tags=GOVERNANCE, summary="Put the draft DPIA under review (DPO)", request=None,
                   responses={200: DpiaOutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.DPIA_SUBMIT)
        return Response(DpiaOutputSerializer(services.dpia_submit(actor=request.user, study=study)).data)


class DpiaApproveApi(ConsortiumApi):
    class InputSerializer(StrictSerializer):
        comment = serializers.CharField(required=False, allow_blank=True, default="")

        class Meta:
            ref_name = "DpiaApproveInput"

    @extend_schema(tags=GOVERNANCE, summary="Approve the DPIA under review (DPO)", request=InputSerializer,
                   responses={200: DpiaOutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.DPIA_APPROVE)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        dpia = services.dpia_approve(actor=request.user, study=study, **serializer.validated_data)
        return Response(DpiaOutputSerializer(dpia).data)


class DpiaRejectApi(ConsortiumApi):
    @extend_schema(tags=GOVERNANCE, summary="Reject the DPIA under review with a reason (DPO)",
                   request=ReasonInputSerializer, responses={200: DpiaOutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.DPIA_REJECT)
        serializer = ReasonInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        dpia = services.dpia_reject(actor=request.user, study=study, **serializer.validated_data)
        return Response(DpiaOutputSerializer(dpia).data)


class DpiaReviseApi(ConsortiumApi):
    @extend_schema(tags=GOVERNANCE, summary="Return the DPIA to draft with a reason (DPO)",
                   request=ReasonInputSerializer, responses={200: DpiaOutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.DPIA_REVISE)
        serializer = ReasonInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        dpia = services.dpia_revise(actor=request.user, study=study, **serializer.validated_data)
        return Response(DpiaOutputSerializer(dpia).data)


# --- Ethics approvals --------------------------------------------------------------------------------


class EthicsRecordApi(ConsortiumApi):
    class InputSerializer(StrictSerializer):
        reference = serializers.CharField(max_length=200)
        valid_from = AwareDateTimeField(help_text="ISO 8601 with offset, e.g. 2026-01-01T00:00:00+01:00.")
        valid_until = AwareDateTimeField(help_text="ISO 8601 with offset; exact to the second.")

        class Meta:
            ref_name = "EthicsRecordInput"

    class OutputSerializer(serializers.ModelSerializer):
        study = serializers.IntegerField(source="study_id", read_only=True)
        site = serializers.IntegerField(source="site_id", read_only=True)
        recorded_by = serializers.CharField(source="recorded_by.username", read_only=True)

        class Meta:
            model = EthicsApproval
            ref_name = "EthicsApprovalOutput"
            fields = ("id", "study", "site", "reference", "valid_from", "valid_until", "recorded_by", "recorded_at")
            read_only_fields = fields

    @extend_schema(tags=GOVERNANCE, summary="Record the site's ethics (IRB) approval (its admin)",
                   request=InputSerializer, responses={201: OutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        participation = _participation(request, pk, StudyAction.ETHICS_RECORD)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        approval = services.ethics_record(actor=request.user, participation=participation,
                                          **serializer.validated_data)
        return Response(self.OutputSerializer(approval).data, status=status.HTTP_201_CREATED)


# --- Participation -----------------------------------------------------------------------------------


class ParticipationListInviteApi(ConsortiumApi):
    reads = AuditedRead(StudyAction.PARTICIPATION_LISTED)

    class InputSerializer(StrictSerializer):
        site = IdField(help_text="Id of the site to invite.")

        class Meta:
            ref_name = "ParticipationInviteInput"

    @extend_schema(tags=PARTICIPATION, summary="The study's participations the caller may see",
                   responses={200: ParticipationOutputSerializer(many=True), **errors(404)})
    def get(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.PARTICIPATION_LIST)
        participations = list(study_participations_for(request.user, study))
        self.audit_read(study=study, target=study, sites=sorted(row.site_id for row in participations))
        return Response(ParticipationOutputSerializer(participations, many=True).data)

    @extend_schema(tags=PARTICIPATION, summary="Invite a site to the study (PI)", request=InputSerializer,
                   responses={201: ParticipationOutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        study = _study(request, pk, StudyAction.PARTICIPATION_INVITE)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        site_id = serializer.validated_data["site"]
        site = select_or_deny(request.user, StudyAction.PARTICIPATION_INVITE, lambda: site_get(request.user, site_id),
                              study=study)
        participation = services.participation_invite(actor=request.user, study=study, site=site)
        return Response(ParticipationOutputSerializer(participation).data, status=status.HTTP_201_CREATED)


class ParticipationDetailApi(ConsortiumApi):
    reads = AuditedRead(StudyAction.PARTICIPATION_VIEWED)

    @extend_schema(tags=PARTICIPATION, summary="One participation (its site's admins, the PI and overseers)",
                   responses={200: ParticipationOutputSerializer, **errors(404)})
    def get(self, request: Request, pk: int) -> Response:
        participation = _participation(request, pk, StudyAction.PARTICIPATION_VIEW)
        self.audit_read(study=participation.study_id, site=participation.site_id, target=participation)
        return Response(ParticipationOutputSerializer(participation).data)


def _participation_step(request: Request, pk: int, attempt: str, service: Callable[..., Participation],
                        serializer_class: type[serializers.Serializer]) -> Response:
    """Parse the reason, call the participation service, and answer with the participation."""
    participation = _participation(request, pk, attempt)
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    participation = service(actor=request.user, participation=participation, **serializer.validated_data)
    return Response(ParticipationOutputSerializer(participation).data)


class ParticipationGrantApi(ConsortiumApi):
    @extend_schema(tags=PARTICIPATION, summary="Accept the invitation for this site (its admin)",
                   request=OptionalReasonInputSerializer,
                   responses={200: ParticipationOutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        return _participation_step(request, pk, StudyAction.PARTICIPATION_GRANT, services.participation_grant,
                                   OptionalReasonInputSerializer)


class ParticipationSuspendApi(ConsortiumApi):
    @extend_schema(tags=PARTICIPATION, summary="Pause this site's participation with a reason (its admin)",
                   request=ReasonInputSerializer,
                   responses={200: ParticipationOutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        return _participation_step(request, pk, StudyAction.PARTICIPATION_SUSPEND, services.participation_suspend,
                                   ReasonInputSerializer)


class ParticipationResumeApi(ConsortiumApi):
    @extend_schema(tags=PARTICIPATION, summary="Resume a suspended participation (its admin)",
                   request=OptionalReasonInputSerializer,
                   responses={200: ParticipationOutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        return _participation_step(request, pk, StudyAction.PARTICIPATION_RESUME, services.participation_resume,
                                   OptionalReasonInputSerializer)


class ParticipationRevokeApi(ConsortiumApi):
    @extend_schema(tags=PARTICIPATION, summary="Revoke at once and for good, with a reason (its admin)",
                   request=ReasonInputSerializer,
                   responses={200: ParticipationOutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        return _participation_step(request, pk, StudyAction.PARTICIPATION_REVOKE, services.participation_revoke,
                                   ReasonInputSerializer)


class ParticipationWithdrawApi(ConsortiumApi):
    @extend_schema(tags=PARTICIPATION, summary="Remove the site from the study, with a reason (PI)",
                   request=ReasonInputSerializer,
                   responses={200: ParticipationOutputSerializer, **errors(400, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        return _participation_step(request, pk, StudyAction.PARTICIPATION_WITHDRAW, services.participation_withdraw,
                                   ReasonInputSerializer)
