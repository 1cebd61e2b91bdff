# The stepcare worker (`stepcare worker`), configured only by STEPCARE_* variables (README.md).
# Built and run by docker-compose.yml; validated without a Docker engine by tests/ops/test_compose.py.
FROM python:3.11.14-slim-bookworm AS wheel

# The wheel carries the package and its data (the policies, the Avro schemas of schemas/, which
# streams/formats/schemas links to); the image installs it, not an editable tree.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas/ ./schemas/
COPY streams/ ./streams/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir /tmp/wheels/stepcare-*.whl \
    && rm -rf /tmp/wheels \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/stepcare --no-create-home stepcare \
    && mkdir -p /var/lib/stepcare \
    && chown stepcare:stepcare /var/lib/stepcare

WORKDIR /var/lib/stepcare

ENV STEPCARE_DATA_DIR=/var/lib/stepcare \
    STEPCARE_WEB_HOST=0.0.0.0
VOLUME ["/var/lib/stepcare"]
EXPOSE 6066

USER stepcare

HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('STEPCARE_WEB_PORT', '6066') + '/health', timeout=4)"]

ENTRYPOINT ["stepcare"]
CMD ["worker"]
