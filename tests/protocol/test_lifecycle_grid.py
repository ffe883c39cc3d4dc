"""The card lifecycle over its whole (state, event, kind) grid, and as a random walk.

The grid tests check the transition table's contract for every cell: an allowed cell moves to the
table's target state or is refused by a time/input guard with a :class:`RuleViolation`; a refused
cell names exactly the events the state allows. The state machine walks one card through random
events and random time advances and checks the time rules: REP-1 (48 h before a replacement),
EXC-3 (48 h balance freeze), TERM-2/TERM-3 (validity and the 3-month extension window), LOSS-2
(lost cards refused at once) and LOSS-4 (a replaced card is void forever).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import event as note_event
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from protocol.cards.clock import add_months
from protocol.cards.lifecycle import (
    FINAL_STATES,
    TRANSITIONS,
    CardEvent,
    CardFacts,
    ExchangeReason,
    Transition,
    allowed_events,
    hand_in,
    tap_refusal,
    topup_refusal,
    transition,
)
from protocol.errors import ErrorCode, RuleViolation
from protocol.types import CardKind, CardState

GRID = [(state, event, kind) for state in CardState for event in CardEvent for kind in CardKind]

#: The only events whose allowed cells can still be refused (by a time or input guard).
GUARDED_EVENTS = frozenset(
    {
        CardEvent.REPLACE,  # REP-1
        CardEvent.EXCHANGE,  # EXC-3 / EXC-4
        CardEvent.EXTEND,  # TERM-2 / TERM-3
        CardEvent.EXPIRE,  # TERM-2
        CardEvent.AUTO_TERMINATE,  # TERM-3
        CardEvent.SCRAP,  # SCR-1: only a card the center has back; EXC-6: faulty to the vendor
    }
)

_LOW = datetime(2024, 1, 1)
_HIGH = datetime(2035, 12, 31)

aware = st.datetimes(min_value=_LOW, max_value=_HIGH, timezones=st.just(UTC))
maybe_aware = st.none() | aware
reasons = st.none() | st.sampled_from(ExchangeReason)


@st.composite
def facts_times(draw: st.DrawFn) -> tuple[CardFacts, CardFacts, datetime, datetime | None]:
    """Random per-card timestamps shared by both kinds, a ``now`` and a new validity end."""
    smart = CardFacts(
        kind=CardKind.SMART,
        state=CardState.ACTIVE,
        valid_until=draw(maybe_aware),
        loss_reported_at=draw(maybe_aware),
        frozen_at=draw(maybe_aware),
        exchange_reason=draw(reasons),
        in_custody=draw(st.booleans()),
    )
    temp = CardFacts(
        kind=CardKind.TEMP,
        state=CardState.ACTIVE,
        valid_until=smart.valid_until,
        loss_reported_at=smart.loss_reported_at,
        frozen_at=smart.frozen_at,
        exchange_reason=smart.exchange_reason,
        in_custody=smart.in_custody,
    )
    return smart, temp, draw(aware), draw(maybe_aware)


def _listed_events(message_en: str) -> list[str]:
    """The events a refusal lists after ``allowed:`` (``none`` means no event)."""
    _, sep, tail = message_en.rpartition("allowed: ")
    assert sep, message_en
    return [] if tail == "none" else tail.split(", ")


def _with_state(facts: CardFacts, state: CardState) -> CardFacts:
    return CardFacts(
        kind=facts.kind,
        state=state,
        valid_until=facts.valid_until,
        loss_reported_at=facts.loss_reported_at,
        frozen_at=facts.frozen_at,
        exchange_reason=facts.exchange_reason,
        in_custody=facts.in_custody,
    )


def _attempt(
    facts: CardFacts,
    event: CardEvent,
    now: datetime,
    new_valid_until: datetime | None,
    reason: ExchangeReason | None,
) -> Transition | RuleViolation:
    """The transition, or the RuleViolation it raised (any other exception propagates)."""
    try:
        return transition(
            facts, event, now, new_valid_until=new_valid_until, exchange_reason=reason
        )
    except RuleViolation as exc:
        return exc


@settings(max_examples=60, deadline=None)
@given(data=facts_times(), reason=reasons)
def test_every_cell_moves_to_table_target_or_raises_rule_violation(
    data: tuple[CardFacts, CardFacts, datetime, datetime | None], reason: ExchangeReason | None
) -> None:
    """Every (state, event, kind): a Transition to TRANSITIONS' target, or a RuleViolation."""
    smart, temp, now, new_valid_until = data
    for state, event, kind in GRID:
        base = smart if kind is CardKind.SMART else temp
        facts = _with_state(base, state)
        result = _attempt(facts, event, now, new_valid_until, reason)
        if isinstance(result, RuleViolation):
            if event not in allowed_events(state, kind):
                assert result.code is ErrorCode.TRANSITION_NOT_ALLOWED
                if result.rule is None:  # the table refuses; no published rule
                    allowed = [str(e) for e in allowed_events(state, kind)]
                    assert _listed_events(result.message_en) == allowed
                else:  # LOSS-4: a replaced card is never unlocked
                    assert (state, event, result.rule) == (
                        CardState.REPLACED,
                        CardEvent.UNLOCK,
                        "LOSS-4",
                    )
            else:
                # an allowed cell is refused only by a guard: time, input, or EXC-3's reason
                assert event in GUARDED_EVENTS, (state, event, kind, result)
                assert result.code in {
                    ErrorCode.TOO_EARLY,
                    ErrorCode.TOO_LATE,
                    ErrorCode.INVALID_INPUT,
                    ErrorCode.NOT_ELIGIBLE,
                    ErrorCode.TRANSITION_NOT_ALLOWED,
                }, (state, event, kind, result)
                assert result.rule is not None
            continue
        assert isinstance(result, Transition)
        assert (state, event) in TRANSITIONS
        assert event in allowed_events(state, kind)
        assert result.after.state is TRANSITIONS[(state, event)][0]
        assert result.before == facts
        assert result.event is event
        assert result.after.kind is kind  # a card never changes kind


def test_refused_cells_list_exactly_the_allowed_events() -> None:
    """A cell outside the table (or of the other kind) lists allowed_events(state, kind)."""
    now = datetime(2026, 11, 23, 2, 5, tzinfo=UTC)
    refused = 0
    for state, event, kind in GRID:
        if event in allowed_events(state, kind):
            continue
        with pytest.raises(RuleViolation) as info:
            transition(CardFacts(kind=kind, state=state), event, now)
        refused += 1
        exc = info.value
        assert exc.code is ErrorCode.TRANSITION_NOT_ALLOWED
        if state is CardState.REPLACED and event is CardEvent.UNLOCK:
            assert exc.rule == "LOSS-4"  # the lost card is void forever
            continue
        assert exc.rule is None  # the table refuses; no published rule id
        listed = _listed_events(exc.message_en)
        assert listed == [str(e) for e in allowed_events(state, kind)]
        assert f"'{event}'" in exc.message_en
        assert exc.message_zh  # zh-CN text is present too
    # the table leaves far more cells refused than allowed
    assert refused > len(GRID) // 2


def test_cells_missing_from_table_are_refused_for_both_kinds() -> None:
    now = datetime(2026, 11, 23, 2, 5, tzinfo=UTC)
    for state, event, kind in GRID:
        if (state, event) in TRANSITIONS:
            continue
        assert event not in allowed_events(state, kind)
        with pytest.raises(RuleViolation) as info:
            transition(CardFacts(kind=kind, state=state), event, now)
        assert info.value.code is ErrorCode.TRANSITION_NOT_ALLOWED


def test_kind_only_events() -> None:
    """Validity, recovery and refund are temp-card events; printing is a smart-card event."""
    for state in CardState:
        smart = set(allowed_events(state, CardKind.SMART))
        temp = set(allowed_events(state, CardKind.TEMP))
        assert not smart & {
            CardEvent.EXPIRE,
            CardEvent.EXTEND,
            CardEvent.AUTO_TERMINATE,
            CardEvent.RECOVER,
            CardEvent.REFUND,
        }
        assert not temp & {CardEvent.PRINTED, CardEvent.REPRINT}


def test_final_states_only_allow_scrap() -> None:
    """SCR-1: a final card only ever goes to the scrap register; a scrapped card takes nothing."""
    for state in FINAL_STATES:
        for kind in (None, *CardKind):
            assert set(allowed_events(state, kind)) <= {CardEvent.SCRAP}, state
    assert allowed_events(CardState.SCRAPPED) == []
    # LOSS-4: a replaced card stays void; found and handed in, it goes only to the scrap register
    assert allowed_events(CardState.REPLACED) == [CardEvent.SCRAP]
    for (state, event), (target, _rule) in TRANSITIONS.items():
        if state in FINAL_STATES:
            assert event is CardEvent.SCRAP
            assert target is CardState.SCRAPPED


def test_scr1_only_cards_the_center_has_back_are_scrapped() -> None:
    """SCR-1/2: every state that may be scrapped is refused (SCR-1, not eligible) while the card
    is out (a lost card after its replacement, an auto-terminated temp card in the holder's
    pocket) and scrapped once the center has it; EXC-6: a faulty card never is."""
    now = datetime(2026, 11, 23, 2, 5, tzinfo=UTC)
    scrappable = [state for (state, event) in TRANSITIONS if event is CardEvent.SCRAP]
    assert set(scrappable) == FINAL_STATES - {CardState.SCRAPPED}
    for state in scrappable:
        for kind in CardKind:
            out = CardFacts(kind=kind, state=state)
            with pytest.raises(RuleViolation) as info:
                transition(out, CardEvent.SCRAP, now)
            assert (info.value.rule, info.value.code) == ("SCR-1", ErrorCode.NOT_ELIGIBLE)
            back = CardFacts(kind=kind, state=state, in_custody=True)
            assert transition(back, CardEvent.SCRAP, now).after.state is CardState.SCRAPPED
    faulty = CardFacts(
        kind=CardKind.SMART,
        state=CardState.EXCHANGED,
        exchange_reason=ExchangeReason.FAULTY,
        in_custody=True,
    )
    with pytest.raises(RuleViolation) as info:
        transition(faulty, CardEvent.SCRAP, now)
    assert info.value.rule == "EXC-6"


def test_scr1_custody_follows_the_card() -> None:
    """SCR-1: a printed card waits at the center, a handed-over card is the holder's; a temp card
    handed in (ISS-4) or refunded (REF-3) comes back; termination and exchange bring it back only
    when the counter records it returned; a found card is handed in once."""
    now = datetime(2026, 11, 23, 2, 5, tzinfo=UTC)
    printing = CardFacts(kind=CardKind.SMART, state=CardState.PRINTING)
    ready = transition(printing, CardEvent.PRINTED, now).after
    assert ready.in_custody
    active = transition(ready, CardEvent.HAND_OVER, now).after
    assert not active.in_custody
    assert not transition(active, CardEvent.TERMINATE, now).after.in_custody
    assert transition(active, CardEvent.TERMINATE, now, card_returned=True).after.in_custody
    temp = CardFacts(kind=CardKind.TEMP, state=CardState.ACTIVE)
    assert transition(temp, CardEvent.RECOVER, now).after.in_custody
    assert transition(temp, CardEvent.REFUND, now, card_returned=False).after.in_custody
    lost = transition(active, CardEvent.REPORT_LOSS, now).after
    replaced = transition(lost, CardEvent.REPLACE, now + timedelta(hours=48)).after
    assert not replaced.in_custody
    found = hand_in(replaced)
    assert found.in_custody and found.state is CardState.REPLACED
    with pytest.raises(RuleViolation) as info:
        hand_in(found)
    assert (info.value.rule, info.value.code) == ("SCR-1", ErrorCode.DUPLICATE)
    with pytest.raises(RuleViolation) as info:
        hand_in(lost)  # a lost card found before its replacement is unlocked (LOSS-3)
    assert info.value.code is ErrorCode.TRANSITION_NOT_ALLOWED


def test_loss4_void_and_ended_cards_take_no_topup() -> None:
    """LOSS-4: a replaced card is void forever: no top-up (nor on any other void/ended card)."""
    for state in CardState:
        refusal = topup_refusal(CardFacts(kind=CardKind.TEMP, state=state))
        if state in FINAL_STATES:
            assert refusal is not None, state
            assert refusal.message_zh and refusal.message_en
        else:
            assert refusal is None, state
    replaced = topup_refusal(CardFacts(kind=CardKind.SMART, state=CardState.REPLACED))
    assert replaced is not None
    assert (replaced.rule, replaced.code) == ("LOSS-4", ErrorCode.CARD_VOID)


@given(
    state=st.sampled_from(CardState),
    valid_until=maybe_aware,
    now=aware,
)
def test_tap_refusal_only_lets_active_valid_cards_through(
    state: CardState, valid_until: datetime | None, now: datetime
) -> None:
    """LOSS-2 / TERM-2: a tap is accepted only for an ACTIVE card whose validity has not ended."""
    refusal = tap_refusal(state, valid_until, now)
    usable = state is CardState.ACTIVE and (valid_until is None or now < valid_until)
    assert (refusal is None) == usable
    if state is CardState.LOST:
        assert refusal is ErrorCode.CARD_LOST
    if state is CardState.ACTIVE and not usable:
        assert refusal is ErrorCode.CARD_EXPIRED


# --- one card, random events, a moving clock --------------------------------------------------

T_START = datetime(2026, 11, 23, 2, 5, tzinfo=UTC)

steps = st.one_of(
    st.integers(min_value=0, max_value=72 * 60).map(lambda m: timedelta(minutes=m)),
    st.integers(min_value=1, max_value=200).map(lambda d: timedelta(days=d)),
    st.sampled_from([timedelta(seconds=1), timedelta(hours=47, minutes=59), timedelta(hours=48)]),
)


class CardWalk(RuleBasedStateMachine):
    """One card, random events at a moving aware ``now`` (the lifecycle is pure and synchronous)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = T_START
        self.facts = CardFacts(kind=CardKind.SMART, state=CardState.PRINTING)
        self.was_replaced = False
        self.history: list[tuple[CardState, CardEvent, CardState]] = []

    @initialize(
        kind=st.sampled_from(CardKind),
        start=st.sampled_from([CardState.PRINTING, CardState.READY, CardState.ACTIVE]),
        validity=st.none() | st.integers(min_value=1, max_value=400),
    )
    def start_card(self, kind: CardKind, start: CardState, validity: int | None) -> None:
        if kind is CardKind.TEMP:
            start = CardState.ACTIVE  # temp cards are issued on the spot (ISS-7)
            validity = validity or 30
        valid_until = None if validity is None else self.now + timedelta(days=validity)
        self.facts = CardFacts(kind=kind, state=start, valid_until=valid_until)

    @precondition(lambda self: self.facts.state in FINAL_STATES)
    @rule(kind=st.sampled_from(CardKind))
    def next_card(self, kind: CardKind) -> None:
        """The holder gets a new card: the walk goes on with it (the old one stays final)."""
        self.was_replaced = False
        self.history.clear()
        self.start_card(kind, CardState.ACTIVE, 30)

    @rule(step=steps)
    def advance(self, step: timedelta) -> None:
        self.now += step

    @rule(data=st.data(), offset=st.sampled_from([-1, 0, 1]))
    def advance_to_a_deadline(self, data: st.DataObject, offset: int) -> None:
        """Land one second before, on, or after a guard's boundary (REP-1, EXC-3, TERM-2/3)."""
        future = [d for d in self._deadlines() if d is not None and d > self.now]
        if not future:
            self.now += timedelta(seconds=1)
            return
        target = data.draw(st.sampled_from(future)) + timedelta(seconds=offset)
        self.now = max(self.now, target)

    def _deadlines(self) -> list[datetime | None]:
        f = self.facts
        return [
            None if f.loss_reported_at is None else f.loss_reported_at + timedelta(hours=48),
            None if f.frozen_at is None else f.frozen_at + timedelta(hours=48),
            f.valid_until,
            None if f.valid_until is None else add_months(f.valid_until, 3),
        ]

    @rule(
        data=st.data(),
        reason=reasons,
    )
    def apply(self, data: st.DataObject, reason: ExchangeReason | None) -> None:
        before = self.facts
        # mostly events the state allows (to walk deep), sometimes any event at all
        allowed = allowed_events(before.state, before.kind)
        staying = [e for e in allowed if TRANSITIONS[(before.state, e)][0] not in FINAL_STATES]
        pool = st.sampled_from(CardEvent)
        if allowed:
            pool = st.sampled_from(allowed) | pool
        if staying:
            pool = st.sampled_from(staying) | pool
        event = data.draw(pool, label="event")
        extend_days = data.draw(
            st.integers(min_value=1, max_value=400)
            | st.none()
            | st.integers(min_value=-10, max_value=0),
            label="extend_days",
        )
        new_valid_until = None if extend_days is None else self.now + timedelta(days=extend_days)
        result = _attempt(before, event, self.now, new_valid_until, reason)
        if isinstance(result, RuleViolation):
            # only RuleViolation may come back; anything else fails the machine
            note_event(f"refused {result.code} {before.state}/{event}")
            return
        note_event(f"{before.state}/{event}")
        after = result.after
        assert after.state is TRANSITIONS[(before.state, event)][0]
        if event is CardEvent.REPLACE:
            # REP-1: a replacement only 48 h or more after the loss report
            assert before.loss_reported_at is not None
            assert self.now >= before.loss_reported_at + timedelta(hours=48)
        if event is CardEvent.EXCHANGE and before.state is CardState.FROZEN:
            # EXC-3: the faulty card's balance stays frozen 48 h
            assert before.frozen_at is not None
            assert self.now >= before.frozen_at + timedelta(hours=48)
        if event is CardEvent.EXTEND and before.state is CardState.EXPIRED:
            # TERM-3: no extension once 3 months after expiry have passed
            assert before.valid_until is not None
            assert self.now < add_months(before.valid_until, 3)
        if event is CardEvent.EXTEND:
            assert after.valid_until == new_valid_until
            assert new_valid_until is not None
            assert new_valid_until > self.now
        if event is CardEvent.EXPIRE:
            assert before.valid_until is not None
            assert self.now >= before.valid_until  # TERM-2: not before validity ends
        if event is CardEvent.AUTO_TERMINATE:
            assert before.valid_until is not None
            assert self.now >= add_months(before.valid_until, 3)  # TERM-3
        if event is CardEvent.REPORT_LOSS:
            assert after.loss_reported_at == self.now
        if event is CardEvent.SCRAP:
            assert before.in_custody  # SCR-1: only a card the center has back
        self.history.append((before.state, event, after.state))
        self.facts = after
        if after.state is CardState.REPLACED:
            self.was_replaced = True

    @invariant()
    def replaced_card_never_active_again(self) -> None:
        """LOSS-4: once replaced, the lost card is void forever."""
        if self.was_replaced:
            assert self.facts.state is CardState.REPLACED

    @invariant()
    def final_states_only_leave_to_scrap(self) -> None:
        for before, event, after in self.history:
            if before in FINAL_STATES:
                assert event is CardEvent.SCRAP
                assert after is CardState.SCRAPPED

    @invariant()
    def tap_allowed_only_when_active_and_valid(self) -> None:
        """LOSS-2 / TERM-2: only an active card within its validity may be used."""
        f = self.facts
        refusal = tap_refusal(f.state, f.valid_until, self.now)
        usable = f.state is CardState.ACTIVE and (f.valid_until is None or self.now < f.valid_until)
        assert (refusal is None) == usable
        if f.state is CardState.LOST:
            assert refusal is ErrorCode.CARD_LOST


CardWalk.TestCase.settings = settings(max_examples=250, stateful_step_count=50, deadline=None)
TestCardWalk = CardWalk.TestCase
