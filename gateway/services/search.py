"""Finding holders and cards at the counter (issue 10): by student/staff number, by name (a
partial match on the characters typed, no pinyin), by an identity document number typed in full
(resident ID, passport, permits; shown masked), by card serial or card UID, or ``#id``.
Deregistered holders (graduated, terminated, refunded) stay findable: their cards and receipts
still come back to the counter.

The CLI (``onecard find``) and the operator console use the same :class:`SearchService`; whose
card a money or card procedure touches is shown by :func:`owner_brief` (name masked).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import datetime

from gateway.services.base import Actor, Context
from protocol.cards.identity import ID_DOC_NAMES_ZH, mask_id_doc, mask_name
from protocol.carduid import canonical_card_uid
from protocol.errors import AccessDenied, ErrorCode, InvalidInput
from protocol.types import Permission
from storage.ports import Tx
from storage.records import Card, Holder

#: at most this many holders are listed; more means "type more of it"
LIMIT = 50
#: the longest search text taken (a name, a number, an ID document, a UID)
MAX_TEXT = 64
#: who may look people up: anyone who serves holders at the counter or reads its registers
SEARCH_PERMISSIONS = frozenset(
    {
        Permission.CARD_HANDLING,
        Permission.TOPUP_CENTER,
        Permission.REPORTS,
        Permission.MEAL_SUBSIDY,
        Permission.CONSUMPTION_CORRECTION,
    }
)

# how a holder was found, best first
BY_ID = "holder_id"
BY_SERIAL = "serial"
BY_UID = "uid"
BY_NUMBER = "number"
BY_ID_DOC = "id_doc"
BY_NAME = "name"
BY_NUMBER_PART = "number_part"
MATCHED_NAMES: dict[str, str] = {
    BY_ID: "持卡人编号 / holder id",
    BY_SERIAL: "卡号 / card serial",
    BY_UID: "卡片UID / card UID",
    BY_NUMBER: "学号/工号 / number",
    BY_ID_DOC: "证件号码 / ID document",
    BY_NAME: "姓名 / name",
    BY_NUMBER_PART: "学号/工号（部分） / part of a number",
}


@dataclass(frozen=True, slots=True)
class HolderBrief:
    """Whose card it is, as a money or card procedure shows it: name masked, number, college
    and class (department for staff)."""

    holder_id: int
    number: str | None
    name_masked: str
    college: str | None
    class_name: str | None
    department: str | None
    status: str

    @property
    def text(self) -> str:
        where = " ".join(x for x in (self.college or self.department, self.class_name) if x)
        gone = "（已注销 deregistered）" if self.status != "active" else ""
        return f"持卡人 holder: {self.name_masked} {self.number or '#' + str(self.holder_id)}" + (
            f" {where}{gone}" if where or gone else ""
        )


def owner_brief(holder: Holder) -> HolderBrief:
    return HolderBrief(
        holder_id=holder.id,
        number=holder.number,
        name_masked=mask_name(holder.name),
        college=holder.college,
        class_name=holder.class_name,
        department=holder.department,
        status=holder.status.value,
    )


@dataclass(frozen=True, slots=True)
class CardHit:
    serial: str
    uid: str | None
    kind: str
    state: str
    valid_until: datetime | None
    in_custody: bool


@dataclass(frozen=True, slots=True)
class HolderHit:
    """One holder found: the name in full (the clerk is looking for it), the ID document masked.

    ``id`` is the holder id (the console links ``/holders/{id}``)."""

    id: int
    number: str | None
    name: str
    kind: str
    category: str
    status: str
    college: str | None
    class_name: str | None
    department: str | None
    id_doc_type: str
    id_doc_name_zh: str
    id_doc_masked: str | None
    valid_until: datetime | None
    matched_by: str
    cards: list[CardHit] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SearchResult:
    text: str
    hits: list[HolderHit]
    #: more holders matched than :data:`LIMIT`: type more of the name or number
    truncated: bool


def normalise(text: str) -> str:
    """Full-width digits and letters from a Chinese input method become ASCII; spaces trimmed."""
    return unicodedata.normalize("NFKC", text).strip()


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class SearchService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def find(self, actor: Actor, text: str) -> SearchResult:
        """Holders matching ``text``, best match first (exact card, number and ID document
        matches before partial name and number matches)."""
        if not SEARCH_PERMISSIONS & actor.permissions:
            raise AccessDenied(
                f"账号 {actor.name} 没有查询持卡人的权限",
                f"account {actor.name} may not look holders up",
                code=ErrorCode.PERMISSION_DENIED,
                rule="ACC-1",
            )
        q = normalise(text)
        if not q:
            raise InvalidInput("请输入要查找的内容", "type a number, name, ID, card serial or UID")
        if len(q) > MAX_TEXT:
            raise InvalidInput(
                f"查找内容过长（最多 {MAX_TEXT} 个字符）",
                f"search text too long (at most {MAX_TEXT} characters)",
            )
        async with self.ctx.registry.read() as tx:
            found = await self._match(tx, q)
            truncated = len(found) > LIMIT
            hits = []
            for holder_id, how in list(found.items())[:LIMIT]:
                holder = await tx.get_holder(holder_id)
                cards = await tx.cards_of_holder(holder_id)
                hits.append(_hit(holder, cards, how))
        return SearchResult(q, hits, truncated)

    async def _match(self, tx: Tx, q: str) -> dict[int, str]:
        found: dict[int, str] = {}

        def add(holder_id: int, how: str) -> None:
            found.setdefault(holder_id, how)

        if q.startswith("#") and q[1:].isdigit() and len(q) <= 19:
            for row in await tx.find("holders", id=int(q[1:])):
                add(int(row["id"]), BY_ID)
        for row in await tx.find("cards", serial=q):
            add(int(row["holder_id"]), BY_SERIAL)
        if canonical_card_uid(q) is not None:
            card = await tx.card_by_uid(q)
            if card is not None:
                add(card.holder_id, BY_UID)
        for variant in dict.fromkeys((q, q.upper())):
            for row in await tx.find("holders", number=variant):
                add(int(row["id"]), BY_NUMBER)
            for row in await tx.find("holders", national_id=variant):
                add(int(row["id"]), BY_ID_DOC)
        if not q.startswith("#"):
            pattern = _like_pattern(q.lower())
            rows = await tx.rows(
                "SELECT id FROM holders WHERE LOWER(name) LIKE :pattern ESCAPE '\\'"
                " ORDER BY status, number, id",
                {"pattern": pattern},
            )
            for row in rows[: LIMIT + 1]:
                add(int(row["id"]), BY_NAME)
            if len(q) >= 4 and q.isalnum() and not found:
                rows = await tx.rows(
                    "SELECT id FROM holders WHERE number LIKE :pattern ESCAPE '\\'"
                    " ORDER BY status, number, id",
                    {"pattern": _like_pattern(q)},
                )
                for row in rows[: LIMIT + 1]:
                    add(int(row["id"]), BY_NUMBER_PART)
        return found


def _hit(holder: Holder, cards: list[Card], how: str) -> HolderHit:
    return HolderHit(
        id=holder.id,
        number=holder.number,
        name=holder.name,
        kind=holder.kind.value,
        category=holder.category.value,
        status=holder.status.value,
        college=holder.college,
        class_name=holder.class_name,
        department=holder.department,
        id_doc_type=holder.id_doc_type.value,
        id_doc_name_zh=ID_DOC_NAMES_ZH[holder.id_doc_type],
        id_doc_masked=mask_id_doc(holder.national_id) if holder.national_id else None,
        valid_until=holder.valid_until,
        matched_by=how,
        cards=[
            CardHit(c.serial, c.uid, c.kind.value, c.state.value, c.valid_until, c.in_custody)
            for c in sorted(cards, key=lambda c: c.id, reverse=True)
        ],
    )


async def console_search(ctx: Context, actor: Actor, text: str) -> list[HolderHit]:
    """The operator console's search box: the same search, its holders."""
    return (await SearchService(ctx).find(actor, text)).hits
