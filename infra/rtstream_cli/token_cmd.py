"""`rtstream token`: a dev JWT for the local system (or any deployment that
verifies HS256 with RTSTREAM_JWT_SECRET)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("token", help="print a dev JWT",
                                   description="Print an HS256 JWT signed with RTSTREAM_JWT_SECRET (else the key of "
                                               "the running `rtstream dev`, else this machine's dev key).")
    parser.add_argument("--user", required=True, help="user id (claim sub)")
    parser.add_argument("--entity", required=True, help="entity id (claim entity_id)")
    parser.add_argument("--role", default="user", choices=("user", "agent", "admin"))
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rtstream.auth import issue_dev_token

    from .dev import resolve_jwt_secret

    try:
        token = issue_dev_token(resolve_jwt_secret(), user_id=args.user, entity_id=args.entity, role=args.role,
                                ttl_seconds=args.ttl)
    except ValueError as exc:
        print(f"rtstream token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0
