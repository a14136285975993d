"""A small asynchronous client for ComfyUI's HTTP API: queue a prompt, follow it, fetch its images."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp


class ServerDown(ConnectionError):
    """The server did not answer (refused, reset, timed out): its jobs go elsewhere."""


class PromptRejected(ValueError):
    """ComfyUI refused the prompt (validation error): the job's fault, not the server's."""


@dataclass(frozen=True)
class Image:
    filename: str
    subfolder: str
    type: str


def parse_server(text: str) -> str:
    """'host:port' or 'http://host:port' -> base URL."""
    text = text.strip().rstrip("/")
    if not text:
        raise ValueError("empty --server")
    if "://" not in text:
        text = "http://" + text
    if text.count(":") < 2:
        text += ":8188"
    return text


class ComfyClient:
    """One ComfyUI server. Every call has a timeout; network failures raise ServerDown."""

    def __init__(self, url: str, session: aiohttp.ClientSession, timeout: float = 30.0) -> None:
        self.url, self.session = parse_server(url), session
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.client_id = uuid.uuid4().hex

    @property
    def name(self) -> str:
        return self.url.split("://", 1)[1]

    async def _request(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        try:
            async with self.session.request(method, self.url + path, timeout=self.timeout, **kw) as r:
                if r.content_type == "application/json":
                    return r.status, await r.json()
                return r.status, await r.read()
        except asyncio.TimeoutError as e:
            raise ServerDown(f"{self.name}: no answer within {self.timeout.total:g} s") from e
        except (aiohttp.ClientError, OSError) as e:  # said in words: the reason, not the exception's class
            raise ServerDown(f"{self.name}: {e or 'the connection failed'}") from e

    async def alive(self) -> bool:
        try:
            code, _ = await self._request("GET", "/system_stats")
            return code == 200
        except ServerDown:
            return False

    async def submit(self, graph: dict[str, Any]) -> str:
        code, body = await self._request("POST", "/prompt", json={"prompt": graph, "client_id": self.client_id})
        if code == 200 and isinstance(body, dict) and "prompt_id" in body:
            return str(body["prompt_id"])
        if code == 400:
            raise PromptRejected(_rejection(body))
        raise ServerDown(f"{self.name}: /prompt answered {code}")

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        code, body = await self._request("GET", f"/history/{prompt_id}")
        if code != 200:
            raise ServerDown(f"{self.name}: /history answered {code}")
        return body.get(prompt_id) if isinstance(body, dict) else None

    async def queued(self) -> set[str]:
        """Prompt ids running or waiting on the server."""
        code, body = await self._request("GET", "/queue")
        if code != 200 or not isinstance(body, dict):
            raise ServerDown(f"{self.name}: /queue answered {code}")
        return {str(item[1]) for key in ("queue_running", "queue_pending") for item in body.get(key, [])}

    async def view(self, image: Image) -> bytes:
        code, body = await self._request("GET", "/view", params={"filename": image.filename, "subfolder": image.subfolder,
                                                                 "type": image.type})
        if code != 200 or not isinstance(body, bytes):
            raise ServerDown(f"{self.name}: /view {image.filename} answered {code}")
        return body

    async def upload(self, name: str, data: bytes, subfolder: str) -> str:
        """Put an image in the server's input folder (overwriting); returns the name LoadImage takes."""
        form = aiohttp.FormData()
        form.add_field("image", data, filename=name, content_type="application/octet-stream")
        form.add_field("subfolder", subfolder)
        form.add_field("type", "input")
        form.add_field("overwrite", "true")
        code, body = await self._request("POST", "/upload/image", data=form)
        if code != 200 or not isinstance(body, dict) or "name" not in body:
            raise ServerDown(f"{self.name}: /upload/image answered {code}")
        return f"{body.get('subfolder') or subfolder}/{body['name']}"

    async def delete(self, prompt_ids: list[str]) -> None:
        """Best effort: drop our queued prompts (on Ctrl-C)."""
        if prompt_ids:
            try:
                await self._request("POST", "/queue", json={"delete": prompt_ids})
            except ServerDown:
                pass


def outcome(entry: dict[str, Any]) -> tuple[str, Any]:
    """('running', None) | ('error', message) | ('done', [Image, ...]) from a /history entry."""
    status = entry.get("status") or {}
    if status.get("status_str") == "error":
        for kind, data in status.get("messages", []):
            if kind == "execution_error":
                return "error", (f"node {data.get('node_id')} ({data.get('node_type')}): "
                                 f"{data.get('exception_message', '').strip()}")
        return "error", "execution failed"
    if not status.get("completed"):
        return "running", None
    images = []
    for node_id in sorted(entry.get("outputs", {}), key=_node_order):
        for im in entry["outputs"][node_id].get("images", []) or []:
            images.append(Image(im["filename"], im.get("subfolder", ""), im.get("type", "output")))
    saved = [im for im in images if im.type == "output"]
    return "done", saved or images


def execution_seconds(entry: dict[str, Any]) -> float | None:
    """How long ComfyUI spent executing a finished prompt (execution_start to success), from /history."""
    times = {kind: data.get("timestamp") for kind, data in (entry.get("status") or {}).get("messages", [])
             if isinstance(data, dict)}
    start, end = times.get("execution_start"), times.get("execution_success")
    return (end - start) / 1000.0 if isinstance(start, (int, float)) and isinstance(end, (int, float)) else None


def _node_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 30, node_id)


def _rejection(body: Any) -> str:
    if not isinstance(body, dict):
        return "prompt rejected"
    parts = [str((body.get("error") or {}).get("message", "prompt rejected"))]
    for node_id, err in (body.get("node_errors") or {}).items():
        for e in err.get("errors", []):
            parts.append(f"node {node_id} ({err.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "; ".join(parts)
