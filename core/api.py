"""Token API: serializers and the viewset mounted at ``core/tokens``."""

import base64
import uuid
from collections.abc import Iterable
from html import escape
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.db.models import Prefetch, QuerySet
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import exceptions, serializers, status
from rest_framework.decorators import action
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.permissions import SAFE_METHODS, BasePermission, IsAuthenticated
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import ModelViewSet

from core.filters import SingleValuedQueryParameters, StableOrderingFilter, TokenFilter, TokenSearchFilter
from core.models import Token, TokenIntents, User
from core.permissions import CanSetTokenKey
from core.rotation import MAX_GRACE_SECONDS, RotationForbidden, token_rotate
from core.selectors import objects_using, tokens_visible_to, user_has_token_perm_on_pk
from core.services import (
    API_INTENTS,
    KeyInUse,
    token_create,
    token_delete,
    token_set_key,
    token_update,
    token_view_key,
)
from core.usage import MAX_ALLOWED_IPS, normalize_cidr
from events.utils import request_meta
from tokens_service.throttling import KeyCollisionThrottle

# Groups here are Django's (integer keys); authentik's have uuids. A uuid5 of the integer key gives
# every group a stable uuid for the ``groups``/``groups_obj`` fields authentik's clients expect.
GROUP_UUID_NAMESPACE = uuid.UUID("5f0c1a52-3d4e-4c1b-9a57-6f4c2b8e1d90")
_AVATAR_COLOURS = ("#3949ab", "#00897b", "#6d4c41", "#8e24aa", "#c62828", "#2e7d32", "#ef6c00", "#546e7a")


def group_uuid(group: Group) -> uuid.UUID:
    return uuid.uuid5(GROUP_UUID_NAMESPACE, str(group.pk))


def avatar_data_uri(user: User) -> str:
    """An SVG of the user's initials on a colour derived from the user's uuid, as a ``data:`` URI.

    Made locally: no request to a gravatar-like service, which would tell a third party who looks at
    which user. Only letters and digits become initials, and they are XML-escaped anyway.
    """
    words = (user.name or user.username).split()
    initials = "".join(word[0] for word in words[:2] if word[0].isalnum()).upper() or "?"
    colour = _AVATAR_COLOURS[user.uuid.int % len(_AVATAR_COLOURS)]
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">'
        f'<rect width="64" height="64" fill="{colour}"/>'
        '<text x="32" y="32" dy=".35em" text-anchor="middle" font-family="sans-serif" font-size="26" '
        f'fill="#ffffff">{escape(initials)}</text></svg>'
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode("ascii")


class PartialGroupSerializer(serializers.Serializer):
    """Partial Group Serializer, does not include child relations."""

    pk = serializers.UUIDField(read_only=True)
    num_pk = serializers.IntegerField(read_only=True, help_text="Get a numerical, int32 ID for the group")
    name = serializers.CharField()
    is_superuser = serializers.BooleanField(required=False, help_text="Users added to this group will be superusers.")
    attributes = serializers.DictField(required=False)

    def to_representation(self, instance: Group) -> dict[str, Any]:
        # Django groups carry no superuser flag or attributes: report authentik's neutral values.
        view = {"pk": group_uuid(instance), "num_pk": instance.pk, "name": instance.name}
        return super().to_representation({**view, "is_superuser": False, "attributes": {}})


class RoleSerializer(serializers.Serializer):
    """Role serializer"""

    pk = serializers.UUIDField(read_only=True)
    name = serializers.CharField()


class GroupUuidsField(serializers.ListField):
    """The uuids (see ``group_uuid``) of a user's groups; reads the prefetched groups."""

    child = serializers.UUIDField()

    def to_representation(self, data: Any) -> list[str]:
        return [str(group_uuid(group)) for group in data.all()]


class UserSerializer(serializers.ModelSerializer):
    """User Serializer"""

    # Output only (as ``user_obj``). Fields that are not read-only keep authentik's required lists.
    groups = GroupUuidsField(required=False)
    groups_obj = PartialGroupSerializer(source="groups", many=True, read_only=True, allow_null=True)
    # There is no role model: authentik's clients require the field, an empty list is the truth.
    roles = serializers.ListField(child=serializers.UUIDField(), required=False)
    roles_obj = RoleSerializer(many=True, read_only=True, allow_null=True, default=list)
    email = serializers.EmailField(required=False, max_length=254, label="Email address")
    attributes = serializers.DictField(required=False)
    avatar = serializers.SerializerMethodField(help_text="User's avatar, either a http/https URL or a data URI")
    uid = serializers.CharField(read_only=True)

    class Meta:
        model = User
        fields = [
            "pk",
            "username",
            "name",
            "is_active",
            "last_login",
            "date_joined",
            "is_superuser",
            "groups",
            "groups_obj",
            "roles",
            "roles_obj",
            "email",
            "avatar",
            "attributes",
            "uid",
            "path",
            "type",
            "uuid",
            "password_change_date",
            "last_updated",
        ]
        read_only_fields = ["date_joined", "is_superuser", "uuid", "password_change_date", "last_updated"]
        extra_kwargs = {"name": {"required": True, "allow_blank": True}, "username": {"validators": []}}

    @extend_schema_field(OpenApiTypes.STR)
    def get_avatar(self, user: User) -> str:
        return avatar_data_uri(user)


# The pattern is the character set and shape; octet and prefix ranges and host bits are checked by the server.
@extend_schema_field({"type": "string", "maxLength": 64, "pattern": r"^[0-9a-fA-F:.]+(/[0-9]{1,3})?$"})
class CIDRField(serializers.CharField):
    """One network of an ``allowed_ips`` list: a CIDR or a single address, stored normalized."""

    default_error_messages = {"invalid": "Not a valid string."}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 64)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        if len(data) > 64:
            self.fail("max_length", max_length=64)
        try:
            return normalize_cidr(data)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None


class TokenSerializer(serializers.ModelSerializer):
    """Token Serializer"""

    # No UniqueValidator on identifier or managed: the service reports a clash from the database's
    # unique constraint, which also catches a concurrent insert that a pre-check would miss.
    identifier = serializers.SlugField(max_length=255)
    managed = serializers.CharField(
        allow_null=True,
        required=False,
        # The unique index on managed cannot hold a row over ~2700 bytes in PostgreSQL: a longer value
        # was a database error (503). 255 characters (4 bytes each at most) is far above real values.
        max_length=255,
        label="Managed by authentik",
        help_text=Token._meta.get_field("managed").help_text,
    )
    user = serializers.PrimaryKeyRelatedField(queryset=User.objects.all(), required=False)
    user_obj = UserSerializer(source="user", read_only=True)
    intent = serializers.ChoiceField(choices=TokenIntents.choices, required=False)
    description = serializers.CharField(required=False, allow_blank=True)
    expires = serializers.DateTimeField(required=False, allow_null=True)
    expiring = serializers.BooleanField(required=False)
    # Additions to authentik's token (see ADDITIVE_FIELDS): optional to send, and ignored by its clients.
    last_used = serializers.DateTimeField(
        read_only=True, allow_null=True, help_text="Last authenticated use, recorded at most once a minute."
    )
    last_used_ip = serializers.IPAddressField(
        read_only=True, allow_null=True, help_text="Client address of the use recorded in last_used."
    )
    allowed_ips = serializers.ListField(
        child=CIDRField(),
        allow_null=True,
        allow_empty=True,
        required=False,
        max_length=MAX_ALLOWED_IPS,
        help_text=(
            "IPv4/IPv6 networks (CIDR) or addresses from which the token may authenticate; null or empty: any address."
        ),
    )

    # Fields authentik's token schema does not have. They are never in the schema's required lists, so
    # the required lists stay authentik's (TokenSerializerSchema below).
    ADDITIVE_FIELDS = ("last_used", "last_used_ip", "allowed_ips")

    class Meta:
        model = Token
        fields = [
            "pk",
            "managed",
            "identifier",
            "intent",
            "user",
            "user_obj",
            "description",
            "expires",
            "expiring",
            "last_used",
            "last_used_ip",
            "allowed_ips",
        ]

    # The JSON type each writable member must have. DRF would turn 5 into "5", "true" into True and "3"
    # into a user pk; a body that does not match the schema is a 400 instead (found by schemathesis).
    # null is left to the field (allowed for managed and expires only).
    JSON_TYPES: dict[str, tuple[type, str]] = {
        "identifier": (str, "Not a valid string."),
        "managed": (str, "Not a valid string."),
        "intent": (str, "Not a valid string."),
        "description": (str, "Not a valid string."),
        "expires": (str, "Not a valid string."),
        "expiring": (bool, "Must be a valid boolean."),
        "user": (int, "Incorrect type. Expected pk value (an integer)."),
    }

    NOT_YOURS = "You can only create tokens for yourself."

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        request = self.context.get("request")
        caller = getattr(request, "user", None)
        if isinstance(caller, User) and not caller.is_superuser:
            # A non-superuser may name only itself (or, on update, the current owner): any other pk,
            # existing or not, gets the same error, so the field cannot be used to probe for users.
            allowed = {caller.pk}
            if isinstance(self.instance, Token):
                allowed.add(self.instance.user_id)
            user_field = fields["user"]
            user_field.queryset = User.objects.filter(pk__in=allowed)  # type: ignore[attr-defined]
            user_field.error_messages["does_not_exist"] = (
                self.NOT_YOURS if self.instance is None else "A token's owner cannot be changed."
            )
        return fields

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            errors = {
                name: [message]
                for name, (expected, message) in self.JSON_TYPES.items()
                # type() rather than isinstance(): True is an int, and must not pass for a pk.
                if data.get(name) is not None and type(data[name]) is not expected
            }
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)

    def validate_allowed_ips(self, allowed_ips: list[str] | None) -> list[str] | None:
        # One representation for "no restriction" (null), and each network once, in the order given.
        if not allowed_ips:
            return None
        return list(dict.fromkeys(allowed_ips))

    def validate_intent(self, intent: str) -> str:
        # Creation only; how an existing token's intent may change is token_update's rule.
        if self.instance is None and intent not in API_INTENTS:
            raise serializers.ValidationError("Only api and app_password tokens can be created through the API.")
        return intent


class TokenViewSerializer(serializers.Serializer):
    """Show token's current key"""

    key = serializers.CharField(read_only=True)


class UsedByActionField(serializers.ChoiceField):
    """authentik's ``UsedByActionEnum``: what deleting the queried object does to the referencing one."""

    ACTIONS = ("cascade", "cascade_many", "set_null", "set_default", "left_dangling")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=[(value, value) for value in self.ACTIONS], **kwargs)


class UsedBySerializer(serializers.Serializer):
    """A list of all objects referencing the queried object"""

    app = serializers.CharField()
    model_name = serializers.CharField()
    pk = serializers.CharField()
    name = serializers.CharField()
    action = UsedByActionField()


# The schema states the charset rule, so that clients (and schema-driven tests) know a key with a space
# or a non-ASCII letter is a 400. minLength stays the wire minimum: TOKEN_KEY_MIN_LENGTH is a deployment
# policy on top of it.
@extend_schema_field(
    {"type": "string", "minLength": 1, "maxLength": settings.TOKEN_KEY_MAX_LENGTH, "pattern": r"^[\x21-\x7e]+$"}
)
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

    @classmethod
    def validated_key(cls, data: Any) -> str:
        """The key in ``data``, validated exactly as ``cls(data=data).is_valid(raise_exception=True)`` does.

        A valid key is checked by one shared ``KeyField`` (a field keeps no state while it validates):
        building a serializer deep-copies its fields, which cost set_key about as much CPU as its whole
        database write. Anything else goes through the serializer, so error bodies stay exactly DRF's.
        """
        if isinstance(data, dict) and isinstance(data.get("key"), str):
            try:
                return _KEY_FIELD.run_validation(data["key"])
            except serializers.ValidationError:
                pass
        serializer = cls(data=data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data["key"]


_KEY_FIELD = KeyField()


class TokenSerializerSchema(OpenApiSerializerExtension):
    """The token schema as drf-spectacular makes it, minus the additive fields in the required lists.

    Read-only fields are listed as required by default; keeping the additions optional leaves every
    required list exactly authentik's, so schema-driven clients and comparisons see only new properties.
    """

    target_class = TokenSerializer

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema: dict[str, Any] = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        if "required" in schema:
            schema["required"] = [name for name in schema["required"] if name not in TokenSerializer.ADDITIVE_FIELDS]
        return schema


class TokenRotateSerializer(serializers.Serializer):
    """Rotate token's key"""

    grace_seconds = serializers.IntegerField(
        min_value=0,
        max_value=MAX_GRACE_SECONDS,
        required=False,
        default=0,
        help_text="Seconds during which the previous key keeps authenticating (default 0: it stops at once).",
    )

    def to_internal_value(self, data: Any) -> Any:
        # No coercion: "60", 60.0 or true are not integers (DRF would accept them).
        if isinstance(data, dict) and "grace_seconds" in data and type(data["grace_seconds"]) is not int:
            raise serializers.ValidationError({"grace_seconds": ["A valid integer is required."]})
        return super().to_internal_value(data)


class TokenRotatedSerializer(serializers.Serializer):
    """The new key, shown once"""

    key = serializers.CharField(read_only=True)
    previous_key_expires = serializers.DateTimeField(
        read_only=True, help_text="When the previous key stops (or stopped) authenticating."
    )


class JSONFirstNegotiation(DefaultContentNegotiation):
    """DRF's content negotiation, with its usual outcome decided without parsing anything.

    With no ``?format=``, and no ``Accept`` header or one of ``*/*`` and ``application/json`` (what API
    clients send), the JSON renderer answers, as DRF would decide; anything else is negotiated by DRF.
    DRF's own parsing of the header costs about 3% of a set_key's CPU (it raises and catches an
    ``AttributeError`` on every request).
    """

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderers = list(renderers)
        meta = request.META
        first = renderers[0] if renderers else None
        if (
            first is not None
            and first.media_type == "application/json"
            and format_suffix is None
            and not meta.get("QUERY_STRING")
            and meta.get("HTTP_ACCEPT", "*/*") in ("*/*", "application/json")
        ):
            return first, first.media_type
        return super().select_renderer(request, renderers, format_suffix)


class TokenObjectPermission(BasePermission):
    """Who may write to a token the caller can see (the queryset already hides the others: 404).

    Reads need nothing more than visibility. ``PUT``/``PATCH`` need ownership or
    ``authentik_core.change_token``, ``DELETE`` ownership or ``authentik_core.delete_token``, held
    globally or as an object permission on the token (user or group), as authentik's owner-or-permission
    rule. Active superusers hold every permission.
    """

    codenames = {"PUT": "change_token", "PATCH": "change_token", "DELETE": "delete_token"}

    def has_object_permission(self, request: Request, view: Any, obj: Token) -> bool:
        if request.method in SAFE_METHODS:
            return True
        user = request.user
        if not isinstance(user, User):
            return False
        if obj.user_id == user.pk:
            return True
        codename = self.codenames.get(request.method or "")
        # Up front, so an unpermitted caller gets 403 before its body is judged; the deciding check is
        # the service's, on the locked row.
        return codename is not None and user_has_token_perm_on_pk(user, codename, obj.pk)


class TokenViewSet(ModelViewSet):
    """Token Viewset"""

    queryset = Token.objects.all()
    serializer_class = TokenSerializer
    lookup_field = "identifier"
    # The identifier syntax (docs/contract.md, "Data model"): anything else is 404 at the router, before any
    # query, so a NUL or other junk in the path never reaches the database (PostgreSQL rejects NUL).
    lookup_value_regex = "[-a-zA-Z0-9_]+"
    permission_classes = [IsAuthenticated, TokenObjectPermission]
    filter_backends = [SingleValuedQueryParameters, DjangoFilterBackend, TokenSearchFilter, StableOrderingFilter]
    filterset_class = TokenFilter
    search_fields = ["identifier", "intent", "user__username", "description"]
    ordering = ["identifier", "expires"]
    ordering_fields = [
        "identifier",
        "intent",
        "user__username",
        "description",
        "expires",
        "expiring",
        "managed",
        "last_used",
    ]

    def get_queryset(self) -> QuerySet[Token]:
        user = self.request.user
        if not isinstance(user, User):
            # Schema generation inspects the view without a caller.
            return Token.objects.none()
        return tokens_visible_to(user).prefetch_related(Prefetch("user__groups", queryset=Group.objects.order_by("pk")))

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        caller: User = request.user  # type: ignore[assignment]  # IsAuthenticated admits only real users
        owner: User = data.get("user", caller)
        if owner.pk != caller.pk and not caller.is_superuser:  # pragma: no cover - the field refuses it first
            raise serializers.ValidationError({"user": [self.serializer_class.NOT_YOURS]})
        collisions = KeyCollisionThrottle()
        collisions.check(request)
        try:
            token = self._create(caller, owner, data, request)
        except KeyInUse:
            collisions.record(request)
            raise
        return Response(self.get_serializer(token).data, status=status.HTTP_201_CREATED)

    def _create(self, caller: User, owner: User, data: dict[str, Any], request: Request) -> Token:
        return token_create(
            actor=caller,
            user=owner,
            identifier=data["identifier"],
            request_meta=request_meta(request),
            intent=data.get("intent", TokenIntents.API),
            description=data.get("description", ""),
            expires=data.get("expires"),
            expiring=data.get("expiring", True),
            managed=data.get("managed"),
            allowed_ips=data.get("allowed_ips"),
            # The owner can always read the key of a token made through the API, whoever created it.
            owner_permissions=("view_token_key",),
        )

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        # get_object: 404 if invisible, 403 without the right (up front, before looking at the body).
        token = self.get_object()
        serializer = self.get_serializer(token, data=request.data, partial=kwargs.get("partial", False))
        serializer.is_valid(raise_exception=True)
        # The body is read and valid: the service locks the row and decides again, on that row.
        updated = token_update(
            token_pk=token.pk,
            changes=serializer.validated_data,
            actor=request.user,  # type: ignore[arg-type]
            request_meta=request_meta(request),
            authorize=True,
        )
        # The owner cannot change, so the owner loaded (with its groups) for the permission check is current.
        updated.user = token.user
        return Response(self.get_serializer(updated).data)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        token = self.get_object()
        token_delete(
            token_pk=token.pk,
            actor=request.user,  # type: ignore[arg-type]
            request_meta=request_meta(request),
            authorize=True,  # decided again on the locked row
        )
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        responses={
            200: TokenViewSerializer,
            404: OpenApiResponse(description="Token not found or expired"),
        },
    )
    @action(detail=True, methods=["get"], permission_classes=[IsAuthenticated], filter_backends=[])
    def view_key(self, request: Request, identifier: str) -> Response:
        """Return token key and log access"""
        # No up-front check (there is no body to wait for): the service locks the row the identifier
        # names and decides on it, so a rename cannot hand out another token's key, and a caller without
        # the permission gets 403 whether or not the identifier exists.
        key = token_view_key(
            token_identifier=identifier,
            actor=request.user,  # type: ignore[arg-type]  # CanViewTokenKey admits only real users
            request_meta=request_meta(request),
        )
        return Response(TokenViewSerializer({"key": key}).data, headers={"Cache-Control": "no-store"})

    @extend_schema(responses={200: UsedBySerializer(many=True)})
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def used_by(self, request: Request, identifier: str) -> Response:
        """Get a list of all objects that use this object"""
        token = self.get_object()
        return Response(UsedBySerializer(objects_using(token), many=True).data)

    @extend_schema(
        request=TokenSetKeySerializer,
        responses={
            204: OpenApiResponse(description="Successfully changed key"),
            400: OpenApiResponse(description="Missing key"),
            404: OpenApiResponse(description="Token not found or expired"),
        },
    )
    @action(
        detail=True,
        methods=["post"],
        permission_classes=[CanSetTokenKey],
        content_negotiation_class=JSONFirstNegotiation,
    )
    def set_key(self, request: Request, identifier: str) -> Response:
        """Set token key. Action is logged as event. `authentik_core.set_token_key` permission
        is required."""
        collisions = KeyCollisionThrottle()
        collisions.check(request)
        # The body is read and validated before the service takes the row lock (a slow body holds no
        # lock), and the permission is decided by the service on the locked row, after the body.
        key = TokenSetKeySerializer.validated_key(request.data)
        try:
            token_set_key(
                token_identifier=identifier,
                key=key,
                actor=request.user,  # type: ignore[arg-type]  # CanSetTokenKey admits only real users
                request_meta=request_meta(request),
            )
        except KeyInUse:
            collisions.record(request)
            raise
        return Response(status=status.HTTP_204_NO_CONTENT, headers={"Cache-Control": "no-store"})

    @extend_schema(
        request=TokenRotateSerializer,
        responses={
            200: TokenRotatedSerializer,
            404: OpenApiResponse(description="Token not found or expired"),
        },
    )
    @action(
        detail=True,
        methods=["post"],
        permission_classes=[IsAuthenticated],
        filter_backends=[],
        content_negotiation_class=JSONFirstNegotiation,
    )
    def rotate(self, request: Request, identifier: str) -> Response:
        """Replace token key with a generated one, returned once; the previous key may stay valid for
        `grace_seconds`. Action is logged as event. `authentik_core.set_token_key` permission is required,
        unless the caller authenticates with this token itself."""
        # An empty body means all defaults. The body is validated before the token is looked at; who may
        # rotate is decided by the service on the locked row (403 whether or not the token exists).
        body = TokenRotateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        authenticated = request.auth if isinstance(request.auth, Token) else None
        try:
            rotation = token_rotate(
                token_identifier=identifier,
                actor=request.user,  # type: ignore[arg-type]  # IsAuthenticated admits only real users
                request_meta=request_meta(request),
                grace_seconds=body.validated_data["grace_seconds"],
                authenticated_token=authenticated,
            )
        except RotationForbidden:
            raise exceptions.PermissionDenied from None
        answer = TokenRotatedSerializer({"key": rotation.key, "previous_key_expires": rotation.previous_key_expires})
        return Response(answer.data, headers={"Cache-Control": "no-store"})
