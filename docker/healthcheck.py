#!/usr/bin/env python3
"""Container healthcheck: JupyterLab's /api answers (it needs no token). Exit 0 healthy, 1 not."""

import os
import sys
import urllib.request

port = os.environ.get("JUPYTER_PORT", "8888")
base = os.environ.get("JUPYTER_BASE_URL", "/").rstrip("/")
url = f"http://127.0.0.1:{port}{base}/api"
try:
    with urllib.request.urlopen(url, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    print(f"unhealthy: {url}: {exc}", file=sys.stderr)
    sys.exit(1)
