"""All server settings: one object, from arguments and `CIRCUITSERVE_*` environment variables.

Lists are JSON in the environment: `CIRCUITSERVE_BUNDLES='["bundles/mnist1d"]'`.
Constructing a Settings validates it and touches no hardware. `load` is the same for people: what is
wrong comes back as one line (`SettingsError`) naming the setting, its flag and its variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CIRCUITSERVE_", extra="forbid", validate_default=True)

    bundles: list[Path] = Field(default_factory=list, description="bundle directories written by export")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535, description="0 picks a free port")
    default_level: str | None = Field(
        default=None, description='level used when a request states no budget ("1/2" or "0.5"); None = full'
    )
    max_batch_size: int = Field(default=64, ge=1, description="samples per batch, per level")
    max_queue_delay_ms: float = Field(
        default=0.0,
        ge=0,
        le=10_000,
        description="longest wait to fill a partial batch on an idle level (opt-in)",
    )
    max_queue_size: int = Field(default=4096, ge=1, description="samples waiting per level before 503")
    request_timeout_ms: float = Field(
        default=30_000, gt=0, description="default deadline; a request's own timeout may only lower it"
    )
    shed_late: bool = Field(
        default=True,
        description="a request whose latency budget cannot be met gets 503 with Retry-After (shed), not a "
        "late answer; false: the fastest level runs and budget_met is false",
    )
    shed_miss_target: float = Field(
        default=0.005,
        gt=0,
        lt=1,
        description="share of admitted latency-budgeted requests allowed to miss their budget: a margin "
        "kept back from every budget at admission grows on each miss and shrinks on hits until misses "
        "settle at this share (shedding; at most half a budget)",
    )
    shed_margin_step_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description="how much one missed budget adds to that margin (0: no margin); a met one takes "
        "step * target / (1 - target) off",
    )
    idle_spin_us: float = Field(
        default=0.0,
        ge=0,
        le=100_000,
        description="after an answer leaves the server idle, its event loop polls this long before it "
        "sleeps, so the next request finds a warm core (service.idle_spin); 0 (default): sleep at once",
    )
    loop_lag_interval_ms: float = Field(
        default=5.0, gt=0, le=1000, description="how often the event loop's lag is sampled (for shedding)"
    )
    default_priority: int = Field(
        default=5, ge=1, description="queue priority of requests sending priority 0"
    )
    intra_op_threads: int | None = Field(
        default=None, ge=1, description="onnxruntime threads per session; None = as profiled in the manifest"
    )
    inter_op_threads: int = Field(default=1, ge=1)
    level_instances: int = Field(
        default=1,
        ge=1,
        le=64,
        description="batchers per level over its one session, each with its own inference thread "
        "(Triton's instance_group count; service.instances): batches of a level run side by side",
    )
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    batch_buckets: bool | None = Field(
        default=None,
        description="pad every batch to a power of two and slice the answer; None = on CUDA only",
    )
    cuda_graphs: bool = Field(
        default=False,
        description="on CUDA, capture one CUDA graph per batch bucket (needs buckets; not yet measured)",
    )
    warmup_runs: int = Field(default=3, ge=1, description="runs per profiled batch size before ready")
    drain_timeout_s: float = Field(
        default=20.0, ge=0, description="SIGTERM to exit, at most: in-flight requests finish within it"
    )
    max_body_bytes: int = Field(default=8 << 20, ge=1024, description="larger request bodies get 413")
    max_inflight_requests: int = Field(
        default=512, ge=1, description="inference requests handled at once; more get 429 before their body"
    )
    read_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="a request's headers and body must arrive within this of its first byte; else 408",
    )
    max_header_bytes: int = Field(
        default=32 << 10, ge=1024, description="request line and headers, in bytes; more get 431"
    )
    max_headers: int = Field(default=100, ge=8, description="header fields per request; more get 431")
    auth_token: SecretStr | None = Field(
        default=None, description="bearer token required on inference and model/admin endpoints"
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="bearer token of the model repository endpoints (/v2/repository/*); unset: 403",
    )
    repository: Path | None = Field(
        default=None, description="a directory of bundles (any depth up to 2) served and loadable by name"
    )
    protect_health_and_metrics: bool = Field(
        default=False, description="also require the token on /v2/health/* and /metrics (probes send none)"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default=1,
        description="server processes sharing the port (one machine's cores); auto = one per core",
    )
    multiprocess_dir: Path | None = Field(
        default=None,
        description="private directory for the workers' metrics, stats and readiness files, emptied at "
        "start; None = a new temporary directory (only used when workers > 1)",
    )

    @field_validator("bundles")
    @classmethod
    def _bundles_are_directories(cls, bundles: list[Path]) -> list[Path]:
        missing = [str(b) for b in bundles if not Path(b).is_dir()]
        if missing:
            raise ValueError(f"bundle directories not found: {', '.join(missing)}")
        return bundles

    @field_validator("auth_token", "admin_token")
    @classmethod
    def _token_not_blank(cls, token: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if token is not None and not token.get_secret_value().strip():
            raise ValueError(f"{info.field_name} is empty: unset it to serve without it")
        return token

    @field_validator("repository")
    @classmethod
    def _repository_is_directory(cls, repository: Path | None) -> Path | None:
        if repository is not None and not Path(repository).is_dir():
            raise ValueError(f"repository directory not found: {repository}")
        return repository

    @model_validator(mode="after")
    def _cuda_graphs_need_buckets(self) -> Settings:
        if self.cuda_graphs and (self.batch_buckets is False or self.provider == "cpu"):
            raise ValueError(
                "cuda_graphs needs batch_buckets (fixed shapes) and provider auto or cuda, got "
                f"batch_buckets={self.batch_buckets}, provider={self.provider!r} (set "
                "CIRCUITSERVE_CUDA_GRAPHS, CIRCUITSERVE_BATCH_BUCKETS, CIRCUITSERVE_PROVIDER)"
            )
        return self

    def worker_count(self) -> int:
        """`workers` as a number: `auto` is one per core this process may run on (call at start)."""
        return cores() if self.workers == "auto" else self.workers

    def core_share(self) -> int:
        """Cores per worker, at least 1: the cap on onnxruntime's intra-op threads per session when
        `intra_op_threads` is not set, so workers x threads <= cores."""
        return max(1, cores() // self.worker_count())

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v


# The `circuitserve serve` flags that set a field; every field also has its CIRCUITSERVE_* variable.
FLAGS = {
    "bundles": "the BUNDLES arguments",
    "host": "--host",
    "port": "--port",
    "repository": "--repository",
    "workers": "--workers",
}
_SECRET = frozenset({"auth_token", "admin_token"})


class SettingsError(ValueError):
    """Settings that cannot be served with, said in one line (see `describe`)."""


def describe(exc: ValidationError) -> str:
    """pydantic's report as one line: per wrong setting, what is wrong and where to fix it, e.g.
    `port: Input should be less than or equal to 65535, got 70000 (set --port or CIRCUITSERVE_PORT)`."""
    parts = []
    for err in exc.errors(include_url=False):
        name = str(err["loc"][0]) if err["loc"] else "settings"
        what = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parts.append(f"{name}: no such setting (CIRCUITSERVE_{name.upper()})")
            continue
        if not err["loc"]:  # a check across settings (model_validator) names them itself
            parts.append(what)
            continue
        if err["type"] != "value_error" and name not in _SECRET:  # our own validators name the value
            what += f", got {_short(err.get('input'))}"
        where = " or ".join([*([FLAGS[name]] if name in FLAGS else []), f"CIRCUITSERVE_{name.upper()}"])
        parts.append(f"{name}: {what} (set {where})")
    return "; ".join(parts)


def load(**overrides: Any) -> Settings:
    """`Settings(**overrides)`, raising SettingsError with a one-line message if they are invalid."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe(exc)) from None


def cores() -> int:
    """CPUs this process may run on (its affinity mask, so `taskset` and cpusets count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
