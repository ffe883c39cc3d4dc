"""``onecard privacy ...``: personal data a regulator can audit (issue 15, docs/privacy.md).

Audited reads of a full ID number, a photo reference or a transaction history (each with the
purpose the clerk gives), the reads-per-operator report, a holder's data export, the key status
and rotation, and retention (dry run first, then archive and purge).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

import click

from gateway.cli.common import holder_ref, parse_day, pass_opts
from gateway.cli.runtime import Options, emit, emit_table, refuse, run_as
from gateway.retention import Archive, run_retention, write_private
from gateway.services.base import Actor
from gateway.services.center import CardCenter
from gateway.services.privacy import (
    Export,
    PrivacyService,
    ReadCount,
    RetentionDue,
    RetentionPolicy,
)
from protocol.cards.clock import CAMPUS_TZ
from protocol.cards.fees import yuan
from protocol.errors import ErrorCode
from protocol.types import Permission
from storage import pii, piidb
from storage.engine import database_url
from storage.sql import SqlRegistry

EXPORT_FILE_MODE = 0o600
PURPOSE_HELP = "查阅目的（记入审计日志） / the purpose of this read (audit-logged)"


@click.group()
def privacy() -> None:
    """个人信息：查阅审计、导出、密钥轮换、保存期限 / personal data: audited reads, export, key
    rotation, retention (docs/privacy.md)."""


def _registry(c: CardCenter) -> SqlRegistry:
    registry = c.ctx.registry
    assert isinstance(registry, SqlRegistry)
    return registry


async def _holder_id(c: CardCenter, ref: str) -> int:
    return (await c.cards.holder(holder_ref(ref))).id


def _audited_read(opts: Options, ref: str, purpose: str, field: str, absent: str) -> None:
    """One audited read of ``field`` (``national_id`` or ``photo_ref``) of a holder."""

    async def body(c: CardCenter, a: Actor) -> dict[str, Any]:
        hid = await _holder_id(c, ref)
        service = PrivacyService(c.ctx)
        read = service.read_id if field == "national_id" else service.read_photo
        return {"holder_id": hid, field: await read(a, hid, purpose)}

    data = run_as(opts, body)
    emit(opts, data, f"#{data['holder_id']} {data[field] or absent}")


@privacy.command("show-id")
@click.argument("ref")
@click.option("--purpose", required=True, help=PURPOSE_HELP)
@pass_opts
def show_id(opts: Options, ref: str, purpose: str) -> None:
    """完整证件号码（审计） / a holder's full ID number, audited with the purpose.

    例 example: onecard privacy show-id '#12' --purpose "核对补卡申请表 REP-3"
    """
    _audited_read(opts, ref, purpose, "national_id", "无证件 no ID")


@privacy.command("photo")
@click.argument("ref")
@click.option("--purpose", required=True, help=PURPOSE_HELP)
@pass_opts
def photo(opts: Options, ref: str, purpose: str) -> None:
    """照片引用（审计） / a holder's photo reference, audited with the purpose.

    例 example: onecard privacy photo 2026000001 --purpose "核对制卡照片 ISS-2"
    """
    _audited_read(opts, ref, purpose, "photo_ref", "无照片 no photo")


@privacy.command("history")
@click.argument("ref")
@click.option("--purpose", required=True, help=PURPOSE_HELP)
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=200,
    show_default=True,
    help="最多显示条数 / at most this many transfers, newest first",
)
@pass_opts
def history(opts: Options, ref: str, purpose: str, limit: int) -> None:
    """全部交易记录（审计） / a holder's transaction history, audited with the purpose.

    例 example: onecard privacy history '#12' --purpose "消费争议核查 TOP-2"
    """

    async def body(c: CardCenter, a: Actor) -> list[dict[str, Any]]:
        hid = await _holder_id(c, ref)
        return await PrivacyService(c.ctx).history(a, hid, purpose, limit)

    rows = run_as(opts, body)
    emit_table(
        opts,
        "交易记录 transaction history",
        ["编号 / id", "时间 / at", "类型 / kind", "付方 / source", "收方 / dest", "金额 / yuan"],
        [
            [
                r["id"],
                r["at"].strftime("%Y-%m-%d %H:%M"),
                r["kind"],
                r["source"],
                r["dest"],
                yuan(r["amount"]),
            ]
            for r in rows
        ],
    )


def _day(text: str | None) -> datetime | None:
    return None if text is None else datetime.combine(parse_day(text), time(), CAMPUS_TZ)


@privacy.command("reads")
@click.option("--since", help="起始日期 from (YYYY-MM-DD, campus time)")
@click.option("--until", help="截止日期 through (YYYY-MM-DD, inclusive)")
@pass_opts
def reads(opts: Options, since: str | None, until: str | None) -> None:
    """各操作员查阅个人信息的次数 / reads of personal data per operator (the audit log).

    例 example: onecard privacy reads --since 2026-11-01 --until 2026-11-30
    """
    start = _day(since)
    end = _day(until)
    end = end + timedelta(days=1) if end else None

    async def body(c: CardCenter, a: Actor) -> list[ReadCount]:
        a.require(Permission.REPORTS)
        return await PrivacyService(c.ctx).reads_report(start, end)

    rows = run_as(opts, body)
    emit_table(
        opts,
        "个人信息查阅 reads of personal data",
        ["操作员 / operator", "类型 / action", "次数 / reads", "人数 / holders", "最近 / last_at"],
        [
            [r.operator, r.action, r.reads, r.holders, r.last_at.isoformat() if r.last_at else ""]
            for r in rows
        ],
    )


def _sealer(reg: SqlRegistry) -> Callable[[bytes], str]:
    """Seal an archive under the registry's current encryption key (``pii1:`` token)."""
    return lambda data: pii.seal_bytes(reg.pii.enc_keys[0], data, pii.AAD_EXPORT)


@privacy.command("export")
@click.argument("ref")
@click.option("--purpose", required=True, help="申请依据 the holder's request (audit-logged)")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="导出文件（JSON，仅本人可读 0600） / the file to write (JSON, mode 0600)",
)
@pass_opts
def export(opts: Options, ref: str, purpose: str, out: Path) -> None:
    """持卡人数据导出（个人信息保护法第45条） / everything held about a holder, as a readable
    JSON file, at their request (PIPL art. 45; audited).

    例 example: onecard privacy export 2026000001 --purpose "本人书面申请" --out zhang.json
    """

    async def body(c: CardCenter, a: Actor) -> Export:
        hid = await _holder_id(c, ref)
        return await PrivacyService(c.ctx).export(a, hid, purpose)

    data = run_as(opts, body)
    write_private(out, data.to_json())
    emit(
        opts,
        {"holder_id": data.holder_id, "file": str(out), "records": data.count()},
        f"已导出 exported #{data.holder_id}: {data.count()} 条记录 records -> {out}",
    )


@privacy.command("status")
@pass_opts
def status(opts: Options) -> None:
    """证件号码加密状态和密钥 / how the ID numbers are stored, under which keys.

    例 example: onecard privacy status
    """

    async def body(c: CardCenter, a: Actor) -> dict[str, Any]:
        a.require(Permission.ACCOUNTS_ADMIN)
        reg = _registry(c)
        found = await piidb.status(reg.engines.writer)
        return {
            **found,
            "current_key": reg.pii.current_kid,
            "keys": reg.pii.kids,
            "key_source": reg.pii.source,
        }

    data = run_as(opts, body)
    by_key = ", ".join(f"{k}: {n}" for k, n in data["by_key"].items()) or "—"
    emit(
        opts,
        data,
        f"明文 clear: {data['clear']}；密文 sealed: {by_key}\n"
        f"当前密钥 current key: {data['current_key']}；已载入 loaded: {', '.join(data['keys'])}"
        f"\n密钥来源 key source: {data['key_source']}",
    )


@privacy.command("rotate")
@click.option(
    "--prune",
    is_flag=True,
    help="重启所有进程后：重新加密剩余记录并删除旧密钥 / after restarting every process: "
    "re-encrypt what is left and drop the old keys",
)
@pass_opts
def rotate(opts: Options, prune: bool) -> None:
    """轮换加密密钥：新密钥置顶并重新加密全部证件号码 / rotate the encryption key: a new key
    first in the key file, every ID number re-encrypted under it (docs/privacy.md runbook).

    \b
    例 examples:
      onecard privacy rotate
      onecard privacy rotate --prune
    """
    if os.environ.get(pii.ENV_KEY):
        refuse(
            opts,
            f"密钥来自环境变量 {pii.ENV_KEY}：请手工在最前面加入新的 enc 密钥后重启",
            f"the key comes from {pii.ENV_KEY}: put a new enc entry first by hand and restart",
        )
    path = pii.key_path(database_url(opts.db))

    async def body(c: CardCenter, a: Actor) -> dict[str, Any]:
        a.require(Permission.ACCOUNTS_ADMIN)
        reg = _registry(c)
        ring = pii.read_key_file(path)
        if not prune:
            ring = pii.Keyring(
                ring.hmac_key, (pii.new_keyring().enc_keys[0], *ring.enc_keys), str(path)
            )
            pii.write_key_file(path, ring)
        moved = await piidb.rekey(reg.engines.writer, ring)
        left = await piidb.status(reg.engines.writer)
        dropped: list[str] = []
        if prune and set(left["by_key"]) <= {ring.current_kid} and left["clear"] == 0:
            dropped = ring.kids[1:]
            pii.write_key_file(path, pii.Keyring(ring.hmac_key, ring.enc_keys[:1], str(path)))
        now = c.ctx.clock.now()
        async with reg.transaction() as tx:
            await tx.audit(
                now,
                a.name,
                "pii.rotate",
                "pii_key",
                ring.current_kid,
                None,
                {"reencrypted": moved, "dropped": dropped},
            )
        return {"current_key": ring.current_kid, "reencrypted": moved, "dropped": dropped}

    data = run_as(opts, body)
    emit(
        opts,
        data,
        f"当前密钥 current key {data['current_key']}；重新加密 re-encrypted {data['reencrypted']}；"
        f"删除旧密钥 dropped {', '.join(data['dropped']) or '—'}",
    )


@privacy.command("init-key")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@pass_opts
def init_key(opts: Options, path: Path) -> None:
    """新建密钥文件（0600）；然后设置 ONECARD_PII_KEY_FILE / create a key file (mode 0600), then
    point ONECARD_PII_KEY_FILE at it before the registry is created.

    例 example: onecard privacy init-key /etc/onecard/pii.key
    """
    if path.exists():
        refuse(opts, f"{path} 已存在", f"{path} exists already", code=ErrorCode.DUPLICATE)
    ring = pii.new_keyring(str(path))
    pii.write_key_file(path, ring)
    emit(
        opts,
        {"file": str(path), "key": ring.current_kid},
        f"已创建 created {path} ({ring.current_kid})",
    )


@privacy.command("retention")
@click.option(
    "--after-graduation-days",
    type=click.IntRange(30, 36_500),
    default=RetentionPolicy().after_graduation_days,
    show_default=True,
    envvar="ONECARD_RETENTION_GRADUATION_DAYS",
    help="毕业注销后保存天数 / days kept after graduation",
)
@click.option(
    "--after-termination-days",
    type=click.IntRange(30, 36_500),
    default=RetentionPolicy().after_termination_days,
    show_default=True,
    envvar="ONECARD_RETENTION_TERMINATION_DAYS",
    help="其他注销（离校、离职、退卡）后保存天数 / days kept after any other deregistration",
)
@click.option(
    "--apply", "apply_", is_flag=True, help="归档并清除（默认只列出） / archive, then purge"
)
@click.option(
    "--archive-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="加密归档目录（--apply 必填） / where the encrypted archives go (needed by --apply)",
)
@pass_opts
def retention(
    opts: Options,
    after_graduation_days: int,
    after_termination_days: int,
    apply_: bool,
    archive_dir: Path | None,
) -> None:
    """保存期满的个人信息：先列出（试运行），--apply 时加密归档再清除 / personal data past its
    retention period: listed first (dry run); --apply archives each holder encrypted, then
    clears their personal fields (the ledger stays; audited).

    \b
    例 examples:
      onecard privacy retention
      onecard privacy retention --apply --archive-dir /srv/onecard/archive
    """
    if apply_ and archive_dir is None:
        raise click.UsageError("--apply 需要 --archive-dir / --apply needs --archive-dir")
    policy = RetentionPolicy(after_graduation_days, after_termination_days)

    async def body(c: CardCenter, a: Actor) -> list[dict[str, Any]]:
        a.require(Permission.ACCOUNTS_ADMIN)
        reg = _registry(c)
        run = await run_retention(
            c.ctx,
            a,
            policy,
            archive=Archive(archive_dir, _sealer(reg)) if apply_ and archive_dir else None,
            compact=lambda: piidb.checkpoint(reg.engines.writer),
        )
        return [{**_due_row(d), "purged": d.holder_id in run.purged} for d in run.plan]

    rows = run_as(opts, body)
    emit_table(
        opts,
        "保存期满 due for purging" + ("（已清除 purged）" if apply_ else "（试运行 dry run）"),
        [
            "持卡人 / holder_id",
            "姓名 / name",
            "注销原因 / reason",
            "到期 / due_at",
            "已清除 / purged",
            "说明 / note",
        ],
        [
            [r["holder_id"], r["name"], r["reason"], r["due_at"], r["purged"], r["note"]]
            for r in rows
        ],
    )


def _due_row(due: RetentionDue) -> dict[str, Any]:
    return {
        "holder_id": due.holder_id,
        "name": due.name_masked,
        "reason": due.reason,
        "due_at": due.due_at.date().isoformat(),
        "note": due.blocked or "",
        "purged": False,
    }
