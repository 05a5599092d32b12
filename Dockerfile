# One image for every role: `docker run taskmill <role> [options]`.

# Build the project's wheel from the repository; the source never reaches the runtime image.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 10001 --user-group taskmill
# Runtime dependencies only: no dev extras.
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels
USER 10001:10001
WORKDIR /home/taskmill
# 8000: `taskmill api`; 9100: Prometheus metrics when TASKMILL_METRICS_PORT=9100.
EXPOSE 8000 9100
ENTRYPOINT ["taskmill"]
