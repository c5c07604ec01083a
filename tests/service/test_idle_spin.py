"""service.idle_spin: the event loop keeps turning after an answer leaves the server idle, for its
window only, never while a request is in flight, and one spin at a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from service_helpers import asgi_client, make_settings, sample_inputs

from export.manifest import Manifest
from service.app import create_app
from service.idle_spin import IdleSpin


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def looked(seen: list[int]) -> Callable[[], bool]:
    """A busy() that is never busy and counts how often the spin looked (once per turn)."""

    def busy() -> bool:
        seen.append(1)
        return False

    return busy


async def turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_spins_for_its_window_then_stops() -> None:
    async def main() -> None:
        clock, seen = Clock(), list[int]()
        spin = IdleSpin(0.001, looked(seen), clock)  # busy() never True
        spin.start()
        spin.poke()
        await turns(20)
        assert spin.spinning and len(seen) >= 15  # one look per turn of the loop: it kept turning
        clock.now += 0.0011
        await turns(3)
        assert not spin.spinning
        stopped_at = len(seen)
        await turns(10)
        assert len(seen) == stopped_at  # no turn taken once the window ended

    asyncio.run(main())


def test_a_request_in_flight_ends_the_spin() -> None:
    async def main() -> None:
        busy = [False]
        spin = IdleSpin(10.0, lambda: busy[0], Clock())
        spin.start()
        spin.poke()
        await turns(5)
        assert spin.spinning
        busy[0] = True
        await turns(2)
        assert not spin.spinning

    asyncio.run(main())


def test_pokes_while_spinning_extend_one_spin() -> None:
    async def main() -> None:
        clock, seen = Clock(), list[int]()
        spin = IdleSpin(0.001, looked(seen), clock)
        spin.start()
        spin.poke()
        await turns(5)
        clock.now += 0.0008
        spin.poke()  # the window now ends 1 ms from here
        before = len(seen)
        await turns(10)
        assert len(seen) - before <= 11  # one chain of turns, not two
        clock.now += 0.0005
        await turns(3)
        assert spin.spinning  # still inside the extended window
        clock.now += 0.0006
        await turns(3)
        assert not spin.spinning

    asyncio.run(main())


def test_a_zero_window_never_spins() -> None:
    async def main() -> None:
        spin = IdleSpin(0.0, lambda: False, Clock())
        spin.start()
        spin.poke()
        await turns(3)
        assert not spin.spinning

    asyncio.run(main())


def test_the_server_spins_after_an_answer_that_leaves_it_idle(bundle_path: Path, manifest: Manifest) -> None:
    app = create_app(make_settings(bundle_path, idle_spin_us=100_000))
    with asgi_client(app) as client:
        spin = app.state.engine.spin
        assert not spin.spinning  # readiness probes are not answers: no spin
        x = sample_inputs(manifest, 1).tolist()
        r = client.post(f"/v1/models/{manifest.name}/predict", json={"inputs": x})
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 2
        while not spin.spinning and time.monotonic() < deadline:
            time.sleep(0.001)
        assert spin.spinning
        deadline = time.monotonic() + 2
        while spin.spinning and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not spin.spinning  # and stops by itself, within about its 100 ms window
