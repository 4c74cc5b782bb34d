"""`switchyard models`: move an alias between model versions, over the proxy's admin API.

    switchyard models rollout chat --to smollm2-v2            # a model id already in the catalog
    switchyard models rollout chat --to candidate.yaml --canary 10 --canary-s 60 --wait
    switchyard models rollback chat [--reason "bad answers"]
    switchyard models show chat

`--to FILE` takes a YAML/JSON catalog entry (registered as is: its engine already runs) or a deploy
spec ({kind: local_process|triton|vllm_lora|entry, entry: {...}, model_path: ...}). `--verify FILE`
takes {cases: [{messages, expect}], metric, min_score}. Needs an operator's admin key (--api-key,
$SWITCHYARD_API_KEY or var/demo_key).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from switchyard.jobs_cli import _api_key, _base_url


class ModelsError(Exception):
    pass


def register(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--base-url", default=None, help="the proxy (default: $SWITCHYARD_BASE_URL)")
    common.add_argument("--api-key", default=None, help="an operator's admin key")
    models = sub.add_parser("models", help="roll an alias out to a new model version, or back")
    actions = models.add_subparsers(dest="action", required=True)
    out = actions.add_parser("rollout", parents=[common], help="verify, canary, flip and monitor a new version")
    out.add_argument("model", help="the alias clients use")
    out.add_argument("--to", required=True, help="a model id, or a file with an entry or deploy spec")
    out.add_argument("--verify", help="a file of verification cases")
    out.add_argument("--canary", type=float, default=0.0, help="percent of requests on the new version first")
    out.add_argument("--canary-s", type=float, default=60.0, help="how long the canary runs")
    out.add_argument("--monitor-s", type=float, default=60.0, help="how long the new version is watched")
    out.add_argument("--max-error-rate", type=float, default=0.2)
    out.add_argument("--max-p95-ms", type=float, default=0.0)
    out.add_argument("--tenant", default="", help="the alias and version belong to this tenant only")
    out.add_argument("--wait", action="store_true", help="wait for the rollout's end and print it")
    back = actions.add_parser("rollback", parents=[common], help="the alias back on its previous version now")
    back.add_argument("model")
    back.add_argument("--reason", default="")
    show = actions.add_parser("show", parents=[common], help="an alias's versions, status and rollout")
    show.add_argument("model")
    models.set_defaults(fn=cmd_models)


def _load(path: Path) -> Any:
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)


def rollout_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"canary_percent": args.canary, "canary_s": args.canary_s if args.canary else 0.0,
                            "monitor": {"duration_s": args.monitor_s, "max_error_rate": args.max_error_rate,
                                        "max_p95_ms": args.max_p95_ms},
                            "tenant": args.tenant}
    target = Path(args.to)
    if target.is_file():
        spec = _load(target)
        body["deploy"] = spec if isinstance(spec, dict) and "kind" in spec else {"kind": "entry", "entry": spec}
    else:
        body["to"] = args.to
    if args.verify:
        body["verify"] = _load(Path(args.verify))
    return body


def cmd_models(args: argparse.Namespace) -> int:
    import httpx

    key = _api_key(args.api_key)
    if not key:
        print("no API key: pass --api-key or set SWITCHYARD_API_KEY", file=sys.stderr)
        return 2
    path = f"/admin/models/{args.model}"
    with httpx.Client(base_url=_base_url(args.base_url), headers={"authorization": f"Bearer {key}"},
                      timeout=60) as http:
        try:
            if args.action == "rollout":
                started = _checked(http.post(path + "/rollouts", json=rollout_body(args)))
                print(f"{started['id']}: rolling {args.model} out to {started['candidate']}")
                if args.wait:
                    return _wait(http, path)
            elif args.action == "rollback":
                state = _checked(http.post(path + "/rollback", json={"reason": args.reason}))
                print(f"{args.model} -> {state['target']} ({state['status']})")
            else:
                print(json.dumps(_checked(http.get(path)), indent=2))
        except (ModelsError, httpx.HTTPError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


def _wait(http: Any, path: str, timeout_s: float = 3600) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = _checked(http.get(path))
        rollout = state.get("rollout") or {}
        if rollout.get("status") not in (None, "running"):
            result = rollout.get("result") or {}
            print(json.dumps(result or rollout, indent=2))
            return 0 if result.get("status") == "deployed" else 1
        time.sleep(1)
    print("error: the rollout did not end in time", file=sys.stderr)
    return 1


def _checked(r: Any) -> dict[str, Any]:
    if r.status_code >= 400:
        try:
            error = r.json()["error"]
            raise ModelsError(f"{r.status_code} {error.get('code') or error.get('type')}: {error['message']}")
        except (ValueError, KeyError, TypeError):
            raise ModelsError(f"{r.status_code}: {r.text[:200]}") from None
    return dict(r.json())
