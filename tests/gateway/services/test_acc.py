"""ACC: function (operator) accounts, through the services on SQLite."""

from __future__ import annotations

import json

import pytest

from gateway.services.base import Actor
from protocol.errors import AccessDenied, Duplicate, ErrorCode, InvalidInput
from protocol.types import Permission
from tests.conftest import Counter
from tests.gateway.services import helpers as h

INITIAL = "Init-2026-pass"
NEW = "Better-pass-77"


async def ready_operator(c: Counter, username: str, *perms: Permission) -> str:
    """Create a function account (ACC-2), log in and change the initial password (ACC-3)."""
    await c.center.operators.create(
        c.admin,
        username=username,
        real_name="李会计",
        department="后勤管理处",
        permissions=list(perms),
        approved_by="网管中心主任 张",
        application_ref="后勤〔2026〕7号",
        initial_password=INITIAL,
    )
    session = await c.center.operators.login(username, INITIAL)
    await c.center.operators.change_password(session.token, INITIAL, NEW)
    return session.token


@pytest.mark.asyncio
async def test_acc1_function_accounts_do_only_what_they_were_granted(counter: Counter) -> None:
    """ACC-1: a consumption-correction account may correct a sale but not top up; an account
    needs at least one permission."""
    c = counter
    student, card = await h.student_with_temp(c)
    await c.center.money.topup(c.op, card.serial, 2000)
    sale = await h.post_purchase(c, student.id, "canteen-1", 800)

    token = await ready_operator(c, "corrector", Permission.CONSUMPTION_CORRECTION)
    corrector = await c.center.operators.authenticate(token)
    assert corrector.permissions == frozenset({Permission.CONSUMPTION_CORRECTION})
    fixed = await c.center.money.correct(corrector, sale, 300, reason="多扣")
    assert fixed.balance == 1500
    with pytest.raises(AccessDenied) as err:
        await c.center.money.topup(corrector, card.serial, 100)
    assert (err.value.rule, err.value.code) == ("ACC-2", ErrorCode.PERMISSION_DENIED)
    assert "topup_center" in str(err.value)

    with pytest.raises(InvalidInput) as bad:
        await c.center.operators.create(
            c.admin,
            username="nobody",
            real_name="王五",
            department="后勤管理处",
            permissions=[],
            approved_by="主任",
            application_ref="申请-1",
            initial_password=INITIAL,
        )
    assert bad.value.rule == "ACC-1"


@pytest.mark.asyncio
async def test_acc2_real_name_account_from_an_approved_written_application(
    counter: Counter,
) -> None:
    """ACC-2: only an accounts administrator creates accounts, from a written application
    naming the real person and approved by the center head; the account is registered."""
    c = counter
    clerk = h.actor("clerk", Permission.CARD_HANDLING)
    fields = {
        "username": "water01",
        "real_name": "赵六",
        "approved_by": "网管中心主任 张",
        "application_ref": "后勤〔2026〕8号",
    }

    async def create(who: Actor, **override: str) -> int:
        values = {**fields, **override}
        return await c.center.operators.create(
            who,
            username=values["username"],
            real_name=values["real_name"],
            department="后勤管理处",
            permissions=[Permission.WATER_CONTROL],
            approved_by=values["approved_by"],
            application_ref=values["application_ref"],
            initial_password=INITIAL,
        )

    with pytest.raises(AccessDenied) as err:
        await create(clerk)
    assert (err.value.rule, err.value.code) == ("ACC-2", ErrorCode.PERMISSION_DENIED)
    for missing in ("approved_by", "application_ref", "real_name"):
        with pytest.raises(InvalidInput) as bad:
            await create(c.admin, **{missing: " "})
        assert bad.value.rule == "ACC-2"
    assert await h.count(c, "operators") == 0

    op_id = await create(c.admin)
    (row,) = await h.find(c, "operators", id=op_id)
    assert (row["real_name"], row["approved_by"], row["application_ref"], row["created_by"]) == (
        "赵六",
        "网管中心主任 张",
        "后勤〔2026〕8号",
        "chief",
    )
    assert json.loads(row["permissions"]) == ["water_control"]
    assert row["must_change_password"] is True
    assert INITIAL not in row["password_hash"]
    (log,) = await h.audit(c, "operator.create")
    assert "password_hash" not in h.loads(log["after"])
    with pytest.raises(Duplicate):
        await create(c.admin)


@pytest.mark.asyncio
async def test_acc3_initial_password_changed_at_first_use(counter: Counter) -> None:
    """ACC-3: the bootstrap account and every new account must change the initial password
    before doing anything; a weak or unchanged password is refused."""
    c = counter
    await c.center.operators.bootstrap("chief", "王科长", INITIAL)
    with pytest.raises(Duplicate):
        await c.center.operators.bootstrap("chief2", "某人", INITIAL)
    session = await c.center.operators.login("chief", INITIAL)
    assert session.must_change_password is True
    with pytest.raises(AccessDenied) as err:
        await c.center.operators.authenticate(session.token)
    assert (err.value.rule, err.value.code) == ("ACC-3", ErrorCode.PASSWORD_CHANGE_REQUIRED)

    for weak in ("12345678", "short1", "chief-2026-x"):
        with pytest.raises(InvalidInput) as bad:
            await c.center.operators.change_password(session.token, INITIAL, weak)
        assert bad.value.rule == "ACC-3"
    with pytest.raises(InvalidInput):
        await c.center.operators.change_password(session.token, INITIAL, INITIAL)
    with pytest.raises(AccessDenied) as wrong:
        await c.center.operators.change_password(session.token, "Wrong-pass-1", NEW)
    assert wrong.value.code is ErrorCode.AUTH_FAILED

    await c.center.operators.change_password(session.token, INITIAL, NEW)
    chief = await c.center.operators.authenticate(session.token)
    assert chief.permissions == frozenset(Permission)
    (row,) = await h.find(c, "operators", username="chief")
    assert row["must_change_password"] is False
    assert len(await h.audit(c, "operator.password_changed")) == 1


@pytest.mark.asyncio
async def test_acc_operator_locked_after_5_wrong_passwords(counter: Counter) -> None:
    """ACC-2/ACC-3: a real-name account is locked for a while after five wrong passwords, even
    against the right one; each failure is audited."""
    c = counter
    await ready_operator(c, "cash01", Permission.CASH_MACHINE)
    for _ in range(5):
        with pytest.raises(AccessDenied) as err:
            await c.center.operators.login("cash01", "Wrong-pass-9")
        assert err.value.code is ErrorCode.AUTH_FAILED
    with pytest.raises(AccessDenied) as err:
        await c.center.operators.login("cash01", NEW)
    assert err.value.code is ErrorCode.ACCOUNT_LOCKED
    assert len(await h.audit(c, "operator.login_failed")) == 5
    (row,) = await h.find(c, "operators", username="cash01")
    assert row["locked_until"] is not None
    assert row["locked_until"] > c.clock.now()

    c.clock.advance(minutes=16)
    session = await c.center.operators.login("cash01", NEW)
    assert session.must_change_password is False
    actor = await c.center.operators.authenticate(session.token)
    assert actor.permissions == frozenset({Permission.CASH_MACHINE})


@pytest.mark.asyncio
async def test_acc3_complex_passwords_only(counter: Counter) -> None:
    """ACC-3 "更改复杂的账户密码": an initial, reset or changed password has at least 8 characters,
    at least 3 of upper case, lower case, digits and symbols, and does not contain the user name
    in any case; the bootstrap account's too."""
    c = counter
    weak = [
        "short",  # too short
        "Ab1-xyz",  # 7 characters
        "alllowercase1",  # 2 classes
        "ALLUPPER-ONLY",  # 2 classes
        "12345678",
        "My-Water01-pw",  # contains the user name, in another case
    ]
    for password in weak:
        with pytest.raises(InvalidInput) as bad:
            await c.center.operators.create(
                c.admin,
                username="water01",
                real_name="赵六",
                department="后勤管理处",
                permissions=[Permission.WATER_CONTROL],
                approved_by="网管中心主任 张",
                application_ref="后勤〔2026〕8号",
                initial_password=password,
            )
        assert bad.value.rule == "ACC-3", password
        assert "三类" in bad.value.message_zh
    with pytest.raises(InvalidInput) as bad:
        await c.center.operators.bootstrap("chief", "王科长", "chiefpass")
    assert bad.value.rule == "ACC-3"
    assert await h.count(c, "operators") == 0
    for fine in ("Abcdefg1", "abcdefg1-", "ABCDEFG1!"):
        await c.center.operators.create(
            c.admin,
            username=f"u{len(fine)}{fine[0]}",
            real_name="赵六",
            department="后勤管理处",
            permissions=[Permission.WATER_CONTROL],
            approved_by="网管中心主任 张",
            application_ref="后勤〔2026〕8号",
            initial_password=fine,
        )


@pytest.mark.asyncio
async def test_acc2_account_life_cycle_audited_with_the_approval(counter: Counter) -> None:
    """ACC-2/ACC-3: an accounts administrator unlocks a locked account, re-enables a disabled
    one, resets a password (a new complex initial password, changed at the next login; the old
    sessions end) and changes permissions (on a written application) — each approved by the
    center head, recorded in the audit log; nobody else may, and the last administrator stays."""
    c = counter
    await c.center.operators.bootstrap("chief", "王科长", INITIAL)
    chief_session = await c.center.operators.login("chief", INITIAL)
    await c.center.operators.change_password(chief_session.token, INITIAL, NEW)
    chief = await c.center.operators.authenticate(chief_session.token)
    token = await ready_operator(c, "cash01", Permission.CASH_MACHINE)
    clerk = await c.center.operators.authenticate(token)
    approval = {"approved_by": "网管中心主任 张"}

    with pytest.raises(AccessDenied):
        await c.center.operators.unlock(clerk, "cash01", **approval)
    with pytest.raises(InvalidInput) as bad:
        await c.center.operators.unlock(chief, "cash01", approved_by=" ")
    assert bad.value.rule == "ACC-2"

    for _ in range(5):
        with pytest.raises(AccessDenied):
            await c.center.operators.login("cash01", "Wrong-pass-9")
    with pytest.raises(AccessDenied) as err:
        await c.center.operators.login("cash01", NEW)
    assert err.value.code is ErrorCode.ACCOUNT_LOCKED
    await c.center.operators.unlock(chief, "cash01", **approval)
    await c.center.operators.login("cash01", NEW)

    await c.center.operators.set_disabled(chief, "cash01", True)
    with pytest.raises(AccessDenied):
        await c.center.operators.login("cash01", NEW)
    await c.center.operators.enable(chief, "cash01", **approval, application_ref="后勤〔2026〕9号")
    token = (await c.center.operators.login("cash01", NEW)).token

    with pytest.raises(InvalidInput) as bad:
        await c.center.operators.reset_password(chief, "cash01", "short", **approval)
    assert bad.value.rule == "ACC-3"
    await c.center.operators.reset_password(chief, "cash01", "Reset-2026-pw", **approval)
    with pytest.raises(AccessDenied):
        await c.center.operators.authenticate(token)  # the old session ended
    session = await c.center.operators.login("cash01", "Reset-2026-pw")
    assert session.must_change_password is True
    with pytest.raises(AccessDenied) as err:
        await c.center.operators.authenticate(session.token)
    assert err.value.code is ErrorCode.PASSWORD_CHANGE_REQUIRED
    await c.center.operators.change_password(session.token, "Reset-2026-pw", "Another-pw-55")

    with pytest.raises(InvalidInput) as bad:  # a permission change needs the written application
        await c.center.operators.set_permissions(
            chief, "cash01", [Permission.REPORTS], application_ref=" ", **approval
        )
    assert bad.value.rule == "ACC-2"
    await c.center.operators.set_permissions(
        chief,
        "cash01",
        [Permission.CASH_MACHINE, Permission.REPORTS],
        application_ref="后勤〔2026〕11号",
        **approval,
    )
    actor = await c.center.operators.authenticate(session.token)
    assert actor.permissions == frozenset({Permission.CASH_MACHINE, Permission.REPORTS})
    with pytest.raises(InvalidInput) as bad:  # the last accounts administrator stays one
        await c.center.operators.set_permissions(
            chief, "chief", [Permission.REPORTS], application_ref="x", **approval
        )
    assert bad.value.rule == "ACC-2"
    with pytest.raises(InvalidInput):
        await c.center.operators.set_disabled(chief, "chief", True)

    actions = [
        "operator.unlock",
        "operator.enable",
        "operator.password_reset",
        "operator.permissions",
    ]
    for action in actions:
        (log,) = await h.audit(c, action)
        after = h.loads(log["after"])
        assert (log["actor"], after["approved_by"]) == ("chief", "网管中心主任 张"), action
        assert "password_hash" not in after
        assert "Reset-2026-pw" not in (log["after"] or "")
    (perm,) = await h.audit(c, "operator.permissions")
    assert json.loads(h.loads(perm["before"])["permissions"]) == ["cash_machine"]
    assert h.loads(perm["after"])["application_ref"] == "后勤〔2026〕11号"
