"""``app-kernel users``: create the first admin, list, reset passwords, deactivate."""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from app_kernel.auth.passwords import check_password_policy
from app_kernel.auth.store import UserAdminStore, UserStoreMissingFeature
from app_kernel.cli._args import OFFSET, whole_number
from app_kernel.cli._target import open_kernel
from app_kernel.errors import KernelError
from app_kernel.kernel import Kernel

__all__ = ("add_parser",)


def _read_password(args: argparse.Namespace) -> str:
    """From stdin with ``--password-stdin`` (or when stdin is not a terminal), else a prompt.

    Never from the command line, where it would land in shell history and ``ps``.
    """
    if args.password_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        msg = "the passwords differ"
        raise KernelError(msg)
    return first


def _check_password(kernel: Kernel, password: str) -> None:
    auth = kernel.settings.auth
    problems = check_password_policy(
        password, min_length=auth.password_min_length, max_length=auth.password_max_length
    )
    if problems:
        raise KernelError(" ".join(problems))


def _admin_store(kernel: Kernel, feature: str, method: str) -> UserAdminStore:
    users = kernel.auth.users
    if not isinstance(users, UserAdminStore):
        raise UserStoreMissingFeature(feature, method)
    return users


async def _find(kernel: Kernel, username: str) -> str:
    record = await kernel.auth.users.get_by_username(username)
    if record is None:
        msg = f"no user named {username!r}"
        raise KernelError(msg)
    return str(record["id"])


async def _create(args: argparse.Namespace) -> int:
    password = _read_password(args)
    async with open_kernel(args.app) as kernel:
        _check_password(kernel, password)
        password_hash = await kernel.auth.hasher.hash_async(password)
        role = "admin" if args.admin else "user"
        try:
            record = await kernel.auth.create_user(
                args.username, args.email, password_hash, role=role, actor_type="cli"
            )
        except ValueError as exc:
            raise KernelError(str(exc)) from None
        print(json.dumps({"id": record["id"], "username": args.username, "role": role}))
    return 0


async def _list(args: argparse.Namespace) -> int:
    async with open_kernel(args.app) as kernel:
        store = _admin_store(kernel, "users list", "list_users")
        for record in await store.list_users(limit=args.limit, offset=args.offset):
            view = {k: record.get(k) for k in ("id", "username", "email", "role", "is_active")}
            print(json.dumps(view, default=str))
    return 0


async def _set_password(args: argparse.Namespace) -> int:
    password = _read_password(args)
    async with open_kernel(args.app) as kernel:
        _check_password(kernel, password)
        store = _admin_store(kernel, "users set-password", "set_password_hash")
        user_id = await _find(kernel, args.username)
        await store.set_password_hash(user_id, await kernel.auth.hasher.hash_async(password))
        await kernel.auth.revoke_all(user_id, reason="password_changed", actor_type="cli")
        print(f"password changed for {args.username}; earlier tokens no longer work")
    return 0


async def _set_active(args: argparse.Namespace, active: bool) -> int:
    async with open_kernel(args.app) as kernel:
        store = _admin_store(kernel, "users deactivate", "set_active")
        user_id = await _find(kernel, args.username)
        await store.set_active(user_id, active)
        await kernel.auth.set_active(user_id, active, actor_type="cli")
        print(f"{args.username} {'activated' if active else 'deactivated'}")
    return 0


async def _deactivate(args: argparse.Namespace) -> int:
    return await _set_active(args, False)


async def _activate(args: argparse.Namespace) -> int:
    return await _set_active(args, True)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``users`` and its sub-commands."""
    users = commands.add_parser("users", help="manage local users")
    users.add_argument("--app", help="MODULE:APP whose settings and user store to use")
    sub = users.add_subparsers(dest="users_command", required=True)

    create = sub.add_parser(
        "create", help="create a user (the password is read, never an argument)"
    )
    create.add_argument("username")
    create.add_argument("--email", required=True)
    create.add_argument("--admin", action="store_true", help="give the user the admin role")
    create.add_argument("--password-stdin", action="store_true")
    create.set_defaults(run_async=_create)

    listing = sub.add_parser("list", help="list users")
    listing.add_argument("--limit", type=whole_number(1, 1000), default=100)
    listing.add_argument("--offset", type=OFFSET, default=0)
    listing.set_defaults(run_async=_list)

    password = sub.add_parser("set-password", help="replace a password; ends earlier tokens")
    password.add_argument("username")
    password.add_argument("--password-stdin", action="store_true")
    password.set_defaults(run_async=_set_password)

    deactivate = sub.add_parser("deactivate", help="deactivate a user; ends every token")
    deactivate.add_argument("username")
    deactivate.set_defaults(run_async=_deactivate)

    activate = sub.add_parser("activate", help="activate a deactivated user")
    activate.add_argument("username")
    activate.set_defaults(run_async=_activate)
