"""Serializers of the token API (``core.api``): the wire shapes of tokens, users, keys and rotation."""

from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.avatars import avatar_data_uri, group_uuid
from core.models import Token, TokenIntents, User
from core.rotation import MAX_GRACE_SECONDS
from core.services import API_INTENTS
from core.usage import MAX_ALLOWED_IPS, normalize_cidr
from core.validators import validate_key


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

    The rule is ``core.validators.validate_key``'s; error messages never repeat the submitted value.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        kwargs.setdefault("max_length", settings.TOKEN_KEY_MAX_LENGTH)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        try:
            return validate_key(data)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages, code=exc.code) from None


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
