"""Terminal provisioning: the registry of POS, kiosks, door readers and water controllers.

A terminal's id is its MQTT username and client id; its broker password is stored only as the
mosquitto hash (the plain password is shown once, to install on the device). Disabling a terminal
refuses its very next request (the gateway checks the registry on every request) and removes it
from the broker's password file at the next ``onecard broker render`` + SIGHUP.
"""

from __future__ import annotations

from gateway.services.base import Actor, Context
from protocol.errors import Duplicate, ErrorCode, InvalidInput, NotFound
from protocol.types import Permission
from protocol.wire import TerminalKind, is_valid_terminal_id
from storage.records import Row


class TerminalRegistryService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def add(
        self,
        actor: Actor,
        terminal_id: str,
        kind: TerminalKind,
        *,
        password_hash: str,
        merchant_id: str | None = None,
        location: str = "",
    ) -> None:
        actor.require(Permission.TERMINALS)
        if not is_valid_terminal_id(terminal_id) or terminal_id == "gateway":
            raise InvalidInput(
                "终端编号只能含小写字母、数字、- 和 _", f"invalid terminal id {terminal_id!r}"
            )
        if kind in (TerminalKind.POS, TerminalKind.WATER) and not merchant_id:
            raise InvalidInput("POS 和水控须指定商户", "a POS or water controller needs a merchant")
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            if await tx.get("terminals", terminal_id) is not None:
                raise Duplicate(
                    f"终端 {terminal_id} 已登记", f"terminal {terminal_id} exists already"
                )
            if merchant_id and await tx.get("merchants", merchant_id) is None:
                raise NotFound(f"无此商户 {merchant_id}", f"no merchant {merchant_id}")
            await tx.put(
                "terminals",
                {
                    "id": terminal_id,
                    "kind": kind.value,
                    "merchant_id": merchant_id,
                    "location": location,
                    "enabled": True,
                    "mqtt_password_hash": password_hash,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            await tx.audit(
                now,
                actor.name,
                "terminal.add",
                "terminal",
                terminal_id,
                None,
                {"kind": kind.value, "merchant": merchant_id, "location": location},
            )

    async def set_enabled(self, actor: Actor, terminal_id: str, enabled: bool) -> None:
        actor.require(Permission.TERMINALS)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            row = await tx.get("terminals", terminal_id)
            if row is None:
                raise NotFound(
                    f"无此终端 {terminal_id}",
                    f"no terminal {terminal_id}",
                    code=ErrorCode.TERMINAL_UNKNOWN,
                )
            await tx.update("terminals", terminal_id, {"enabled": enabled, "updated_at": now})
            await tx.audit(
                now,
                actor.name,
                "terminal.enable" if enabled else "terminal.disable",
                "terminal",
                terminal_id,
                {"enabled": bool(row["enabled"])},
                {"enabled": enabled},
            )

    async def set_password_hash(self, actor: Actor, terminal_id: str, password_hash: str) -> None:
        actor.require(Permission.TERMINALS)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            if await tx.get("terminals", terminal_id) is None:
                raise NotFound(
                    f"无此终端 {terminal_id}",
                    f"no terminal {terminal_id}",
                    code=ErrorCode.TERMINAL_UNKNOWN,
                )
            await tx.update(
                "terminals", terminal_id, {"mqtt_password_hash": password_hash, "updated_at": now}
            )
            await tx.audit(now, actor.name, "terminal.password", "terminal", terminal_id)

    async def list(self, actor: Actor) -> list[Row]:
        actor.require(Permission.TERMINALS)
        async with self.ctx.registry.read() as tx:
            return await tx.find("terminals", order_by="id")
