"""Stalled uploads against a real server, on raw sockets: each connection sends its headers and half
the body its Content-Length promised, then waits; meanwhile well-formed requests go on other
connections. Used by test_slow_clients (bounded) and, as a script, for the full figure:

    PYTHONPATH=$PWD:tests/service python tests/service/slow_clients.py --stalled 1000 --deadline 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from service_helpers import RawClient


@dataclass
class Outcome:
    stalled_status: list[int] = field(default_factory=list)  # per stalled connection; 0 = none
    stalled_after_s: list[float] = field(default_factory=list)  # from connecting to the answer
    well_status: list[int] = field(default_factory=list)
    ready_status: list[int] = field(default_factory=list)  # /v2/health/ready while stalled

    @property
    def well_ok(self) -> float:
        return self.well_status.count(200) / max(1, len(self.well_status))


def predict_body(shape: list[int]) -> dict[str, object]:
    n = 1
    for d in shape:
        n *= d
    return {"inputs": [[0.5] * n]}


async def _stall(host: str, port: int, path: str, body: bytes, out: Outcome, began: asyncio.Event) -> None:
    start = time.monotonic()  # before the server can start its clock
    reader, writer = await asyncio.open_connection(host, port)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
    await writer.drain()
    began.set()
    try:
        line = await reader.readline()  # the server's answer, whenever it comes
        status = int(line.split()[1]) if line else 0
        await reader.read()  # and the connection closes
    except (OSError, IndexError, ValueError):
        status = 0
    out.stalled_status.append(status)
    out.stalled_after_s.append(time.monotonic() - start)
    writer.close()


async def _well_formed(
    host: str, port: int, path: str, body: object, n: int, hold_s: float, out: Outcome
) -> None:
    client, request = RawClient(host, port), RawClient.post(path, body)
    stop = time.monotonic() + hold_s
    try:
        for i in range(n):
            if time.monotonic() > stop:
                break
            try:
                status, _ = await client.send(request)
            except (OSError, asyncio.IncompleteReadError):
                status = 0
                await client.close()
            out.well_status.append(status)
            if i % 5 == 0:
                status, _ = await client.send(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
                out.ready_status.append(status)
    finally:
        await client.close()


async def run(
    address: str,
    model: str,
    shape: list[int],
    stalled: int,
    well_clients: int,
    well_per_client: int,
    hold_s: float,
) -> Outcome:
    """Open `stalled` half-body connections, then, for at most `hold_s`, `well_clients` keep-alive
    clients each send up to `well_per_client` complete requests; wait for every stalled answer."""
    host, port = address.split(":")
    out, path = Outcome(), f"/v1/models/{model}/predict"
    body = predict_body(shape)
    raw = json.dumps(body).encode()
    events = [asyncio.Event() for _ in range(stalled)]
    stalls = []
    for i in range(stalled):
        stalls.append(asyncio.create_task(_stall(host, int(port), path, raw, out, events[i])))
        if i % 100 == 99:
            await asyncio.sleep(0)  # let connections open in waves
    await asyncio.gather(*(e.wait() for e in events))
    wells = [
        _well_formed(host, int(port), path, body, well_per_client, hold_s, out) for _ in range(well_clients)
    ]
    await asyncio.gather(*wells)
    await asyncio.gather(*stalls)
    return out


def main() -> None:
    from service_helpers import child_server
    from synthetic_bundle import write_bundle

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stalled", type=int, default=1000)
    parser.add_argument("--deadline", type=float, default=20.0, help="the server's read_timeout_s")
    parser.add_argument("--clients", type=int, default=16, help="well-formed keep-alive clients")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = write_bundle(Path(tmp) / "synthetic")
        env = {"read_timeout_s": args.deadline, "max_queue_delay_ms": 1}
        with child_server(bundle, Path(tmp) / "server.log", **env) as child:
            address = child.url.removeprefix("http://")
            manifest = json.loads((bundle / "manifest.json").read_text())
            shape, name = manifest["input"]["shape"][1:], manifest["name"]
            t0 = time.monotonic()
            out = asyncio.run(run(address, name, shape, args.stalled, args.clients, 10**9, args.deadline))
            took = time.monotonic() - t0
    late = [s for s, t in zip(out.stalled_status, out.stalled_after_s, strict=True) if t > args.deadline + 1]
    print(
        f"{args.stalled} stalled connections for {took:.1f} s (read_timeout_s {args.deadline:g}): "
        f"well-formed {out.well_status.count(200)}/{len(out.well_status)} = {out.well_ok:.2%} answered 200; "
        f"readiness 200 in {out.ready_status.count(200)}/{len(out.ready_status)}; "
        f"stalled: {out.stalled_status.count(408)} got 408, statuses {sorted(set(out.stalled_status))}, "
        f"answered after {min(out.stalled_after_s):.2f}-{max(out.stalled_after_s):.2f} s, "
        f"{len(late)} later than the deadline + 1 s"
    )


if __name__ == "__main__":
    main()
