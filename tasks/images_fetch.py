"""Fetching images over HTTP: bounded, retried, polite to publishers and guarded against SSRF.

url -> Fetched (the body, or an outcome saying why there is none). One Fetcher serves one asyncio
loop; a partition of the image flow opens one and fetches thousands of URLs through it.

    async with Fetcher(FetchOptions(user_agent="mybot/1.0")) as fetcher:
        fetched = await fetcher.fetch("https://example.org/cat.jpg")

What it guarantees, per URL:
- at most ``concurrency`` requests in flight per process and ``per_host_concurrency`` per host;
- ``timeout`` seconds per attempt from connecting to the last byte (queueing for a slot is not
  counted); 429, 5xx and dropped connections are retried with exponential backoff, honouring a
  Retry-After up to ``max_retry_wait``; a timeout is not retried (a slow host stays slow);
- no body past ``max_bytes`` is read;
- every hop, redirects included, goes only to public addresses unless allowed (see AddressPolicy):
  literal IPs are checked before connecting, host names when they are resolved, so the address
  checked is the address connected to;
- robots.txt (RFC 9309, cached per origin for a day) and X-Robots-Tag noai / noimageai / noindex /
  noimageindex are honoured unless switched off.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import random
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

DEFAULT_USER_AGENT = "embedpipe/0.1 (image-text dataset builder; honours robots.txt and X-Robots-Tag)"

# X-Robots-Tag directives that opt an image out of datasets and of indexing
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex"})
# directives that carry a value after a colon, so "name: value" is not "user-agent: directives"
VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
# publishers opt out of image-dataset downloaders by naming img2dataset; the same wish covers this one
PEER_TOKENS = ("img2dataset",)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ROBOTS_TTL_S = 24 * 3600  # RFC 9309: a cached robots.txt may be used for up to 24 hours
ROBOTS_RETRY_S = 600  # an unreachable robots.txt is asked for again after 10 minutes
ROBOTS_MAX_BYTES = 500 * 1024  # RFC 9309: parse at least the first 500 KiB


class BlockedAddressError(Exception):
    """A host resolved only to addresses the policy refuses (private, loopback, link-local, ...)."""


@dataclass(frozen=True)
class FetchOptions:
    """How images are fetched; none of these change what a written image looks like."""

    user_agent: str = DEFAULT_USER_AGENT
    timeout: float = 10.0  # seconds per attempt, connect to last byte
    retries: int = 2  # extra attempts after a 429, a 5xx or a dropped connection
    backoff: float = 1.0  # seconds before the first retry when there is no Retry-After; doubles after
    max_retry_wait: float = 60.0  # a longer Retry-After gives the URL up
    max_bytes: int = 20 * 2**20  # bodies past this are not read (outcome too_large)
    max_redirects: int = 5
    concurrency: int = 64  # requests in flight in one process
    per_host_concurrency: int = 8
    respect_robots_txt: bool = True
    respect_x_robots_tag: bool = True
    # False: public addresses only; True: any; a list: public plus these ADDRESS[/PREFIX][:PORT] entries
    allow_private_addresses: bool | tuple[str, ...] = False

    def __post_init__(self) -> None:
        for name in ("timeout", "max_bytes", "concurrency", "per_host_concurrency"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("retries", "backoff", "max_retry_wait", "max_redirects"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.user_agent.strip():
            raise ValueError("user_agent is empty: give a product token such as 'mybot/1.0 (+contact URL)'")
        AddressPolicy(self.allow_private_addresses)  # fails early on a malformed entry

    @property
    def robots_token(self) -> str:
        """The product token robots.txt groups and X-Robots-Tag prefixes are matched against."""
        return self.user_agent.split("/")[0].split()[0].lower()


@dataclass
class Fetched:
    """The result of fetching one URL: ``outcome`` is "ok" with a body, or the reason there is none."""

    outcome: str
    body: bytes | None = None
    detail: str = ""
    http_status: int | None = None
    final_url: str | None = None
    attempts: int = 0


# --- addresses ----------------------------------------------------------------------------------


class AddressPolicy:
    """Which resolved addresses may be connected to.

    Public (globally routable) addresses always; private, loopback, link-local, shared, reserved and
    multicast ones only when ``allow`` is True, or when they match one of ``allow``'s entries:
    ``ADDRESS[/PREFIX][:PORT]`` (IPv6 in brackets when a port follows: ``[::1]:8080``). An entry with
    a port allows that port only, which is how the tests let their 127.0.0.1 server through while a
    redirect to another loopback port, or to 169.254.169.254, is still refused.
    """

    def __init__(self, allow: bool | Sequence[str] = False) -> None:
        self.allow_all = allow is True
        self.entries: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None]] = []
        if isinstance(allow, str):
            allow = [allow]
        if not isinstance(allow, bool):
            self.entries = [self._parse(entry) for entry in allow]

    @staticmethod
    def _parse(entry: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None]:
        text, port = entry.strip(), None
        bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
        if bracketed:
            text, port = bracketed.group(1), bracketed.group(2)
        elif text.count(":") == 1:
            text, port = text.split(":")
        try:
            return ipaddress.ip_network(text, strict=False), int(port) if port else None
        except ValueError:
            raise ValueError(
                f"allow_private_addresses entry {entry!r} is not ADDRESS[/PREFIX][:PORT], "
                "e.g. 127.0.0.1:8000, 10.0.0.0/8 or [::1]:8080"
            ) from None

    def permits(self, address: str, port: int | None) -> bool:
        ip = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_global and not ip.is_multicast:
            return True
        if self.allow_all:
            return True
        return any(
            ip in network and (allowed is None or allowed == port) for network, allowed in self.entries
        )


class GuardedResolver(AbstractResolver):
    """Resolves host names, then drops the addresses the policy refuses; none left is an error."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._inner = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        allowed = [info for info in found if self.policy.permits(info["host"], port)]
        if not allowed:
            addresses = ", ".join(sorted({info["host"] for info in found}))
            raise BlockedAddressError(f"{host} resolves to {addresses}, which is not a public address")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


# --- robots.txt and X-Robots-Tag ----------------------------------------------------------------


@dataclass
class RobotsRules:
    """The allow/disallow rules of one robots.txt that apply to one product token (RFC 9309)."""

    rules: list[tuple[bool, re.Pattern[str], int]] = field(default_factory=list)  # (allow, pattern, length)
    disallow_all: bool = False
    why: str = ""
    blocked: str = ""  # the origin's address is refused: its images are blocked_address, not disallowed

    @classmethod
    def parse(cls, text: str, token: str) -> RobotsRules:
        groups: list[tuple[list[str], list[tuple[bool, str]]]] = []
        agents: list[str] = []
        rules: list[tuple[bool, str]] = []
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if ":" not in line:
                continue
            name, value = (part.strip() for part in line.split(":", 1))
            name = name.lower()
            if name == "user-agent":
                if rules:  # a user-agent line after rules starts a new group
                    groups.append((agents, rules))
                    agents, rules = [], []
                agents.append(value.lower())
            elif name in ("allow", "disallow") and agents:
                if value:  # an empty Disallow allows everything: no rule
                    rules.append((name == "allow", value))
        if agents:
            groups.append((agents, rules))

        # the groups naming the token apply; only when none does, the "*" groups do
        chosen = [r for a, r in groups if token in a] or [r for a, r in groups if "*" in a]
        compiled = [
            (allow, re.compile(_robots_pattern(path)), len(path)) for group in chosen for allow, path in group
        ]
        return cls(rules=compiled)

    def allows(self, path: str) -> bool:
        if self.disallow_all:
            return False
        best: tuple[int, bool] | None = None
        for allow, pattern, length in self.rules:
            if pattern.match(path) and (best is None or length > best[0] or (length == best[0] and allow)):
                best = (length, allow)  # the longest match wins; allow wins a tie
        return best is None or best[1]


def _robots_pattern(path: str) -> str:
    anchored = path.endswith("$")
    body = re.escape(path.rstrip("$")).replace(r"\*", ".*")
    return body + ("$" if anchored else "")


def x_robots_opt_out(values: Sequence[str], tokens: Sequence[str]) -> str | None:
    """The first opt-out directive among X-Robots-Tag header values that applies to ``tokens``."""
    for value in values:
        agent, directives = None, value
        if ":" in value:
            head, rest = value.split(":", 1)
            if head.strip().lower() not in VALUED_DIRECTIVES:
                agent, directives = head.strip().lower(), rest
        if agent is not None and agent not in tokens:
            continue  # addressed to another crawler
        for directive in directives.split(","):
            name = directive.strip().lower()
            if name in OPT_OUT_DIRECTIVES:
                return name if agent is None else f"{agent}: {name}"
    return None


# process-wide cache of parsed robots.txt: (origin, token, address policy) -> (expires at, rules);
# several event loops (one per partition) share it, and a rare double fetch after a race is harmless
_ROBOTS_CACHE: dict[tuple[str, str, str], tuple[float, RobotsRules]] = {}


# --- fetching -----------------------------------------------------------------------------------


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Retry(Exception):
    def __init__(self, fetched: Fetched, wait: float | None) -> None:
        super().__init__(fetched.detail)
        self.fetched = fetched
        self.wait = wait


class Fetcher:
    """One HTTP session with the bounds, retries, address guard and publisher rules above."""

    def __init__(self, options: FetchOptions) -> None:
        self.options = options
        self.policy = AddressPolicy(options.allow_private_addresses)
        self.tokens = (options.robots_token, *PEER_TOKENS)
        self._slots = asyncio.Semaphore(options.concurrency)
        self._host_slots: dict[str, asyncio.Semaphore] = {}
        self._robots_pending: dict[str, asyncio.Future[RobotsRules]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.robots_fetches = 0

    async def __aenter__(self) -> Fetcher:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.policy),
            limit=self.options.concurrency,
            limit_per_host=0,  # bounded by our own per-host slots, which keep the timeout clock fair
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": self.options.user_agent},
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.options.timeout, sock_read=self.options.timeout
            ),
            auto_decompress=True,
            trust_env=False,  # a proxy from the environment would see every address, not ours to check
        )
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(self, url: str) -> Fetched:
        """Fetch one image URL with retries; never raises for anything the URL or server does."""
        options = self.options
        attempts = 0
        while True:
            attempts += 1
            try:
                async with self._slots:
                    fetched = await self._follow(url, image=True)
            except _Retry as retry:
                fetched = retry.fetched
                if attempts <= options.retries:
                    wait = retry.wait
                    if wait is None:
                        wait = options.backoff * 2 ** (attempts - 1) * random.uniform(0.5, 1.5)
                    if wait <= options.max_retry_wait:
                        await asyncio.sleep(wait)  # slots are released while waiting
                        continue
                    fetched.detail += (
                        f"; Retry-After {wait:.0f} s is past max_retry_wait {options.max_retry_wait:g} s"
                    )
            fetched.attempts = attempts
            return fetched

    async def _follow(self, url: str, *, image: bool, max_bytes: int | None = None) -> Fetched:
        """One attempt: follow redirects hop by hop, checking every hop's address and robots.txt."""
        options = self.options
        current = url
        for _ in range(options.max_redirects + 1):
            try:
                target = URL(current)
            except (ValueError, TypeError) as error:
                return Fetched("bad_url", detail=str(error))
            if target.scheme not in ("http", "https") or not target.host:
                return Fetched("bad_url", detail=f"not an http(s) URL: {current[:200]}")
            try:
                literal = ipaddress.ip_address(target.host)
            except ValueError:
                literal = None
            if literal is not None and not self.policy.permits(str(literal), target.port):
                return Fetched(
                    "blocked_address", detail=f"{target.host} is not a public address", final_url=current
                )
            if image and options.respect_robots_txt:
                rules = await self._robots(target)
                if rules.blocked:
                    return Fetched("blocked_address", detail=rules.blocked, final_url=current)
                if not rules.allows(target.raw_path_qs):
                    why = f" ({rules.why})" if rules.why else ""
                    return Fetched("robots_disallowed", detail=f"robots.txt disallows {target.raw_path}{why}")
            fetched = await self._get(target, image=image, max_bytes=max_bytes or options.max_bytes)
            if fetched.outcome != "redirect":
                return fetched
            current = fetched.final_url
        return Fetched(
            "too_many_redirects", detail=f"more than {options.max_redirects} redirects", final_url=current
        )

    async def _get(self, target: URL, *, image: bool, max_bytes: int) -> Fetched:
        options = self.options
        host = f"{target.host}:{target.port}"
        slot = self._host_slots.get(host)
        if slot is None:
            slot = self._host_slots[host] = asyncio.Semaphore(options.per_host_concurrency)
        where = str(target)
        async with slot:
            try:
                async with asyncio.timeout(options.timeout):
                    async with self._session.get(target, allow_redirects=False) as response:
                        return await self._read(response, target, image=image, max_bytes=max_bytes)
            except _Retry:
                raise
            except TimeoutError:
                return Fetched(
                    "timeout", detail=f"no complete response within {options.timeout:g} s", final_url=where
                )
            except BlockedAddressError as error:
                return Fetched("blocked_address", detail=str(error), final_url=where)
            except aiohttp.ClientConnectorDNSError as error:
                return Fetched("dns_error", detail=str(error), final_url=where)
            except aiohttp.ClientConnectorCertificateError as error:
                return Fetched("ssl_error", detail=str(error), final_url=where)
            except aiohttp.InvalidURL as error:
                return Fetched("bad_url", detail=str(error), final_url=where)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as error:
                # refused, reset or cut off mid-body: worth another attempt
                raise _Retry(
                    Fetched("connection_error", detail=f"{type(error).__name__}: {error}"[:300]), None
                ) from None
            except aiohttp.ClientResponseError as error:
                return Fetched("http_error", detail=str(error)[:300], final_url=where)

    async def _read(
        self, response: aiohttp.ClientResponse, target: URL, *, image: bool, max_bytes: int
    ) -> Fetched:
        status = response.status
        where = str(target)
        if status in REDIRECT_STATUSES:
            location = response.headers.get("Location")
            if not location:
                return Fetched(f"http_{status}", detail="redirect without a Location", http_status=status)
            return Fetched("redirect", http_status=status, final_url=str(target.join(URL(location))))
        if status in RETRY_STATUSES:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            raise _Retry(
                Fetched(f"http_{status}", detail=response.reason or "", http_status=status, final_url=where),
                wait,
            )
        if not 200 <= status < 300:
            return Fetched(
                f"http_{status}", detail=response.reason or "", http_status=status, final_url=where
            )
        if image and self.options.respect_x_robots_tag:
            opt_out = x_robots_opt_out(response.headers.getall("X-Robots-Tag", []), self.tokens)
            if opt_out:
                return Fetched(
                    "opted_out", detail=f"X-Robots-Tag: {opt_out}", http_status=status, final_url=where
                )
        declared = response.content_length
        if declared is not None and declared > max_bytes:
            return Fetched(
                "too_large", detail=f"Content-Length {declared:,} > {max_bytes:,} bytes", http_status=status
            )
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > max_bytes:
                return Fetched(
                    "too_large", detail=f"body past {max_bytes:,} bytes", http_status=status, final_url=where
                )
            chunks.append(chunk)
        return Fetched("ok", body=b"".join(chunks), http_status=status, final_url=where)

    # robots.txt

    async def _robots(self, target: URL) -> RobotsRules:
        origin = f"{target.scheme}://{target.raw_host}:{target.port}"
        key = (origin, self.options.robots_token, repr(self.options.allow_private_addresses))
        cached = _ROBOTS_CACHE.get(key)
        if cached and cached[0] > time.time():
            return cached[1]
        pending = self._robots_pending.get(origin)
        if pending is None:
            pending = self._robots_pending[origin] = asyncio.ensure_future(self._fetch_robots(origin))
        rules = await asyncio.shield(pending)
        _ROBOTS_CACHE[key] = (
            time.time() + (ROBOTS_RETRY_S if rules.disallow_all or rules.blocked else ROBOTS_TTL_S),
            rules,
        )
        self._robots_pending.pop(origin, None)
        return rules

    async def _fetch_robots(self, origin: str) -> RobotsRules:
        self.robots_fetches += 1
        try:
            fetched = await self._follow(f"{origin}/robots.txt", image=False, max_bytes=ROBOTS_MAX_BYTES)
        except _Retry as retry:
            fetched = retry.fetched
        if fetched.outcome == "blocked_address":
            return RobotsRules(blocked=fetched.detail)
        if fetched.outcome == "too_large":
            return RobotsRules(disallow_all=True, why="robots.txt too large to read")
        if fetched.outcome == "ok":
            text = fetched.body.decode("utf-8", errors="replace")
            return RobotsRules.parse(text, self.options.robots_token)
        if fetched.http_status is not None and 400 <= fetched.http_status < 500:
            return RobotsRules()  # RFC 9309: "unavailable" robots.txt allows everything
        # RFC 9309: an unreachable robots.txt (5xx, network error) means complete disallow
        return RobotsRules(
            disallow_all=True, why=f"robots.txt unreachable: {fetched.outcome} {fetched.detail}".strip()
        )
