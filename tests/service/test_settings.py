"""Settings: defaults, the environment (JSON lists), validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings, SettingsError, load


def test_defaults_match_the_contract() -> None:
    s = Settings()
    assert (s.host, s.port, s.default_level, s.max_batch_size, s.max_queue_delay_ms) == (
        "127.0.0.1",
        8000,
        None,
        64,
        0.0,
    )
    assert (s.provider, s.drain_timeout_s, s.auth_token, s.bundles) == ("auto", 20.0, None, [])


def test_environment_is_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch, bundle_path: Path) -> None:
    monkeypatch.setenv("CIRCUITSERVE_BUNDLES", f'["{bundle_path}"]')
    monkeypatch.setenv("CIRCUITSERVE_PORT", "9001")
    monkeypatch.setenv("CIRCUITSERVE_DEFAULT_LEVEL", "1/2")
    monkeypatch.setenv("CIRCUITSERVE_PROVIDER", "cpu")
    monkeypatch.setenv("CIRCUITSERVE_AUTH_TOKEN", "s3cret")
    monkeypatch.setenv("CIRCUITSERVE_LOG_LEVEL", "DEBUG")
    s = Settings()
    assert s.bundles == [bundle_path] and s.port == 9001 and s.default_level == "1/2"
    assert s.auth_token is not None and s.auth_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s) and s.log_level == "debug"
    assert Settings(port=9002).port == 9002  # arguments win over the environment


@pytest.mark.parametrize(
    "field, value",
    [
        ("port", 70000),
        ("max_batch_size", 0),
        ("max_queue_delay_ms", -1),
        ("provider", "tpu"),
        ("request_timeout_ms", 0),
        ("bundles", ["/does/not/exist"]),
        ("no_such_setting", 1),
    ],
)
def test_invalid_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Settings(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides, names",
    [
        ({"bundles": ["/nonexistent"]}, ["bundles: bundle directories not found: /nonexistent", "BUNDLES"]),
        ({"port": 70000}, ["port:", "got 70000", "--port", "CIRCUITSERVE_PORT"]),
        ({"max_batch_size": "x"}, ["max_batch_size:", "'x'", "CIRCUITSERVE_MAX_BATCH_SIZE"]),
        ({"auth_token": "  "}, ["auth_token: auth_token is empty", "CIRCUITSERVE_AUTH_TOKEN"]),
        ({"no_such_setting": 1}, ["no_such_setting: no such setting"]),
    ],
)
def test_invalid_settings_are_one_line_naming_the_fix(overrides: dict[str, object], names: list[str]) -> None:
    with pytest.raises(SettingsError) as caught:
        load(**overrides)
    message = str(caught.value)
    assert "\n" not in message and "pydantic" not in message and "input_value" not in message, message
    for name in names:
        assert name in message, message


def test_every_wrong_setting_is_named_at_once() -> None:
    with pytest.raises(SettingsError, match=r"^port: .*; provider: .*CIRCUITSERVE_PROVIDER\)$"):
        load(port=-1, provider="tpu")
