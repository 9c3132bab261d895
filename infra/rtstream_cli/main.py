"""`rtstream` command line. Each subcommand lives in its own module exposing
``register(subparsers)``; the module's ``run(args) -> int`` does the work and
imports heavy dependencies lazily so the CLI starts fast."""

from __future__ import annotations

import argparse
import importlib
import sys

from rtstream.protocol import PROTOCOL_VERSION

COMMAND_MODULES = (
    "rtstream_cli.dev",  # rtstream dev
    "rtstream_cli.token_cmd",  # rtstream token
    "rtstream_cli.publish_cmd",  # rtstream publish
    "rtstream_cli.deploy_local",  # rtstream deploy-local / destroy-local
    "rtstream_cli.demo",  # rtstream demo
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("realtime-streaming")
    except PackageNotFoundError:  # running from a source tree
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtstream", description="realtime-streaming: live events to dashboards")
    parser.add_argument("--version", action="version", version=f"rtstream {_version()} (protocol {PROTOCOL_VERSION})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
