"""A provider written outside the package (the README's RSS example) plugs in three ways."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from router.config import Configuration, Deployment, ProviderConfiguration
from router.context import Context
from router.crm.memory import MemoryCrm
from router.errors import ConfigError
from router.incoming import poll_instance
from router.models import Direction
from router.providers.registry import resolve
from router.state.memory import MemoryStore
from tests.support.rss_provider import RssProvider

FEED = """<?xml version="1.0"?>
<rss version="2.0"><channel><title>News</title>
{items}
</channel></rss>"""
ITEM = """<item><title>{t}</title><link>https://example.com/{n}</link><guid>g-{n}</guid>
<description>Item {n}</description><pubDate>Sat, 2{n} Nov 2026 08:00:00 +0000</pubDate></item>"""


def write_feed(path: Path, numbers: list[int]) -> None:
    path.write_text(FEED.format(items="".join(ITEM.format(t=f"News {n}", n=n) for n in numbers)))


def rss_context(feed: Path, provider_class: str) -> tuple[Context, MemoryCrm]:
    prov = ProviderConfiguration.model_validate(
        {
            "name": "news",
            "provider_class": provider_class,
            "direction": Direction.INCOMING,
            "deployment": "crm",
            "email_address": "news@example.com",
            "parameters": {"items": [{"name": "feed", "value": str(feed)}]},
        }
    )
    dep = Deployment(name="crm", adapter="memory", crm_server_url="https://crm.example")
    ctx = Context(Configuration(deployments=(dep,), providers=(prov,)), MemoryStore())
    crm = MemoryCrm()
    ctx._crms["crm"] = crm
    return ctx, crm


def test_feed_items_become_activities_once_and_provider_state_persists(tmp_path: Path) -> None:
    feed = tmp_path / "feed.xml"
    write_feed(feed, [1, 2])
    ctx, crm = rss_context(feed, "tests.support.rss_provider:RssProvider")
    assert poll_instance(ctx, "news").delivered == 2
    write_feed(feed, [1, 2, 3])
    assert poll_instance(ctx, "news").delivered == 1
    assert poll_instance(ctx, "news").delivered == 0
    subjects = sorted(a.subject for _, a, _ in crm.activities.values())
    assert subjects == ["News 1", "News 2", "News 3"]
    assert ctx.store.get_provider_state("news") == {
        "last_item_date": "Mon, 23 Nov 2026 08:00:00 +0000"
    }


def test_a_dotted_path_resolves_to_the_class() -> None:
    assert resolve("tests.support.rss_provider.RssProvider") is RssProvider


def test_an_entry_point_in_the_group_resolves_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "rss_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rss-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[email_router.providers]\nrss = tests.support.rss_provider:RssProvider\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve("rss") is RssProvider


def test_a_typo_gets_a_suggestion_and_a_non_provider_is_refused() -> None:
    with pytest.raises(ConfigError, match="did you mean 'pop3'"):
        resolve("pop33")
    with pytest.raises(ConfigError, match="not a subclass"):
        resolve("tests.support.rss_provider:RssOptions")
    assert "tests.support.rss_provider" in sys.modules


def test_bad_options_name_the_parameter(tmp_path: Path) -> None:
    prov = ProviderConfiguration.model_validate(
        {
            "name": "news",
            "provider_class": "x",
            "direction": Direction.INCOMING,
            "parameters": {"items": [{"name": "fed", "value": "typo"}]},
        }
    )
    with pytest.raises(ConfigError) as info:
        RssProvider(prov)
    assert "fed" in str(info.value) and "feed" in str(info.value)
