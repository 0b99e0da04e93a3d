"""``botai``: the platform's command line (thin: every command delegates to a module).

botai up [--no-first-pipeline]   start the stack, load demo data, supervise it until Ctrl-C
botai up --role ROLE             run one part (server, worker, gateway, recovery) of a stack
                                 spread over hosts (docs/multihost.md)
botai down                       stop the stack started on this state folder
botai status [--json]            what runs: services (restarts, uptime), queues, workers, alerts
botai bootstrap                  create/update block documents from the environment
botai ingest ...                 run the ingest-market-data flow against the stack
botai models ...                 list, compare, promote, roll back, archive model versions
botai prefect ARGS...            run the prefect CLI against the stack (any folder of the repo)

Every command but ``up`` finds the stack without exports: the state folder from the current
folder (``.state`` of the repo, also from a folder below the repo root), the stack's ports and
Prefect profile from that folder (deployments/profile.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from core.environment import REPO_ROOT
from core.exceptions import BotAIError
from core.settings import Settings, load_settings


def _say(text: str) -> None:
    print(text, flush=True)


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    if args.role:
        from deployments.roles import run_role

        run_role(settings, os.environ, args.role, say=_say)
        return 0
    from deployments.up import up

    up(settings, os.environ, say=_say, first_pipeline=not args.no_first_pipeline)
    return 0


def _cmd_down(_args: argparse.Namespace, settings: Settings) -> int:
    from deployments.services import stop_all

    stopped = stop_all(settings)
    _say(f"stopped: {', '.join(stopped)}" if stopped else f"nothing runs on {settings.state_dir}")
    return 0


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from deployments.stack_status import status

    info = status(settings)
    # --- dead letters (recovery service, deployments/dead_letters.py)
    from deployments.dead_letters import dead_letter_status

    info["dead_letters"] = dead_letter_status(settings)
    # ---
    if args.json:
        _say(json.dumps(info, indent=1, default=str))
        return 0
    _say(f"state folder: {info['state_dir']}")
    if not info["services"]:
        _say("no process recorded (start the stack with `botai up`)")
    else:
        _say(
            f"  {'service':<15} {'pid':<8} {'status':<11} {'restarts':>8} {'uptime':>7}  last exit"
        )
    for s in info["services"]:
        state = s.get("status") or ("running" if s["alive"] else "stopped")
        last = "-"
        if s.get("last_exit_code") is not None or s.get("last_error"):
            last = f"code {s.get('last_exit_code')}: {s.get('last_error') or ''}".strip()
        if s.get("next_start_in_s") is not None:
            last += f" (next start in {s['next_start_in_s']:.0f}s)"
        _say(
            f"  {s['name']:<15} {s['pid'] or '-':<8} {state:<11} {s.get('restarts', '-'):>8} "
            f"{_ago(s.get('uptime_s')):>7}  {last}"
        )
    _say(f"Prefect API {info['api']}: {'healthy' if info['api_healthy'] else 'not answering'}")
    for q in info.get("queues", []):
        states = ", ".join(f"{k} {v}" for k, v in sorted(q["by_state"].items()))
        _say(
            f"  queue {q['queue']:<12} {q['waiting']:>4} waiting"
            + (f" ({states})" if states else "")
            + (f", oldest {_ago(q['oldest_waiting_s'])}" if q["oldest_waiting_s"] else "")
        )
    for w in info.get("workers", []):
        _say(
            f"  worker {w['name']:<24} {w['status']:<8} last heartbeat "
            f"{_ago(w['heartbeat_age_s'])} ago"
        )
    for p in info.get("pool_problems", []):
        _say(f"  PROBLEM: {p}")
    if info.get("pool_error"):
        _say(f"  work pool not read: {info['pool_error']}")
    for a in info.get("alerts", [])[-5:]:
        when = time.strftime("%H:%M:%S", time.localtime(a["at"]))
        _say(f"  alert {when} {a['level'].upper()}: {a['title']}: {a['message']}")
    for d in info.get("deployments", []):
        _say(f"  deployment {d}")
    for r in info.get("runs", []):
        _say(f"  run {r['name']:<24} {r['state']:<12} {r['id']}")
    letters = info["dead_letters"]
    if isinstance(letters, str) or letters:
        _say(f"dead letters: {letters if isinstance(letters, str) else len(letters)}")
    for d in letters if isinstance(letters, list) else []:
        _say(f"  {d['task_id']} {d['flow_name']} ({d['attempts']} attempts): {d['reason']}")
    return 0 if info["api_healthy"] else 1


def require_stack(settings: Settings) -> None:
    """Return when the stack's Prefect API answers.

    Raises:
        BotAIError: no Prefect API at ``settings.prefect_api_url`` (says how to start one).
    """
    import httpx

    try:
        if httpx.get(f"{settings.prefect_api_url}/health", timeout=2).is_success:
            return
    except httpx.HTTPError:
        pass
    raise BotAIError(
        f"no Prefect API at {settings.prefect_api_url} (state folder {settings.state_dir}): "
        "start the stack with `botai up`, or run the command in the repo of the running one "
        "(or set BOTAI_STATE_DIR to its state folder)"
    )


def _cmd_bootstrap(_args: argparse.Namespace, settings: Settings) -> int:
    from deployments.bootstrap import bootstrap_blocks
    from deployments.up import prefect_api

    require_stack(settings)
    with prefect_api(settings):
        saved = bootstrap_blocks(settings, os.environ)
    _say("created or updated: " + ", ".join(saved))
    return 0


def _cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from core.schemas.market_data import IngestParameters

    try:
        params = IngestParameters(
            source=args.source,
            symbols=args.symbols,
            timeframe=args.timeframe,
            days=args.days,
            csv_path=args.csv,
            seed=args.seed,
            resample_to=args.resample_to,
        )
    except ValidationError as e:
        _say(f"invalid parameters:\n{e}")
        return 2
    require_stack(settings)
    from deployments.up import prefect_api
    from flows.ingest_market_data import ingest_market_data

    with prefect_api(settings):
        result = ingest_market_data(params)
    for r in result.results:
        _say(
            f"{r.symbol} {r.timeframe} ({r.source}): +{r.inserted} new, {r.updated} updated, "
            f"{r.unchanged} unchanged, {r.rejected} rejected"
        )
    return 0


def _cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from api.models_cli import run_models

    return run_models(args, settings.state_dir, _say)


def _cmd_prefect(args: argparse.Namespace, settings: Settings) -> int:
    import shutil
    import subprocess

    from deployments.profile import prefect_command_env, profiles_path

    if not profiles_path(settings).is_file():
        raise BotAIError(
            f"no Prefect profile in {settings.state_dir}: start the stack with `botai up` "
            "(or set BOTAI_STATE_DIR to the state folder of the running one)"
        )
    found = shutil.which("prefect", path=str(Path(sys.executable).parent)) or shutil.which(
        "prefect"
    )
    cmd = [found] if found else [sys.executable, "-m", "prefect"]
    return subprocess.call(
        [*cmd, *args.prefect_args], env=prefect_command_env(settings, os.environ)
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``botai`` argument parser."""
    parser = argparse.ArgumentParser(prog="botai", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="start the stack and stay in the foreground until Ctrl-C")
    p.add_argument(
        "--no-first-pipeline",
        action="store_true",
        help="do not start the first ingest/train/backtest runs",
    )
    p.add_argument(
        "--role",
        choices=["server", "worker", "gateway", "recovery"],
        default=None,
        help="run one part of a stack spread over hosts against the services its settings "
        "name (docs/multihost.md); default: everything on this machine",
    )
    p.set_defaults(func=_cmd_up)
    sub.add_parser("down", help="stop the stack of this state folder").set_defaults(func=_cmd_down)
    p = sub.add_parser("status", help="show what runs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_status)
    sub.add_parser("bootstrap", help="create/update blocks from the environment").set_defaults(
        func=_cmd_bootstrap
    )
    p = sub.add_parser("ingest", help="run the ingest-market-data flow against the stack")
    p.add_argument("--source", default="binance", choices=["binance", "csv", "synthetic"])
    p.add_argument("--symbols", nargs="+", default=["BTCUSDT"], metavar="SYMBOL")
    p.add_argument("--timeframe", default="1h")
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--csv", default=None, metavar="PATH", help="CSV file (with --source csv)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resample-to", nargs="*", default=[], metavar="TIMEFRAME")
    p.set_defaults(func=_cmd_ingest)
    from api.models_cli import add_models_parser

    add_models_parser(sub, _cmd_models)
    p = sub.add_parser(
        "prefect",
        help="run the prefect CLI against the stack, e.g. botai prefect deployment ls",
        add_help=False,
    )
    p.add_argument("prefect_args", nargs=argparse.REMAINDER, metavar="ARGS")
    p.set_defaults(func=_cmd_prefect)
    return parser


def load_dotenv(path: Path) -> list[str]:
    """Add ``KEY=VALUE`` lines of ``path`` to the environment, never overriding a variable
    that is already set, and skipping empty values. Returns the names added."""
    added = []
    if not path.is_file():
        return added
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip().strip("'\"")
        if key and value and key not in os.environ:
            os.environ[key] = value
            added.append(key)
    return added


def run_command(
    prog: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    call: Callable[[argparse.Namespace], int],
) -> int:
    """Parse ``argv``, read ``.env``, set up logging and run ``call``; a platform error is
    printed as ``<prog> <command>: <message>`` with exit code 1. Returns the exit code."""
    args = parser.parse_args(argv)
    load_dotenv(REPO_ROOT / ".env")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return call(args)
    except BotAIError as e:
        print(f"{prog} {args.command}: {e}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``botai`` console script. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["prefect"]:  # what follows goes to prefect as it is, --help included
        rest = argv[1:]

        def passthrough(args: argparse.Namespace) -> int:
            args.prefect_args = rest
            return args.func(args, _settings(args))

        return run_command("botai", build_parser(), ["prefect"], passthrough)
    return run_command("botai", build_parser(), argv, lambda args: args.func(args, _settings(args)))


def _settings(args: argparse.Namespace) -> Settings:
    """The settings of a command: from the environment; for every command but ``up``, with
    the host, ports and pool of the stack recorded in the state folder where no variable sets
    them (deployments/profile.py)."""
    from deployments.profile import profiles_path, with_stack_record

    settings = load_settings()
    if args.command != "up":
        settings = with_stack_record(settings, os.environ)
    # this process's own Prefect client: the stack's home and profile, not ~/.prefect nor the
    # profile a prefect.toml in the current folder points at
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home))
    os.environ.setdefault("PREFECT_PROFILES_PATH", str(profiles_path(settings)))
    return settings


if __name__ == "__main__":
    sys.exit(main())
