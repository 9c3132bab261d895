"""`python -m rtstream_gateway`: the emulator alone (handlers reach AWS and Redis
through this process's environment: AWS_ENDPOINT_URL, REDIS_URL, table names...).
`rtstream dev` runs it with everything else."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from rtstream_cli.cloudformation import TEMPLATE_PATH

from .server import GatewayEmulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rtstream_gateway", description=__doc__)
    parser.add_argument("--template", default=str(TEMPLATE_PATH))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    parser.add_argument("--stage", default=None, help="default: the template's stage")
    parser.add_argument("--idle-timeout", type=float, default=600)
    parser.add_argument("--max-connection-seconds", type=float, default=7200)
    parser.add_argument("--post-latency-ms", type=float, default=0)
    parser.add_argument("--post-throttle", type=float, default=None, help="@connections requests/s before 429")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def serve() -> None:
        gateway = GatewayEmulator(args.template, host=args.host, port=args.port, stage=args.stage,
                                  idle_timeout=args.idle_timeout, max_connection_seconds=args.max_connection_seconds,
                                  post_latency_ms=args.post_latency_ms, post_throttle=args.post_throttle)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        await gateway.start()
        print(f"WebSocket: {gateway.ws_url}")
        print(f"Management API: {gateway.management_url}", flush=True)
        try:
            await stopping.wait()
        finally:
            await gateway.stop()

    try:
        asyncio.run(serve())
    except OSError as exc:
        print(f"rtstream_gateway: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
