from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.e2e.campus import Campus, build_campus


@pytest_asyncio.fixture(params=["aiomqtt", "gmqtt", "lean"])
async def campus(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Campus]:
    """The gateway runs once per MQTT adapter: both stay supported behind the one-file seam."""
    monkeypatch.setenv("ONECARD_TEST_MQTT_CLIENT", request.param)
    c = await build_campus(tmp_path)
    c.task = asyncio.create_task(c.gateway.run(), name="gateway")
    try:
        await c.wait_ready()
        yield c
    finally:
        c.gateway.stop.set()
        try:
            if c.task is not None:  # a test that ended the gateway itself sets it to None
                async with asyncio.timeout(15):
                    await c.task
        finally:
            c.broker.stop()
            if c.writer is not None:
                await c.writer.close()
            await c.registry.close()
