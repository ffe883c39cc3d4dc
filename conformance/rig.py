"""The test rig: what the kit cannot do over MQTT — switch the terminal on and off, present a
card — is done by a person at the terminal (:class:`PromptRig`) or by an automated rig through a
hook (:class:`HookRig`, or any object with the :class:`Rig` methods, in-process).

Hook protocol (``--hook CMD``): the kit starts ``CMD`` once and talks JSON lines on its stdin and
stdout, one reply line per request line::

    -> {"action": "start"}                                   <- {"ok": true}
    -> {"action": "tap", "card": "04A1B2C3D4E5F6", "amount_fen": 800}
    <- {"ok": true, "approved": false, "code": "card_lost"}
    -> {"action": "power_cut"}                               <- {"ok": false, "unsupported": true}
    -> {"action": "stop"}                                    <- {"ok": true}

``tap`` presents the card to the terminal for the amount (a sale on a POS, an access request on a
door reader) and answers with what the terminal showed: approved, or declined with the error
code it displayed (the contract's code, e.g. ``card_lost``, or ``offline_*`` for its own offline
refusals). ``power_cut`` removes power without an orderly shutdown (the last will must fire).
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["HookError", "HookRig", "PromptRig", "Rig", "TapOutcome"]


@dataclass(frozen=True, slots=True)
class TapOutcome:
    approved: bool
    code: str | None = None


class Rig(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def power_cut(self) -> bool: ...  # False: this rig cannot
    async def tap(self, card: str, amount_fen: int) -> TapOutcome: ...


class HookError(RuntimeError):
    """The hook process failed or answered something unreadable."""


class HookRig:
    """An automated rig behind a command speaking JSON lines (see the module docstring)."""

    def __init__(self, command: str, *, timeout_s: float = 60.0) -> None:
        self.command = command
        self.timeout_s = timeout_s
        self._proc: asyncio.subprocess.Process | None = None

    async def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._proc is None:
            self._proc = await asyncio.create_subprocess_exec(
                *shlex.split(self.command),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        proc = self._proc
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(json.dumps(request).encode() + b"\n")
        await proc.stdin.drain()
        try:
            async with asyncio.timeout(self.timeout_s):
                line = await proc.stdout.readline()
        except ValueError:  # a line over the stream limit (64 KiB)
            raise HookError("hook answered a line over 64 KiB") from None
        if not line:
            raise HookError(f"hook {self.command!r} ended (exit {proc.returncode})")
        try:
            reply = json.loads(line)
        except ValueError:
            raise HookError(f"hook answered {line[:200]!r}") from None
        if not isinstance(reply, dict):
            raise HookError(f"hook answered {reply!r}")
        return reply

    async def start(self) -> None:
        await self._ask({"action": "start"})

    async def stop(self) -> None:
        await self._ask({"action": "stop"})

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def power_cut(self) -> bool:
        reply = await self._ask({"action": "power_cut"})
        return not reply.get("unsupported", False)

    async def tap(self, card: str, amount_fen: int) -> TapOutcome:
        reply = await self._ask({"action": "tap", "card": card, "amount_fen": amount_fen})
        code = reply.get("code")
        return TapOutcome(bool(reply.get("approved")), None if code is None else str(code))


class PromptRig:
    """A person at the terminal: the kit says what to do and reads what the terminal showed."""

    def __init__(self, *, can_cut_power: bool = True) -> None:
        self.can_cut_power = can_cut_power

    async def _say(self, text: str) -> str:
        sys.stderr.write(text + "\n> ")
        sys.stderr.flush()
        line: str = await asyncio.to_thread(sys.stdin.readline)
        return line.strip()

    async def start(self) -> None:
        await self._say(
            "请接通终端电源并联网，完成后回车 / switch the terminal on, then press Enter"
        )

    async def stop(self) -> None:
        await self._say("请正常关闭终端，完成后回车 / shut the terminal down normally, then Enter")

    async def power_cut(self) -> bool:
        if not self.can_cut_power:
            return False
        answer = await self._say(
            "请直接断开终端电源（不要正常关机），完成后回车；无法断电请输入 n / pull the power"
            " (no orderly shutdown), then Enter; type n if you cannot"
        )
        return answer.lower() != "n"

    async def tap(self, card: str, amount_fen: int) -> TapOutcome:
        answer = await self._say(
            f"请刷卡 {card}，金额 {amount_fen / 100:.2f} 元；终端显示成功输入 a，"
            "拒绝输入 d 和错误码"
            f" / present card {card} for {amount_fen / 100:.2f} yuan; type a if approved,"
            " d CODE if declined (e.g. d card_lost)"
        )
        parts = answer.split()
        if parts and parts[0].lower() == "a":
            return TapOutcome(True)
        return TapOutcome(False, parts[1] if len(parts) > 1 else None)
