# The tokens-service app image: gunicorn serving Django, static files collected at build time and
# served by WhiteNoise. Configuration comes from the environment at run time (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so code changes do not reinstall them. The lock pins every version.
COPY requirements.lock ./
RUN pip install -r requirements.lock

COPY . .

# The secrets only satisfy settings for this build step; nothing is signed or encrypted with them.
RUN DJANGO_SECRET_KEY=collectstatic-only-not-a-secret TOKEN_KEYS_ENCRYPTION_KEYS=build:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= TOKEN_KEYS_PEPPERS=build:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= python manage.py collectstatic --noinput -v 0

RUN useradd --system --uid 10001 --no-create-home app && mkdir -p var && chown app var
USER app

ENV GUNICORN_BIND=0.0.0.0:8000
EXPOSE 8000
CMD ["gunicorn", "-c", "tokens_service/gunicorn_conf.py", "tokens_service.wsgi:application"]
