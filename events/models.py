"""Audit events (app label ``authentik_events``): append-only records of who did what."""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class EventAction(models.TextChoices):
    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    LOGOUT = "logout"
    USER_WRITE = "user_write"
    USER_OFFBOARDED = "user_offboarded"
    SUSPICIOUS_REQUEST = "suspicious_request"
    PASSWORD_SET = "password_set"  # noqa: S105
    SECRET_VIEW = "secret_view"  # noqa: S105
    SECRET_ROTATE = "secret_rotate"  # noqa: S105
    INVITE_USED = "invitation_used"
    AUTHORIZE_APPLICATION = "authorize_application"
    SOURCE_LINKED = "source_linked"
    IMPERSONATION_STARTED = "impersonation_started"
    IMPERSONATION_ENDED = "impersonation_ended"
    FLOW_EXECUTION = "flow_execution"
    POLICY_EXECUTION = "policy_execution"
    POLICY_EXCEPTION = "policy_exception"
    PROPERTY_MAPPING_EXCEPTION = "property_mapping_exception"
    SYSTEM_TASK_EXECUTION = "system_task_execution"
    SYSTEM_TASK_EXCEPTION = "system_task_exception"
    SYSTEM_EXCEPTION = "system_exception"
    CONFIGURATION_ERROR = "configuration_error"
    CONFIGURATION_WARNING = "configuration_warning"
    MODEL_CREATED = "model_created"
    MODEL_UPDATED = "model_updated"
    MODEL_DELETED = "model_deleted"
    EMAIL_SENT = "email_sent"
    UPDATE_AVAILABLE = "update_available"
    EXPORT_READY = "export_ready"
    REVIEW_INITIATED = "review_initiated"
    REVIEW_OVERDUE = "review_overdue"
    REVIEW_ATTESTED = "review_attested"
    REVIEW_COMPLETED = "review_completed"
    ACCESS_REQUEST_CREATED = "access_request_created"
    ACCESS_REQUEST_APPROVED = "access_request_approved"
    ACCESS_REQUEST_DENIED = "access_request_denied"
    ACCESS_REQUEST_REVOKED = "access_request_revoked"
    CUSTOM_PREFIX = "custom_"


def default_event_expiry():  # type: ignore[no-untyped-def]
    return timezone.now() + settings.EVENT_RETENTION


class Event(models.Model):
    """One audited action. Written only by ``events.services``; never updated or deleted by the API."""

    event_uuid = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.JSONField(default=dict)
    action = models.TextField(choices=EventAction.choices)
    app = models.TextField()
    context = models.JSONField(default=dict, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now, editable=False)
    expires = models.DateTimeField(default=default_event_expiry)
    brand = models.JSONField(default=dict, blank=True)

    class Meta:
        verbose_name = "Event"
        verbose_name_plural = "Events"
        # Every list order has an index whose columns end with the tie-breaker the ordering filter adds
        # (the pk, or created), so a page is an index range, not a sort. PostgreSQL also gets expression
        # indexes for the JSON filters and the search (migration 0003).
        indexes = [
            models.Index(fields=["action", "event_uuid"], name="event_action_pk_idx"),
            models.Index(fields=["-created", "action"], name="event_created_action_idx"),
            models.Index(fields=["expires"], name="event_expires_idx"),
            models.Index(fields=["app", "event_uuid"], name="event_app_pk_idx"),
            models.Index(fields=["client_ip", "created"], name="event_client_ip_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.action} by {self.user.get('username', '?')} at {self.created:%Y-%m-%d %H:%M:%S}"


class EventVolume(models.Model):
    """Events per UTC day and action, for days that are over: the rollup behind ``/events/volume/``.

    Filled on demand by ``events.selectors.event_volume`` (and by ``prune_expired``) from the event table,
    one ``GROUP BY`` per run of missing days. A row with ``action = ""`` and ``count = 0`` marks a day
    as counted (a day without events has no other row). Rows of a day from which retention deleted
    events are removed, so that the day is counted again.
    """

    day = models.DateTimeField()
    action = models.TextField(blank=True)
    count = models.BigIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["day", "action"], name="eventvolume_day_action_uniq")]

    def __str__(self) -> str:
        return f"{self.day:%Y-%m-%d} {self.action or '(counted)'}: {self.count}"
