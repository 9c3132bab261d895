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
# Commands whose module needs an extra that a light install (`pip install .`)
# lacks: they answer one line saying what to install instead of a traceback.
EXTRA_OF = {"rtstream_cli.dev": ("local", ("dev",)), "rtstream_cli.deploy_local": ("local", ("deploy-local", "destroy-local"))}


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
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if name not in EXTRA_OF:
                raise
            extra, commands = EXTRA_OF[name]
            for command in commands:
                p = sub.add_parser(command, help=f"(needs the [{extra}] extra)", add_help=False)
                p.set_defaults(func=_needs_extra(command, extra, exc.name))
            continue
        module.register(sub)
    return parser


def _needs_extra(command: str, extra: str, missing: str | None):
    def run(args: argparse.Namespace) -> int:
        print(f"rtstream {command}: needs the [{extra}] extra ({missing} is not installed): from a clone of the "
              f"repository run ./scripts/dev, or pip install -e '.[{extra}]'", file=sys.stderr)
        return 2

    run.accepts_any = True  # type: ignore[attr-defined]  # whatever options were meant for the real command
    return run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args.func, "accepts_any", False):
        parser.parse_args(argv)  # the usual error (exit 2) for unknown arguments
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
