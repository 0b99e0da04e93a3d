"""``botai-api``: serve the HTTP gateway, or sign a token for it.

botai-api serve                          serve on BOTAI_API_HOST:BOTAI_API_PORT (127.0.0.1:8000)
botai-api token --user U [--admin]       print a token signed with BOTAI_API_JWT_SECRET

``botai up`` starts ``serve`` itself when BOTAI_API_JWT_SECRET is set. Both read ``.env``
like ``botai`` does (variables already set win).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from datetime import timedelta

from core.exceptions import BotAIError
from core.settings import load_settings


def _serve(_args: argparse.Namespace) -> int:
    from api.access import write_gateway_access
    from api.main import serve
    from api.settings import load_api_settings
    from deployments.cli import require_stack
    from deployments.up import prefect_api

    settings = load_settings()
    api_settings = load_api_settings()
    if api_settings.prefect_ui_url is None:
        api_settings.prefect_ui_url = settings.prefect_ui_url
    require_stack(settings)
    write_gateway_access(settings.state_dir, api_settings)  # `botai models` in any terminal
    logging.getLogger(__name__).info(
        "gateway on http://%s:%d/api (OpenAPI docs at /docs), Prefect API %s",
        api_settings.host,
        api_settings.port,
        settings.prefect_api_url,
    )
    with prefect_api(settings):
        serve(api_settings)
    return 0


def _token(args: argparse.Namespace) -> int:
    from api.security import issue_token
    from api.settings import load_api_settings

    if args.hours <= 0:
        raise BotAIError(f"--hours must be > 0 (got {args.hours})")
    token = issue_token(
        load_api_settings(), args.user, admin=args.admin, ttl=timedelta(hours=args.hours)
    )
    sys.stdout.write(token + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``botai-api`` argument parser."""
    parser = argparse.ArgumentParser(prog="botai-api", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="serve the gateway (docs/api.md)").set_defaults(func=_serve)
    p = sub.add_parser("token", help="print a gateway token (operators and scripts)")
    p.add_argument("--user", required=True, help="user id (the token's 'sub')")
    p.add_argument("--admin", action="store_true", help="role admin (may train, ingest, ...)")
    p.add_argument("--hours", type=float, default=1.0, help="validity in hours (default 1)")
    p.set_defaults(func=_token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``botai-api``. Returns the exit code."""
    from deployments.cli import run_command

    return run_command("botai-api", build_parser(), argv, lambda args: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
