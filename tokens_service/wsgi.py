"""WSGI entry point (gunicorn: ``tokens_service.wsgi:application``)."""

import os

from django.core.wsgi import get_wsgi_application

from tokens_service.wsgi_hardening import ChunkedBodyMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokens_service.settings")

# Chunked request bodies reach Django under the same size limit as others (tokens_service.wsgi_hardening).
application = ChunkedBodyMiddleware(get_wsgi_application())
