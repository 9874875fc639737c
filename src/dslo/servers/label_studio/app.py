"""The HTTP face of the backend (Starlette, served by uvicorn): Label Studio's ML backend routes,
basic auth, a cap on request bodies, and answers that never carry a traceback or a local path.

``GET /`` and ``/health`` answer at once from the event loop (Label Studio gives them one second),
whatever the workers are doing; ``POST /setup`` parses the labelling config; ``POST /predict``
hands the tasks to :class:`~dslo.servers.label_studio.backend.Backend`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import traceback
from typing import Any

from dslo.servers.label_studio.backend import Backend

__all__ = ["create_app", "INSTALL_HINT"]

INSTALL_HINT = ('dslo label-studio needs Starlette and uvicorn, which are not installed; install them with '
                'pip install "dslo[labelstudio]"')


class _TooLarge(Exception):
    pass


def _authorized(header: str | None, expected: tuple[str, str]) -> bool:
    if not header or not header.startswith("Basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    # both compared, always: no early exit that times the user name
    ok_user = hmac.compare_digest(user.encode(), expected[0].encode())
    ok_pass = hmac.compare_digest(password.encode(), expected[1].encode())
    return ok_user and ok_pass


async def _body(request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(backend: Backend) -> Any:
    """The ASGI app of ``backend`` (Starlette)."""
    try:
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route
    except ImportError as exc:
        raise RuntimeError(INSTALL_HINT) from exc

    settings = backend.settings

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"status": "error", "error": message}, status_code=status)

    async def read_json(request) -> dict:
        raw = await _body(request, settings.max_body_bytes)
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise ValueError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise ValueError("the request body must be a JSON object")
        return body

    def guarded(handler):
        async def route(request):
            if settings.basic_auth and not _authorized(request.headers.get("authorization"), settings.basic_auth):
                return JSONResponse({"status": "error", "error": "unauthorized"}, status_code=401,
                                    headers={"WWW-Authenticate": 'Basic realm="dslo"'})
            try:
                return await handler(request)
            except _TooLarge:
                return error(413, f"the request body is larger than {settings.max_body_bytes:,} bytes")
            except ValueError as exc:  # dslo's own messages about the request (a config, the tasks)
                return error(400, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            except Exception:  # a bug: the log has the traceback, the answer says only that
                backend.log("internal error:\n" + traceback.format_exc())
                return error(500, "internal error; the server log has the details")
        return route

    async def health(request):
        return JSONResponse(backend.health())

    async def setup(request):
        return JSONResponse(backend.setup(await read_json(request)))

    async def predict(request):
        return JSONResponse(await backend.predict(await read_json(request)))

    async def not_supported(request):
        return JSONResponse({"status": "ok", "message": "dslo is training-free: there is nothing to train"})

    routes = [Route("/", guarded(health), methods=["GET"]), Route("/health", guarded(health), methods=["GET"]),
              Route("/setup", guarded(setup), methods=["POST"]), Route("/predict", guarded(predict), methods=["POST"]),
              Route("/webhook", guarded(not_supported), methods=["POST"]),
              Route("/train", guarded(not_supported), methods=["POST"])]
    return Starlette(debug=False, routes=routes)
