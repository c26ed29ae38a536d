"""Fetching images: retries, bounds, publisher opt-outs and the address guard, against 127.0.0.1."""

from __future__ import annotations

import asyncio
import email.utils
import importlib.util
import sys
import time
from pathlib import Path

import pytest

from tasks.images_fetch import (
    AddressPolicy,
    Fetcher,
    FetchOptions,
    RobotsRules,
    retry_after_seconds,
    x_robots_opt_out,
)


def _server_module():
    name = "embedpipe_test_image_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "image_server.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def photos(shared_data) -> Path:
    return shared_data / "image_text" / "coco_mini_cc_by"


@pytest.fixture(scope="module")
def server(photos):
    running = _server_module().ImageServer(photos).start()
    yield running
    running.stop()


def fetch_all(urls: list[str], **options):
    async def main():
        async with Fetcher(FetchOptions(**options)) as fetcher:
            return await asyncio.gather(*(fetcher.fetch(u) for u in urls))

    return asyncio.run(main())


PHOTO = "000000000790.jpg"


@pytest.mark.parametrize(
    "kind, outcome, status",
    [
        ("photos", "ok", 200),
        ("missing", "http_404", 404),
        ("flaky", "ok", 200),
        ("busy", "ok", 200),
        ("slow", "timeout", None),
        ("huge", "too_large", 200),
        ("stream", "too_large", 200),
        ("noai", "opted_out", 200),
        ("otherbot", "ok", 200),
        ("private", "robots_disallowed", None),
        ("moved", "ok", 200),
        ("to-private", "blocked_address", None),
        ("to-metadata", "blocked_address", None),
        ("to-localhost", "blocked_address", None),
    ],
)
def test_each_misbehaviour(server, photos, kind, outcome, status):
    server.reset()
    (fetched,) = fetch_all(
        [server.url(f"/{kind}/{PHOTO}")], timeout=1.0, backoff=0.05, max_bytes=2_000_000,
        allow_private_addresses=tuple(server.allow),
    )  # fmt: skip
    assert (fetched.outcome, fetched.http_status) == (outcome, status), fetched.detail
    if outcome == "ok":
        assert fetched.body == (photos / "images" / PHOTO).read_bytes()
    assert server.hits[f"/{kind}/{PHOTO}"] == {"flaky": 2, "busy": 2, "private": 0}.get(kind, 1)


def test_retry_after_is_honoured_and_a_too_long_one_gives_up(server):
    server.reset()
    (fetched,) = fetch_all([server.url("/busy/a.jpg")], allow_private_addresses=True)
    assert fetched.outcome == "http_404"  # the retry got through to the handler, which knows no a.jpg
    times = server.times["/busy/a.jpg"]
    assert len(times) == 2 and times[1] - times[0] >= 0.95 and fetched.attempts == 2

    server.reset()
    (fetched,) = fetch_all([server.url(f"/busy/{PHOTO}")], allow_private_addresses=True, max_retry_wait=0.5)
    assert fetched.outcome == "http_429" and "past max_retry_wait" in fetched.detail
    assert server.hits[f"/busy/{PHOTO}"] == 1


def test_no_retries_means_one_attempt(server):
    server.reset()
    (fetched,) = fetch_all([server.url(f"/flaky/{PHOTO}")], allow_private_addresses=True, retries=0)
    assert (fetched.outcome, fetched.attempts) == ("http_500", 1)


def test_switches_turn_the_publisher_rules_off(server):
    urls = [server.url(f"/private/{PHOTO}"), server.url(f"/noai/{PHOTO}")]
    fetched = fetch_all(
        urls, allow_private_addresses=True, respect_robots_txt=False, respect_x_robots_tag=False
    )
    assert [f.outcome for f in fetched] == ["ok", "ok"]


def test_robots_txt_is_fetched_once_per_origin_and_names_our_token(photos):
    robots = (
        "User-agent: *\nAllow: /\n\nUser-agent: pickybot\nDisallow: /photos/\nAllow: /photos/0000000007\n"
    )
    server = _server_module().ImageServer(photos, robots=robots).start()
    try:
        urls = [server.url(f"/photos/{name}") for name in sorted(server.photos)[:6]]
        fetched = fetch_all(urls, allow_private_addresses=True, user_agent="PickyBot/2.0")
        assert [f.outcome for f in fetched] == ["ok"] + ["robots_disallowed"] * 5  # the longest rule wins
        assert server.hits["/robots.txt"] == 1
        assert [f.outcome for f in fetch_all(urls[1:2], allow_private_addresses=True)] == ["ok"]
    finally:
        server.stop()


@pytest.mark.parametrize("status, outcome", [(404, "ok"), (503, "robots_disallowed")])
def test_a_missing_robots_txt_allows_and_an_unreachable_one_forbids(photos, status, outcome):
    server = _server_module().ImageServer(photos, robots=status).start()
    try:
        (fetched,) = fetch_all([server.url(f"/photos/{PHOTO}")], allow_private_addresses=True)
        assert fetched.outcome == outcome
        if outcome != "ok":
            assert "robots.txt unreachable: http_503" in fetched.detail
            assert server.hits[f"/photos/{PHOTO}"] == 0
    finally:
        server.stop()


def test_concurrency_is_bounded_per_host(server):
    server.reset()
    urls = [server.url(f"/hold/{name}") for name in sorted(server.photos)[:12]]
    started = time.monotonic()
    fetched = fetch_all(urls, allow_private_addresses=True, concurrency=64, per_host_concurrency=3)
    assert all(f.outcome == "ok" for f in fetched)
    assert server.most_in_flight == 3
    assert time.monotonic() - started >= 4 * 0.3 - 0.05  # 12 requests, 3 at a time, 0.3 s each

    server.reset()
    fetch_all(urls, allow_private_addresses=True, concurrency=2, per_host_concurrency=8)
    assert server.most_in_flight == 2


def test_the_address_guard():
    public, loopback = "93.184.216.34", "127.0.0.1"
    assert AddressPolicy().permits(public, 80)
    for address in (loopback, "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "fe80::1", "100.64.0.1",
                    "::ffff:127.0.0.1", "224.0.0.1", "0.0.0.0"):  # fmt: skip
        assert not AddressPolicy().permits(address, 80), address
    assert AddressPolicy(True).permits("10.1.2.3", 80)
    only_port = AddressPolicy(["127.0.0.1:8000"])
    assert only_port.permits(loopback, 8000) and not only_port.permits(loopback, 8001)
    assert not only_port.permits("127.0.0.2", 8000)
    assert AddressPolicy(["10.0.0.0/8"]).permits("10.200.0.1", 1) and AddressPolicy(["[::1]:80"]).permits(
        "::1", 80
    )
    with pytest.raises(ValueError, match="is not ADDRESS\\[/PREFIX\\]\\[:PORT\\]"):
        AddressPolicy(["localhost:80"])


def test_literal_private_addresses_are_refused_before_connecting():
    fetched = fetch_all(["http://127.0.0.1:9/x.jpg", "http://[::1]:9/x.jpg", "http://169.254.169.254/"])
    assert [f.outcome for f in fetched] == ["blocked_address"] * 3
    assert [f.outcome for f in fetch_all(["file:///etc/passwd", "http:///nohost"])] == ["bad_url", "bad_url"]


def test_robots_rules():
    text = """
    User-agent: otherbot
    Disallow: /

    User-agent: *
    Disallow: /private/
    Allow: /private/public-*.jpg$
    Disallow: /*.gif$
    Disallow:
    """
    rules = RobotsRules.parse(text, "embedpipe")
    assert rules.allows("/photos/a.jpg")
    assert not rules.allows("/private/a.jpg")
    assert rules.allows("/private/public-a.jpg") and not rules.allows("/private/public-a.jpg?size=2")
    assert not rules.allows("/x/y.gif") and rules.allows("/x/y.gif?v=1")
    assert not RobotsRules.parse(text, "otherbot").allows("/photos/a.jpg")
    assert RobotsRules.parse("", "embedpipe").allows("/anything")


def test_x_robots_tag_directives():
    tokens = ("embedpipe", "img2dataset")
    assert x_robots_opt_out(["noai"], tokens) == "noai"
    assert x_robots_opt_out(["noarchive, NoImageIndex"], tokens) == "noimageindex"
    assert x_robots_opt_out(["otherbot: noai"], tokens) is None
    assert x_robots_opt_out(["img2dataset: noimageai"], tokens) == "img2dataset: noimageai"
    assert x_robots_opt_out(["unavailable_after: 25 Jun 2010 15:00:00 PST", "noindex"], tokens) == "noindex"
    assert x_robots_opt_out(["max-image-preview: large"], tokens) is None


def test_retry_after_values():
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after_seconds(later) <= 31


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(timeout=0), "timeout must be > 0"),
        (dict(retries=-1), "retries must be >= 0"),
        (dict(user_agent="  "), "user_agent is empty"),
        (dict(allow_private_addresses=("nonsense",)), "is not ADDRESS"),
    ],
)
def test_bad_fetch_options(options, message):
    with pytest.raises(ValueError, match=message):
        FetchOptions(**options)
