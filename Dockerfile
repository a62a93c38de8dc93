# reliq: one image for every role; the command picks it (serve | monitor | work | all).
#   docker build -t reliq:0.1.0 .
#   docker run --rm reliq:0.1.0 work --redis-url redis://redis:6379/0
# Wheels are built in a throw-away stage, so the final image holds only the runtime
# dependencies (redis[hiredis], aiohttp, click, orjson, prometheus-client, rich, croniter, uvloop).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml LICENSE ./
COPY reliq ./reliq
# pyproject names a README; the image does not need the real one
RUN touch README.md \
 && pip wheel --no-cache-dir --wheel-dir /wheels ".[fast]"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --gid 0 --no-create-home --home-dir /nonexistent reliq
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "reliq[fast]" \
 && rm -rf /wheels
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001
# 8085 producer API, 8082 monitor, 8081 worker liveness (--health-port)
EXPOSE 8085 8082 8081
ENTRYPOINT ["reliq"]
CMD ["--help"]
