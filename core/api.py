"""The token viewset mounted at ``core/tokens``; its serializers are in ``core.serializers``."""

from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db.models import Prefetch, QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.decorators import action
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.viewsets import ModelViewSet

from core.filters import (
    QueriedFilterBackend,
    SingleValuedQueryParameters,
    StableOrderingFilter,
    TokenFilter,
    TokenSearchFilter,
    search_part,
)
from core.listing import token_list_page
from core.models import Token, TokenIntents, User
from core.permissions import CanSetTokenKey, TokenObjectPermission, caller
from core.rotation import RotationForbidden, token_rotate
from core.selectors import objects_using, tokens_visible_to
from core.serializers import (
    TokenRotatedSerializer,
    TokenRotateSerializer,
    TokenSerializer,
    TokenSetKeySerializer,
    TokenViewSerializer,
    UsedBySerializer,
)
from core.services import (
    KeyInUse,
    token_create,
    token_delete,
    token_set_key,
    token_update,
    token_view_key,
)
from tokens_service.db import list_page_plans
from tokens_service.pagination import KeyedPagination, KeyedPaginator, Pagination
from tokens_service.request_meta import request_meta
from tokens_service.throttling import KeyCollisionThrottle, SlidingWindowThrottle


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


class TokenListPaginator(KeyedPaginator):
    """``KeyedPaginator`` of the token list: core migration 0009's index holds the default ordering's fields
    (identifier, expires) with the key, so a page in that order reads its keys from the index alone."""

    indexed_order_fields = frozenset({"identifier", "expires", "pk"})


class TokenListPagination(KeyedPagination):
    django_paginator_class = TokenListPaginator


class TokenViewSet(ModelViewSet):
    """Token Viewset"""

    queryset = Token.objects.all()
    serializer_class = TokenSerializer
    lookup_field = "identifier"
    # The identifier syntax (docs/contract.md, "Data model"): anything else is 404 at the router, before any
    # query, so a NUL or other junk in the path never reaches the database (PostgreSQL rejects NUL).
    lookup_value_regex = "[-a-zA-Z0-9_]+"
    permission_classes = [IsAuthenticated, TokenObjectPermission]
    pagination_class = TokenListPagination  # a small result is found once, by the count (README, "Scale")
    filter_backends = [SingleValuedQueryParameters, QueriedFilterBackend, TokenSearchFilter, StableOrderingFilter]
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

    def get_throttles(self) -> list[BaseThrottle]:
        # Kept, so that set_key can take back the count of a request the permission refuses.
        self.throttles = super().get_throttles()
        return self.throttles

    collisions: KeyCollisionThrottle  # set_key's, made in check_throttles

    def check_throttles(self, request: Request) -> None:
        if self.action == "set_key":
            # The collision limit, checked by set_key before it reads the body, is read together with the
            # set_key rate: one cache read (a Redis round trip) instead of two. set_key uses this throttle.
            self.collisions = KeyCollisionThrottle()
            self.collisions.read_ahead(request)
        super().check_throttles(request)

    def refund_throttles(self) -> None:
        """Uncount this request from the per-caller limits: callers refused the permission are not counted."""
        for throttle in getattr(self, "throttles", ()):
            if isinstance(throttle, SlidingWindowThrottle):
                throttle.refund()

    def get_queryset(self) -> QuerySet[Token]:
        user = self.request.user
        if not isinstance(user, User):
            # Schema generation inspects the view without a caller.
            return Token.objects.none()
        tokens = tokens_visible_to(user)
        self.sees_every_token = not tokens.query.has_filters()
        if self.action == "list":
            # core.listing reads the page's owners itself, so the owner join goes too: the count's EXPLAIN
            # (above 1000 rows) costs half as much, and estimates the same rows (the join follows a foreign
            # key, which PostgreSQL's estimate accounts for; tests/api/test_list_representation.py).
            return tokens.select_related(None)
        return tokens.prefetch_related(Prefetch("user__groups", queryset=Group.objects.order_by("pk")))

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        # DRF's list, with the page represented by core.listing (held to TokenSerializer by its tests)
        # instead of the serializer, which cost most of the request's CPU; filters, search, ordering and
        # pagination are unchanged. (A comment, not a docstring: the schema would show a docstring.)
        paginator = self.paginator
        assert isinstance(paginator, Pagination)  # REST_FRAMEWORK["DEFAULT_PAGINATION_CLASS"]
        filtered = self.filter_queryset(self.get_queryset())
        paginator.count_part = self._owners_tokens(request)
        # A caller without the global permission sees its own and its permitted tokens: count and page them
        # in one statement that builds the visible set once (KeyedPaginator.one_pass).
        paginator.one_pass = not getattr(self, "sees_every_token", True)
        with list_page_plans(request.query_params):  # prepared plans only when nothing is filtered
            rows = paginator.page_of(filtered, request).object_list
            assert isinstance(rows, QuerySet)
            return paginator.get_paginated_response(token_list_page(rows))

    def _owners_tokens(self, request: Request) -> QuerySet[Token] | None:
        # A search whose terms each match owners (TokenSearchFilter.owner_conditions), by a caller who sees
        # every token and filters nothing else: the tokens of owners matching every term all match, and
        # counting them is an index range (the owners' ids), where counting the search tests the identifier
        # and description of every token it reads (user13: 1,111 owners; about 18,000 tokens read for 1,001
        # matches). The paginator counts them first (BoundedPaginator.part); the count is the same either way.
        if not getattr(self, "sees_every_token", False):
            return None
        return search_part(self, request, Token, getattr(self, "search_owner_conditions", None))

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        actor = caller(request)
        owner: User = data.get("user", actor)
        if owner.pk != actor.pk and not actor.is_superuser:  # pragma: no cover - the field refuses it first
            raise serializers.ValidationError({"user": [self.serializer_class.NOT_YOURS]})
        collisions = KeyCollisionThrottle()
        collisions.check(request)
        try:
            token = self._create(actor, owner, data, request)
        except KeyInUse:
            collisions.record(request)
            raise
        return Response(self.get_serializer(token).data, status=status.HTTP_201_CREATED)

    def _create(self, actor: User, owner: User, data: dict[str, Any], request: Request) -> Token:
        return token_create(
            actor=actor,
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
            actor=caller(request),
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
            actor=caller(request),
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
            actor=caller(request),
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
        permission_classes=[IsAuthenticated],
        content_negotiation_class=JSONFirstNegotiation,
    )
    def set_key(self, request: Request, identifier: str) -> Response:
        """Set token key. Action is logged as event. `authentik_core.set_token_key` permission
        is required."""
        collisions = self.collisions  # made by check_throttles, which DRF runs before every action
        collisions.check(request)
        # The body is read and validated before the service takes the row lock (a slow body holds no
        # lock), and the permission is decided by the service on the locked row, after the body.
        try:
            key = TokenSetKeySerializer.validated_key(request.data)
        except (exceptions.APIException, RequestDataTooBig):
            # A caller without the permission gets 403 whatever it sent (README, "set_key"). Asked only
            # when the body is refused: for a good body the service's decision gives the same 403, so the
            # usual request pays for no separate permission query.
            if not CanSetTokenKey().has_permission(request, self):
                self.refund_throttles()
                raise exceptions.PermissionDenied from None
            raise
        try:
            token_set_key(
                token_identifier=identifier,
                key=key,
                actor=caller(request),
                request_meta=request_meta(request),
            )
        except KeyInUse:
            collisions.record(request)
            raise
        except PermissionDenied:
            self.refund_throttles()
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
                actor=caller(request),
                request_meta=request_meta(request),
                grace_seconds=body.validated_data["grace_seconds"],
                authenticated_token=authenticated,
            )
        except RotationForbidden:
            raise exceptions.PermissionDenied from None
        answer = TokenRotatedSerializer({"key": rotation.key, "previous_key_expires": rotation.previous_key_expires})
        return Response(answer.data, headers={"Cache-Control": "no-store"})
