"""Token API: serializers and the viewset mounted at ``core/tokens``."""

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import GenericViewSet

from core.models import Token
from core.permissions import CanSetTokenKey
from core.services import token_set_key
from events.utils import request_meta


class KeyField(serializers.CharField):
    """A key as a Bearer header can carry it: a JSON string of visible ASCII, no coercion, no trimming.

    Error messages never repeat the submitted value.
    """

    default_error_messages = {
        "invalid": "Not a valid string.",
        "charset": "Only visible ASCII characters (0x21-0x7E) are allowed.",
        "min_length": "Ensure this field has at least {min_length} characters.",
    }

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        kwargs.setdefault("max_length", settings.TOKEN_KEY_MAX_LENGTH)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        if not all("\x21" <= char <= "\x7e" for char in data):
            self.fail("charset")
        # Read at call time, so the policy follows the setting without a restart of the class.
        if len(data) < settings.TOKEN_KEY_MIN_LENGTH:
            self.fail("min_length", min_length=settings.TOKEN_KEY_MIN_LENGTH)
        return data


class TokenSetKeySerializer(serializers.Serializer):
    """Set token's key"""

    key = KeyField()


class TokenViewSet(GenericViewSet):
    """Token Viewset"""

    queryset = Token.objects.all()
    lookup_field = "identifier"
    lookup_value_regex = "[^/]+"

    @extend_schema(
        request=TokenSetKeySerializer,
        responses={
            204: OpenApiResponse(description="Successfully changed key"),
            400: OpenApiResponse(description="Missing key"),
            404: OpenApiResponse(description="Token not found or expired"),
        },
    )
    @action(detail=True, methods=["post"], permission_classes=[CanSetTokenKey])
    def set_key(self, request: Request, identifier: str) -> Response:
        """Set token key. Action is logged as event. `authentik_core.set_token_key` permission
        is required."""
        serializer = TokenSetKeySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token_set_key(
            token_identifier=identifier,
            key=serializer.validated_data["key"],
            actor=request.user,  # type: ignore[arg-type]  # CanSetTokenKey admits only real users
            request_meta=request_meta(request),
        )
        return Response(status=status.HTTP_204_NO_CONTENT, headers={"Cache-Control": "no-store"})
