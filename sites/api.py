"""The sites REST API: the hospital sites the caller may see."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from consortium.api_base import errors
from sites.models import Site
from sites.selectors import site_list


class SiteListApi(APIView):
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
