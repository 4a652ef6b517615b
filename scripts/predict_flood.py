"""Flood a real ``reloop serve`` (archive on) with 24 predict bodies of ~52 MB, then one chunked.

Prints the statuses, the server's resident memory before, at its peak and after, and the archive's
size: with ``RELOOP_MAX_BODY_BYTES`` (default 8 MiB) every body is refused with 413 before it is
read, so memory stays flat and nothing is archived (issue 12, item 1).

    PYTHONPATH=$PWD nice -n 5 .venv/bin/python scripts/predict_flood.py
"""

from __future__ import annotations

import http.client
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

from reloop_service.serving.load_bench import _setup_registry, _start


def _rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return -1


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="reloop-flood-"))
    _setup_registry(root)
    proc, port = _start(root, True)
    try:
        before = peak = _rss_mb(proc.pid)
        item = json.dumps({"features": {"user_id": "u", "junk": "x" * 1000}}).encode()
        body = b'{"items": [' + b",".join([item] * 50_000) + b"]}"
        statuses: list[object] = []
        for _ in range(24):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/json"})
                statuses.append(conn.getresponse().status)
            except OSError as exc:
                statuses.append(type(exc).__name__)
            finally:
                conn.close()
            peak = max(peak, _rss_mb(proc.pid))

        def chunks() -> Iterator[bytes]:  # no Content-Length: refused while it streams in
            for k in range(0, len(body), 65536):
                yield body[k : k + 65536]

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            headers = {"Content-Type": "application/json"}
            conn.request("POST", "/v1/predict", body=chunks(), headers=headers, encode_chunked=True)
            statuses.append(conn.getresponse().status)
        except OSError as exc:
            statuses.append(type(exc).__name__)
        peak = max(peak, _rss_mb(proc.pid))
        print(f"body {len(body) / 1e6:.1f} MB x 24 + 1 chunked: statuses {statuses}")
        print(f"server RSS before {before} MB, peak {peak} MB, after {_rss_mb(proc.pid)} MB")
        print(f"archive bytes: {sum(f.stat().st_size for f in root.rglob('*.parquet'))}")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
