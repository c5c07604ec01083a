"""All server settings: one object, from arguments and `CIRCUITSERVE_*` environment variables.

Lists are JSON in the environment: `CIRCUITSERVE_BUNDLES='["bundles/mnist1d"]'`.
Constructing a Settings validates it and touches no hardware.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
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
    default_priority: int = Field(
        default=5, ge=1, description="queue priority of requests sending priority 0"
    )
    intra_op_threads: int | None = Field(
        default=None, ge=1, description="onnxruntime threads per session; None = as profiled in the manifest"
    )
    inter_op_threads: int = Field(default=1, ge=1)
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    warmup_runs: int = Field(default=3, ge=1, description="runs per profiled batch size before ready")
    drain_timeout_s: float = Field(
        default=20.0, ge=0, description="SIGTERM to exit, at most: in-flight requests finish within it"
    )
    max_body_bytes: int = Field(default=8 << 20, ge=1024, description="larger request bodies get 413")
    max_inflight_requests: int = Field(
        default=512, ge=1, description="inference requests handled at once; more get 429 before their body"
    )
    auth_token: SecretStr | None = Field(
        default=None, description="bearer token required on inference and model/admin endpoints"
    )
    protect_health_and_metrics: bool = Field(
        default=False, description="also require the token on /v2/health/* and /metrics (probes send none)"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("bundles")
    @classmethod
    def _bundles_are_directories(cls, bundles: list[Path]) -> list[Path]:
        missing = [str(b) for b in bundles if not Path(b).is_dir()]
        if missing:
            raise ValueError(f"bundle directories not found: {', '.join(missing)}")
        return bundles

    @field_validator("auth_token")
    @classmethod
    def _token_not_blank(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and not token.get_secret_value().strip():
            raise ValueError("auth_token is empty: unset it to serve without auth")
        return token

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v
