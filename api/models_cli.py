"""``botai models``: operate the model registry through the stack's gateway (admin).

botai models list [--symbol S] [--timeframe T] [--model-type M]
botai models compare VERSION_A VERSION_B
botai models promote VERSION --reason "..."
botai models rollback --symbol S --timeframe T --model-type M --reason "..."
botai models archive VERSION --reason "..."
botai models audit [--symbol S] [--timeframe T] [--model-type M]

The gateway and the operator's token come from the state folder (``api.access``), so the
command works from any terminal in the project, like ``botai status``. ``--json`` prints the
gateway's answer as it is.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any

from core.exceptions import BotAIError

Say = Callable[[str], None]


def add_models_parser(sub: Any, handler: Callable[..., int]) -> None:
    """Add ``models`` and its subcommands to the ``botai`` parser (``sub``)."""
    p = sub.add_parser("models", help="list, compare, promote, roll back, archive model versions")
    p.set_defaults(func=handler)
    msub = p.add_subparsers(dest="models_command", required=True)

    def key_options(q: argparse.ArgumentParser, required: bool) -> None:
        q.add_argument("--symbol", required=required, help="e.g. BTCUSDT")
        q.add_argument("--timeframe", required=required, help="e.g. 1h")
        q.add_argument("--model-type", required=required, choices=["lstm", "gru", "transformer"])

    def with_json(q: argparse.ArgumentParser) -> argparse.ArgumentParser:
        q.add_argument("--json", action="store_true", help="print the gateway's JSON answer")
        return q

    key_options(with_json(msub.add_parser("list", help="versions with their figures")), False)
    q = with_json(msub.add_parser("compare", help="two versions side by side"))
    q.add_argument("a", metavar="VERSION_A")
    q.add_argument("b", metavar="VERSION_B")
    for name, text in (("promote", "deploy a version"), ("archive", "archive a version")):
        q = with_json(msub.add_parser(name, help=text))
        q.add_argument("version", metavar="VERSION", help="e.g. lstm-BTCUSDT-1h-v3")
        q.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    q = with_json(msub.add_parser("rollback", help="back to the previous deployed version"))
    key_options(q, True)
    q.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    key_options(with_json(msub.add_parser("audit", help="who changed what, when, why")), False)


def request(method: str, url: str, token: str, **kwargs: Any) -> dict[str, Any]:
    """One call to the gateway.

    Returns:
        the JSON answer.

    Raises:
        BotAIError: no answer, or an error answer (its message, which says what to change).
    """
    import httpx

    try:
        response = httpx.request(
            method, url, headers={"Authorization": f"Bearer {token}"}, timeout=30, **kwargs
        )
    except httpx.HTTPError as e:
        raise BotAIError(
            f"no answer from the gateway at {url} ({type(e).__name__}): is the stack running "
            "(`botai status`)?"
        ) from None
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text[:300]}
    if response.status_code >= 400:
        error = body.get("error") if isinstance(body, dict) else body
        if response.status_code == 401:
            error = (
                f"{error}. The operator token is written when the gateway starts: restart "
                "the stack, or set BOTAI_API_TOKEN (`botai-api token --user NAME --admin`)"
            )
        raise BotAIError(f"{response.status_code}: {error}")
    return body


def _key_params(args: argparse.Namespace) -> dict[str, str]:
    return {
        k: v
        for k, v in (
            ("symbol", args.symbol),
            ("timeframe", args.timeframe),
            ("model_type", args.model_type),
        )
        if v
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def show_versions(body: dict[str, Any], say: Say) -> None:
    """Print ``GET /api/models``'s answer as a table per key."""
    if not body["versions"]:
        say("no model versions (train one: the train-model flow, or `botai up`'s first pipeline)")
        return
    say(
        f"{'version':<28} {'status':<10} {'held-out':>8} {'majority':>8} {'logreg':>7} "
        f"{'hours':>6} {'live hit':>8}  created"
    )
    for v in body["versions"]:
        h, live = v["held_out"], v.get("live") or {}
        say(
            f"{v['version']:<28} {v['status']:<10} {_pct(h['accuracy']):>8} "
            f"{_pct(h['majority_class_accuracy']):>8} {_pct(h['logistic_regression_accuracy']):>7} "
            f"{h['samples'] or '-':>6} {_pct(live.get('hit_rate')):>8}  "
            f"{v['created_at'][:16].replace('T', ' ')}"
        )
    for key, version in sorted(body["deployed"].items()):
        say(f"deployed {key}: {version}")


def show_comparison(body: dict[str, Any], say: Say) -> None:
    """Print ``GET /api/models/compare``'s answer."""
    for side in ("a", "b"):
        v = body[side]
        h = v["held_out"]
        say(
            f"{side}: {v['version']} ({v['status']}) held-out accuracy {_pct(h['accuracy'])} "
            f"on {h['samples'] or '?'} hours ({h['measured_on'] or 'unknown'}); baselines: "
            f"majority {_pct(h['majority_class_accuracy'])}, logistic regression "
            f"{_pct(h['logistic_regression_accuracy'])}"
        )
    say(body["note"])


def run_models(args: argparse.Namespace, state_dir: Any, say: Say) -> int:
    """Run one ``botai models`` subcommand against the gateway. Returns the exit code.

    Raises:
        BotAIError: no gateway or token known, or the gateway refused (its message).
    """
    from api.access import read_gateway_access

    url, token = read_gateway_access(state_dir, os.environ)
    command = args.models_command
    if command == "list":
        body = request("GET", f"{url}/models", token, params=_key_params(args))
    elif command == "compare":
        body = request("GET", f"{url}/models/compare", token, params={"a": args.a, "b": args.b})
    elif command == "audit":
        body = request("GET", f"{url}/models/audit", token, params=_key_params(args))
    elif command == "rollback":
        payload = {"key": _key_params(args), "reason": args.reason}
        body = request("POST", f"{url}/models/rollback", token, json=payload)
    else:  # promote, archive
        body = request(
            "POST", f"{url}/models/{args.version}/{command}", token, json={"reason": args.reason}
        )
    if args.json:
        say(json.dumps(body, indent=1))
    elif command == "list":
        show_versions(body, say)
    elif command == "compare":
        show_comparison(body, say)
    elif command == "audit":
        for e in body["entries"]:
            say(
                f"{e['at'][:19]} {e['by']} {e['action']} {e['version']}: "
                f"{e['from_status']} -> {e['to_status']} ({e['reason']})"
            )
    else:
        say(body["message"])
        for e in body["audit"]:
            say(f"  {e['version']}: {e['from_status']} -> {e['to_status']}")
    return 0
