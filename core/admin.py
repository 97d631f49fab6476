"""Django admin for users and tokens. A token's key is never listed, searched, filtered, shown or edited here.

Token writes go through the API's services: ``token_create`` (random key), ``token_update`` (changed fields
only), ``token_delete`` (with its object permissions) and ``token_set_key`` (the "Set key" page), so the
admin writes the same audit events, under the same rules, as the API. django-guardian's object-permission
pages are open only to superusers and holders of ``authentik_core.manage_token_permissions``, and save
through ``core.object_permissions`` (one audit event per grant or revocation).
"""

import uuid
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.db.models.constants import LOOKUP_SEP
from django.forms import ChoiceField, Form, ModelForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse, reverse_lazy
from guardian.admin import GuardedModelAdmin
from guardian.forms import GroupObjectPermissionsForm
from guardian.models import GroupObjectPermission, UserObjectPermission
from rest_framework.exceptions import Throttled

from core.admin_login import ThrottledAdminAuthenticationForm
from core.forms import TOKEN_ADMIN_FIELDS, TokenAdminForm, TokenSetKeyForm
from core.models import Token, TokenIntents, User
from core.object_permissions import (
    MANAGE_PERMISSION_CODENAME,
    can_manage_token_permissions,
    token_perm_grant,
    token_perm_revoke,
)
from core.selectors import user_has_token_perm
from core.services import API_INTENTS, KeyInUse, token_create, token_delete, token_set_key, token_update
from core.signals import deleting_as
from tokens_service.errors import FieldConflict, ObjectNotFound
from tokens_service.request_meta import RequestMeta, request_meta
from tokens_service.throttling import KeyCollisionThrottle

SECRET_FIELDS = ("key", "key_digest")
SET_KEY_PERMISSION = "set_token_key"

admin.site.site_header = "tokens-service administration"
# Rate-limited and audited logins (core/admin_login.py).
admin.site.login_form = ThrottledAdminAuthenticationForm
admin.site.site_title = "tokens-service admin"
# "View site" leads to the API documentation: the service has no other pages for people.
admin.site.site_url = cast(str, reverse_lazy("schema-swagger-ui"))  # resolved when a page is rendered


# Fields through which an account gains rights. Only superusers edit them (README, "Admin and API
# documentation"): Django lets anyone with change_user set them, on any account, their own included.
PRIVILEGE_FIELDS = ("is_superuser", "is_staff", "groups", "user_permissions")


def _privileges(user: User) -> tuple[set[str], set[tuple[int, str, str]]]:
    """The global permissions ``user`` holds (its own and its groups'), and its object permissions as
    ``(content type id, object pk, codename)`` (its own and its groups')."""
    held = {
        (row.content_type_id, row.object_pk, row.permission.codename)
        for model, owner in ((UserObjectPermission, "user"), (GroupObjectPermission, "group__user"))
        for row in model.objects.filter(**{owner: user}).select_related("permission")
    }
    return set(user.get_all_permissions()), held


def may_administer(editor: User, account: User) -> bool:
    """Whether ``editor`` may change, delete or set the password of ``account`` in the admin.

    A superuser may administer anyone. Anyone else only accounts that hold no right the editor lacks: not a
    superuser, no global permission the editor does not hold, and no object permission the editor holds
    neither on that object nor globally. Otherwise taking over the account (a new password) would hand the
    editor that account's rights.
    """
    if editor.is_superuser:
        return True
    if account.is_superuser:
        return False
    if account.pk == editor.pk:
        return True
    editor_global, editor_objects = _privileges(editor)
    account_global, account_objects = _privileges(account)
    if not account_global <= editor_global:
        return False
    labels = dict(ContentType.objects.values_list("id", "app_label"))
    return all(
        held in editor_objects or f"{labels.get(held[0])}.{held[2]}" in editor_global for held in account_objects
    )


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    """Django's user admin plus authentik's user fields; only superusers grant rights (``PRIVILEGE_FIELDS``),
    and nobody administers an account that holds rights they lack (``may_administer``)."""

    list_display = ("username", "email", "name", "type", "is_active", "is_staff", "is_superuser")
    list_filter = (*DjangoUserAdmin.list_filter, "type")
    search_fields = (*DjangoUserAdmin.search_fields, "name")
    readonly_fields = ("uuid", "password_change_date", "last_updated")

    def get_readonly_fields(self, request: HttpRequest, obj: User | None = None) -> tuple[str, ...]:
        fields = tuple(super().get_readonly_fields(request, obj))
        return fields if _is_superuser(request) else (*fields, *PRIVILEGE_FIELDS)

    # Django's password-change view asks has_change_permission for the account, so it is covered too.
    def has_change_permission(self, request: HttpRequest, obj: User | None = None) -> bool:
        return super().has_change_permission(request, obj) and _administers(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: User | None = None) -> bool:
        return super().has_delete_permission(request, obj) and _administers(request, obj)

    fieldsets = (
        *(DjangoUserAdmin.fieldsets or ()),
        (
            "authentik",
            {"fields": ("name", "type", "path", "attributes", "uuid", "password_change_date", "last_updated")},
        ),
    )

    # Deleting users deletes their tokens through token_delete (core.signals); these record who did it.
    def delete_model(self, request: HttpRequest, obj: User) -> None:
        with deleting_as(_staff(request), request_meta(request)):
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        # The bulk "delete selected" action asks has_delete_permission without an object.
        if not all(_administers(request, account) for account in queryset):
            raise PermissionDenied
        with deleting_as(_staff(request), request_meta(request)):
            super().delete_queryset(request, queryset)


admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(DjangoGroupAdmin):
    """Django's group admin; a group's permissions are granted by superusers only (``PRIVILEGE_FIELDS``)."""

    def get_readonly_fields(self, request: HttpRequest, obj: Group | None = None) -> tuple[str, ...]:
        fields = tuple(super().get_readonly_fields(request, obj))
        return fields if _is_superuser(request) else (*fields, "permissions")


def _is_superuser(request: HttpRequest) -> bool:
    return bool(getattr(request.user, "is_superuser", False))


def _administers(request: HttpRequest, account: User | None) -> bool:
    editor = request.user
    if account is None:
        return True
    if not isinstance(editor, User):
        return False
    # Asked about six times per change page: decided once per account and request (a few queries each).
    decided: dict[Any, bool] = request.__dict__.setdefault("_administers", {})
    if account.pk not in decided:
        decided[account.pk] = may_administer(editor, account)
    return decided[account.pk]


def _staff(request: HttpRequest) -> User | None:
    return request.user if isinstance(request.user, User) else None


@admin.register(Token)
class TokenAdmin(GuardedModelAdmin):
    """Tokens with django-guardian's object-permission pages and a "Set key" page.

    The key is generated on creation and can afterwards only be replaced (never read) from the admin.
    """

    form = TokenAdminForm
    fields = TOKEN_ADMIN_FIELDS  # read-only ones (the owner, on the change form) keep their place
    exclude = SECRET_FIELDS
    # guardian annotates this as an instance variable, django-stubs as a ClassVar; both are class attributes.
    change_form_template = "admin/authentik_core/token/change_form.html"  # type: ignore[misc]
    set_key_template = "admin/authentik_core/token/set_key.html"
    list_display = ("identifier", "user", "intent", "expires", "expiring")
    list_filter = ("intent", "expiring")
    list_select_related = ("user",)
    search_fields = ("identifier", "description", "user__username")
    ordering = ("identifier",)
    autocomplete_fields = ("user",)

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        # The changelist accepts lookups on local fields from the query string by default
        # (?key__startswith=a), which would let anyone who can list tokens guess keys one character
        # at a time. No lookup may touch the key or its digest.
        if lookup.split(LOOKUP_SEP, 1)[0] in SECRET_FIELDS:
            return False
        return super().lookup_allowed(lookup, value, request)

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        set_key = path(
            "<path:object_id>/set-key/",
            self.admin_site.admin_view(self.set_key_view),
            name="{}_{}_set_key".format(*info),
        )
        # Before the admin's catch-all "<path:object_id>/" pattern.
        return [set_key, *super().get_urls()]

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except FieldConflict as exc:
            # The form checks uniqueness first; this is a concurrent write of the same identifier or
            # managed value between that check and the service's write. Everything was rolled back.
            self.message_user(request, f"Not saved: {exc.message}", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())
        except ObjectNotFound:
            self.message_user(request, "Not saved: the token was deleted meanwhile.", messages.ERROR)
            return HttpResponseRedirect(reverse(f"{self.admin_site.name}:index", current_app=self.admin_site.name))

    def get_readonly_fields(self, request: HttpRequest, obj: Token | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        # token_update's rules, shown as read-only fields rather than refused after submission: the
        # owner never changes, and only api and app_password tokens may switch between those two.
        return ("user",) if obj.intent in API_INTENTS else ("user", "intent")

    def get_form(self, request: HttpRequest, obj: Token | None = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is not None and "intent" in form.base_fields:
            intent = form.base_fields["intent"]
            assert isinstance(intent, ChoiceField)
            intent.choices = [(value, label) for value, label in TokenIntents.choices if value in API_INTENTS]
        return form

    def save_model(self, request: HttpRequest, obj: Token, form: ModelForm, change: bool) -> None:
        actor = request.user if isinstance(request.user, User) else None
        if change:
            # Only the fields the admin edited go to the service, which saves those columns alone and
            # writes the model_updated event: a concurrent set_key or API write is never undone.
            if form.changed_data:
                assert actor is not None  # admin_view admits only logged-in staff
                updated = token_update(
                    token_pk=obj.pk,
                    changes={name: form.cleaned_data[name] for name in form.changed_data},
                    actor=actor,
                    request_meta=request_meta(request),
                )
                obj.key = updated.key
                obj.key_digest = updated.key_digest
            return
        created = token_create(
            actor=actor,
            user=obj.user,
            identifier=obj.identifier,
            request_meta=request_meta(request),
            intent=obj.intent,
            key=None,  # a fresh random key, generated by the service
            description=obj.description,
            expires=obj.expires,
            expiring=obj.expiring,
            managed=obj.managed,
        )
        # The admin goes on with ``obj`` (history entry, redirect to the change page): make it the new row.
        obj.pk = created.pk
        obj.key = created.key
        obj.key_digest = created.key_digest
        obj._state.adding = False
        obj._state.db = created._state.db

    def delete_model(self, request: HttpRequest, obj: Token) -> None:
        self._delete(request, [obj.pk])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Token]) -> None:
        self._delete(request, list(queryset.values_list("pk", flat=True)))

    def _delete(self, request: HttpRequest, token_pks: list[uuid.UUID]) -> None:
        # Through the service, one token at a time: each deletion removes the token's object
        # permissions and writes its model_deleted event, as an API DELETE does.
        actor = request.user
        assert isinstance(actor, User)  # admin_view admits only logged-in staff
        meta = request_meta(request)
        for token_pk in token_pks:
            try:
                token_delete(token_pk=token_pk, actor=actor, request_meta=meta)
            except ObjectNotFound:
                continue  # deleted concurrently: the goal is reached

    # --- django-guardian's object-permission pages -----------------------------------------------------
    # guardian admits anyone with change_token and redirects the others; here only superusers and holders
    # of the global manage_token_permissions get in (403 otherwise, for GET and POST alike), and every
    # grant and revocation goes through core.object_permissions, which audits it.

    def _require_permission_manager(self, request: HttpRequest) -> None:
        if not can_manage_token_permissions(request.user):
            raise PermissionDenied

    def _token_gone(self, request: HttpRequest) -> HttpResponse:
        self.message_user(request, "Not saved: the token was deleted meanwhile.", messages.ERROR)
        return HttpResponseRedirect(reverse(f"{self.admin_site.name}:index", current_app=self.admin_site.name))

    def obj_perms_manage_view(self, request: HttpRequest, object_pk: str) -> HttpResponse:
        self._require_permission_manager(request)
        return super().obj_perms_manage_view(request, object_pk)  # type: ignore[no-any-return]

    def obj_perms_manage_user_view(self, request: HttpRequest, object_pk: str, user_id: str) -> HttpResponse:
        self._require_permission_manager(request)
        try:
            return super().obj_perms_manage_user_view(request, object_pk, user_id)  # type: ignore[no-any-return]
        except ObjectNotFound:
            return self._token_gone(request)

    def obj_perms_manage_group_view(self, request: HttpRequest, object_pk: str, group_id: str) -> HttpResponse:
        self._require_permission_manager(request)
        try:
            return super().obj_perms_manage_group_view(request, object_pk, group_id)  # type: ignore[no-any-return]
        except ObjectNotFound:
            return self._token_gone(request)

    def get_obj_perms_manage_user_form(self, request: HttpRequest) -> type[Form]:
        return _audited_permissions_form(super().get_obj_perms_manage_user_form(request), request)

    def get_obj_perms_manage_group_form(self, request: HttpRequest) -> type[Form]:
        return _audited_permissions_form(super().get_obj_perms_manage_group_form(request), request)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Token | None = None,
    ) -> HttpResponse:
        user = request.user
        context["show_set_key"] = (
            obj is not None and isinstance(user, User) and user_has_token_perm(user, SET_KEY_PERMISSION, obj.identifier)
        )
        context["show_object_permissions"] = obj is not None and can_manage_token_permissions(user)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def set_key_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Replace a token's key through ``core.services.token_set_key``, as the set_key API does.

        Requires ``authentik_core.set_token_key`` (superuser, global, or object permission). An up-front
        check answers 403 before telling whether the token exists; the deciding check is the service's,
        on the locked row it writes (this page's token, by pk), after the form was read. The submitted
        key is never rendered back.
        """
        user = request.user
        token = self.get_object(request, unquote(object_id))
        identifier = token.identifier if token is not None else ""
        if not isinstance(user, User) or not user_has_token_perm(user, SET_KEY_PERMISSION, identifier):
            raise PermissionDenied
        if token is None:
            self.message_user(request, "No such token. Perhaps it was deleted?", messages.WARNING)
            return HttpResponseRedirect(reverse(f"{self.admin_site.name}:index", current_app=self.admin_site.name))

        form = TokenSetKeyForm(request.POST if request.method == "POST" else None)
        collisions = KeyCollisionThrottle()
        if form.is_valid():
            try:
                collisions.check(request)
                token_set_key(
                    token_identifier=token.identifier,
                    key=form.cleaned_data["key"],
                    actor=user,
                    request_meta=request_meta(request),
                    token_pk=token.pk,
                )
            except Throttled:
                form.add_error(None, "Too many refused keys; try again later.")
            except KeyInUse as exc:
                collisions.record(request)
                form.add_error("key", exc.message)
            except ObjectNotFound:
                form.add_error(None, "This token has expired or no longer exists; its key cannot be set.")
            else:
                self.log_change(request, token, [{"changed": {"fields": ["key"]}}])
                self.message_user(request, f"The key of “{token}” was replaced.", messages.SUCCESS)
                change_url = reverse(
                    f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_change",
                    args=[token.pk],
                    current_app=self.admin_site.name,
                )
                return HttpResponseRedirect(change_url)

        context = {
            **self.admin_site.each_context(request),
            "title": "Set key",
            "subtitle": str(token),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "original": token,
            "form": form,
            "has_view_permission": self.has_view_permission(request, token),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.set_key_template, context)


def _audited_permissions_form(base: type[Form], request: HttpRequest) -> type[Form]:
    """guardian's user or group object-permission form, saving through the audited services.

    Only the permissions whose box changed are granted or revoked (one event each), all in one
    transaction. ``manage_token_permissions`` is global by nature and is not offered per token.
    """
    actor = request.user if isinstance(request.user, User) else None
    meta: RequestMeta = request_meta(request)

    def get_obj_perms_field_choices(form: Any) -> list[tuple[str, str]]:
        choices = base.get_obj_perms_field_choices(form)  # type: ignore[attr-defined]
        return [(codename, name) for codename, name in choices if codename != MANAGE_PERMISSION_CODENAME]

    def save_obj_perms(form: Any) -> None:
        grantee: User | Group = form.group if isinstance(form, GroupObjectPermissionsForm) else form.user
        selected = set(form.cleaned_data[form.get_obj_perms_field_name()])
        offered = {codename for codename, _ in form.get_obj_perms_field_choices()}
        held = set(form.get_obj_perms_field_initial())
        with transaction.atomic():
            for codename in sorted((offered - selected) & held):
                token_perm_revoke(token=form.obj, codename=codename, grantee=grantee, actor=actor, request_meta=meta)
            for codename in sorted((selected & offered) - held):
                token_perm_grant(token=form.obj, codename=codename, grantee=grantee, actor=actor, request_meta=meta)

    return type(
        f"Audited{base.__name__}",
        (base,),
        {"get_obj_perms_field_choices": get_obj_perms_field_choices, "save_obj_perms": save_obj_perms},
    )
