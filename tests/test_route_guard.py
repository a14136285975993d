"""Who the vault browser's routes serve: Host, Origin, Sec-Fetch-Site and the token, decided from headers alone."""

from __future__ import annotations

import pytest

from helpers import import_comfyui

import_comfyui()
from luna_vault.nodes.route_guard import HOSTS_ENV, TOKEN_HEADER, Guard, Refused, is_address, machine_hosts, split_host  # noqa: E402

GUARD = Guard("s3cret-token", frozenset({"localhost", "studio", "studio.local"}))
HOST = {"Host": "127.0.0.1:8188"}


@pytest.mark.parametrize("value, want", [
    ("127.0.0.1:8188", ("127.0.0.1", 8188)), ("LOCALHOST.", ("localhost", None)), ("[::1]:8188", ("::1", 8188)),
    ("studio:80", ("studio", 80)), ("", None), ("a:b", None), ("[::1", None), ("user@host", None), ("h/x", None),
])
def test_split_host(value: str, want: tuple[str, int | None] | None) -> None:
    assert split_host(value) == want


def test_addresses_and_names() -> None:
    assert is_address("192.168.1.20") and is_address("::1") and is_address("fe80::1%eth0")
    assert not is_address("evil.test") and not is_address("localhost")
    names = machine_hosts("0.0.0.0,::,studio", extra="proxy.example.org, ")
    assert {"localhost", "studio", "proxy.example.org"} <= names and "0.0.0.0" not in names


@pytest.mark.parametrize("headers", [
    {**HOST},  # curl, a LAN peer, the page's own GET (no Origin on a same-origin GET)
    {**HOST, "Origin": "http://127.0.0.1:8188", "Sec-Fetch-Site": "same-origin"},
    {"Host": "localhost:8188", "Origin": "http://localhost:8188"},
    {"Host": "192.168.1.20:8188", "Origin": "http://192.168.1.20:8188"},  # ComfyUI on the LAN, by address
    {"Host": "studio:8188", "Origin": "http://studio:8188"},  # by this machine's name
    {"Host": "[::1]:8188", "Origin": "http://[::1]:8188"},
    {"Host": "studio.local", "Origin": "https://studio.local"},  # default port on both sides
    {**HOST, "Sec-Fetch-Site": "none"},  # typed into the address bar
])
def test_our_own_page_is_served(headers: dict[str, str]) -> None:
    GUARD.check(headers, change=False)
    GUARD.check({**headers, TOKEN_HEADER: "s3cret-token"}, change=True)


@pytest.mark.parametrize("headers, why", [
    ({**HOST, "Origin": "null"}, "opaque origin"),  # a sandboxed iframe, a file:// page
    ({**HOST, "Origin": "http://evil.example"}, "another origin"),
    ({**HOST, "Origin": "http://127.0.0.1:9999"}, "another origin"),  # another port: another origin
    ({**HOST, "Origin": "https://127.0.0.1"}, "another origin"),  # https default port 443 != 8188
    ({"Host": "localhost:8188", "Origin": "http://127.0.0.1:8188"}, "another origin"),
    ({**HOST, "Origin": "chrome-extension://abc"}, "not an http"),
    ({**HOST, "Origin": "http://[::1"}, "not an http"),
    ({"Host": "evil.test:8188", "Origin": "http://evil.test:8188"}, "not known as 'evil.test'"),  # DNS rebinding
    ({"Host": "evil.test:8188"}, "not known as"),
    ({"Host": "127.0.0.1.evil.test:8188"}, "not known as"),
    ({}, "not a host name"),
    ({"Host": "a b"}, "not known as"),
    ({**HOST, "Sec-Fetch-Site": "cross-site"}, "another site"),
    ({**HOST, "Sec-Fetch-Site": "same-site"}, "another site"),
])
def test_other_pages_are_refused_even_for_reading(headers: dict[str, str], why: str) -> None:
    for change in (False, True):
        with pytest.raises(Refused, match=why) as e:
            GUARD.check({**headers, TOKEN_HEADER: "s3cret-token"}, change=change)
        assert not e.value.token


@pytest.mark.parametrize("sent", [None, "", "s3cret-tokeN", "s3cret-token ", "ß" * 12])
def test_a_change_needs_the_token(sent: str | None) -> None:
    GUARD.check(HOST, change=False)
    with pytest.raises(Refused, match=TOKEN_HEADER) as e:
        GUARD.check({**HOST, **({TOKEN_HEADER: sent} if sent is not None else {})}, change=True)
    assert e.value.token  # the page may read the token again (ComfyUI restarted)


def test_a_proxy_name_is_allowed_when_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    headers = {"Host": "127.0.0.1:8188", "Origin": "https://comfy.example.org", TOKEN_HEADER: "s3cret-token"}
    with pytest.raises(Refused):
        GUARD.check(headers, change=True)
    monkeypatch.setenv(HOSTS_ENV, "comfy.example.org")
    GUARD.check(headers, change=True)  # a proxy that rewrites Host, named by the user
    proxied = Guard("s3cret-token", machine_hosts(None))
    proxied.check({"Host": "comfy.example.org", "Origin": "https://comfy.example.org", TOKEN_HEADER: "s3cret-token"},
                  change=True)

