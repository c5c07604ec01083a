"""What a bench run measures and for how long: the full run and the quick one the tests use."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bench.build import BundleSpec


@dataclass(frozen=True)
class ServerSettings:
    """circuitserve's settings in every section (CIRCUITSERVE_* variables); the peers get the same
    batch limit, batching delay and onnxruntime threads."""

    max_batch_size: int = 64
    max_queue_delay_ms: float = 0.0  # the default: batches form while one runs
    # One onnxruntime thread per session: measured best on this 2-core machine for the server (a
    # second intra-op thread spins between batches on the core that the HTTP side needs).
    intra_op_threads: int = 1

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


SERVER = ServerSettings()


@dataclass(frozen=True)
class Plan:
    quick: bool
    datasets: dict[str, BundleSpec]  # levels section: name -> sparsity-aware model
    seeds: tuple[int, ...]  # accuracy section: each dataset's model trained once per seed
    serving: BundleSpec  # overhead and peers: the digits default model
    overload: BundleSpec  # compute-bound model for overload
    overload_choice: str  # which model the overload section serves, and why (REPORT.md says it)
    export_random: bool  # random-order control as its own exported bundle (else: the checkpoint's)
    profile_s: float  # onnxruntime timing per level (split over batch sizes 1 and 128)
    load_s: float  # one closed-loop measurement
    warmup_s: float  # closed-loop warm-up, not recorded
    concurrencies: tuple[int, ...]
    peer_rounds: int  # interleaved rounds: peer A, us, peer B, us
    set_up_peers: bool  # make the peers' venvs when missing (downloads once; never in the quick run)
    overload_s: float  # one open-loop phase
    overload_factors: tuple[int, ...]
    budget_ms: float  # the latency budget every overload request carries


FULL = Plan(
    quick=False,
    datasets={"digits": BundleSpec("digits"), "mnist1d": BundleSpec("mnist1d")},
    seeds=(0, 1, 2),
    serving=BundleSpec("digits"),
    # MNIST-1D's default model (64 modules) trained on the full model only (plain), so pruning costs
    # accuracy: the level the policy picks under load has a price (issue 15, item 6). It is the levels
    # section's own plain checkpoint (one training fewer). A 256-module preset would be more
    # compute-bound, but trains for over an hour on this machine.
    overload=BundleSpec("mnist1d", sparsity_aware=False, name="mnist1d-plain"),
    overload_choice=(
        "MNIST-1D's default model trained on the full model only (no sparsity-aware training), so that "
        "its levels differ by more than their 95% intervals (1000 test examples: about ±1.5 points at "
        "95%): the default models' levels all score within a point of full, which would show attainment "
        "only, not a trade. Here a cheaper level buys latency with accuracy, and the expected accuracy "
        "says how much"
    ),
    export_random=True,
    profile_s=1.5,
    load_s=6.0,
    warmup_s=1.0,
    concurrencies=(1, 8, 64),
    peer_rounds=2,
    set_up_peers=True,
    overload_s=10.0,
    overload_factors=(1, 2, 4),
    budget_ms=50.0,
)

_TINY = BundleSpec("digits", preset="tiny", epochs=1)
QUICK = Plan(
    quick=True,
    datasets={"digits": _TINY},
    seeds=(0, 1),
    serving=_TINY,
    overload=_TINY,
    overload_choice="the tiny test model (quick run: its accuracy means nothing)",
    export_random=False,
    profile_s=0.2,
    load_s=0.8,
    warmup_s=0.2,
    concurrencies=FULL.concurrencies,  # the same keys as a full report, only shorter phases
    peer_rounds=1,
    set_up_peers=False,  # the tests must not download: a missing peer is reported as skipped
    overload_s=1.0,
    overload_factors=FULL.overload_factors,
    budget_ms=50.0,
)
