"""The graph outgoing provider's sendMail exchange, answer by answer (a scripted HTTP session).

What is checked: the request Graph gets (URL, text/plain base64 MIME with a Bcc header), when
the ledger hooks run (commit before the POST, handed over only after a 202), which answers are
sent again and which never are, and what each failure means for the email (retry later,
Failed, or "may or may not have been sent"). The real simulator is used by the contract and
integration tests.
"""

from __future__ import annotations

import base64
import email.policy
import json
from dataclasses import replace
from email import message_from_bytes
from email.message import EmailMessage
from typing import Any

import pytest
import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError

from router.config import Parameter, Parameters, ProviderConfiguration, Secret
from router.errors import (
    ConfigError,
    MessageRejected,
    ProviderAuthError,
    ProviderUnavailable,
    RouterError,
)
from router.graph.client import GraphClient
from router.mail.compose import compose_message
from router.models import Address, Attachment, Direction, OutboundEmail
from router.oauth import TokenSource
from router.providers.base import SubmitResult
from router.providers.graph_access import graph_steps
from router.providers.graph_drafts import UPLOAD_CHUNK, split_attachments
from router.providers.graph_outgoing import MAX_SEND_BYTES, GraphOutgoingProvider
from router.providers.registry import resolve

MAILBOX = "crm@contoso.com"
SECRET = "client-secret-value"


class Tokens(TokenSource):
    """Hands out tok-1, tok-2, ... without a network."""

    def __init__(self) -> None:
        super().__init__("https://login.example.test/t", "app", SECRET, ["scope/.default"])
        self.issued = 0

    def _acquire(self) -> None:
        self.issued += 1
        self._token, self._refresh_at = f"tok-{self.issued}", float("inf")


class Script(requests.Session):
    """A session answering from a script: status codes (with headers/JSON) or exceptions."""

    def __init__(self, *answers: Any) -> None:
        super().__init__()
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    def request(self, method: str | bytes, url: str | bytes, *a: Any, **kw: Any) -> Any:
        self.calls.append({"method": method, "url": url, **kw})
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        status, headers, body = answer if isinstance(answer, tuple) else (answer, {}, None)
        response = requests.Response()
        response.status_code, response.headers = (
            status,
            requests.structures.CaseInsensitiveDict(headers),
        )
        response._content = json.dumps(body).encode() if body is not None else b""
        return response


def graph_error(status: int, code: str, message: str = "refused", **headers: str) -> Any:
    return (status, headers, {"error": {"code": code, "message": message}})


class Hook:
    """The send cycle's ledger hook, recording the order of events."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def __call__(self, result: SubmitResult, *, ahead: bool = False) -> None:
        self.events.append("commit")

    def handed_over(self) -> None:
        self.events.append("handed over")


class Scripted(GraphOutgoingProvider):
    script: Script

    def _create_client(self) -> GraphClient:
        return GraphClient(self.config.email_server or "", Tokens(), session=self.script)


def config(**params: str) -> ProviderConfiguration:
    values = {"tenant_id": "contoso", "client_id": "app-id", **params}
    return ProviderConfiguration(
        name="graph-out",
        provider_class="graph",
        direction=Direction.OUTGOING,
        email_server="https://graph.example.test/v1.0",
        email_user=MAILBOX,
        email_password=Secret(value=SECRET),
        parameters=Parameters(items=tuple(Parameter(name=k, value=v) for k, v in values.items())),
    )


EMAIL = OutboundEmail(
    email_id="e1",
    subject="Angebot",
    body_html="<p>Sehr geehrte Frau Muster</p>",
    sender=Address(MAILBOX, "CRM"),
    to=(Address("kunde@example.net"),),
    bcc=(Address("hidden@example.net"), Address("also@bücher.example")),
)


@pytest.fixture
def events() -> list[str]:
    return []


def send(
    *answers: Any, events: list[str] | None = None, email: OutboundEmail = EMAIL, **params: str
) -> tuple[Script, SubmitResult | BaseException]:
    """Open a provider over ``answers``, submit ``email`` once; the script and the outcome."""
    provider = Scripted(config(**params))
    provider.script = Script(*answers)
    recorded = events if events is not None else []
    with provider:
        try:
            composed = compose_message(email)
            sender = email.sender.email
            outcome: Any = provider.submit(email, composed.raw, sender, Hook(recorded))
        except Exception as exc:  # the test judges the exception itself
            outcome = exc
    return provider.script, outcome


def posted_mime(call: dict[str, Any]) -> bytes:
    return base64.b64decode(call["data"])


def test_graph_resolves_to_this_class_for_outgoing_instances() -> None:
    assert resolve("graph", Direction.OUTGOING) is GraphOutgoingProvider


def test_a_202_sends_the_mime_as_base64_text_to_the_mailboxs_sendmail(events: list[str]) -> None:
    script, outcome = send(202, events=events)

    assert isinstance(outcome, SubmitResult)
    assert outcome.accepted == ("kunde@example.net", "hidden@example.net", "also@bücher.example")
    (call,) = script.calls
    assert (call["method"], call["url"]) == (
        "POST",
        f"https://graph.example.test/v1.0/users/{MAILBOX}/sendMail",
    )
    assert call["headers"]["Content-Type"] == "text/plain"
    assert call["headers"]["Authorization"] == "Bearer tok-1"
    assert call["params"] is None  # Graph's default: a copy in Sent Items
    assert events == ["commit", "handed over"]


def test_bcc_recipients_are_named_in_a_bcc_header_of_the_copy_graph_gets() -> None:
    script, _ = send(202)

    head = posted_mime(script.calls[0]).split(b"\r\n\r\n", 1)[0]
    assert b"Bcc: hidden@example.net,\r\n also@xn--bcher-kva.example" in head
    assert head.count(b"Message-ID:") == 1
    assert b"Bcc" not in compose_message(EMAIL).raw  # the composed message keeps none


def test_save_to_sent_items_false_asks_graph_for_no_copy() -> None:
    script, _ = send(202, save_to_sent_items="false")
    assert script.calls[0]["params"] == {"saveToSentItems": "false"}


def test_a_429_is_sent_again_after_its_retry_after(events: list[str]) -> None:
    script, outcome = send(graph_error(429, "ApplicationThrottled", **{"Retry-After": "0.05"}), 202,
                           events=events)  # fmt: skip
    assert isinstance(outcome, SubmitResult) and len(script.calls) == 2
    assert (
        script.calls[0]["headers"]["client-request-id"]
        == (script.calls[1]["headers"]["client-request-id"])
    )
    assert events == ["commit", "handed over"]


def test_a_401_gets_one_new_token_and_is_sent_again() -> None:
    script, outcome = send(graph_error(401, "InvalidAuthenticationToken"), 202)
    assert isinstance(outcome, SubmitResult)
    assert [c["headers"]["Authorization"] for c in script.calls] == [
        "Bearer tok-1",
        "Bearer tok-2",
    ]


def test_throttling_that_outlasts_the_retries_means_retry_later_not_sent(
    events: list[str],
) -> None:
    throttled = graph_error(503, "ServiceUnavailable", **{"Retry-After": "0"})
    script, outcome = send(*[throttled] * 8, events=events)
    assert isinstance(outcome, ProviderUnavailable) and "HTTP 503" in str(outcome)
    assert len(script.calls) == 8
    assert events == ["commit"]  # never handed over: the cycle retries it later


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (graph_error(400, "ErrorInvalidRecipients"), "HTTP 400 ErrorInvalidRecipients"),
        (graph_error(403, "ErrorSendAsDenied"), "HTTP 403 ErrorSendAsDenied"),
        (graph_error(413, "ErrorMessageSizeExceeded"), "HTTP 413"),
    ],
)
def test_a_refusal_of_the_message_marks_it_failed_with_graphs_code(
    answer: Any, words: str, events: list[str]
) -> None:
    script, outcome = send(answer, events=events)
    assert isinstance(outcome, MessageRejected) and words in str(outcome)
    assert len(script.calls) == 1 and events == ["commit"]


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (graph_error(403, "ErrorAccessDenied"), "Mail.Send"),
        (graph_error(404, "ErrorInvalidUser"), "<EmailUser>"),
        (graph_error(401, "InvalidAuthenticationToken"), "Mail.Send"),
    ],
)
def test_a_permission_or_mailbox_problem_is_retried_later_with_a_hint(
    answer: Any, words: str
) -> None:
    answers = [answer, answer] if answer[0] == 401 else [answer]
    _, outcome = send(*answers)
    assert isinstance(outcome, ProviderUnavailable) and words in str(outcome)


@pytest.mark.parametrize(
    "answer",
    [
        graph_error(504, "GatewayTimeout"),
        graph_error(500, "InternalServerError"),
        requests.exceptions.ReadTimeout("HTTPSConnectionPool: Read timed out."),
        requests.exceptions.ConnectionError("Connection aborted: RemoteDisconnected"),
    ],
)
def test_an_answer_that_leaves_the_outcome_open_is_never_sent_again(
    answer: Any, events: list[str]
) -> None:
    script, outcome = send(answer, 202, events=events)
    assert isinstance(outcome, MessageRejected)
    assert "may or may not have been sent" in str(outcome)
    assert len(script.calls) == 1 and events == ["commit"]


def test_a_refused_connection_means_not_sent_and_retry_later(events: list[str]) -> None:
    refused = NewConnectionError(None, "Failed to establish a new connection: refused")  # type: ignore[arg-type]
    error = requests.exceptions.ConnectionError(MaxRetryError(None, "/", refused))  # type: ignore[arg-type]
    script, outcome = send(error, events=events)
    assert isinstance(outcome, ProviderUnavailable) and "not sent" in str(outcome)
    assert len(script.calls) == 1 and events == ["commit"]


def test_a_message_whose_body_alone_is_over_4_mb_is_refused_before_anything_is_sent(
    events: list[str],
) -> None:
    big = replace(EMAIL, body_html="<p>" + "x" * MAX_SEND_BYTES)
    script, outcome = send(events=events, email=big)
    assert isinstance(outcome, MessageRejected) and "4 MB" in str(outcome)
    assert script.calls == [] and events == []


def test_no_secret_token_or_body_appears_in_a_failure() -> None:
    _, outcome = send(graph_error(400, "ErrorMimeContentInvalid", "The MIME content is invalid"))
    text = str(outcome)
    assert SECRET not in text and "tok-1" not in text and "Muster" not in text


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"client_id": ""}, "client_id"),
        ({"save_to_sent_items": "maybe"}, "save_to_sent_items"),
        ({"authority": "http://login.example.test/t"}, "authority"),
    ],
)
def test_bad_options_are_refused_with_their_name(params: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        GraphOutgoingProvider(config(**params))


def test_an_http_graph_url_is_refused_the_token_never_goes_there() -> None:
    cfg = config().model_copy(update={"email_server": "http://graph.example.test/v1.0"})
    with pytest.raises(ConfigError, match="https://"):
        GraphOutgoingProvider(cfg)


# -- test-access steps ----------------------------------------------------------------------------
def access(*answers: Any, folders: tuple[str, ...] = ()) -> list[str | BaseException]:
    """Run the access steps of a provider over ``answers``; each step's text or error."""
    provider = Scripted(config())
    provider.script = Script(*answers)
    with provider:
        steps = provider.access_steps()
        if folders:
            steps = graph_steps(lambda: provider.client, MAILBOX, list(folders), sends=False)
        found: list[str | BaseException] = []
        for step in steps:
            try:
                found.append(f"{step.name}: {step.run()}")
            except RouterError as exc:
                found.append(exc)
    return found


def test_access_says_mail_send_cannot_be_proven_without_sending() -> None:
    token, mailbox, send_step = access((200, {}, {"mail": MAILBOX}))
    assert token == "token: ok, from https://login.example.test/t"
    assert mailbox == f"mailbox: ok, {MAILBOX}"
    assert isinstance(send_step, str) and "Graph has no dry-run send" in send_step


def test_access_without_directory_permission_is_not_verified_not_failed() -> None:
    _, mailbox, _ = access(graph_error(403, "Authorization_RequestDenied"))
    assert isinstance(mailbox, str) and mailbox.startswith("mailbox: not verified")


def test_access_to_an_unknown_mailbox_fails_with_a_hint() -> None:
    _, mailbox, _ = access(graph_error(404, "ErrorInvalidUser"))
    assert isinstance(mailbox, ProviderUnavailable) and "<EmailUser>" in str(mailbox)


def test_access_to_a_folder_the_policy_hides_fails_naming_the_permission() -> None:
    *_, folder = access((200, {}, {"mail": MAILBOX}), graph_error(403, "ErrorAccessDenied"),
                        folders=("inbox",))  # fmt: skip
    assert isinstance(folder, ProviderAuthError) and "Mail.ReadWrite" in str(folder)


def test_an_unset_secret_variable_stops_the_instance_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_SUCH_GRAPH_SECRET", raising=False)
    cfg = config().model_copy(update={"email_password": Secret(env="NO_SUCH_GRAPH_SECRET")})
    with pytest.raises(ProviderAuthError, match="cannot read the client secret: KeyError"):
        GraphOutgoingProvider(cfg).open()


# -- over 4 MB: a draft, its attachments, then send ------------------------------------------

BIG = bytes(range(256)) * (5 * 1024 * 1024 // 256 + 7)  # 5 MB and a bit: an upload session
SMALL = b"%PDF-1.4 small" * 1000  # one POST
LARGE_EMAIL = replace(
    EMAIL,
    attachments=(
        Attachment("plan.bin", "application/octet-stream", BIG),
        Attachment("angebot.pdf", "application/pdf", SMALL),
    ),
)
UPLOAD_URL = "https://upload.example.test/s/1?authtoken=upload-secret"


def draft_answers(*, send: Any = 202) -> list[Any]:
    """Graph's answers to the draft path of LARGE_EMAIL, ending with ``send``'s."""
    ranges = -(-len(BIG) // UPLOAD_CHUNK)
    return [
        (201, {}, {"id": "draft-1"}),
        (201, {}, {"uploadUrl": UPLOAD_URL}),
        *[(200, {}, {"nextExpectedRanges": ["x-"]})] * (ranges - 1),
        (201, {}, None),
        (201, {}, {"id": "att-2"}),
        send,
    ]


def test_a_message_over_4_mb_is_sent_as_a_draft_with_its_files_attached_before_the_commit(
    events: list[str],
) -> None:
    script, outcome = send(*draft_answers(), events=events, email=LARGE_EMAIL)

    assert isinstance(outcome, SubmitResult), outcome
    base = f"https://graph.example.test/v1.0/users/{MAILBOX}/messages"
    assert [(c["method"], c["url"]) for c in script.calls] == [
        ("POST", base),
        ("POST", f"{base}/draft-1/attachments/createUploadSession"),
        *[("PUT", UPLOAD_URL)] * (len(script.calls) - 4),
        ("POST", f"{base}/draft-1/attachments"),
        ("POST", f"{base}/draft-1/send"),
    ]
    # the draft is the composed message without its files, Bcc named for Graph
    draft = message_from_bytes(posted_mime(script.calls[0]))
    assert draft["Message-ID"] == compose_message(LARGE_EMAIL).message_id
    assert "hidden@example.net" in draft["Bcc"]
    assert [p.get_filename() for p in draft.walk() if p.get_filename()] == []
    assert len(script.calls[0]["data"]) < MAX_SEND_BYTES
    # the big file went up in ordered ranges under 4 MB, without the bearer token
    puts = [c for c in script.calls if c["method"] == "PUT"]
    assert b"".join(c["data"] for c in puts) == BIG
    assert all(len(c["data"]) <= 4 * 1024 * 1024 for c in puts)
    assert puts[0]["headers"]["Content-Range"] == f"bytes 0-{UPLOAD_CHUNK - 1}/{len(BIG)}"
    assert all("Authorization" not in c["headers"] for c in puts)
    session = script.calls[1]["json"]["AttachmentItem"]
    assert (session["name"], session["size"]) == ("plan.bin", len(BIG))
    small = script.calls[-2]["json"]
    assert (small["name"], base64.b64decode(small["contentBytes"])) == ("angebot.pdf", SMALL)
    assert (script.calls[-1]["data"], "Content-Type" in script.calls[-1]["headers"]) == (b"", False)
    # commit right before send, handed over after its 202
    assert events == ["commit", "handed over"]


def test_a_failed_upload_sends_nothing_and_deletes_the_draft(events: list[str]) -> None:
    answers = draft_answers()
    answers[2] = graph_error(500, "InternalServerError")
    answers[3:] = [204]  # the DELETE of the draft
    script, outcome = send(*answers, events=events, email=LARGE_EMAIL)

    assert isinstance(outcome, ProviderUnavailable) and "not sent" in str(outcome)
    assert events == []  # never committed: the email is retried later
    assert (script.calls[-1]["method"], script.calls[-1]["url"]) == (
        "DELETE",
        f"https://graph.example.test/v1.0/users/{MAILBOX}/messages/draft-1",
    )
    assert "upload-secret" not in str(outcome)


def test_a_draft_refused_at_send_is_failed_and_deleted(events: list[str]) -> None:
    refused = graph_error(400, "ErrorInvalidRecipients", "bad recipient")
    script, outcome = send(*draft_answers(send=refused), 204, events=events, email=LARGE_EMAIL)

    assert isinstance(outcome, MessageRejected) and "ErrorInvalidRecipients" in str(outcome)
    assert script.calls[-1]["method"] == "DELETE"
    assert events == ["commit"]


def test_a_draft_send_without_an_answer_is_ambiguous_and_the_draft_is_left(
    events: list[str],
) -> None:
    timeout = requests.exceptions.ReadTimeout("Read timed out")
    script, outcome = send(*draft_answers(send=timeout), events=events, email=LARGE_EMAIL)

    assert isinstance(outcome, MessageRejected) and "may or may not" in str(outcome)
    assert script.calls[-1]["url"].endswith("/draft-1/send")  # no DELETE: it may have gone
    assert events == ["commit"]


def test_split_attachments_keeps_the_body_and_headers_and_returns_the_files_exactly() -> None:
    composed = compose_message(LARGE_EMAIL).raw
    rest, files = split_attachments(composed)

    assert [(f.name, f.content_type, f.data) for f in files] == [
        ("plan.bin", "application/octet-stream", BIG),
        ("angebot.pdf", "application/pdf", SMALL),
    ]
    left, original = message_from_bytes(rest), message_from_bytes(composed)
    assert left["Subject"] == original["Subject"] and left["To"] == original["To"]
    assert "Sehr geehrte Frau Muster" in rest.decode()
    plain = compose_message(EMAIL).raw
    assert split_attachments(plain) == (plain, [])  # nothing to take out: untouched


def test_an_attached_message_stays_in_the_draft_and_only_files_are_taken_out() -> None:
    inner = EmailMessage()
    inner["Subject"] = "forwarded"
    inner.set_content("the forwarded text")
    outer = EmailMessage(policy=email.policy.SMTP)
    outer["Subject"] = "outer"
    outer.set_content("see attached")
    outer.add_attachment(b"\x00\x01file", maintype="application", subtype="octet-stream",
                         filename="f.bin")  # fmt: skip
    outer.add_attachment(inner)  # message/rfc822: not a file Graph could attach

    rest, files = split_attachments(outer.as_bytes())

    assert [(f.name, f.data) for f in files] == [("f.bin", b"\x00\x01file")]
    assert b"message/rfc822" in rest and b"the forwarded text" in rest and b"f.bin" not in rest
