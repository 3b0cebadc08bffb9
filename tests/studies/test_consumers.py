"""The study event websocket, through the real ASGI stack (origin check, session auth, routing):
who may watch, events in order and exactly once, catch-up after a reconnect, and the relay that
carries events written by another process when the channel layer is in-memory."""

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import Client

from consortium.asgi import application
from consortium.audit.models import AuditEvent, AuditOutcome
from sites.services import site_admin_remove
from studies import consumers, events
from studies.choices import EventKind
from studies.consumers import CLOSE_BAD_REQUEST, CLOSE_FORBIDDEN
from studies.models import StudyEvent
from tests.base import active_study, draft_study

pytestmark = pytest.mark.django_db(transaction=True)  # the consumer reads the database from its own calls

TIMEOUT = 3


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def open_socket(user, study_id: int, query: str = "") -> WebsocketCommunicator:
    headers = [(b"origin", b"http://localhost")]
    if user is not None:
        headers.append((b"cookie", await sync_to_async(session_cookie)(user)))
    communicator = WebsocketCommunicator(application, f"/ws/studies/{study_id}/{query}", headers=headers)
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    return communicator


def publish(study, n: int = 1, *, quietly: bool = False) -> list[int]:
    """Publish n events; `quietly` skips the broadcast, as for an event another process wrote."""
    original = events.broadcast
    if quietly:
        events.broadcast = lambda event: None
    try:
        return [events.publish(study, EventKind.STUDY_CHANGED, {"n": i, "before": "draft", "after": "submitted"}).seq
                for i in range(n)]
    finally:
        events.broadcast = original


async def received_ids(communicator: WebsocketCommunicator, count: int) -> list[int]:
    return [(await communicator.receive_json_from(timeout=TIMEOUT))["id"] for _ in range(count)]


def denials() -> list[tuple[str, str]]:
    return list(AuditEvent.objects.filter(action="studies.events.subscribe", outcome=AuditOutcome.DENIED)
                .values_list("actor_label", "details__reason"))


@pytest.mark.parametrize("who", ["anonymous", "outsider"])
def test_it_closes_4403_for_someone_who_may_not_see_the_study_and_audits_it(p, who):
    study = draft_study(p)
    user = None if who == "anonymous" else p.outsider

    async def scenario():
        communicator = await open_socket(user, study.pk)
        closed = await communicator.receive_output(timeout=TIMEOUT)
        assert closed == {"type": "websocket.close", "code": CLOSE_FORBIDDEN}

    async_to_sync(scenario)()
    [(label, reason)] = denials()
    assert label == ("anonymous" if user is None else "outsider") and "may watch it" in reason
    assert not AuditEvent.objects.filter(action="studies.study.viewed").exists()


def test_it_streams_a_viewers_events_in_order_and_audits_the_read(p):
    study = draft_study(p)

    async def scenario():
        communicator = await open_socket(p.pi, study.pk)
        hello = await communicator.receive_json_from(timeout=TIMEOUT)
        assert hello == {"type": "hello", "study": study.pk, "last_id": 0, "after": 0}
        seqs = await sync_to_async(publish)(study, 5)
        first = await communicator.receive_json_from(timeout=TIMEOUT)
        assert (first["id"], first["kind"], first["data"]["n"]) == (1, "study.changed", 0)
        assert first["text"] == "The study went from draft to submitted." and first["tone"] == "info"
        assert [1, *await received_ids(communicator, 4)] == seqs == [1, 2, 3, 4, 5]
        event = await sync_to_async(StudyEvent.objects.get)(study=study, seq=3)
        assert event.payload["n"] == 2
        assert await communicator.receive_nothing(timeout=0.2)
        await communicator.disconnect()

    async_to_sync(scenario)()
    viewed = AuditEvent.objects.get(action="studies.study.viewed", study_id=study.pk)
    assert viewed.actor_label == "pi" and viewed.details == {"via": "websocket"}


def test_a_reconnect_with_its_last_id_receives_exactly_the_missed_events(p):
    study = draft_study(p)
    publish(study, 7)

    async def scenario():
        communicator = await open_socket(p.pi, study.pk, "?after=4")
        assert (await communicator.receive_json_from(timeout=TIMEOUT))["last_id"] == 7
        assert await received_ids(communicator, 3) == [5, 6, 7]
        assert await communicator.receive_nothing(timeout=0.2)
        assert await sync_to_async(publish)(study) == [8]
        assert await received_ids(communicator, 1) == [8]
        await communicator.disconnect()

    async_to_sync(scenario)()


def test_an_event_ahead_of_one_not_yet_seen_is_preceded_by_the_missing_one(p):
    study = draft_study(p)

    async def scenario():
        communicator = await open_socket(p.pi, study.pk)
        await communicator.receive_json_from(timeout=TIMEOUT)
        await sync_to_async(publish)(study, 2, quietly=True)  # committed elsewhere, not yet broadcast here
        await sync_to_async(publish)(study)  # its broadcast reveals the gap
        assert await received_ids(communicator, 3) == [1, 2, 3]
        assert await communicator.receive_nothing(timeout=0.2)
        await communicator.disconnect()

    async_to_sync(scenario)()


def test_the_relay_delivers_events_another_process_wrote(p, settings):
    settings.EVENTS_RELAY_SECONDS = 0.05
    study = draft_study(p)

    async def scenario():
        communicator = await open_socket(p.dpo, study.pk)
        await communicator.receive_json_from(timeout=TIMEOUT)
        await sync_to_async(publish)(study, 3, quietly=True)
        assert await received_ids(communicator, 3) == [1, 2, 3]
        await communicator.disconnect()

    async_to_sync(scenario)()


def test_it_refuses_a_malformed_last_id(p):
    study = draft_study(p)

    async def scenario():
        communicator = await open_socket(p.pi, study.pk, "?after=yesterday")
        closed = await communicator.receive_output(timeout=TIMEOUT)
        assert closed == {"type": "websocket.close", "code": CLOSE_BAD_REQUEST}

    async_to_sync(scenario)()


def test_a_viewer_who_loses_access_is_disconnected_with_4403(p, monkeypatch):
    monkeypatch.setattr(consumers, "ACCESS_RECHECK_SECONDS", 0)
    study = active_study(p)

    async def scenario():
        communicator = await open_socket(p.site_a_admin, study.pk)
        await communicator.receive_json_from(timeout=TIMEOUT)
        await sync_to_async(site_admin_remove)(actor=p.admin, site=p.site_a, user=p.site_a_admin)
        await sync_to_async(publish)(study)  # the next event makes the consumer ask again
        messages = [await communicator.receive_output(timeout=TIMEOUT) for _ in range(2)]
        assert messages[-1] == {"type": "websocket.close", "code": CLOSE_FORBIDDEN}

    async_to_sync(scenario)()


def test_a_process_subscribes_once_per_study_however_many_dashboards_are_open(p):
    study = draft_study(p)
    layer = get_channel_layer()

    async def scenario():
        viewers = [await open_socket(user, study.pk) for user in (p.pi, p.dpo, p.auditor)]
        for communicator in viewers:
            await communicator.receive_json_from(timeout=TIMEOUT)
        assert len(layer.groups[events.group_name(study.pk)]) == 1
        await sync_to_async(publish)(study)
        for communicator in viewers:
            assert await received_ids(communicator, 1) == [1]
            await communicator.disconnect()
        assert events.group_name(study.pk) not in layer.groups  # the last one out leaves the group

    async_to_sync(scenario)()
