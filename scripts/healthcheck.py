"""Container HEALTHCHECK: exit 0 when the local server answers 200 on /v2/health/ready, else 1.

Standard library only (the runtime image has no curl). The port comes from CIRCUITSERVE_PORT, as the
server's does. Kubernetes does not use this: its probes are httpGet on the same endpoints.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

READY_PATH = "/v2/health/ready"


def check(port: int, timeout_s: float = 2.0) -> int:
    url = f"http://127.0.0.1:{port}{READY_PATH}"
    request = urllib.request.Request(url)
    token = os.environ.get("CIRCUITSERVE_AUTH_TOKEN")
    if token:  # harmless when health is unauthenticated; needed if it ever is not
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as e:  # 503 while warming up or draining
        print(f"not ready: HTTP {e.code} from {url}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"not ready: {e} ({url})", file=sys.stderr)
        return 1


def main() -> int:
    port = int(os.environ.get("CIRCUITSERVE_PORT", "8000"))
    return check(port)


if __name__ == "__main__":
    sys.exit(main())
