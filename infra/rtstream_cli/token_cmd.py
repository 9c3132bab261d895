"""`rtstream token`: a dev JWT for the local system (or any deployment that
verifies HS256 with RTSTREAM_JWT_SECRET)."""

from __future__ import annotations

import argparse
import sys

from .state import NoSuchInstance, Target, add_instance_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("token", help="print a dev JWT",
                                   description="Print an HS256 JWT signed with --jwt-secret, else RTSTREAM_JWT_SECRET, else "
                                               "the key of the running `rtstream dev` (which one: --state-dir/--dev-port; "
                                               "said on stderr), else this machine's dev key.")
    parser.add_argument("--user", required=True, help="user id (claim sub)")
    parser.add_argument("--entity", required=True, help="entity id (claim entity_id)")
    parser.add_argument("--role", default="user", choices=("user", "agent", "admin"))
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    parser.add_argument("--jwt-secret", default=None, help="signing key (default: see above)")
    add_instance_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rtstream.auth import issue_dev_token

    from .state import dev_jwt_secret

    try:
        secret = Target(args, "token").value("jwt_secret", flag=args.jwt_secret, env="RTSTREAM_JWT_SECRET") or dev_jwt_secret()
        token = issue_dev_token(secret, user_id=args.user, entity_id=args.entity, role=args.role, ttl_seconds=args.ttl)
    except NoSuchInstance as exc:
        print(f"rtstream token: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"rtstream token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0
