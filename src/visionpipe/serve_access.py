"""Which clients `visionpipe serve` answers: the web pages (origins) that may read its answers in
a browser (CORS), and the host names requests arriving on a loopback address may call it by.

A server on 127.0.0.1 is out of other machines' reach, but not of the web pages its user opens:
a page of evil.example whose DNS name is then pointed at 127.0.0.1 (DNS rebinding) calls
http://evil.example:8000/ as its own origin, which the browser lets it read. Such a request
arrives on a loopback address with its page's name as Host, so there a Host must be an address,
localhost, this machine's name or a name the user allowed (`--allow-host`, for a reverse proxy
on this machine that passes on the name it was called by).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import re
import socket
from pathlib import Path
from typing import Any

from aiohttp import web

from visionpipe.fsutil import json_text

log = logging.getLogger("visionpipe.serve")
# Names as they are (猫, not \\u732b), and a diverged model's NaN as null.
json_response = functools.partial(web.json_response, dumps=json_text)


def cors(origins: tuple[str, ...]) -> Any:
    """A middleware that lets pages of `origins` ('*': any) read answers in a browser.

    A browser gives a page the answers of another origin (scheme, host and port) only when the
    response says the page's origin may have them, and asks first with an OPTIONS preflight
    before a POST whose Content-Type is not a form's (a raw image/jpeg body).
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = _allowed(origin, origins)
        asks = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        preflight = asks and origin is not None  # browsers always send Origin with a preflight
        if preflight and not allowed:
            return json_response(
                {
                    "error": f"pages of {origin} may not call this server (allowed origins: "
                    f"{', '.join(origins) or 'none'}); start it with --allow-origin {origin}"
                },
                status=403,
            )
        if preflight:
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST"
            asked = request.headers.get("Access-Control-Request-Headers")
            if asked:
                response.headers["Access-Control-Allow-Headers"] = asked
            pna = request.headers.get("Access-Control-Request-Private-Network") == "true"
            if pna and origin in origins:
                # Chrome asks this of a public page calling an address on a private network
                # (this machine's): granted to a page named, never to any by '*', or every
                # website its user opens could use the server.
                response.headers["Access-Control-Allow-Private-Network"] = "true"
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        let_read(response, request, origins)
        return response

    return middleware


def _allowed(origin: str | None, origins: tuple[str, ...]) -> bool:
    return origin is not None and ("*" in origins or origin in origins)


def let_read(response: web.StreamResponse, request: web.Request, origins: tuple[str, ...]) -> None:
    """Let the page that sent `request` read `response`, where its origin is among `origins`."""
    if not origins:
        return
    # The answer's headers depend on the page asking, or on none asking: said to every client,
    # so a cache in front (serving.md's proxy) never gives one page the answer another got.
    vary = [v.strip() for v in response.headers.get("Vary", "").split(",") if v.strip()]
    if "origin" not in {v.lower() for v in vary}:
        response.headers["Vary"] = ", ".join([*vary, "Origin"])
    origin = request.headers.get("Origin")
    if _allowed(origin, origins):
        response.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin


def host_guard(allowed: tuple[str, ...], listen_host: str) -> Any:
    """A middleware refusing a request that arrived on a loopback address for a host name that
    is not this machine's (`allowed`: more names, `.example.com` or `*.example.com` a domain's
    and its subdomains'; '*' any)."""
    names = {"localhost", listen_host.lower(), *_own_names(), *allowed}
    domains = tuple("." + n.lstrip("*.") for n in allowed if n.startswith((".", "*.")))
    warned: set[str] = set()

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        host = request.headers.get("Host")
        if host is None or "*" in names or not _on_loopback(request):
            return await handler(request)
        name = host_name(host)
        if (
            _is_address(name)
            or name in names
            or name.endswith(".localhost")
            or (f".{name}").endswith(domains)
        ):
            return await handler(request)
        if name not in warned:  # once a name: a page retrying would fill the log
            warned.add(name)
            log.warning("refused requests for host %r", host)
        # A name one can type (a DNS name's letters, digits, - _ .) gets the option to allow it.
        allow = (
            f"; to serve that name (a reverse proxy or tunnel passing it on), start the server"
            f" with --allow-host {name}"
            if re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*", name)
            else ""
        )
        return json_response(
            {
                "error": f"this server does not answer requests for the host {host!r}: on a "
                "loopback address it answers localhost, this machine's names and addresses "
                "only, so that a web page whose name was pointed at this machine cannot use "
                f"it{allow}"
            },
            status=403,
        )

    return middleware


HOSTS_FILE = Path("/etc/hosts")


def _own_names() -> set[str]:
    """This machine's names: its host name, that name under mDNS's .local (no public DNS
    answers it), and those /etc/hosts gives a loopback address (Debian's 127.0.1.1 names the
    fully qualified one), which only this machine's administrator sets."""
    own = socket.gethostname().lower()
    names = {own, f"{own}.local"}
    try:
        lines = HOSTS_FILE.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return names
    for line in lines:
        address, *aliases = line.split("#", 1)[0].split() or [""]
        with contextlib.suppress(ValueError):  # a name, or an address in no canonical form
            if not ipaddress.ip_address(address).is_loopback:
                continue
            names |= {a.lower().rstrip(".") for a in aliases}
    return names


def host_name(host: str) -> str:
    """The name or address of a Host header, without its port, in lower case (a name in
    another script as its punycode, as browsers send it)."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000; anything else after the bracket is no address
        inside, _, rest = host[1:].partition("]")
        return inside if re.fullmatch(r"(:\d*)?", rest) else host
    if host.count(":") == 1:  # name:port (more colons: an IPv6 address without brackets)
        host = host.rpartition(":")[0]
    host = host.rstrip(".")  # localhost. is localhost
    if not host.isascii():
        import idna  # here: a name in another script is rare

        with contextlib.suppress(idna.IDNAError):
            host = idna.encode(host, uts46=True).decode("ascii")
    return host


def _is_address(name: str) -> bool:
    """An IP address, in any form a client may write one (127.1, 0x7f.0.0.1 as inet_aton
    reads them): no DNS name, so no page's to point elsewhere."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        if not re.fullmatch(r"[0-9a-fx.]+", name):
            return False
        try:
            socket.inet_aton(name)
        except OSError:
            return False
    return True


def _on_loopback(request: web.Request) -> bool:
    """Whether the request arrived on a loopback address of this machine."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not isinstance(sockname, tuple):  # a Unix socket: not reachable by a web page's name
        return False
    address = ipaddress.ip_address(sockname[0].split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1, on a dual-stack socket
    return address.is_loopback
