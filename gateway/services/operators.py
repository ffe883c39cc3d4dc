"""Function (operator) accounts: ACC-1 permissions, ACC-2 real-name accounts, ACC-3 first login."""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.services.base import Actor, Context
from gateway.services.passwords import (
    MIN_OPERATOR_PASSWORD,
    hash_password,
    new_token,
    token_hash,
    verify_password,
)
from protocol.cards.clock import fmt_local
from protocol.errors import AccessDenied, Duplicate, ErrorCode, InvalidInput, NotFound
from protocol.types import Permission
from storage.ports import Tx
from storage.records import Row

SESSION_TTL = timedelta(hours=12)


@functools.cache
def _dummy_hash() -> str:
    """A hash no password matches, checked for an unknown user name (same cost as a real one)."""
    return hash_password(new_token()[0])


MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)


def _disabled(username: str) -> AccessDenied:
    return AccessDenied(
        f"账号 {username} 已停用；重新启用须书面申请并经负责人审批（onecard operator enable）",
        f"account {username} is disabled; re-enabling needs a written application and the"
        " center head's approval (`onecard operator enable`)",
        code=ErrorCode.ACCOUNT_LOCKED,
        rule="ACC-2",
    )


def _locked(
    username: str, until: datetime, *, code: ErrorCode = ErrorCode.ACCOUNT_LOCKED
) -> AccessDenied:
    """Locked after wrong passwords, with the lockout's end in campus time."""
    end = fmt_local(until)
    return AccessDenied(
        f"密码错误次数过多，账号 {username} 锁定至 {end}；到时再试，或请账号管理员解锁"
        "（onecard operator unlock）",
        f"too many wrong passwords: account {username} is locked until {end}; try again then,"
        " or ask an accounts administrator to unlock it (`onecard operator unlock`)",
        code=code,
        rule="ACC-2",
    )


async def _count_failure(tx: Tx, row: Row, now: datetime, who: str, action: str) -> datetime | None:
    """One more wrong password for the account (ACC-2): the lockout's end once it locks."""
    failed = int(row["failed_logins"]) + 1
    locked = now + LOCKOUT if failed >= MAX_FAILED_LOGINS else None
    await tx.update(
        "operators", row["id"], {"failed_logins": 0 if locked else failed, "locked_until": locked}
    )
    await tx.audit(now, who, action, "operator", row["id"])
    return locked


async def _end_sessions(tx: Tx, operator_id: int, now: datetime, keep: str | None = None) -> None:
    for session in await tx.find("operator_sessions", operator_id=operator_id):
        if session["token_hash"] != keep and session["expires_at"] > now:
            await tx.update("operator_sessions", session["token_hash"], {"expires_at": now})


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    actor: Actor
    must_change_password: bool


def _actor(row: Row) -> Actor:
    return Actor(
        name=str(row["username"]),
        permissions=frozenset(Permission(p) for p in json.loads(row["permissions"])),
        operator_id=int(row["id"]),
        real_name=str(row["real_name"]),
    )


def password_classes(password: str) -> int:
    """How many of the four classes (upper case, lower case, digits, other) ``password`` uses."""
    return sum(
        (
            any(ch.isupper() for ch in password),
            any(ch.islower() for ch in password),
            any(ch.isdigit() for ch in password),
            any(not ch.isalnum() for ch in password),
        )
    )


def _check_new_password(username: str, password: str) -> None:
    """ACC-3 "更改复杂的账户密码": at least 8 characters, at least 3 of the 4 classes (upper
    case, lower case, digits, symbols), not containing the user name (in any case)."""
    if (
        len(password) < MIN_OPERATOR_PASSWORD
        or password_classes(password) < 3
        or username.casefold() in password.casefold()
    ):
        raise InvalidInput(
            f"密码须至少{MIN_OPERATOR_PASSWORD}位，包含大写字母、小写字母、数字、符号中的至少三类，"
            "且不能包含账号名",
            f"a password has at least {MIN_OPERATOR_PASSWORD} characters, at least 3 of upper "
            "case, lower case, digits and symbols, and does not contain the user name",
            rule="ACC-3",
        )


def _require_approval(approved_by: str, application_ref: str | None, *, written: bool) -> None:
    """ACC-2: a change to an account is approved by the center head (and, for permissions,
    applied for in writing); both are recorded in the audit log."""
    if not approved_by.strip() or (written and not (application_ref or "").strip()):
        raise InvalidInput(
            "须填写审批人（网管中心负责人）" + ("和书面申请编号" if written else ""),
            "the approver (the center head) is required"
            + (", and the written application reference" if written else ""),
            rule="ACC-2",
        )


class OperatorService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def bootstrap(self, username: str, real_name: str, password: str) -> int:
        """The first account (section chief, 科长) with every permission; only on an empty table."""
        _check_new_password(username, password)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            if await tx.count("operators"):
                raise Duplicate(
                    "已存在操作员账号", "operator accounts exist already: use `operator add`"
                )
            op_id = await tx.insert(
                "operators",
                {
                    "username": username,
                    "real_name": real_name,
                    "department": "网管中心",
                    "permissions": json.dumps(sorted(Permission)),
                    "password_hash": hash_password(password),
                    "must_change_password": True,
                    "created_at": now,
                    "created_by": "init",
                    "approved_by": real_name,
                    "application_ref": "initial installation",
                },
            )
            await tx.audit(
                now, "init", "operator.bootstrap", "operator", op_id, None, {"username": username}
            )
        return op_id

    async def create(
        self,
        actor: Actor,
        *,
        username: str,
        real_name: str,
        department: str,
        permissions: list[Permission],
        approved_by: str,
        application_ref: str,
        initial_password: str,
    ) -> int:
        """ACC-2: a real-name account from a written application approved by the center head."""
        actor.require(Permission.ACCOUNTS_ADMIN)
        if not real_name.strip() or not approved_by.strip() or not application_ref.strip():
            raise InvalidInput(
                "须填写真实姓名、审批人和书面申请编号",
                "real name, approver and the written application reference are required",
                rule="ACC-2",
            )
        if not permissions:
            raise InvalidInput("须至少授予一项权限", "grant at least one permission", rule="ACC-1")
        _check_new_password(username, initial_password)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            if await tx.find("operators", username=username):
                raise Duplicate(f"账号 {username} 已存在", f"account {username} exists already")
            values = {
                "username": username,
                "real_name": real_name,
                "department": department,
                "permissions": json.dumps(sorted(permissions)),
                "password_hash": hash_password(initial_password),
                "must_change_password": True,
                "created_at": now,
                "created_by": actor.name,
                "approved_by": approved_by,
                "application_ref": application_ref,
            }
            op_id = await tx.insert("operators", values)
            public = {k: v for k, v in values.items() if k != "password_hash"}
            await tx.audit(now, actor.name, "operator.create", "operator", op_id, None, public)
        return op_id

    async def set_disabled(self, actor: Actor, username: str, disabled: bool) -> None:
        actor.require(Permission.ACCOUNTS_ADMIN)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            row = await self._row(tx, username)
            if disabled:
                await self._keep_an_administrator(tx, row, {"disabled": True})
            await tx.update("operators", row["id"], {"disabled": disabled})
            await tx.audit(
                now,
                actor.name,
                "operator.disable" if disabled else "operator.enable",
                "operator",
                row["id"],
                {"disabled": row["disabled"]},
                {"disabled": disabled},
            )
            if disabled:
                for session in await tx.find("operator_sessions", operator_id=row["id"]):
                    await tx.update("operator_sessions", session["token_hash"], {"expires_at": now})

    async def _change(
        self,
        actor: Actor,
        username: str,
        action: str,
        values: dict[str, Any],
        *,
        approved_by: str,
        application_ref: str | None,
        written: bool = False,
        end_sessions: bool = False,
        shown: dict[str, Any] | None = None,
    ) -> None:
        """One audited change to an account, with its ACC-2 approval recorded."""
        actor.require(Permission.ACCOUNTS_ADMIN)
        _require_approval(approved_by, application_ref, written=written)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            row = await self._row(tx, username)
            if "permissions" in values or values.get("disabled"):
                await self._keep_an_administrator(tx, row, values)
            await tx.update("operators", row["id"], values)
            public = shown if shown is not None else values
            await tx.audit(
                now,
                actor.name,
                action,
                "operator",
                row["id"],
                {k: row[k] for k in public if k in row},
                {
                    **public,
                    "approved_by": approved_by.strip(),
                    "application_ref": (application_ref or "").strip() or None,
                },
            )
            if end_sessions:
                ended = self.ctx.wall_now()
                for session in await tx.find("operator_sessions", operator_id=row["id"]):
                    await tx.update(
                        "operator_sessions", session["token_hash"], {"expires_at": ended}
                    )

    async def _keep_an_administrator(self, tx: Tx, row: Row, values: dict[str, Any]) -> None:
        """Never leave the registry without an enabled accounts administrator (ACC-2)."""
        admin = Permission.ACCOUNTS_ADMIN.value
        stays = not values.get("disabled", row["disabled"]) and admin in json.loads(
            str(values.get("permissions", row["permissions"]))
        )
        others = [
            r
            for r in await tx.find("operators", disabled=False)
            if r["id"] != row["id"] and admin in json.loads(r["permissions"])
        ]
        if not stays and not others:
            raise InvalidInput(
                "不能停用或撤销最后一个账户管理员",
                "the last enabled accounts administrator cannot be disabled or lose the permission",
                rule="ACC-2",
            )

    async def unlock(
        self, actor: Actor, username: str, *, approved_by: str, application_ref: str | None = None
    ) -> None:
        """Lift a lockout after wrong passwords (audited, approval recorded)."""
        await self._change(
            actor,
            username,
            "operator.unlock",
            {"failed_logins": 0, "locked_until": None},
            approved_by=approved_by,
            application_ref=application_ref,
        )

    async def enable(
        self, actor: Actor, username: str, *, approved_by: str, application_ref: str | None = None
    ) -> None:
        """Re-enable a disabled account (audited, approval recorded); lockout cleared too."""
        await self._change(
            actor,
            username,
            "operator.enable",
            {"disabled": False, "failed_logins": 0, "locked_until": None},
            approved_by=approved_by,
            application_ref=application_ref,
        )

    async def reset_password(
        self,
        actor: Actor,
        username: str,
        new_initial: str,
        *,
        approved_by: str,
        application_ref: str | None = None,
    ) -> None:
        """A new initial password (ACC-3: complex, changed at the next login); the account's
        sessions end and any lockout is lifted. Audited without the password."""
        _check_new_password(username, new_initial)
        await self._change(
            actor,
            username,
            "operator.password_reset",
            {
                "password_hash": hash_password(new_initial),
                "must_change_password": True,
                "failed_logins": 0,
                "locked_until": None,
            },
            approved_by=approved_by,
            application_ref=application_ref,
            end_sessions=True,
            shown={"must_change_password": True},
        )

    async def set_permissions(
        self,
        actor: Actor,
        username: str,
        permissions: list[Permission],
        *,
        approved_by: str,
        application_ref: str,
    ) -> None:
        """ACC-1/2: the account's permissions become exactly ``permissions``, on a written
        application approved by the center head (both recorded in the audit log)."""
        if not permissions:
            raise InvalidInput("须至少授予一项权限", "grant at least one permission", rule="ACC-1")
        await self._change(
            actor,
            username,
            "operator.permissions",
            {"permissions": json.dumps(sorted(set(permissions)))},
            approved_by=approved_by,
            application_ref=application_ref,
            written=True,
        )

    async def _row(self, tx: Tx, username: str) -> Row:
        rows = await tx.find("operators", username=username)
        if not rows:
            raise NotFound(f"无此账号 {username}", f"no account {username}")
        return rows[0]

    async def login(self, username: str, password: str) -> Session:
        """Check the password (lockout after repeated failures) and open a session.

        A failed attempt is counted and committed before the refusal is raised.
        """
        now = self.ctx.wall_now()
        minutes = int(LOCKOUT.total_seconds() // 60)
        wrong = AccessDenied(
            f"账号或密码错误（连续错误 {MAX_FAILED_LOGINS} 次将锁定 {minutes} 分钟）",
            f"wrong user name or password ({MAX_FAILED_LOGINS} wrong tries in a row lock the"
            f" account for {minutes} minutes)",
            code=ErrorCode.AUTH_FAILED,
            rule="ACC-3",
        )
        # scrypt (tens of ms) in a thread and outside any transaction (never holding the write
        # lock the taps wait for); an unknown name costs a hash too, so timing tells no names
        async with self.ctx.registry.read() as tx:
            rows = await tx.find("operators", username=username)
        if not rows:
            await asyncio.to_thread(verify_password, password, _dummy_hash())
            raise wrong
        row = rows[0]
        if row["disabled"]:
            raise _disabled(username)
        if row["locked_until"] is not None and row["locked_until"] > now:
            raise _locked(username, row["locked_until"])
        ok = await asyncio.to_thread(verify_password, password, row["password_hash"])
        locked: datetime | None = None
        async with self.ctx.registry.transaction() as tx:
            fresh = await tx.get("operators", row["id"])  # counted under the write lock
            assert fresh is not None
            if fresh["disabled"]:
                raise _disabled(username)
            if fresh["locked_until"] is not None and fresh["locked_until"] > now:
                raise _locked(username, fresh["locked_until"])  # by a parallel attempt
            if fresh["password_hash"] != row["password_hash"]:
                ok = False  # changed meanwhile: the check above no longer holds
            if not ok:
                locked = await _count_failure(tx, fresh, now, username, "operator.login_failed")
            else:
                token, digest = new_token()
                await tx.update("operators", row["id"], {"failed_logins": 0, "locked_until": None})
                await tx.put(
                    "operator_sessions",
                    {
                        "token_hash": digest,
                        "operator_id": row["id"],
                        "created_at": now,
                        "expires_at": now + SESSION_TTL,
                    },
                )
                await tx.audit(now, username, "operator.login", "operator", row["id"])
        if not ok:
            if locked is not None:
                raise _locked(username, locked, code=ErrorCode.AUTH_FAILED)
            raise wrong
        return Session(
            token=token,
            actor=_actor(fresh),
            must_change_password=bool(fresh["must_change_password"]),
        )

    async def authenticate(self, token: str, *, allow_password_change_only: bool = False) -> Actor:
        """The operator behind a session token; ACC-3: nothing else until the password changes."""
        now = self.ctx.wall_now()
        async with self.ctx.registry.read() as tx:
            session = await tx.get("operator_sessions", token_hash(token))
            if session is None or session["expires_at"] <= now:
                raise AccessDenied(
                    "请先登录",
                    "not logged in or session expired: run `onecard login`",
                    code=ErrorCode.AUTH_FAILED,
                )
            row = await tx.get("operators", session["operator_id"])
        assert row is not None
        if row["disabled"]:
            raise _disabled(str(row["username"]))
        if row["must_change_password"] and not allow_password_change_only:
            raise AccessDenied(
                "首次使用须先修改初始密码：onecard passwd",
                "change the initial password first: `onecard passwd`",
                code=ErrorCode.PASSWORD_CHANGE_REQUIRED,
                rule="ACC-3",
            )
        return _actor(row)

    async def change_password(self, token: str, old: str, new: str) -> None:
        actor = await self.authenticate(token, allow_password_change_only=True)
        _check_new_password(actor.name, new)
        if old == new:
            raise InvalidInput(
                "新密码不能与原密码相同",
                "the new password must differ from the old one",
                rule="ACC-3",
            )
        now = self.ctx.wall_now()
        async with self.ctx.registry.read() as tx:
            row = await tx.get("operators", actor.operator_id)
        assert row is not None
        # a wrong current password counts towards the lockout like a wrong login (someone at an
        # unlocked console must not guess it without limit); scrypt in a thread, outside the tx
        ok = await asyncio.to_thread(verify_password, old, row["password_hash"])
        new_hash = await asyncio.to_thread(hash_password, new) if ok else ""
        locked: datetime | None = None
        async with self.ctx.registry.transaction() as tx:
            fresh = await tx.get("operators", row["id"])
            assert fresh is not None
            if fresh["password_hash"] != row["password_hash"]:
                ok = False
            if not ok:
                locked = await _count_failure(
                    tx, fresh, now, actor.name, "operator.password_change_failed"
                )
                if locked is not None:
                    await _end_sessions(tx, row["id"], now)
            else:
                await tx.update(
                    "operators",
                    row["id"],
                    {"password_hash": new_hash, "must_change_password": False, "failed_logins": 0},
                )
                # a stolen session of the old password ends with it
                await _end_sessions(tx, row["id"], now, keep=token_hash(token))
                await tx.audit(now, actor.name, "operator.password_changed", "operator", row["id"])
        if locked is not None:
            raise _locked(actor.name, locked, code=ErrorCode.AUTH_FAILED)
        if not ok:
            raise AccessDenied("原密码错误", "wrong current password", code=ErrorCode.AUTH_FAILED)

    async def logout(self, token: str) -> None:
        now = self.ctx.wall_now()
        async with self.ctx.registry.transaction() as tx:
            if await tx.get("operator_sessions", token_hash(token)) is not None:
                await tx.update("operator_sessions", token_hash(token), {"expires_at": now})

    async def list(self, actor: Actor) -> list[Row]:
        actor.require(Permission.ACCOUNTS_ADMIN)
        async with self.ctx.registry.read() as tx:
            rows = await tx.find("operators", order_by="id")
        return [{k: v for k, v in r.items() if k != "password_hash"} for r in rows]
