"""Request bodies of our ASGI services (the embedding service, the web page), read with a cap."""

from __future__ import annotations

from fastapi import HTTPException, Request


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read no further than ``limit`` bytes: 413 beyond, before reading anything when
    its declared length says so."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPException(413, f"the request is larger than the {limit} bytes allowed")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the request is larger than the {limit} bytes allowed")
        chunks.append(chunk)
    return b"".join(chunks)
