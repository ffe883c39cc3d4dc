"""The shared error vocabulary: a closed set of codes with bilingual messages.

Every refusal onecard gives, whether at the counter, a kiosk or a POS, carries one
:class:`ErrorCode`; messages are zh-CN first with English beside it, because counter operators and
cardholders read Chinese first. Domain refusals that come from a published rule also carry the
rule id (e.g. ``REP-1``) so an operator can look the rule up.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Closed enum of error codes, shared by the counter, the CLI and the terminal contract."""

    # card state refusals (taps and procedures)
    CARD_LOST = "card_lost"
    CARD_FROZEN = "card_frozen"
    CARD_SUSPENDED = "card_suspended"
    CARD_EXPIRED = "card_expired"
    CARD_TERMINATED = "card_terminated"
    CARD_VOID = "card_void"
    CARD_NOT_ISSUED = "card_not_issued"
    CARD_UNKNOWN = "card_unknown"
    # procedures
    TRANSITION_NOT_ALLOWED = "transition_not_allowed"
    TOO_EARLY = "too_early"
    TOO_LATE = "too_late"
    NOT_ELIGIBLE = "not_eligible"
    HOLDER_DATA_INCOMPLETE = "holder_data_incomplete"
    BALANCE_NOT_SETTLED = "balance_not_settled"
    OUT_OF_STOCK = "out_of_stock"
    DUPLICATE = "duplicate"
    NOT_FOUND = "not_found"
    INVALID_INPUT = "invalid_input"
    # money
    INSUFFICIENT_FUNDS = "insufficient_funds"
    INVALID_AMOUNT = "invalid_amount"
    CORRECTION_EXCEEDS_ORIGINAL = "correction_exceeds_original"
    # people and access
    AUTH_FAILED = "auth_failed"
    ACCOUNT_LOCKED = "account_locked"
    PASSWORD_CHANGE_REQUIRED = "password_change_required"
    PERMISSION_DENIED = "permission_denied"
    # terminal contract
    TERMINAL_UNKNOWN = "terminal_unknown"
    TERMINAL_DISABLED = "terminal_disabled"
    MALFORMED = "malformed"
    UNSUPPORTED = "unsupported"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"
    EXPIRED = "expired"
    # offline settlement (store and forward)
    OFFLINE_LIMIT = "offline_limit"
    DENYLIST_STALE = "denylist_stale"
    CLOCK_SKEW = "clock_skew"


#: Default bilingual text for each code: (zh-CN, en).
MESSAGES: dict[ErrorCode, tuple[str, str]] = {
    ErrorCode.CARD_LOST: ("卡片已挂失", "card reported lost"),
    ErrorCode.CARD_FROZEN: ("卡片已冻结", "card frozen"),
    ErrorCode.CARD_SUSPENDED: ("卡片已停用", "card suspended"),
    ErrorCode.CARD_EXPIRED: ("卡片已过期", "card expired"),
    ErrorCode.CARD_TERMINATED: ("卡片已终止", "card terminated"),
    ErrorCode.CARD_VOID: ("卡片已作废", "card void (replaced, exchanged or returned)"),
    ErrorCode.CARD_NOT_ISSUED: ("卡片尚未发放", "card not yet handed over"),
    ErrorCode.CARD_UNKNOWN: ("无此卡片", "unknown card"),
    ErrorCode.TRANSITION_NOT_ALLOWED: ("当前状态不能办理此业务", "not allowed in the card's state"),
    ErrorCode.TOO_EARLY: ("办理时间未到", "too early"),
    ErrorCode.TOO_LATE: ("已超过办理期限", "too late"),
    ErrorCode.NOT_ELIGIBLE: ("不符合办理条件", "not eligible"),
    ErrorCode.HOLDER_DATA_INCOMPLETE: ("持卡人信息不全", "holder data incomplete"),
    ErrorCode.BALANCE_NOT_SETTLED: ("余额未结清", "balance not settled"),
    ErrorCode.OUT_OF_STOCK: ("库存不足", "out of stock"),
    ErrorCode.DUPLICATE: ("记录已存在", "already exists"),
    ErrorCode.NOT_FOUND: ("记录不存在", "not found"),
    ErrorCode.INVALID_INPUT: ("输入有误", "invalid input"),
    ErrorCode.INSUFFICIENT_FUNDS: ("余额不足", "insufficient balance"),
    ErrorCode.INVALID_AMOUNT: ("金额无效", "invalid amount"),
    ErrorCode.CORRECTION_EXCEEDS_ORIGINAL: (
        "纠错金额超过原交易",
        "correction exceeds the original",
    ),
    ErrorCode.AUTH_FAILED: ("账号或密码错误", "wrong number or password"),
    ErrorCode.ACCOUNT_LOCKED: ("账号已锁定", "account locked"),
    ErrorCode.PASSWORD_CHANGE_REQUIRED: ("请先修改初始密码", "change the initial password first"),
    ErrorCode.PERMISSION_DENIED: ("无此权限", "permission denied"),
    ErrorCode.TERMINAL_UNKNOWN: ("终端未登记", "terminal not provisioned"),
    ErrorCode.TERMINAL_DISABLED: ("终端已停用", "terminal disabled"),
    ErrorCode.MALFORMED: ("报文格式错误", "malformed message"),
    ErrorCode.UNSUPPORTED: ("不支持的操作", "unsupported operation"),
    ErrorCode.IDEMPOTENCY_CONFLICT: (
        "请求号重复但内容不同",
        "request id reused with other content",
    ),
    ErrorCode.INTERNAL: ("系统内部错误", "internal error"),
    ErrorCode.UNAVAILABLE: ("服务暂不可用", "service unavailable"),
    ErrorCode.EXPIRED: ("请求已过期，未执行", "request expired; nothing done"),
    ErrorCode.OFFLINE_LIMIT: ("超出脱机交易限额", "offline limit exceeded"),
    ErrorCode.DENYLIST_STALE: ("终端黑名单过期", "terminal's deny list was too old"),
    ErrorCode.CLOCK_SKEW: ("终端时间异常", "terminal clock out of range"),
}


def bilingual(code: ErrorCode) -> str:
    """``"卡片已挂失 / card reported lost"`` — the default text for ``code``."""
    zh, en = MESSAGES[code]
    return f"{zh} / {en}"


class OnecardError(Exception):
    """Base of every error onecard raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(
        self,
        message_zh: str | None = None,
        message_en: str | None = None,
        *,
        code: ErrorCode | None = None,
        rule: str | None = None,
    ) -> None:
        if code is not None:
            self.code = code
        default_zh, default_en = MESSAGES[self.code]
        self.message_zh = message_zh or default_zh
        self.message_en = message_en or default_en
        self.rule = rule
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"{self.rule}: " if self.rule else ""
        return f"{prefix}{self.message_zh} / {self.message_en}"


def registry_busy() -> OnecardError:
    """``unavailable``: the registry could not decide in time (lock held, disk full); nothing was
    done for this copy of the request — retry it with the same request id (contract §6.1)."""
    return OnecardError("系统繁忙，请重试", "registry busy: retry", code=ErrorCode.UNAVAILABLE)


class RuleViolation(OnecardError):
    """A published card-center rule refuses the request; ``rule`` names it (e.g. ``LOSS-3``)."""

    code = ErrorCode.NOT_ELIGIBLE


class InvalidInput(OnecardError):
    """Input that can never be valid (bad national ID, negative amount, unknown field)."""

    code = ErrorCode.INVALID_INPUT


class NotFound(OnecardError):
    code = ErrorCode.NOT_FOUND


class Duplicate(OnecardError):
    code = ErrorCode.DUPLICATE


class InsufficientFunds(OnecardError):
    """The purse (or another never-negative account) holds less than the amount."""

    code = ErrorCode.INSUFFICIENT_FUNDS


class AccessDenied(OnecardError):
    """Authentication or authorisation refused (ACC, LOSS-1 lockout)."""

    code = ErrorCode.PERMISSION_DENIED
