"""What every backend's stored-file routes must do with `Range`, `If-Range`, ETag and HEAD, asked
of one path whose bytes the test knows (local files, NATS objects and S3 objects alike)."""

from __future__ import annotations

import httpx


async def assert_ranges_served(api: httpx.AsyncClient, path: str, data: bytes) -> None:
    whole = await api.get(path)
    assert (whole.status_code, whole.content) == (200, data)
    etag = whole.headers["etag"]
    assert etag.startswith('"') and whole.headers["accept-ranges"] == "bytes"

    middle = await api.get(path, headers={"Range": "bytes=100-199"})
    assert (middle.status_code, middle.content) == (206, data[100:200])
    assert middle.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert middle.headers["content-length"] == "100"
    tail = await api.get(path, headers={"Range": "bytes=-10"})
    assert (tail.status_code, tail.content) == (206, data[-10:])
    open_ended = await api.get(path, headers={"Range": f"bytes={len(data) - 5}-"})
    assert (open_ended.status_code, open_ended.content) == (206, data[-5:])
    past_end = await api.get(path, headers={"Range": f"bytes={len(data)}-"})
    assert (past_end.status_code, past_end.headers["content-range"]) == (416, f"bytes */{len(data)}")
    assert (await api.get(path, headers={"Range": "bytes=x-y"})).status_code == 400
    stale = await api.get(path, headers={"Range": "bytes=0-9", "If-Range": '"another-version"'})
    assert (stale.status_code, stale.content) == (200, data), "If-Range not matching: the whole file"
    fresh = await api.get(path, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert (fresh.status_code, fresh.content) == (206, data[:10])

    head = await api.head(path)
    assert (head.status_code, head.content) == (200, b"")
    for name in ("etag", "content-length", "content-type", "accept-ranges"):
        assert head.headers[name] == whole.headers[name], name
    ranged_head = await api.head(path, headers={"Range": "bytes=0-9"})
    assert (ranged_head.status_code, ranged_head.headers["content-length"]) == (206, "10")
