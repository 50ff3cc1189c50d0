"""The floor: the least a jobsvc-shaped ``POST /jobs`` can do on a given ASGI server.

It reads and parses the JSON body and answers 202 with a small JSON object; no store, no queue.
Served by ``hypercorn --worker-class trio floor_app:app`` (the hypercorn trio floor) and by
``uvicorn floor_app:app`` (the reference) in ``bench/peers.py``.
"""

from __future__ import annotations

import itertools

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["app"]

_ids = itertools.count(1)


async def submit(request: Request) -> Response:
    body = await request.json()
    return JSONResponse({"id": str(next(_ids)), "task": body.get("task"), "state": "pending"}, status_code=202)


app = Starlette(routes=[Route("/jobs", submit, methods=["POST"])])
