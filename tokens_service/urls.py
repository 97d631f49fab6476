"""URL routing: the API at the root and again under authentik's ``/api/v3/`` base path."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import SimpleRouter

from core.api import TokenViewSet
from events.api import EventViewSet
from tokens_service import schema, views

router = SimpleRouter()
router.register("core/tokens", TokenViewSet, basename="token")
router.register("events/events", EventViewSet, basename="event")

api_patterns = router.urls

urlpatterns = [
    path("admin/", admin.site.urls),
    path("-/health/live/", views.live, name="health-live"),
    path("-/health/ready/", views.ready, name="health-ready"),
    # OpenAPI schema and its docs pages (local sidecar assets, no CDN); public, like authentik's schema.
    path("api/v3/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v3/schema/swagger-ui/", schema.SwaggerView.as_view(url_name="schema"), name="schema-swagger-ui"),
    path("api/v3/schema/redoc/", schema.RedocView.as_view(url_name="schema"), name="schema-redoc"),
    path("api/v3/", include((api_patterns, "api"), namespace="v3")),
    path("", include(api_patterns)),
]

handler400 = "tokens_service.views.bad_request"
handler403 = "tokens_service.views.permission_denied"
handler404 = "tokens_service.views.not_found"
handler500 = "tokens_service.views.server_error"
