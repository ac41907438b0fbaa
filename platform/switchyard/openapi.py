"""The OpenAPI schema says what the API really answers, errors included.

drf-spectacular documents only the success answer of each operation and names a
component after its serializer class alone: every view's nested ``InputSerializer``
became one component ``Input``, so the schema described the job submission with
the batch's fields. Here components are named after the view that nests them, and
each operation lists the errors ``docs/api.md`` promises, in the one error shape
of ``switchyard.api_errors``. ``tests/test_fuzz_api.py`` holds the API to it.
"""
from __future__ import annotations

from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers

#: Why each error status is answered (docs/api.md, "Errors").
ERRORS = {
    "400": "invalid request: `detail` says why, `errors` names each offending field",
    "401": "no token, a wrong or revoked token, or an inactive tenant",
    "404": "not yours, or does not exist",
    "409": "not possible in the record's current state, or an Idempotency-Key reused for "
           "another request",
    "415": "the body is not of the accepted media type",
    "429": "over the tenant's quota; `Retry-After` says when to come back",
}


class ErrorSerializer(serializers.Serializer):
    """Every error answer of the API."""

    detail = serializers.CharField()
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()),
                                   required=False,
                                   help_text="messages by dotted field path (400 only)")

    class Meta:
        ref_name = "Error"


class SwitchyardAutoSchema(AutoSchema):
    def get_serializer_name(self, serializer, direction):
        # `JobListSubmitApi.InputSerializer` -> `JobListSubmitApiInput`: unique per view.
        qualname = type(serializer).__qualname__
        if "." in qualname:
            return qualname.replace(".", "")
        return super().get_serializer_name(serializer, direction)

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for code in self._error_statuses():
            if code not in responses:
                responses[code] = self._get_response_for_code(ErrorSerializer, code,
                                                              direction=direction)
                responses[code]["description"] = ERRORS[code]
        return responses

    def _error_statuses(self) -> list[str]:
        if not self.get_auth():
            return []
        codes = ["400", "401"]
        if "{" in self.path:
            codes.append("404")
        if self.method == "POST":
            codes.append("409")
            if self.get_request_serializer() is not None:
                codes += ["415", "429"]
        return codes
