"""Who may call the vault browser's routes: our own page, reached through a name of this machine.

Any web page the user has open can send requests to ComfyUI on 127.0.0.1, and anyone on the LAN
can when ComfyUI listens there. ComfyUI's own origin check lets `Origin: null` (a sandboxed iframe)
and requests without Origin through, so the routes check every request themselves:

- Host must be an IP address, `localhost`, a name of this machine, or a name listed in
  LUNA_VAULT_HOSTS: a foreign page whose own name resolves to 127.0.0.1 (DNS rebinding) is
  same-origin to itself, and only its Host header gives it away.
- Origin, when sent, must be the same scheme-less host and port as Host (`null` never is);
  Sec-Fetch-Site, when sent, must be `same-origin` or `none`.
- A route that changes something also needs the per-server token in the X-Luna-Vault-Token header.
  Only a same-origin page can read the token (GET /luna/vaults/token passes the checks above and
  carries no CORS header), and a custom header makes any cross-origin request a CORS preflight
  that ComfyUI never grants. A LAN peer that can open the page can read the token like the user:
  ComfyUI itself has no accounts, so the token stops blind requests, not the people allowed in.
No ComfyUI import here: the checks are plain functions over the request's headers.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass
from typing import Iterable, Mapping
from urllib.parse import urlsplit

TOKEN_HEADER = "X-Luna-Vault-Token"
HOSTS_ENV = "LUNA_VAULT_HOSTS"  # extra host names (comma separated) this machine is reached by, e.g. behind a proxy
DEFAULT_PORTS = {"http": 80, "https": 443}


class Refused(Exception):
    """A request the routes will not serve (HTTP 403); `token` is True when only the token was wrong."""

    def __init__(self, message: str, token: bool = False) -> None:
        super().__init__(message)
        self.token = token


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header as (lower-case host name or address, port or None); None when it is not one."""
    try:
        parts = urlsplit("//" + value.strip())
        host, port = parts.hostname, parts.port
    except ValueError:  # a bad port, brackets that do not close
        return None
    if not host or parts.username is not None or parts.password is not None or parts.path or parts.query:
        return None
    return host.lower().rstrip("."), port


def is_address(host: str) -> bool:
    """An IP literal: no DNS answer can make it point anywhere else."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 zone id (fe80::1%eth0) is part of the literal
    except ValueError:
        return False
    return True


def machine_hosts(listen: str | None = None, extra: str | None = None) -> frozenset[str]:
    """The names this machine answers to: localhost, its host names, ComfyUI's --listen names and LUNA_VAULT_HOSTS."""
    names = {"localhost", socket.gethostname(), socket.getfqdn()}
    names.add(socket.gethostname().split(".")[0] + ".local")  # its mDNS name
    for item in (listen or "").split(",") + (extra if extra is not None else os.environ.get(HOSTS_ENV, "")).split(","):
        if item.strip():
            names.add(item.strip())
    return frozenset(n.lower().rstrip(".") for n in names if n and not is_address(n))


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Guard:
    """The checks of one server: its token and the host names it answers to."""

    token: str
    hosts: frozenset[str]

    def host_ok(self, host: str) -> bool:
        return is_address(host) or host in self.hosts

    def check(self, headers: Mapping[str, str], change: bool) -> None:
        """Raise Refused unless the request may be served; `change`: the route changes or creates something."""
        host = split_host(headers.get("Host", ""))
        if host is None:
            raise Refused(f"the Host header {headers.get('Host', '')[:100]!r} is not a host name")
        if not self.host_ok(host[0]):
            raise Refused(f"this ComfyUI is not known as {host[0][:100]!r} (a foreign page whose name points at this "
                          f"machine is refused); if you reach ComfyUI by that name, add it to {HOSTS_ENV} and restart it")
        origin = headers.get("Origin")
        if origin is not None:
            self._check_origin(origin, host)
        site = headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            raise Refused(f"a request from another site ({site[:40]}) is refused: use the Luna Vaults sidebar of this "
                          "ComfyUI")
        if change:
            sent = headers.get(TOKEN_HEADER, "")
            if not sent:
                raise Refused(f"this route changes vaults and needs the {TOKEN_HEADER} header, which the Luna Vaults "
                              "sidebar reads from this server: use the sidebar (reload the page)", token=True)
            if not hmac.compare_digest(sent.encode("utf-8", "replace"), self.token.encode()):
                raise Refused(f"the {TOKEN_HEADER} header does not match this server's (ComfyUI restarted?): reload the "
                              "page", token=True)

    def _check_origin(self, origin: str, host: tuple[str, int | None]) -> None:
        if origin.strip().lower() == "null":
            raise Refused("a request from an opaque origin (Origin: null, e.g. a sandboxed frame or a file) is refused: "
                          "use the Luna Vaults sidebar of this ComfyUI")
        try:
            parts = urlsplit(origin.strip())
            scheme, o_host, o_port = parts.scheme, (parts.hostname or "").lower().rstrip("."), parts.port
        except ValueError:
            scheme, o_host, o_port = "", "", None
        if scheme not in DEFAULT_PORTS or not o_host:
            raise Refused(f"the Origin header {origin[:100]!r} is not an http(s) origin")
        if o_host in _explicit_hosts():  # named by the user (a proxy that rewrites Host)
            return
        want_host, want_port = host
        port = o_port if o_port is not None else DEFAULT_PORTS[scheme]
        same_port = port == want_port if want_port is not None else o_port is None
        if o_host != want_host or not same_port:
            raise Refused(f"a request from another origin ({origin[:100]}) is refused: use the Luna Vaults sidebar "
                          "of this ComfyUI")


def _explicit_hosts() -> Iterable[str]:
    return {h.strip().lower().rstrip(".") for h in os.environ.get(HOSTS_ENV, "").split(",") if h.strip()}


__all__ = ["Guard", "HOSTS_ENV", "Refused", "TOKEN_HEADER", "is_address", "machine_hosts", "new_token", "split_host"]
