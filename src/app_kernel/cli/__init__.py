"""The ``app-kernel`` command.

``app-kernel serve MODULE:APP`` runs the app under uvicorn; ``app-kernel check
MODULE:APP`` imports it, validates its settings and prints them with secrets
redacted; ``app-kernel users ...`` and ``app-kernel api-keys ...`` manage
accounts and machine credentials. Invalid settings exit with status 2 and a
message naming the setting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from app_kernel.cli import apikeys, jobs, users
from app_kernel.cli._args import PORT, whole_number
from app_kernel.cli._target import load_kernel
from app_kernel.errors import KernelError, SettingsError
from app_kernel.kernel import check_startup_settings
from app_kernel.observability.prometheus import MULTIPROC_ENV, fresh_multiproc_dir
from app_kernel.settings import KernelSettings

__all__ = ("main", "redacted_settings")

_REDACTED = "***"


def _redact(model: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("secret"):
            out[name] = _REDACTED if value else None
        elif isinstance(value, BaseModel):
            out[name] = _redact(value)
        elif name == "health_checks":
            out[name] = [getattr(c, "__name__", repr(c)) for c in value]
        elif name in ("url", "database_url") and isinstance(value, str):
            out[name] = _hide_url_password(value)
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _hide_url_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def redacted_settings(settings: KernelSettings) -> dict[str, Any]:
    """The effective settings as a JSON-ready dict, secrets replaced by ``***``."""
    data = _redact(settings)
    data["resolved_database_url"] = _hide_url_password(settings.resolved_database_url)
    return data


def _check(args: argparse.Namespace) -> int:
    settings = load_kernel(args.app).settings
    print(json.dumps(redacted_settings(settings), indent=2, default=str))
    check_startup_settings(settings)
    print("settings OK", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    if (args.workers or 1) > 1 and not os.environ.get(MULTIPROC_ENV):
        # Metrics of several workers are merged through files in this directory;
        # the workers inherit the variable.
        os.environ[MULTIPROC_ENV] = fresh_multiproc_dir()
    if not args.reload:
        # Fail before binding the port when the target is no kernel app (uvicorn
        # would serve anything callable); the module is imported once, as it is
        # cached. With --reload, uvicorn's own watcher waits for a fix instead.
        load_kernel(args.app)
    uvicorn.run(
        args.app,
        host=args.host,
        port=args.port,
        workers=args.workers,
        reload=args.reload,
        proxy_headers=False,
        server_header=False,
        log_config=None,
        app_dir=os.getcwd(),
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app-kernel", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run MODULE:APP under uvicorn")
    serve.add_argument("app", help="the app to run, as MODULE:APP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=PORT, default=8000)
    serve.add_argument("--workers", type=whole_number(1, 1024), default=None)
    serve.add_argument("--reload", action="store_true")
    serve.set_defaults(run=_serve)

    check = commands.add_parser("check", help="validate and print the settings of MODULE:APP")
    check.add_argument("app", help="the app to check, as MODULE:APP")
    check.set_defaults(run=_check)

    users.add_parser(commands)
    apikeys.add_parser(commands)
    jobs.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``app-kernel`` console script."""
    args = _parser().parse_args(argv)
    try:
        if hasattr(args, "run_async"):
            code: int = asyncio.run(args.run_async(args))
        else:
            code = args.run(args)
    except (SettingsError, KernelError) as exc:
        print(f"app-kernel: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
