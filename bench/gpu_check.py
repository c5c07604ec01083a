"""The device check of issue 20 (scripts/gpu_check.sh runs it): on a bundle, per level, latency on
`--provider` (cuda on a GPU machine) at batch 1, 32, 128 and 1024 through the server's own runner
(service.runtime.LevelRunner: bucketed batches, I/O binding on CUDA), 1/8's speedup over full,
and the latency floor at concurrency 1: circuitserve against the bare ASGI app on the same
provider, p50 over HTTP. Prints a table and writes JSON; it trains nothing.

    python -m bench.gpu_check BUNDLE --provider cuda --out gpu-check.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import load
from bench.measure import circuitserve_api, closed, summary
from bench.plan import QUICK
from bench.servers import circuitserve, free_port, process
from export.manifest import Manifest, read_manifest
from service import runtime
from service.runtime import CUDA, LevelRunner, SessionConfig, create_session

BATCHES = (1, 32, 128, 1024)


def _log(msg: str) -> None:
    print(f"[gpu-check] {msg}", file=sys.stderr, flush=True)


def runner(
    bundle: Path, manifest: Manifest, file: str, provider: str, cuda_graph: bool = False
) -> LevelRunner:
    """The level's runner as the server builds it for `provider` (service.loader._runner)."""
    session = create_session(bundle / file, SessionConfig(provider, 1, 1, cuda_graph=cuda_graph))
    cuda = session.get_providers()[0] == CUDA
    return LevelRunner(
        session,
        manifest.input.name,
        [o.name for o in manifest.outputs],
        buckets=cuda,
        bind_device=runtime.CUDA_DEVICE if cuda else None,
        cuda_graph=cuda and cuda_graph,
    )


def level_latency(
    bundle: Path, manifest: Manifest, provider: str, seconds: float, cuda_graph: bool = False
) -> dict[str, dict[int, float]]:
    """Median ms per level and batch size, each cell timed for about `seconds` after a warm run."""
    rng = np.random.default_rng(0)
    out: dict[str, dict[int, float]] = {}
    for lv in manifest.sorted_levels():
        run = runner(bundle, manifest, lv.file, provider, cuda_graph)
        out[lv.name] = {}
        for b in BATCHES:
            x = rng.standard_normal((b, *manifest.input.shape[1:])).astype(np.float32)
            run(x)
            run(x)  # a CUDA graph is captured on an early run
            times: list[float] = []
            end = time.perf_counter() + seconds
            while time.perf_counter() < end or len(times) < 5:
                t0 = time.perf_counter()
                run(x)
                times.append((time.perf_counter() - t0) * 1e3)
            out[lv.name][b] = round(statistics.median(times), 4)
        _log(f"{lv.name}: " + ", ".join(f"b{b} {ms:.3f} ms" for b, ms in out[lv.name].items()))
    return out


def floor(bundle: Path, manifest: Manifest, provider: str, log_dir: Path) -> dict[str, Any]:
    """p50 at concurrency 1: circuitserve (level named per request) and the bare app, per level the
    server serves there (FP16 levels on CUDA only)."""
    rng = np.random.default_rng(1)
    examples = rng.standard_normal((64, *manifest.input.shape[1:])).astype(np.float32)
    plan = QUICK
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "bench.bare_app:app", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    env = {"BARE_BUNDLE": str(bundle), "BARE_THREADS": "1", "BARE_PROVIDER": provider}
    bare_server = process("bare-asgi", cmd, port=port, health_path="/health", log_dir=log_dir, env=env)
    out: dict[str, Any] = {}
    with circuitserve([bundle], log_dir, provider=provider, max_batch_size=64) as ours, bare_server as bare:
        for lv in manifest.sorted_levels(("fp32",) if provider == "cpu" else ("fp32", "fp16")):
            api = circuitserve_api(manifest.name, sparsity_level=lv.name)
            served = summary(closed(ours, api.target(ours, examples), 1, plan))
            bodies = [json.dumps({"inputs": [x.tolist()]}).encode() for x in examples]
            path = f"{bare.base_url}/predict/{lv.name.replace('/', '_')}"
            bare_run = summary(closed(bare, load.Target(path, bodies), 1, plan))
            ratio = served["p50_ms"] / bare_run["p50_ms"] if bare_run["p50_ms"] else float("nan")
            out[lv.name] = {"circuitserve": served, "bare_asgi": bare_run, "p50_ratio": round(ratio, 3)}
            _log(
                f"floor {lv.name}: {served['p50_ms']:.3f} ms, bare {bare_run['p50_ms']:.3f} ms ({ratio:.2f}x)"
            )
    return out


def report(levels: dict[str, dict[int, float]], floors: dict[str, Any] | None) -> str:
    """The table the check prints: ms per level and batch, then 1/8's speedups and the floor."""
    rows = [f"{'level':>10}" + "".join(f" {'b' + str(b):>10}" for b in BATCHES)]
    rows += [f"{name:>10}" + "".join(f" {ms[b]:10.3f}" for b in BATCHES) for name, ms in levels.items()]
    for suffix in ("", "@fp16"):
        full, small = levels.get("full" + suffix), levels.get("1/8" + suffix)
        if full and small:
            speed = ", ".join(f"b{b} {full[b] / small[b]:.2f}x" for b in BATCHES)
            rows.append(f"1/8{suffix} over full{suffix}: {speed} (goal at b1024: >= 4x)")
    for name, cell in (floors or {}).items():
        rows.append(
            f"floor {name}: circuitserve p50 {cell['circuitserve']['p50_ms']:.3f} ms, bare app "
            f"{cell['bare_asgi']['p50_ms']:.3f} ms: {cell['p50_ratio']:.2f}x (goal <= 1.3x)"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--provider", default="cuda", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per level and batch size")
    parser.add_argument("--cuda-graphs", action="store_true", help="also time every level with CUDA graphs")
    parser.add_argument("--no-floor", action="store_true", help="skip the HTTP latency floor")
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    args = parser.parse_args(argv)
    manifest = read_manifest(args.bundle)
    started = time.monotonic()
    result: dict[str, Any] = {"bundle": str(args.bundle), "provider": args.provider, "device": device()}
    result["levels_ms"] = level_latency(args.bundle, manifest, args.provider, args.seconds)
    if args.cuda_graphs and args.provider == "cpu":
        _log("CUDA graphs: skipped on CPU")
    elif args.cuda_graphs:
        try:
            result["levels_ms_cuda_graphs"] = level_latency(
                args.bundle, manifest, args.provider, args.seconds, True
            )
        except Exception as exc:  # onnxruntime refuses graphs it cannot capture: that is the finding
            result["cuda_graphs_error"] = f"{type(exc).__name__}: {exc}"
            _log(f"CUDA graphs: {result['cuda_graphs_error']}")
    floors = None
    if not args.no_floor:
        log_dir = args.out.parent / "gpu-check-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        floors = result["floor_c1"] = floor(args.bundle, manifest, args.provider, log_dir)
    result["wall_s"] = round(time.monotonic() - started, 1)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"device: {result['device']}, provider {args.provider}")
    print(report(result["levels_ms"], floors))
    if "levels_ms_cuda_graphs" in result:
        print("with CUDA graphs:")
        print(report(result["levels_ms_cuda_graphs"], None))
    print(f"written to {args.out} in {result['wall_s']} s")
    return 0


def device() -> str:
    """The GPU's name from the driver (nvidia-smi's view, via /proc), else the CPU description."""
    import platform

    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir():
        for info in sorted(gpus.glob("*/information")):
            for line in info.read_text().splitlines():
                if line.startswith("Model:"):
                    return line.split(":", 1)[1].strip()
    return f"{platform.machine()} CPU, no NVIDIA GPU shown"


if __name__ == "__main__":
    raise SystemExit(main())
