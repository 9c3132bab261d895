"""`rtstream deploy-local` / `rtstream destroy-local`: the SAM stack itself,
deployed through CloudFormation into a LocalStack-compatible emulator
(LocalStack with an auth token, or MiniStack). See README.md "Run against LocalStack" and
``rtstream_cli.localstack`` for the pipeline and the emulator adaptations."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading

from rtstream.settings import Settings

DEFAULT_STACK = "rtstream-local"
DEFAULT_STAGE = "dev"


def register(subparsers) -> None:
    deploy = subparsers.add_parser(
        "deploy-local", help="deploy template.yaml into a LocalStack-compatible emulator",
        description="Build, transform (SAM, offline) and deploy template.yaml through CloudFormation at "
                    "a LocalStack-compatible endpoint; print its WebSocket URL, management API and tables.",
    )
    _common(deploy)
    deploy.add_argument("--stage", default=DEFAULT_STAGE, help="StageName parameter (default: %(default)s)")
    deploy.add_argument("--redis-url", default=None,
                        help="Redis for the Lambdas (RedisUrl parameter) and the local services (default: $REDIS_URL)")
    deploy.add_argument("--lambda-redis-url", default=None,
                        help="RedisUrl as the Lambdas reach it, if not --redis-url "
                             "(LocalStack's containers: redis://host.docker.internal:6379/0)")
    deploy.add_argument("--jwt-secret", default=None,
                        help="JwtSecret parameter (default: $RTSTREAM_JWT_SECRET)")
    deploy.add_argument("--template", default=None, help="template path (default: the project's template.yaml)")
    deploy.add_argument("--lambda-python", default=None, metavar="X.Y",
                        help="the Python the emulator runs Lambdas with (default: found by invoking a probe "
                             "function; MiniStack runs every Lambda with its own interpreter). A version that "
                             "differs from the probe's is refused")
    deploy.add_argument("--slim", action="store_true",
                        help="leave out of the layer what the Lambda Python runtime provides (boto3, botocore, …); "
                             "much faster cold starts in MiniStack, which unpacks the layer for every worker")
    deploy.add_argument("--lambda-endpoint", default=None,
                        help="the emulator as the Lambdas reach it, for the management API URL in their "
                             "environment (default: --endpoint; LocalStack: http://localhost.localstack.cloud:4566)")
    deploy.add_argument("--skip-wiring-check", action="store_true",
                        help="do not fail when AWS would refuse an invoke the emulator allows "
                             "(missing function or Lambda permission behind a route, authorizer or rule)")
    deploy.add_argument("--skip-invoke-check", action="store_true",
                        help="do not invoke every function once after the deploy (a function that cannot run "
                             "then shows only when a client uses it)")
    deploy.add_argument("--run-services", action="store_true",
                        help="then run the fan-out worker and SSE server against the stack until Ctrl-C")
    deploy.add_argument("--sse-port", type=int, default=None, help="SSE port with --run-services (default: free)")
    deploy.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the stack")
    deploy.set_defaults(func=run_deploy)

    destroy = subparsers.add_parser("destroy-local", help="remove the stack deployed by deploy-local")
    _common(destroy)
    destroy.set_defaults(func=run_destroy)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", default=None,
                        help="emulator endpoint (default: $AWS_ENDPOINT_URL, else http://localhost:4566)")
    parser.add_argument("--stack", default=DEFAULT_STACK, help="stack name (default: %(default)s)")
    parser.add_argument("--region", default=Settings.from_env().runtime.aws_region or "us-east-1")


def _log(message: str, command: str = "deploy-local") -> None:
    print(f"{command}: {message}", file=sys.stderr, flush=True)


def _emulator_errors():
    """What an unreachable or refusing emulator raises (botocore), for a one-line message."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def stack_parameters(stage: str, redis_url: str | None, jwt_secret: str | None) -> dict[str, str]:
    """The CloudFormation parameters deploy-local passes (JwtSecret, RedisUrl, StageName)."""
    settings = Settings.from_env()
    redis_url = redis_url or (settings.redis_url if settings.runtime.uses_redis else None)
    jwt_secret = jwt_secret or settings.jwt_secret
    if not jwt_secret:
        raise SystemExit("deploy-local: set RTSTREAM_JWT_SECRET (or --jwt-secret): the stack's authorizer needs it")
    if not redis_url:
        raise SystemExit("deploy-local: set REDIS_URL (or --redis-url): the stack's Lambdas publish to it")
    return {"JwtSecret": jwt_secret, "RedisUrl": redis_url, "StageName": stage}


def run_deploy(args) -> int:
    from rtstream_cli.localstack.adapt import AdaptError
    from rtstream_cli.localstack.build import BuildError
    from rtstream_cli.localstack.stack import DeployError, deploy_stack

    parameters = stack_parameters(args.stage, args.redis_url, args.jwt_secret)
    services_redis_url = parameters["RedisUrl"]
    if args.lambda_redis_url:
        parameters["RedisUrl"] = args.lambda_redis_url
    try:
        deployed = deploy_stack(
            endpoint=args.endpoint, stack_name=args.stack, template_path=args.template, parameters=parameters,
            region=args.region, python_version=args.lambda_python, lambda_endpoint=args.lambda_endpoint, slim=args.slim,
            verify_wiring=not args.skip_wiring_check, invoke_check=not args.skip_invoke_check,
            timeout=args.timeout, log=_log,
        )
    except (DeployError, BuildError, AdaptError) as exc:
        print(f"deploy-local: FAILED: {exc}", file=sys.stderr)
        return 1
    except _emulator_errors() as exc:
        print(f"deploy-local: FAILED talking to {args.endpoint or 'the emulator'}: {exc}", file=sys.stderr)
        return 1
    print(f"WebSocket: {deployed.websocket_url}")
    print(f"Management API: {deployed.management_url}")
    print(f"Connections table: {deployed.connections_table}")
    print(f"Subscriptions table: {deployed.subscriptions_table}")
    print(f"Event bus: {deployed.event_bus}")
    _log(f"timings: {deployed.timings}")
    sys.stdout.flush()
    if not args.run_services:
        return 0
    from rtstream_cli.localstack.services import start_services

    log_dir = tempfile.mkdtemp(prefix="rtstream-deploy-local-services-")
    services = start_services(deployed, services_redis_url, parameters["JwtSecret"], log_dir,
                              sse_port=args.sse_port)
    print(f"SSE: {services.sse_url}", flush=True)
    _log(f"fan-out worker and SSE server running (logs in {log_dir}); Ctrl-C stops them")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            services.check()
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:  # a service died: say which, with its log tail
        print(f"deploy-local: {exc}", file=sys.stderr)
        return 1
    finally:
        services.stop()
    return 0


def run_destroy(args) -> int:
    from rtstream_cli.localstack.stack import DeployError, destroy_stack

    try:
        removed = destroy_stack(endpoint=args.endpoint, stack_name=args.stack, region=args.region,
                                log=lambda message: _log(message, "destroy-local"))
    except DeployError as exc:
        print(f"destroy-local: FAILED: {exc}", file=sys.stderr)
        return 1
    except _emulator_errors() as exc:
        print(f"destroy-local: FAILED talking to {args.endpoint or 'the emulator'}: {exc}", file=sys.stderr)
        return 1
    print(f"Removed: {args.stack}" if removed else f"No stack: {args.stack}")
    return 0
