"""``PubSubPublisher``: the REST ``topics.publish`` call over ``httpx.MockTransport``, and against Google's
Pub/Sub emulator with the messages pulled back by Google's own client."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from google.cloud import pubsub_v1

from devkit.emulators import Emulator, EmulatorUnavailable
from function import PubSubPublisher
from function._gcp.auth import Authenticator
from function.errors import ApiUnavailable, PublishFailed
from tests.support import FakeClock, Scripted

MESSAGES = [(b'{"outcome":"CANCELLED"}', {"ce-id": "abc", "outcome": "CANCELLED"}), (b"\x00\xffbinary", {})]


class Auth(Authenticator):
    def __init__(self, *, fail: Exception | None = None, fail_refresh: Exception | None = None) -> None:
        self.token = "token-0"
        self.refreshes = 0
        self.fail = fail
        self.fail_refresh = fail_refresh

    def headers(self) -> dict[str, str]:
        if self.fail is not None:
            raise self.fail
        return {"authorization": f"Bearer {self.token}"}

    def refresh(self) -> bool:
        if self.fail_refresh is not None:
            raise self.fail_refresh
        self.refreshes += 1
        self.token = f"token-{self.refreshes}"
        return True


def ids(count: int) -> httpx.Response:
    return httpx.Response(200, json={"messageIds": [str(100 + i) for i in range(count)]})


def publisher(topic: Scripted, *, auth: Auth | None = None, emulator_host: str | None = None, clock=None):
    return PubSubPublisher(
        "my-project",
        auth=auth or Auth(),
        clock=clock or FakeClock(),
        emulator_host=emulator_host,
        transport=httpx.MockTransport(topic),
        jitter=lambda: 1.0,
    )


def test_all_messages_go_in_one_publish_call_to_the_topic_with_credentials():
    topic = Scripted(ids(2))
    assert publisher(topic).publish_all("opcancel-results", MESSAGES) == ["100", "101"]
    (request,) = topic.requests
    assert (request.method, str(request.url)) == (
        "POST",
        "https://pubsub.googleapis.com/v1/projects/my-project/topics/opcancel-results:publish",
    )
    assert request.headers["authorization"] == "Bearer token-0"
    sent = json.loads(request.content)["messages"]
    assert [(base64.b64decode(m["data"]), m["attributes"]) for m in sent] == MESSAGES


def test_the_emulator_is_reached_over_plain_http_without_credentials():
    topic = Scripted(ids(1))
    auth = Auth(fail=AssertionError("the emulator needs no credentials"))
    publisher(topic, auth=auth, emulator_host="127.0.0.1:8085").publish_all("t-1", MESSAGES[:1])
    (request,) = topic.requests
    assert str(request.url) == "http://127.0.0.1:8085/v1/projects/my-project/topics/t-1:publish"
    assert "authorization" not in request.headers


@pytest.mark.parametrize(
    "trouble", [httpx.Response(503), httpx.Response(429), httpx.ConnectError("refused"), httpx.ReadTimeout("slow")]
)
def test_transient_trouble_is_retried_at_once_with_backoff(trouble):
    topic = Scripted(trouble, ids(1))
    clock = FakeClock()
    assert publisher(topic, clock=clock).publish_all("t-1", MESSAGES[:1]) == ["100"]
    assert len(topic.requests) == 2 and clock.slept == [0.1]


def test_persistent_trouble_is_publish_failed_after_bounded_attempts():
    topic = Scripted(httpx.Response(503, text="backend down"))
    clock = FakeClock()
    with pytest.raises(PublishFailed, match="after 3 attempts: HTTP 503: Service Unavailable") as caught:
        publisher(topic, clock=clock).publish_all("t-1", MESSAGES)
    # A raw body (a proxy's page, say) is never relayed: only a Google error's status and message are.
    assert "backend down" not in str(caught.value)
    assert len(topic.requests) == 3 and clock.slept == [0.1, 0.2]


@pytest.mark.parametrize("retry_after", ["\u00b2", "9" * 5000])
def test_a_hostile_retry_hint_on_a_publish_is_publish_failed_not_a_crash(retry_after):
    # Publishing runs after a cancel was sent: nothing in the answer may crash it (one decoder, _gcp/errors.py).
    topic = Scripted(httpx.Response(429, headers={"retry-after": retry_after.encode()}))
    with pytest.raises(PublishFailed, match="HTTP 429"):
        publisher(topic).publish_all("t-1", MESSAGES)


@pytest.mark.parametrize("status", [400, 403, 404])
def test_a_refusal_is_publish_failed_without_retrying(status):
    topic = Scripted(httpx.Response(status, json={"error": {"status": "NOT_FOUND", "message": "Resource not found"}}))
    with pytest.raises(PublishFailed, match=f"HTTP {status}"):
        publisher(topic).publish_all("t-1", MESSAGES)
    assert len(topic.requests) == 1


def test_a_401_refreshes_credentials_once():
    topic = Scripted(httpx.Response(401), ids(1))
    auth = Auth()
    publisher(topic, auth=auth).publish_all("t-1", MESSAGES[:1])
    assert auth.refreshes == 1
    assert [r.headers["authorization"] for r in topic.requests] == ["Bearer token-0", "Bearer token-1"]


def test_missing_credentials_are_publish_failed_so_the_message_comes_again():
    topic = Scripted(ids(1))
    with pytest.raises(PublishFailed, match="metadata server"):
        publisher(topic, auth=Auth(fail=ApiUnavailable("no credentials from the metadata server yet"))).publish_all(
            "t-1", MESSAGES
        )
    assert topic.requests == []


def test_a_refresh_that_fails_is_publish_failed():
    auth = Auth(fail_refresh=ApiUnavailable("could not refresh credentials: RefreshError"))
    with pytest.raises(PublishFailed, match="could not refresh credentials"):
        publisher(Scripted(httpx.Response(401)), auth=auth).publish_all("t-1", MESSAGES)


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, content=b"<html>proxy</html>"),
        httpx.Response(200, json={"messageIds": ["1"]}),
        httpx.Response(200, json={"messageIds": [1, 2]}),
        httpx.Response(200, json=[]),
    ],
)
def test_an_answer_without_one_id_per_message_is_not_a_confirmation(answer):
    with pytest.raises(PublishFailed):
        publisher(Scripted(answer)).publish_all("t-1", MESSAGES)


@pytest.mark.emulator
def test_messages_arrive_at_googles_emulator_as_published(monkeypatch):
    try:
        emulator = Emulator("pubsub", project="opcancel-test")
    except EmulatorUnavailable as reason:
        pytest.skip(str(reason))
    try:
        # Google's clients, used here to create the topic and read it back, find the emulator this way.
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
        admin, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        admin.create_topic(name="projects/opcancel-test/topics/results")
        subscription = "projects/opcancel-test/subscriptions/results-pull"
        subscriber.create_subscription(name=subscription, topic="projects/opcancel-test/topics/results")
        real = PubSubPublisher("opcancel-test", auth=Auth(), clock=FakeClock(), emulator_host=emulator.host)
        message_ids = real.publish_all("results", MESSAGES)
        pulled = subscriber.pull(request={"subscription": subscription, "max_messages": 10}, timeout=30)
        got = {m.message.message_id: (m.message.data, dict(m.message.attributes)) for m in pulled.received_messages}
        assert got == dict(zip(message_ids, MESSAGES, strict=True))
        with pytest.raises(PublishFailed, match="HTTP 404"):
            real.publish_all("no-such-topic", MESSAGES)
        subscriber.close()
    finally:
        emulator.stop()
