"""``app-kernel api-keys``: create, list and revoke machine credentials."""

from __future__ import annotations

import argparse
import json
import sys

from app_kernel.cli._target import open_kernel
from app_kernel.errors import KernelError

__all__ = ("add_parser",)


async def _create(args: argparse.Namespace) -> int:
    async with open_kernel(args.app) as kernel:
        record = await kernel.auth.users.get_by_username(args.user)
        if record is None:
            msg = f"no user named {args.user!r}"
            raise KernelError(msg)
        plaintext, key = await kernel.auth.create_api_key(
            actor_id="cli",
            user_id=str(record["id"]),
            role=args.role,
            name=args.name,
            actor_type="cli",
        )
        print(json.dumps({"key": plaintext, **key.to_dict()}, default=str))
        print("store the key now: it is not shown again", file=sys.stderr)
    return 0


async def _list(args: argparse.Namespace) -> int:
    async with open_kernel(args.app) as kernel:
        for key in await kernel.auth.api_keys.list(include_revoked=args.all):
            print(json.dumps(key.to_dict(), default=str))
    return 0


async def _revoke(args: argparse.Namespace) -> int:
    async with open_kernel(args.app) as kernel:
        if not await kernel.auth.revoke_api_key(args.key_id, actor_id="cli", actor_type="cli"):
            msg = f"no active API key {args.key_id!r}"
            raise KernelError(msg)
        print(f"revoked {args.key_id}")
    return 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``api-keys`` and its sub-commands."""
    keys = commands.add_parser("api-keys", help="manage API keys")
    keys.add_argument("--app", help="MODULE:APP whose settings to use")
    sub = keys.add_subparsers(dest="keys_command", required=True)

    create = sub.add_parser("create", help="create a key for a user; prints it once")
    create.add_argument("--user", required=True, help="the owner's username")
    create.add_argument("--name", required=True)
    create.add_argument("--role", default="user")
    create.set_defaults(run_async=_create)

    listing = sub.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.set_defaults(run_async=_list)

    revoke = sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(run_async=_revoke)
