"""Shared vocabulary of the pure core (ARCHITECTURE.md §2 rule 1).

Money is integer fen everywhere (1 yuan = 100 fen); there is deliberately no money type that could
hold a float.
"""

from __future__ import annotations

from enum import StrEnum

FEN_PER_YUAN = 100


class HolderKind(StrEnum):
    STUDENT = "student"  # 学生 (电子学生证)
    STAFF = "staff"  # 教职工 (电子工作证)
    TEMPORARY = "temporary"  # 其他人员 (临时CPU卡 only, ISS-8)


class HolderCategory(StrEnum):
    """Who a holder is; the ISS-8 list for temporary holders."""

    STUDENT = "student"
    STAFF = "staff"
    RETIRED_STAFF = "retired_staff"  # 离退休教工
    FOREIGN_TEACHER = "foreign_teacher"  # 外籍教师
    EXTERNAL_TEACHER = "external_teacher"  # 外聘教师
    VISITING_PROFESSOR = "visiting_professor"  # 客座教授
    PART_TIME_PROFESSOR = "part_time_professor"  # 兼职教授
    DISTINGUISHED_PROFESSOR = "distinguished_professor"  # 特聘教授
    SPECIAL_GUEST = "special_guest"  # 特殊贵宾
    TEMPORARY_EMPLOYEE = "temporary_employee"  # 临时聘用工作人员
    OTHER_LEARNER = "other_learner"  # 其他来校学习人员
    OFFICIAL_VISITOR = "official_visitor"  # 办理公务、交流


TEMPORARY_CATEGORIES: frozenset[HolderCategory] = frozenset(HolderCategory) - {
    HolderCategory.STUDENT,
    HolderCategory.STAFF,
}


class HolderStatus(StrEnum):
    ACTIVE = "active"
    DEREGISTERED = "deregistered"  # 注销 (REF-4, TERM-1, TERM-6)


class CardKind(StrEnum):
    SMART = "smart"  # 智能卡 (printed photo card)
    TEMP = "temp"  # 临时CPU卡


class CardState(StrEnum):
    """States of a physical card. See :mod:`protocol.cards.lifecycle` for the transition table."""

    PRINTING = "printing"  # smart card ordered from the vendor (ISS-2, REP-4, EXC-5)
    READY = "ready"  # printed and checked (ISS-3), waiting to be handed over
    ACTIVE = "active"  # 正常
    LOST = "lost"  # 挂失 (LOSS-2)
    FROZEN = "frozen"  # faulty card, balance frozen 48 h (EXC-3)
    SUSPENDED = "suspended"  # 停用 (MEAL-4)
    EXPIRED = "expired"  # temp card past validity (TERM-2)
    REPLACED = "replaced"  # void forever after a replacement (LOSS-4)
    EXCHANGED = "exchanged"  # handed back in an exchange (EXC-5)
    RECOVERED = "recovered"  # temp card handed in for a smart card (ISS-4)
    REFUNDED = "refunded"  # temp card returned, deposit refunded (REF)
    TERMINATED = "terminated"  # 卡片终止 (TERM)
    SCRAPPED = "scrapped"  # 报废 (SCR)


class Permission(StrEnum):
    """Function-account permissions (ACC-1) plus the counter's own duties."""

    CARD_HANDLING = "card_handling"  # counter procedures: issue, loss, replace, exchange, ...
    CONSUMPTION_CORRECTION = "consumption_correction"  # 消费纠错 (TOP-2)
    REPORTS = "reports"  # 报表/结算查询
    TOPUP_CENTER = "topup_center"  # 充值中心 (TOP-1)
    CASH_MACHINE = "cash_machine"  # 现金充值机管理
    WATER_CONTROL = "water_control"  # 水控管理
    STOCK = "stock"  # blank-card stock (INV)
    FEES = "fees"  # receipts and receipt books (FEE)
    MEAL_SUBSIDY = "meal_subsidy"  # MEAL
    TERMINALS = "terminals"  # terminal provisioning
    ACCOUNTS_ADMIN = "accounts_admin"  # creates function accounts (ACC-2)
