"""A provider written the way a third party writes one: ``_submit`` only, no commit point.

It drops each message into a directory (one file per accepted submission), so what it sent is
visible across processes; a file ``refuse-<address>`` in the directory makes it refuse that
recipient once with a 451. The contract tests use it to prove that the base class's defaults
give such a provider at-most-once sending and per-recipient retries.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from router.models import OutboundEmail
from router.providers.base import OutgoingProvider, SubmitResult


class FileDropOptions(BaseModel):
    """``directory``: where the messages go."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    directory: str


class FileDropProvider(OutgoingProvider):
    """Writes every submission to ``<directory>/<uuid>.json`` (recipients + message)."""

    options_model = FileDropOptions

    def _connect(self) -> None:
        self.directory = Path(self.options.directory)

    def _close(self) -> None:
        pass

    def _submit(self, email: OutboundEmail, message: bytes, envelope_from: str) -> SubmitResult:
        rcpts = [a.email for a in (*email.to, *email.cc, *email.bcc)]
        refused = {r: (451, "try later") for r in rcpts if self._refuse_once(r)}
        accepted = [r for r in rcpts if r not in refused]
        record = {"rcpts": accepted, "raw": message.decode("utf-8", "replace")}
        path = self.directory / f"{uuid.uuid4().hex}.json"
        path.write_text(json.dumps(record))
        return SubmitResult(tuple(accepted), refused)

    def _refuse_once(self, address: str) -> bool:
        flag = self.directory / f"refuse-{address.lower()}"
        try:
            os.unlink(flag)
        except FileNotFoundError:
            return False
        return True


def sent(directory: Path) -> list[tuple[tuple[str, ...], bytes]]:
    """What the provider dropped into ``directory``, oldest first."""
    records = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    out = []
    for path in records:
        record = json.loads(path.read_text())
        out.append((tuple(record["rcpts"]), record["raw"].encode()))
    return out
