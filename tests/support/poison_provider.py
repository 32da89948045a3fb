"""A custom incoming provider with one poisoned message, for the poison-message tests.

Use it (by dotted path ``tests.support.poison_provider:PoisonedFolderProvider``) where a test
needs a provider whose own code raises for one message, in a subprocess (`email-router run`, a
Celery worker). It reads ``*.eml`` files of a folder in name order; cursor ``{"last": name}``.
Fetching a file named in ``poison`` raises ValueError, as a third party's parsing bug would.

Options (``<Parameters>``): ``folder`` - the directory; ``poison`` - comma-separated file names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from router.models import MessageRef
from router.providers import IncomingProvider, InstanceState


class PoisonOptions(BaseModel):
    """``<Parameters>`` of :class:`PoisonedFolderProvider`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    folder: Path
    poison: str = ""


class PoisonedFolderProvider(IncomingProvider):
    """Reads a folder of ``.eml`` files; raises ValueError for the files named in ``poison``."""

    options_model = PoisonOptions

    def _connect(self) -> None:
        self._poison = {p.strip() for p in self.options.poison.split(",") if p.strip()}

    def _close(self) -> None:
        pass

    def _list_new(self, state: InstanceState, limit: int) -> Sequence[MessageRef]:
        last = str((state.cursor or {}).get("last", ""))
        names = sorted(p.name for p in Path(self.options.folder).glob("*.eml"))
        return [MessageRef(n) for n in names if n > last][:limit]

    def _fetch(self, ref: MessageRef) -> bytes:
        if ref.key in self._poison:
            raise ValueError(f"cannot decode {ref.key}: bad header block")
        return (Path(self.options.folder) / ref.key).read_bytes()

    def _advance(self, state: InstanceState, refs: Sequence[MessageRef]) -> dict[str, Any]:
        last = str((state.cursor or {}).get("last", ""))
        return {"last": max([last, *(r.key for r in refs)])}


def fill(folder: Path, count: int, poisoned: int) -> str:
    """Write ``count`` messages ``000.eml`` ... into ``folder``; return the poisoned file name."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (folder / f"{n:03d}.eml").write_bytes(
            f"From: Sender {n} <sender{n}@example.org>\r\nTo: inbox@example.com\r\n"
            f"Subject: message {n}\r\nMessage-ID: <poison-test.{n}@example.org>\r\n"
            f"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n\r\nBody of message {n}.\r\n".encode()
        )
    return f"{poisoned:03d}.eml"
