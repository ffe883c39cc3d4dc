"""Web sessions without a server: idle timeout, one-use form tokens, the per-address limit."""

from __future__ import annotations

import asyncio

import pytest

from gateway.services.base import Actor
from gateway.web.sessions import AddressLimiter, SessionStore


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_idle_timeout_ends_the_session_and_reports_it() -> None:
    clock = Clock()
    store = SessionStore(900, clock=clock)
    session = store.new()
    session.actor = Actor(name="holder:1", channel="web", holder_id=1)
    clock.t += 899
    assert store.get(session.id) == (session, False)  # use refreshes it
    clock.t += 901
    assert store.get(session.id) == (None, True)
    assert store.get(session.id) == (None, False)


def test_rotation_kills_the_old_id() -> None:
    store = SessionStore(900)
    old = store.new()
    fresh = store.rotate(old)
    assert store.get(old.id) == (None, False)
    assert fresh.id != old.id and fresh.csrf != old.csrf


def test_sweep_returns_the_actors_of_idle_sessions() -> None:
    clock = Clock()
    store = SessionStore(60, clock=clock)
    anonymous = store.new()
    holder = store.new()
    holder.actor = Actor(name="holder:7", channel="web", holder_id=7)
    clock.t += 61
    assert [a.holder_id for a in store.expired_actors()] == [7]
    assert store.get(anonymous.id) == (None, False)
    # the sweep came first: the logged-in session's next request still learns why, once
    assert store.get(holder.id) == (None, True)
    assert store.get(holder.id) == (None, False)


@pytest.mark.asyncio
async def test_a_form_token_runs_its_action_once_even_when_sent_twice_at_once() -> None:
    session = SessionStore(900).new()
    token = session.form_token()
    runs = 0

    async def act() -> str:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.05)
        return "/done"

    first, second = await asyncio.gather(session.once(token, act), session.once(token, act))
    assert runs == 1
    assert first == ("/done", True) and second == ("/done", False)
    assert await session.once("forged", act) == (None, False)


@pytest.mark.asyncio
async def test_a_failed_action_gives_its_token_back() -> None:
    session = SessionStore(900).new()
    token = session.form_token()

    async def boom() -> str:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        await session.once(token, boom)

    async def ok() -> str:
        return "/ok"

    assert await session.once(token, ok) == ("/ok", True)


def test_address_limit_slides() -> None:
    clock = Clock()
    limiter = AddressLimiter(3, 60, clock=clock)
    for _ in range(3):
        assert not limiter.blocked("10.0.0.1")
        limiter.failed("10.0.0.1")
    assert limiter.blocked("10.0.0.1") and not limiter.blocked("10.0.0.2")
    clock.t += 61
    assert not limiter.blocked("10.0.0.1")
