"""URL routing: the API at the root and again under authentik's ``/api/v3/`` base path."""

from django.contrib import admin
from django.urls import include, path
from rest_framework.routers import SimpleRouter

from core.api import TokenViewSet
from tokens_service import views

router = SimpleRouter()
router.register("core/tokens", TokenViewSet, basename="token")

api_patterns = router.urls

urlpatterns = [
    path("admin/", admin.site.urls),
    path("-/health/live/", views.live, name="health-live"),
    path("-/health/ready/", views.ready, name="health-ready"),
    path("api/v3/", include((api_patterns, "api"), namespace="v3")),
    path("", include(api_patterns)),
]

handler400 = "tokens_service.views.bad_request"
handler403 = "tokens_service.views.permission_denied"
handler404 = "tokens_service.views.not_found"
handler500 = "tokens_service.views.server_error"
