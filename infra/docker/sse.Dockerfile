# SSE server container (ECS Fargate task behind an HTTPS ALB): `python -m rtstream_sse`.
# Build from the repository root:
#   docker build -f infra/docker/sse.Dockerfile -t rtstream-sse .
# Only what the server imports is installed (no moto, no SAM tooling).
FROM public.ecr.aws/docker/library/python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    RTSTREAM_SSE_HOST=0.0.0.0 \
    RTSTREAM_SSE_PORT=8080

RUN pip install --no-cache-dir \
      "starlette>=0.37,<2" \
      "uvicorn[standard]>=0.30,<1" \
      "redis>=5.0,<9" \
      "PyJWT[crypto]>=2.8" \
      "boto3>=1.34" \
      "aws-lambda-powertools>=3.0" \
      "prometheus-client>=0.20,<1"

WORKDIR /app
# The core package (with its .lua scripts) and the server. The dashboard is not
# here: `rtstream dev` serves it (rtstream_cli.dev_sse), production never does.
COPY layers/core/rtstream /app/rtstream
COPY infra/rtstream_sse /app/rtstream_sse

RUN useradd --system --uid 10001 --no-create-home sse
USER 10001

EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"

# SIGTERM (ECS stop, after the ALB deregistered the task): stop accepting, send
# every client a retry hint and end its stream; clients resume with Last-Event-ID.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "rtstream_sse"]
