"""schemathesis, with all its checks, on the served OpenAPI document of both APIs: requests the
schema admits are served, requests it refuses are refused, every answer is documented (status,
content type, headers, body schema), and none is a server error.

Run as `st run` (the CLI) against a real uvicorn: all its phases (examples, coverage, fuzzing,
stateful) and both generation modes. 503 and 504 count as answers, not server errors: they are the
documented answers to load and to a caller's own deadline (a `timeout` of 1 µs passes before any
batch can start).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from service_helpers import live_server, make_settings

EXAMPLES = 30  # per operation and phase
CONFIG = """
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503", "504"]
"""


def test_schemathesis_finds_nothing_with_all_checks(bundle_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    st = Path(sys.executable).with_name("st")
    with live_server(make_settings(bundle_path)) as address:
        options = ["--checks", "all", "--max-examples", str(EXAMPLES), "--seed", "13", "--workers", "1"]
        url = f"http://{address}/openapi.json"
        done = subprocess.run(
            [str(st), "--config-file", str(config), "--no-color", "run", url, *options],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=tmp_path,
        )
    report = done.stdout[-6000:]
    assert done.returncode == 0, report
    cases = re.search(r"(\d+) generated", report)
    operations = re.search(r"Tested: (\d+)", report)
    assert cases and operations and int(operations[1]) >= 11, report
    assert "Schema-violating request accepted" not in report and "Schema-valid request rejected" not in report
    print(f"\nschemathesis --checks all: {cases[1]} cases over {operations[1]} operations, no failures")
