"""HTTP routes of the vault browser (the "Luna Vaults" sidebar tab), on ComfyUI's own server.

Only vaults inside the vault folders are reachable (by name, checked), pages are bounded, and a
change (delete, restore) names the manifest version the client saw: a stale view is refused (409).
The work runs in a thread, off ComfyUI's event loop. Everything else is in vault/browse.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from ..core.errors import QueryError, UnsafeNameError, VaultError, VaultExistsError, VaultNotFoundError
from ..vault import browse
from ..vault.cache import open_cached
from ..vault.package import PACKAGE_SUFFIX, install
from ..vault.thumbnails import decode_thumbnail
from .common import new_vault_path, vault_folders, vault_names, vault_path

PREFIX = "/luna/vaults"
MAX_PACKAGE_UPLOAD = 8 << 30
_registered = False


def _status(e: Exception) -> int:
    if isinstance(e, browse.StaleViewError):
        return 409
    if isinstance(e, VaultExistsError):
        return 409
    if isinstance(e, (VaultNotFoundError, FileNotFoundError)):
        return 404
    return 400


async def _run(fn: Callable[[], Any]) -> web.Response:
    """Run `fn` in a thread; its dict as JSON, or its error as {"error": "..."} with a fitting status."""
    try:
        return web.json_response(await asyncio.to_thread(fn))
    except (VaultError, QueryError, UnsafeNameError, ValueError, KeyError) as e:
        msg = str(e) if not isinstance(e, KeyError) else f"missing field {e}"
        return web.json_response({"error": msg}, status=_status(e) if not isinstance(e, KeyError) else 400)


def _vault(name: str) -> Any:
    try:
        return open_cached(vault_path(name))
    except ValueError as e:  # vault_path: not a plain name, or no such vault
        raise VaultNotFoundError(str(e)) from e


def _int(request: web.Request, key: str, default: int) -> int:
    raw = request.query.get(key, str(default))
    try:
        return int(raw)
    except ValueError:
        raise QueryError(f"{key} must be a whole number, got {raw!r}") from None


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise QueryError("the request body must be a JSON object") from None
    if not isinstance(data, dict):
        raise QueryError("the request body must be a JSON object")
    return data


def _ids(data: dict[str, Any]) -> list[int]:
    ids = data.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise QueryError("ids must be a list of entry ids")
    return ids


def _seen(data: dict[str, Any]) -> int:
    g = data.get("generation")
    if not isinstance(g, int) or isinstance(g, bool):
        raise QueryError("generation (the vault version you saw) is required to change a vault")
    return g


def register_routes(routes: web.RouteTableDef | None = None) -> None:
    """Add the browser's routes to ComfyUI's server (once)."""
    global _registered
    if _registered:
        return
    if routes is None:
        from server import PromptServer

        routes = PromptServer.instance.routes

    @routes.get(PREFIX)
    async def list_vaults(request: web.Request) -> web.Response:
        def work() -> dict[str, Any]:
            out, problems = [], {}
            for name in vault_names():
                try:
                    out.append(browse.summary(open_cached(vault_path(name))))
                except VaultError as e:  # a damaged vault is listed with its problem, not hidden
                    problems[name] = str(e)
            return {"vaults": out, "problems": problems, "folders": [str(f) for f in vault_folders()]}
        return await _run(work)

    @routes.get(PREFIX + "/{name}/entries")
    async def entries(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return await _run(lambda: browse.page(_vault(name), _int(request, "offset", 0), _int(request, "limit", 60),
                                              request.query.get("text", ""), request.query.get("filter", "")))

    @routes.get(PREFIX + "/{name}/entries/{id}")
    async def one_entry(request: web.Request) -> web.Response:
        name, i = request.match_info["name"], request.match_info["id"]
        return await _run(lambda: browse.entry(_vault(name), _parse_id(i)))

    @routes.get(PREFIX + "/{name}/similar/{id}")
    async def more_like_this(request: web.Request) -> web.Response:
        name, i = request.match_info["name"], request.match_info["id"]
        return await _run(lambda: browse.similar(_vault(name), _parse_id(i), _int(request, "k", 24)))

    @routes.get(PREFIX + "/{name}/thumbnails/{id}")
    async def thumbnail(request: web.Request) -> web.Response:
        name, i = request.match_info["name"], request.match_info["id"]

        def work() -> bytes:
            v = _vault(name)
            entry_id = _parse_id(i)
            if not 0 <= entry_id < v.n_entries:
                raise VaultNotFoundError(f"no entry {entry_id} in vault '{name}'")
            data = v.thumbnail(entry_id)
            if not data:
                raise VaultNotFoundError(f"entry {entry_id} has no preview")
            decode_thumbnail(data)  # a stored preview is untrusted: only a real, small image is served
            return data
        try:
            data = await asyncio.to_thread(work)
        except (VaultError, ValueError) as e:
            return web.json_response({"error": str(e)}, status=_status(e))
        return web.Response(body=data, content_type="image/webp", headers={"Cache-Control": "private, max-age=3600"})

    async def change(request: web.Request, work: Callable[[str, dict[str, Any]], dict[str, Any]]) -> web.Response:
        name = request.match_info["name"]
        try:
            data = await _body(request)
        except QueryError as e:
            return web.json_response({"error": str(e)}, status=400)
        return await _run(lambda: work(name, data))

    @routes.post(PREFIX + "/{name}/delete")
    async def delete(request: web.Request) -> web.Response:
        return await change(request, lambda name, data: browse.delete(_vault(name).path, _ids(data), _seen(data)))

    @routes.post(PREFIX + "/{name}/restore")
    async def restore(request: web.Request) -> web.Response:
        return await change(request, lambda name, data: browse.restore(_vault(name).path, _ids(data), _seen(data)))

    @routes.post(PREFIX + "/{name}/export")
    async def export(request: web.Request) -> web.Response:
        def work(name: str, data: dict[str, Any]) -> dict[str, Any]:
            target = new_vault_path(str(data.get("name", "")))
            if target.exists():
                raise VaultExistsError(f"a vault named '{data.get('name')}' already exists; choose another name")
            return browse.export(_vault(name).path, _ids(data), target)
        return await change(request, work)

    @routes.post(PREFIX + "/install")
    async def install_package(request: web.Request) -> web.Response:
        """Body: the raw .lvault file. ?name= installs under another name; ?overwrite=1 replaces."""
        folder = vault_folders()[0]
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".upload-", suffix=PACKAGE_SUFFIX, dir=folder)
        tmp = Path(tmp_name)
        try:
            size = 0
            with os.fdopen(fd, "wb") as f:
                async for block in request.content.iter_chunked(1 << 20):
                    size += len(block)
                    if size > MAX_PACKAGE_UPLOAD:
                        return web.json_response({"error": "the package is larger than 8 GiB; use luna-vault install"},
                                                 status=413)
                    f.write(block)
            name = request.query.get("name") or None
            overwrite = request.query.get("overwrite") == "1"
            return await _run(lambda: {"installed": install(tmp, folder, name=name, overwrite=overwrite).name})
        finally:
            tmp.unlink(missing_ok=True)

    _registered = True


def _parse_id(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise QueryError(f"entry id must be a whole number, got {raw!r}") from None
