#!/usr/bin/env python3
"""The baseline of the whole-process benchmark: a plain transfer of the same bytes, as a process.

``upload``: PUT a minimal Flow, allocate storage for every segment file of a (local, media playlist)
``--playlist`` in one request, and PUT the files,
``--concurrency`` at a time. ``download``: list a Flow's segments (every page) and GET each one's
first URL, ``--concurrency`` at a time, discarding the bytes. aiohttp only: no timing extraction,
no segment registration, no muxing, no file written, and only aiohttp to import, so this is what
the store, the network and a Python process allow. The store URL comes from ``--tams-url``, the
HTTP Basic credentials from ``$USERNAME`` and ``$PASSWORD``. Prints the bytes moved.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from pathlib import Path

import aiohttp


def _auth() -> dict[str, str]:
    """The Authorization header of the store's basic credentials."""
    return {"Authorization": aiohttp.encode_basic_auth(os.environ["USERNAME"], os.environ["PASSWORD"])}


def _media_auth(presigned: object, url: str) -> dict[str, str]:
    """API credentials only for a URL that is not presigned (as client.py does)."""
    is_presigned = bool(presigned) if presigned is not None else "?" in url
    return {} if is_presigned else _auth()


async def upload(api: str, files: list[Path], concurrency: int) -> int:
    flow_id = str(uuid.uuid4())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency + 2)) as session:
        flow = {"id": flow_id, "source_id": str(uuid.uuid4()), "format": "urn:x-nmos:format:video",
                "codec": "video/h264", "container": "video/mp2t",
                "essence_parameters": {"frame_width": 1920, "frame_height": 1080, "frame_rate": {"numerator": 30}}}
        async with session.put(f"{api}/flows/{flow_id}", json=flow, headers=_auth()) as reply:
            reply.raise_for_status()
        async with session.post(f"{api}/flows/{flow_id}/storage", json={"limit": len(files)}, headers=_auth()) as reply:
            reply.raise_for_status()
            objects = (await reply.json())["media_objects"]
        slots = asyncio.Semaphore(concurrency)

        async def put(item: dict, path: Path) -> int:
            async with slots:
                data = path.read_bytes()
                target = item["put_url"]
                headers = {"Content-Type": target.get("content-type", "video/mp2t"), **(target.get("headers") or {}),
                           **_media_auth(item.get("presigned"), target["url"])}
                async with session.put(target["url"], data=data, headers=headers) as reply:
                    reply.raise_for_status()
                return len(data)
        sizes = await asyncio.gather(*(put(item, path) for item, path in zip(objects, files)))
    return sum(sizes)


async def download(api: str, flow_id: str, concurrency: int) -> int:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency + 2)) as session:
        slots = asyncio.Semaphore(concurrency)

        async def get(url: dict) -> int:
            async with slots:
                async with session.get(url["url"], headers=_media_auth(url.get("presigned"), url["url"])) as reply:
                    reply.raise_for_status()
                    size = 0
                    async for chunk in reply.content.iter_chunked(1 << 16):
                        size += len(chunk)
                    return size
        tasks = []
        page: str | None = f"{api}/flows/{flow_id}/segments"
        while page:
            async with session.get(page, headers=_auth()) as reply:
                reply.raise_for_status()
                segments = await reply.json()
                page = str(reply.links["next"]["url"]) if "next" in reply.links else None
            tasks += [asyncio.create_task(get(s["get_urls"][0])) for s in segments]
        return sum(await asyncio.gather(*tasks))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("mode", choices=("upload", "download"))
    parser.add_argument("--tams-url", required=True, help="the store's API URL")
    parser.add_argument("--concurrency", type=int, default=8, help="transfers at once")
    parser.add_argument("--flow-id", help="download: the Flow whose objects to GET")
    parser.add_argument("--playlist", type=Path, help="upload: the HLS playlist whose segment files to PUT")
    args = parser.parse_args()
    api = args.tams_url.rstrip("/")
    if args.mode == "upload":
        base = args.playlist.parent
        files = [base / line for line in args.playlist.read_text().splitlines() if line and not line.startswith("#")]
        moved = asyncio.run(upload(api, files, args.concurrency))
    else:
        moved = asyncio.run(download(api, args.flow_id, args.concurrency))
    print(moved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
