"""A custom incoming provider: every item of an RSS 2.0 feed becomes an email activity.

This is the worked example of the README's "Writing a custom provider" guide. It shows the four
things a provider does: declare its options, list what is new after the cursor, fetch one item as
RFC 5322 bytes, and say what the cursor is once items are staged. It keeps its own small state
(the publication date of the newest item seen) in ``state.data``, which the router persists.

Options (``<Parameters>``): ``feed`` - a URL (http/https) or a file path.
"""

from __future__ import annotations

from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET
import requests
from pydantic import BaseModel, ConfigDict

from router.models import MessageRef
from router.providers import IncomingProvider, InstanceState

MAX_SEEN = 1000  # bound the cursor: feeds only show their newest items


class RssOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    feed: str


class RssProvider(IncomingProvider):
    """Reads an RSS feed; cursor ``{"seen": [guid, ...]}``."""

    alias = "rss"
    options_model = RssOptions
    retryable_errors = (requests.ConnectionError, requests.Timeout, ConnectionError)

    def _connect(self) -> None:
        self._items = {item["guid"]: item for item in _read_feed(self.options.feed)}

    def _close(self) -> None:
        self._items = {}

    def _list_new(self, state: InstanceState, limit: int) -> Sequence[MessageRef]:
        seen = set((state.cursor or {}).get("seen", []))
        return [MessageRef(guid) for guid in self._items if guid not in seen][:limit]

    def _fetch(self, ref: MessageRef) -> bytes:
        item = self._items[ref.key]
        msg = EmailMessage()
        msg["From"] = f"{self.config.name} feed <{self.config.email_address or 'feed@localhost'}>"
        msg["To"] = self.config.email_address or "feed@localhost"
        msg["Subject"] = item["title"]
        msg["Message-ID"] = f"<{abs(hash(ref.key)):x}.rss@{self.config.name}>"
        if item["date"]:
            msg["Date"] = item["date"]
        msg.set_content(f"{item['description']}\n\n{item['link']}")
        return msg.as_bytes()

    def _advance(self, state: InstanceState, refs: Sequence[MessageRef]) -> dict[str, Any]:
        seen = [*(state.cursor or {}).get("seen", []), *(r.key for r in refs)]
        newest = max(
            (self._items[r.key]["date"] for r in refs if self._items[r.key]["date"]),
            key=parsedate_to_datetime,
            default=None,
        )
        if newest:
            state.data["last_item_date"] = format_datetime(parsedate_to_datetime(newest))
        return {"seen": seen[-MAX_SEEN:]}


def _read_feed(feed: str) -> list[dict[str, str]]:
    if feed.startswith(("http://", "https://")):
        response = requests.get(feed, timeout=30)
        response.raise_for_status()
        data = response.content
    else:
        data = Path(feed).read_bytes()
    root = SafeET.fromstring(data)
    return [_item(node) for node in root.iter("item")]


def _item(node: Any) -> dict[str, str]:
    def text(tag: str) -> str:
        return (node.findtext(tag) or "").strip()

    return {
        "guid": text("guid") or text("link"),
        "title": text("title"),
        "link": text("link"),
        "description": text("description"),
        "date": text("pubDate"),
    }
