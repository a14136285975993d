"""HTTP routes of the vault browser (the "Luna Vaults" sidebar tab), on ComfyUI's own server.

Every route first checks who asks (route_guard: Host, Origin, Sec-Fetch-Site, and for a route that
changes or creates something the per-server token), then validates all of its input before it acts:
a bad request gets a 4xx and one line, never a 500. Only vaults inside the vault folders are reachable,
by name; pages are bounded; a change names the manifest version the client saw (a stale view is
refused, 409). Messages sent to the browser name vaults by name, never by server path. The work runs
in a thread, off ComfyUI's event loop; the vault logic is in vault/browse.py, packages in vault/package.py.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..core.atomic import check_name
from ..core.errors import VaultError, VaultExistsError, VaultNotFoundError
from ..vault import browse
from ..vault.cache import open_cached
from ..vault.manifest import VAULT_SUFFIX, vault_name
from ..vault.package import PACKAGE_SUFFIX, PackageError, card_claims, card_from_head, install, package_bytes_limit
from ..vault.thumbnails import decode_thumbnail
from .common import vault_folders, vault_names, vault_path
from .route_guard import TOKEN_HEADER, Guard, Refused, machine_hosts, new_token

log = logging.getLogger(__name__)

PREFIX = "/luna/vaults"
MAX_JSON_BYTES = 1 << 20  # a body of 10,000 ids is ~100 KB
MAX_ID = (1 << 63) - 1
UPLOAD_BLOCK = 1 << 16
UPLOAD_PREFIX = ".upload-"
STALE_UPLOAD_S = 3600  # an upload file untouched this long is a leftover of a killed server
_INT = re.compile(r"^[0-9]{1,18}$")
_ABS_PATH = re.compile(r"(?<![\w/.~-])(/[^\s'\"<>|;,()]+|[A-Za-z]:\\[^\s'\"<>|;,()]+)")
_guard: Guard | None = None  # set once the routes are registered

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(Exception):
    """A request refused before anything was done: the status, one line for the user, extra JSON fields."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.extra = status, extra


# ---- what the browser is told --------------------------------------------------------------------
def public(message: str) -> str:
    """An error message for the browser, on one line: a server path becomes the vault-relative or file name."""
    folders = [str(f) for f in vault_folders()]

    def shown(m: re.Match[str]) -> str:
        path = m.group(0)
        for folder in folders:
            if path.startswith(folder.rstrip(os.sep) + os.sep):
                return path[len(folder.rstrip(os.sep)) + 1:]
        return Path(path.replace("\\", "/")).name or "…"

    return " ".join(_ABS_PATH.sub(shown, message).split())[:2000]


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": public(message), **extra}, status=status)


def _status(e: Exception) -> int:
    if isinstance(e, (browse.StaleViewError, VaultExistsError)):
        return 409
    if isinstance(e, VaultNotFoundError):
        return 404
    return 400


def _endpoint(guard: Guard, handler: Handler, change: bool, query: frozenset[str]) -> Handler:
    """The handler behind the guard and the query check, with every refusal as a one-line JSON error."""

    @functools.wraps(handler)
    async def serve(request: web.Request) -> web.StreamResponse:
        try:
            guard.check(request.headers, change)
            _only(request.query, query)
            return await handler(request)
        except Refused as e:
            return _error(403, str(e), **({"token": True} if e.token else {}))
        except HttpError as e:
            return _error(e.status, str(e), **e.extra)
        except VaultError as e:  # QueryError, UnsafeNameError, PackageError, a damaged vault...
            return _error(_status(e), str(e))
        except (HttpProcessingError, ConnectionError):  # the body was cut off or malformed on the way
            return _error(400, "the request body was cut off or malformed")
        except Exception:  # a bug, not a bad request: the traceback goes to the server log only
            log.exception("Luna Vault: %s %s failed", request.method, request.path)
            return _error(500, "internal error in Luna Vault (a bug): the ComfyUI log has the details")

    return serve


# ---- input checks ----------------------------------------------------------------------------------
def _only(query: Mapping[str, str], allowed: frozenset[str]) -> None:
    unknown = sorted(set(query) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) or "none"
        raise HttpError(400, f"unknown query parameter(s) {', '.join(unknown)[:200]}; this route takes {takes}")
    repeated = sorted(k for k in set(query) if len(query.getall(k)) > 1)  # type: ignore[attr-defined]
    if repeated:
        raise HttpError(400, f"query parameter {repeated[0]} is given more than once")


def _whole(raw: str, what: str) -> int:
    if not _INT.match(raw):
        raise HttpError(400, f"{what} must be a whole number 0..{10 ** 18 - 1}, got {raw[:40]!r}")
    return int(raw)


def _int(request: web.Request, key: str, default: int) -> int:
    return _whole(request.query.get(key, str(default)), key)


def _text(request: web.Request, key: str) -> str:
    value = request.query.get(key, "")
    if len(value) > browse.MAX_TEXT:
        raise HttpError(400, f"{key} is {len(value)} characters; at most {browse.MAX_TEXT}")
    return value


def _name(raw: str) -> str:
    """A vault name from a URL or a body: a plain name (or 404/400 naming it)."""
    try:
        return check_name(raw, "vault name")
    except VaultError:
        raise HttpError(400, f"vault name {raw[:80]!r} is not a plain name (letters, digits, spaces, '.', '_', '+', "
                             "'-'; no separators, no '..')") from None


def _existing(raw: str) -> Path:
    """The folder of a vault named in the URL; 404 (with the names there are) when there is none."""
    try:
        check_name(raw, "vault name")
        return vault_path(raw)
    except (VaultError, ValueError):  # not a plain name, or no such vault: the message names the vaults, no folder
        known = ", ".join(vault_names()) or "none yet"
        raise HttpError(404, f"no vault named {raw[:80]!r} (vaults: {known[:1000]}); refresh the page") from None


async def _json(request: web.Request, fields: frozenset[str]) -> dict[str, Any]:
    """The request's JSON object, bounded in size and depth, with only the given fields."""
    if request.content_type != "application/json":
        raise HttpError(415, f"the body must be JSON (Content-Type: application/json), got {request.content_type[:60]!r}")
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise HttpError(413, f"the body is {request.content_length} bytes; at most {MAX_JSON_BYTES}")
    raw = bytearray()
    async for block in request.content.iter_chunked(UPLOAD_BLOCK):
        raw += block
        if len(raw) > MAX_JSON_BYTES:
            raise HttpError(413, f"the body is over {MAX_JSON_BYTES} bytes")
    try:
        data = json.loads(bytes(raw), parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, a number over 4300 digits, deep nesting
        raise HttpError(400, f"the body is not valid JSON ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise HttpError(400, "the body must be a JSON object")
    unknown = sorted(set(data) - fields)
    if unknown:
        raise HttpError(400, f"unknown field(s) {', '.join(map(repr, unknown))[:200]}; this route takes "
                             f"{', '.join(sorted(fields))}")
    return data


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _ids(data: dict[str, Any]) -> list[int]:
    ids = data.get("ids")
    if not isinstance(ids, list) or not all(type(i) is int and 0 <= i <= MAX_ID for i in ids):
        raise HttpError(400, "ids must be a list of entry ids (whole numbers from 0)")
    if len(ids) > browse.MAX_IDS:
        raise HttpError(400, f"{len(ids)} entries in one request; at most {browse.MAX_IDS}")
    return ids


def _seen(data: dict[str, Any]) -> int:
    g = data.get("generation")
    if type(g) is not int or not 0 <= g <= MAX_ID:
        raise HttpError(400, "generation (the vault version you saw, a whole number) is required to change a vault")
    return g


# ---- package uploads ---------------------------------------------------------------------------------
def _human(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


class _Upload:
    """A package arriving in blocks: refused at its first bytes if not a zip, at its card if the card is bad,
    names a vault that exists (unless overwriting) or needs more disk than is free, and as soon as it grows
    past what its card declares."""

    def __init__(self, folder: Path, name: str | None, overwrite: bool, length: int | None) -> None:
        self.folder, self.name, self.overwrite, self.length = folder, name, overwrite, length
        self.free = shutil.disk_usage(folder).free
        self.head: bytearray | None = bytearray()
        self.limit: int | None = None
        self.size = 0
        if length is not None and 2 * length > self.free:
            raise HttpError(413, f"the package is {_human(length)}; installing it needs about {_human(2 * length)} "
                                 f"free beside the vaults, {_human(self.free)} are free")

    def feed(self, block: bytes) -> None:
        self.size += len(block)
        if self.head is not None:
            self.head += block
            card = card_from_head(self.head)  # PackageError: 400
            if card is not None:
                self.head = None
                self._check_card(card)
        if self.limit is not None and self.size > self.limit:
            raise HttpError(413, f"the upload is over the {self.limit:,} bytes its card declares: refused")

    def _check_card(self, card: dict[str, Any]) -> None:
        name = self.name or _name(str(card_claims(card).get("name", "")))
        if name in vault_names() and not self.overwrite:
            raise HttpError(409, f"a vault named '{name}' already exists: install this package under another name, "
                                 "or overwrite it", exists=name)
        self.name = name
        self.limit = package_bytes_limit(card)
        if self.length is not None and self.length > self.limit:
            raise HttpError(413, f"the upload is {self.length:,} bytes, over the {self.limit:,} its card declares")
        need = min(self.limit, self.length or self.limit) + sum(f["bytes"] for f in card["files"])
        if need > self.free:
            raise HttpError(413, f"installing this package needs about {_human(need)} free beside the vaults, "
                                 f"{_human(self.free)} are free")

    def target_folder(self) -> Path:
        """Where the vault goes: beside the one it replaces, else the first vaults folder."""
        if self.overwrite and self.name in vault_names():
            return vault_path(self.name).parent
        return self.folder


def _remove_stale_uploads() -> None:
    """Uploads a killed server left behind (an upload in progress is written to all the time)."""
    for folder in vault_folders():
        for f in folder.glob(f"{UPLOAD_PREFIX}*{PACKAGE_SUFFIX}") if folder.is_dir() else ():
            try:
                if time.time() - f.stat().st_mtime > STALE_UPLOAD_S:
                    f.unlink()
            except OSError:
                pass


# ---- the routes --------------------------------------------------------------------------------------
def register_routes() -> None:
    """Add the browser's routes to ComfyUI's server (once), with a new token and this machine's host names."""
    global _guard
    if _guard is not None:
        return
    from comfy.cli_args import args
    from server import PromptServer

    _guard = Guard(new_token(), machine_hosts(args.listen))
    _remove_stale_uploads()
    add_routes(PromptServer.instance.routes, _guard)


def add_routes(routes: web.RouteTableDef, guard: Guard) -> None:
    """The browser's routes, each behind `guard`; every POST route needs the token."""
    installing = asyncio.Lock()

    def get(path: str, *query: str) -> Callable[[Handler], Handler]:
        return lambda fn: routes.get(PREFIX + path)(_endpoint(guard, fn, False, frozenset(query)))

    def post(path: str, *query: str) -> Callable[[Handler], Handler]:
        """A route that changes or creates something: it always needs the token."""
        return lambda fn: routes.post(PREFIX + path)(_endpoint(guard, fn, True, frozenset(query)))

    async def run(fn: Callable[[], Any]) -> web.Response:
        return web.json_response(await asyncio.to_thread(fn))

    @get("/token")
    async def token(request: web.Request) -> web.Response:
        """The secret a same-origin page sends back with every change (the guard refused anyone else)."""
        return web.json_response({"token": guard.token, "header": TOKEN_HEADER}, headers={"Cache-Control": "no-store"})

    @get("")
    async def list_vaults(request: web.Request) -> web.Response:
        def work() -> dict[str, Any]:
            out, problems = [], {}
            for name in vault_names():
                try:
                    out.append(browse.summary(open_cached(vault_path(name))))
                except (VaultError, ValueError) as e:  # a damaged vault is listed with its problem, not hidden
                    problems[name] = public(str(e))
            return {"vaults": out, "problems": problems, "folders": [_shown_folder(f) for f in vault_folders()]}
        return await run(work)

    @get("/{name}/entries", "offset", "limit", "text", "filter")
    async def entries(request: web.Request) -> web.Response:
        path = _existing(request.match_info["name"])
        offset, limit = _int(request, "offset", 0), _int(request, "limit", 60)
        text, filter_ = _text(request, "text"), _text(request, "filter")
        return await run(lambda: browse.page(open_cached(path), offset, limit, text, filter_))

    @get("/{name}/entries/{id}")
    async def one_entry(request: web.Request) -> web.Response:
        path, i = _existing(request.match_info["name"]), _whole(request.match_info["id"], "entry id")
        return await run(lambda: browse.entry(open_cached(path), i))

    @get("/{name}/similar/{id}", "k")
    async def more_like_this(request: web.Request) -> web.Response:
        path, i = _existing(request.match_info["name"]), _whole(request.match_info["id"], "entry id")
        k = _int(request, "k", 24)
        return await run(lambda: browse.similar(open_cached(path), i, k))

    @get("/{name}/thumbnails/{id}")
    async def thumbnail(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        path, i = _existing(name), _whole(request.match_info["id"], "entry id")

        def work() -> bytes:
            v = open_cached(path)
            if i >= v.n_entries:
                raise HttpError(404, f"no entry {i} in vault '{name}' (it has {v.n_entries})")
            data = v.thumbnail(i)
            if not data:
                raise HttpError(404, f"entry {i} of vault '{name}' has no preview")
            try:
                decode_thumbnail(data)  # a stored preview is untrusted: only a real, small image is served
            except ValueError as e:
                raise HttpError(400, f"entry {i} of vault '{name}' has a damaged preview: {e}") from None
            return data
        data = await asyncio.to_thread(work)
        return web.Response(body=data, content_type="image/webp", headers={"Cache-Control": "private, max-age=3600"})

    @post("/{name}/delete")
    async def delete(request: web.Request) -> web.Response:
        path = _existing(request.match_info["name"])
        data = await _json(request, frozenset({"ids", "generation"}))
        ids, seen = _ids(data), _seen(data)
        return await run(lambda: browse.delete(path, ids, seen))

    @post("/{name}/restore")
    async def restore(request: web.Request) -> web.Response:
        path = _existing(request.match_info["name"])
        data = await _json(request, frozenset({"ids", "generation"}))
        ids, seen = _ids(data), _seen(data)
        return await run(lambda: browse.restore(path, ids, seen))

    @post("/{name}/export")
    async def export(request: web.Request) -> web.Response:
        path = _existing(request.match_info["name"])
        data = await _json(request, frozenset({"ids", "name"}))
        ids = _ids(data)
        new = _name(data["name"]) if isinstance(data.get("name"), str) else None
        if new is None:
            raise HttpError(400, "name (the new vault's name) is required")
        if new in vault_names():
            raise HttpError(409, f"a vault named '{new}' already exists; choose another name", exists=new)

        def work() -> dict[str, Any]:
            folder = vault_folders()[0]
            folder.mkdir(parents=True, exist_ok=True)
            try:
                return browse.export(path, ids, folder / f"{new}{VAULT_SUFFIX}")
            except VaultExistsError:  # made meanwhile by someone else
                raise HttpError(409, f"a vault named '{new}' already exists; choose another name", exists=new) from None
        return await run(work)

    @post("/install", "name", "overwrite")
    async def install_package(request: web.Request) -> web.Response:
        """Body: the raw .lvault file. ?name= installs under another name; ?overwrite=1 replaces a vault."""
        name = _name(request.query["name"]) if "name" in request.query else None
        flag = request.query.get("overwrite", "0")
        if flag not in ("0", "1"):
            raise HttpError(400, f"overwrite must be 0 or 1, got {flag[:20]!r}")
        if request.content_type != "application/octet-stream":
            raise HttpError(415, "send the package file as application/octet-stream")
        if installing.locked():
            raise HttpError(409, "another package is being installed on this server: try again when it has finished")
        async with installing:
            return await _receive(request, name, flag == "1")

    async def _receive(request: web.Request, name: str | None, overwrite: bool) -> web.Response:
        folder = vault_folders()[0]
        folder.mkdir(parents=True, exist_ok=True)
        upload = _Upload(folder, name, overwrite, request.content_length)
        fd, tmp_name = tempfile.mkstemp(prefix=UPLOAD_PREFIX, suffix=PACKAGE_SUFFIX, dir=folder)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                async for block in request.content.iter_chunked(UPLOAD_BLOCK):
                    upload.feed(block)
                    try:
                        f.write(block)
                    except OSError as e:
                        raise HttpError(413, f"the upload could not be written beside the vaults ({e.strerror})") from None
            if upload.limit is None:
                raise HttpError(400, f"the upload ended after {upload.size} bytes, before its card: not a whole package")

            def work() -> dict[str, Any]:
                try:
                    done = install(tmp, upload.target_folder(), name=upload.name, overwrite=overwrite)
                except VaultExistsError:
                    raise HttpError(409, f"a vault named '{upload.name}' already exists: install this package under "
                                         "another name, or overwrite it", exists=upload.name) from None
                except PackageError as e:
                    raise HttpError(400, str(e).replace(str(tmp), "the upload")) from None
                return {"installed": done.name, "vault": vault_name(done)}
            return await run(work)
        finally:
            tmp.unlink(missing_ok=True)


def _shown_folder(folder: Path) -> str:
    """A vault folder as the user knows it: relative to ComfyUI's folder when inside it."""
    try:
        import folder_paths

        return str(folder.relative_to(folder_paths.base_path))
    except (ImportError, ValueError):
        return str(folder)
