# Fan-out worker container (ECS Fargate task): `python -m rtstream_fanout`.
# Build from the repository root:
#   docker build -f infra/docker/fanout.Dockerfile -t rtstream-fanout .
# Only what the worker imports is installed (no web frameworks, no moto).
FROM public.ecr.aws/docker/library/python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    RTSTREAM_WORKER_METRICS_PORT=9102 \
    RTSTREAM_WORKER_METRICS_HOST=0.0.0.0

RUN pip install --no-cache-dir \
      "redis>=5.0,<9" \
      "boto3>=1.34" \
      "aws-lambda-powertools>=3.0" \
      "prometheus-client>=0.20,<1" \
      "httptools>=0.6" \
      "uvloop>=0.19"

WORKDIR /app
# The core package (with its .lua scripts) and the worker, exactly as in the repo.
COPY layers/core/rtstream /app/rtstream
COPY infra/rtstream_fanout /app/rtstream_fanout

RUN useradd --system --uid 10001 --no-create-home fanout
USER 10001

EXPOSE 9102
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9102/healthz', timeout=2).status == 200 else 1)"

# SIGTERM (ECS stop): stop reading, finish in-flight entries, release partition leases.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "rtstream_fanout"]
