"""The management HTTP API (ENVIRONMENT.md section 6) over real HTTP, on both engines."""

from __future__ import annotations

import pytest
import pytest_twisted

from runtara.model import Event, EventType, PendingSignal, SignalType, Status
from tests.e2e.support import persistence_of, unique
from tests.web.support import Api, segment

pytestmark = pytest.mark.e2e

TENANT = "tenant-a"


async def running(core, instance_id=None, tenant=TENANT):
    instance_id = instance_id or unique()
    await persistence_of(core).register_instance(instance_id, tenant, None)
    return instance_id


async def finished(core, status: Status, instance_id=None, tenant=TENANT, payload=b""):
    instance_id = await running(core, instance_id, tenant)
    kind = {Status.COMPLETED: EventType.COMPLETED, Status.FAILED: EventType.FAILED}[status]
    await persistence_of(core).record_event(instance_id, tenant, Event(kind, payload))
    return instance_id


async def facts(core, instance_id):
    """What an operator would look at to see whether a request wrote anything."""
    details = await persistence_of(core).get_instance(instance_id)
    signals = await persistence_of(core).poll_signals(instance_id, details.instance.tenant_id, None)
    return details, signals


# -- health, errors, routing --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_healthz_says_the_database_answers(api):
    response = await api.get("/healthz")

    assert response.status == 200
    assert response.json() == {"status": "ok", "database": "reachable"}


@pytest_twisted.ensureDeferred
async def test_healthz_is_a_503_when_the_database_does_not_answer(api, core):
    await persistence_of(core).close()

    response = await api.get("/healthz")

    assert response.status == 503
    assert response.json() == {"status": "unavailable", "database": "unreachable"}


@pytest_twisted.ensureDeferred
async def test_an_unknown_path_is_a_json_404(api):
    response = await api.get("/api/v1/nothing-here")

    assert response.status == 404
    assert response.error["code"] == "not_found"


@pytest_twisted.ensureDeferred
async def test_a_method_an_endpoint_does_not_take_is_a_405_naming_the_allowed_ones(api, core):
    instance_id = await running(core)

    deleted = await api.request("DELETE", f"/api/v1/instances/{instance_id}")
    fetched = await api.get(f"/api/v1/instances/{instance_id}/signals")

    assert deleted.status == 405 and deleted.headers["allow"] == "GET, HEAD"
    assert fetched.status == 405 and fetched.headers["allow"] == "POST"
    assert fetched.error["code"] == "method_not_allowed"


@pytest_twisted.ensureDeferred
async def test_head_answers_like_get_without_a_body(api, core):
    instance_id = await running(core)

    head = await api.request("HEAD", f"/api/v1/instances/{instance_id}")

    assert head.status == 200 and head.body == b""
    assert head.headers["content-type"] == "application/json; charset=utf-8"


@pytest_twisted.ensureDeferred
async def test_the_openapi_document_describes_every_endpoint(api):
    response = await api.get("/api/v1/openapi.json")

    document = response.json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) >= {
        "/healthz",
        "/metrics",
        "/api/v1/instances",
        "/api/v1/instances/{id}",
        "/api/v1/instances/{id}/checkpoints",
        "/api/v1/instances/{id}/checkpoints/{cp}",
        "/api/v1/instances/{id}/events",
        "/api/v1/instances/{id}/signals",
    }


# -- instances ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_instance_shows_every_field(api, core):
    instance_id = await finished(core, Status.COMPLETED, payload=b'{"total": 3}')
    response = await api.get(f"/api/v1/instances/{instance_id}")

    assert response.status == 200
    shown = response.json()
    assert shown["instance_id"] == instance_id
    assert shown["tenant_id"] == TENANT
    assert shown["status"] == "completed"
    assert shown["output"] == '{"total": 3}'
    assert shown["error"] is None
    assert shown["finished_at"].endswith("Z") and shown["finished_at_ms"] > 0
    assert shown["event_count"] == 2 and shown["checkpoint_count"] == 0
    assert shown["pending_signal"] is None


@pytest_twisted.ensureDeferred
async def test_binary_output_travels_as_base64(api, core):
    instance_id = await finished(core, Status.COMPLETED, payload=b"\xff\x00")

    shown = (await api.get(f"/api/v1/instances/{instance_id}")).json()

    assert shown["output"] == {"base64": "/wA="}


@pytest_twisted.ensureDeferred
async def test_an_id_with_a_slash_and_non_ascii_text_is_one_path_segment(api, core):
    instance_id = await running(core, f"orders/{unique()}/\u00e9t\u00e9")

    response = await api.get(f"/api/v1/instances/{segment(instance_id)}")

    assert response.status == 200 and response.json()["instance_id"] == instance_id


@pytest_twisted.ensureDeferred
async def test_an_unknown_instance_is_a_404(api):
    for path in ("", "/checkpoints", "/checkpoints/cp-1", "/events"):
        response = await api.get(f"/api/v1/instances/nobody{path}")

        assert response.status == 404, path
        assert response.error == {
            "code": "instance_not_found",
            "message": "Instance 'nobody' not found",
        }


@pytest_twisted.ensureDeferred
async def test_an_id_that_cannot_exist_is_a_400(api):
    too_long = "x" * 257

    response = await api.get(f"/api/v1/instances/{too_long}")

    assert response.status == 400
    assert response.error["code"] == "invalid_request"
    assert "1 to 256 bytes" in response.error["message"]


@pytest_twisted.ensureDeferred
async def test_the_list_is_newest_first_with_counts_and_filters(api, core):
    tenant = unique("tenant")
    first = await running(core, tenant=tenant)
    done = await finished(core, Status.COMPLETED, tenant=tenant)
    failed = await finished(core, Status.FAILED, tenant=tenant, payload=b"boom")
    await running(core, tenant=unique("other"))

    everything = (await api.get("/api/v1/instances", tenant=tenant)).json()
    only_failed = (await api.get("/api/v1/instances", tenant=tenant, status="failed")).json()

    listed = [row["instance_id"] for row in everything["instances"]]
    assert sorted(listed) == sorted([first, done, failed])
    assert everything["total"] == 3
    assert everything["counts"] == {
        "pending": 0,
        "running": 1,
        "suspended": 0,
        "completed": 1,
        "failed": 1,
        "cancelled": 0,
    }
    assert everything["next_cursor"] is None
    assert [row["instance_id"] for row in only_failed["instances"]] == [failed]
    assert only_failed["instances"][0]["error"] == "boom"
    assert only_failed["total"] == 1 and only_failed["counts"] == everything["counts"]


@pytest_twisted.ensureDeferred
async def test_the_cursor_pages_through_everything_once(api, core):
    tenant = unique("tenant")
    created = [await running(core, tenant=tenant) for _ in range(5)]

    seen: list[str] = []
    pages = 0
    cursor = None
    while True:
        params = {"tenant": tenant, "limit": "2"}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await api.get("/api/v1/instances", **params)).json()
        pages += 1
        seen += [row["instance_id"] for row in page["instances"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        await running(core, tenant=tenant)

    assert pages == 3
    assert sorted(seen) == sorted(created)


@pytest.mark.parametrize(
    ("params", "wrong"),
    [
        ({"status": "sleeping"}, "status must be one of pending, running"),
        ({"limit": "0"}, "limit must be an integer from 1 to 500"),
        ({"limit": "ten"}, "limit must be an integer from 1 to 500"),
        ({"cursor": "not-a-cursor"}, "cursor is not one this server gave"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_list_parameters_are_a_400(api, params, wrong):
    response = await api.get("/api/v1/instances", **params)

    assert response.status == 400
    assert response.error["code"] == "invalid_request"
    assert wrong in response.error["message"]


# -- checkpoints and events ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_checkpoints_are_listed_and_read(api, core):
    instance_id = await running(core)
    persistence = persistence_of(core)
    await persistence.save_checkpoint(instance_id, TENANT, "step-1", b'{"n": 1}')
    await persistence.save_checkpoint(instance_id, TENANT, "step/2", b"\xff\x01")

    listing = (await api.get(f"/api/v1/instances/{instance_id}/checkpoints")).json()
    text = (await api.get(f"/api/v1/instances/{instance_id}/checkpoints/step-1")).json()
    binary = await api.get(f"/api/v1/instances/{instance_id}/checkpoints/{segment('step/2')}")

    assert {row["checkpoint_id"]: row["size_bytes"] for row in listing["checkpoints"]} == {
        "step-1": 8,
        "step/2": 2,
    }
    assert listing["total"] == 2 and listing["next_cursor"] is None
    assert text == {
        "instance_id": instance_id,
        "checkpoint_id": "step-1",
        "size_bytes": 8,
        "state": '{"n": 1}',
    }
    assert binary.json()["state"] == {"base64": "/wE="}


@pytest_twisted.ensureDeferred
async def test_an_unknown_checkpoint_is_a_404(api, core):
    instance_id = await running(core)

    response = await api.get(f"/api/v1/instances/{instance_id}/checkpoints/nope")

    assert response.status == 404
    assert response.error["code"] == "checkpoint_not_found"


@pytest_twisted.ensureDeferred
async def test_checkpoints_page_with_a_cursor(api, core):
    instance_id = await running(core)
    for number in range(3):
        await persistence_of(core).save_checkpoint(instance_id, TENANT, f"cp-{number}", b"")

    first = (await api.get(f"/api/v1/instances/{instance_id}/checkpoints", limit="2")).json()
    rest = (
        await api.get(
            f"/api/v1/instances/{instance_id}/checkpoints", limit="2", cursor=first["next_cursor"]
        )
    ).json()

    ids = [row["checkpoint_id"] for row in first["checkpoints"] + rest["checkpoints"]]
    assert sorted(ids) == ["cp-0", "cp-1", "cp-2"]
    assert rest["next_cursor"] is None


@pytest_twisted.ensureDeferred
async def test_events_are_listed_newest_first_and_filtered(api, core):
    instance_id = await finished(core, Status.FAILED, payload=b"it broke")

    everything = (await api.get(f"/api/v1/instances/{instance_id}/events")).json()
    failures = (await api.get(f"/api/v1/instances/{instance_id}/events", type="failed")).json()
    refused = await api.get(f"/api/v1/instances/{instance_id}/events", type="exploded")

    assert [event["event_type"] for event in everything["events"]] == ["failed", "started"]
    assert everything["total"] == 2
    assert [event["payload"] for event in failures["events"]] == ["it broke"]
    assert refused.status == 400


# -- signals ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cancel", "pause", "resume"])
@pytest_twisted.ensureDeferred
async def test_an_instance_wide_signal_becomes_the_pending_one(api, core, kind):
    instance_id = await running(core)

    response = await api.post(
        f"/api/v1/instances/{instance_id}/signals", {"type": kind, "payload": "by the api"}
    )

    assert response.status == 200
    assert response.json() == {"instance_id": instance_id, "type": kind, "payload": "by the api"}
    details, _ = await facts(core, instance_id)
    assert details.pending_signal == PendingSignal(SignalType(kind), b"by the api")


@pytest_twisted.ensureDeferred
async def test_a_custom_signal_waits_for_its_checkpoint(api, core):
    instance_id = await running(core)

    response = await api.post(
        f"/api/v1/instances/{instance_id}/signals",
        {"checkpoint_id": "approval", "payload": {"base64": "/wA="}},
    )

    assert response.status == 200
    assert response.json()["payload"] == {"base64": "/wA="}
    reached = await persistence_of(core).save_checkpoint(instance_id, TENANT, "approval", b"")
    assert reached.custom_signal.payload == b"\xff\x00"


@pytest.mark.parametrize(
    "document",
    [{"type": "pause"}, {"checkpoint_id": "approval", "payload": "yes"}],
    ids=["instance-wide", "custom"],
)
@pytest.mark.parametrize("terminal", [Status.COMPLETED, Status.FAILED])
@pytest_twisted.ensureDeferred
async def test_a_signal_to_a_terminal_instance_is_a_409_and_writes_nothing(
    api, core, document, terminal
):
    instance_id = await finished(core, terminal)
    before = await facts(core, instance_id)

    response = await api.post(f"/api/v1/instances/{instance_id}/signals", document)

    assert response.status == 409
    assert response.error["code"] == "invalid_instance_state"
    assert await facts(core, instance_id) == before
    assert (await persistence_of(core).poll_signals(instance_id, TENANT, "approval")) == before[1]


@pytest_twisted.ensureDeferred
async def test_a_signal_to_an_unknown_instance_is_a_404(api):
    response = await api.post("/api/v1/instances/nobody/signals", {"type": "cancel"})

    assert response.status == 404
    assert response.error["code"] == "instance_not_found"


@pytest.mark.parametrize(
    ("body", "code", "wrong"),
    [
        (b"{not json", "invalid_json", "the body is not JSON"),
        (b"", "invalid_json", "the body is not JSON"),
        (b'["cancel"]', "invalid_json", "must be a JSON object"),
        (b"\xff", "invalid_json", "the body is not JSON"),
        (b'{"type": "stop"}', "invalid_request", "type must be one of cancel, pause, resume"),
        (b'{"type": "cancel", "urgent": true}', "invalid_request", "unknown field 'urgent'"),
        (b'{"payload": "x"}', "invalid_request", 'the body needs "type"'),
        (b'{"checkpoint_id": 7}', "invalid_request", "checkpoint_id must be a string"),
        (b'{"checkpoint_id": ""}', "invalid_request", "1 to 512 bytes"),
        (b'{"type": "cancel", "payload": 5}', "invalid_request", "payload must be a string"),
        (b'{"type": "cancel", "payload": {"base64": "%"}}', "invalid_request", "not valid base64"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_bad_signal_body_is_a_400_and_writes_nothing(api, core, body, code, wrong):
    instance_id = await running(core)
    before = await facts(core, instance_id)

    response = await api.post(f"/api/v1/instances/{instance_id}/signals", raw=body)

    assert response.status == 400
    assert response.error["code"] == code
    assert wrong in response.error["message"]
    assert await facts(core, instance_id) == before


# -- the admin token ----------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def guarded(servers):
    """A core whose HTTP server asks for the token ``s3cret``."""
    from twisted.internet import reactor

    core = await servers.start(admin_token="s3cret")
    yield core, Api(reactor, core.http_url)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/metrics",
        "/static/dashboard.js",
        "/api/v1/instances",
        "/api/v1/instances/x",
        "/api/v1/openapi.json",
    ],
)
@pytest.mark.parametrize("token", [None, "wrong", "S3CRET", "s3cret2"])
@pytest_twisted.ensureDeferred
async def test_without_the_right_token_every_request_is_a_401(guarded, path, token):
    _, api = guarded

    response = await api.with_token(token).get(path)

    assert response.status == 401
    assert response.error["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == 'Bearer realm="runtara"'


@pytest_twisted.ensureDeferred
async def test_with_the_token_requests_are_served_and_healthz_never_asks(guarded):
    core, api = guarded
    instance_id = await running(core)

    shown = await api.with_token("s3cret").get(f"/api/v1/instances/{instance_id}")
    health = await api.get("/healthz")

    assert shown.status == 200 and shown.json()["instance_id"] == instance_id
    assert health.status == 200


@pytest_twisted.ensureDeferred
async def test_a_signal_without_the_token_is_a_401_and_writes_nothing(guarded):
    core, api = guarded
    instance_id = await running(core)
    before = await facts(core, instance_id)

    refused = await api.post(f"/api/v1/instances/{instance_id}/signals", {"type": "cancel"})
    sent = await api.with_token("s3cret").post(
        f"/api/v1/instances/{instance_id}/signals", {"type": "cancel"}
    )

    assert refused.status == 401
    assert sent.status == 200
    after = await facts(core, instance_id)
    assert before[0].pending_signal is None
    assert after[0].pending_signal == PendingSignal(SignalType.CANCEL, b"")


@pytest_twisted.ensureDeferred
async def test_a_browser_without_a_session_gets_the_sign_in_page_then_a_session(guarded):
    _, api = guarded

    page = await api.request("GET", "/", headers={"Accept": "text/html"})
    wrong = await api.request(
        "POST",
        "/login",
        body=b"token=nope",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    signed_in = await api.request(
        "POST",
        "/login",
        body=b"token=s3cret",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    cookie = signed_in.headers["set-cookie"].split(";")[0]
    dashboard = await api.request("GET", "/", headers={"Cookie": cookie})

    assert page.status == 401 and b'name="token"' in page.body
    assert wrong.status == 401 and b"That is not the admin token." in wrong.body
    assert signed_in.status == 303 and signed_in.headers["location"] == "/"
    assert "HttpOnly" in signed_in.headers["set-cookie"]
    assert "SameSite=Strict" in signed_in.headers["set-cookie"]
    assert "s3cret" not in cookie
    assert dashboard.status == 200 and b"/static/dashboard.js" in dashboard.body


@pytest_twisted.ensureDeferred
async def test_a_state_change_from_another_origin_is_refused(api, core):
    instance_id = await running(core)
    before = await facts(core, instance_id)

    response = await api.request(
        "POST",
        f"/api/v1/instances/{instance_id}/signals",
        body=b'{"type": "cancel"}',
        headers={"Origin": "http://evil.example", "Content-Type": "text/plain"},
    )

    assert response.status == 403
    assert response.error["code"] == "cross_origin"
    assert await facts(core, instance_id) == before


@pytest_twisted.ensureDeferred
async def test_without_a_token_only_local_host_names_are_served(api):
    rebound = await api.request("GET", "/api/v1/instances", headers={"Host": "evil.example"})
    local = await api.request("GET", "/api/v1/instances", headers={"Host": "localhost:8002"})

    assert rebound.status == 403 and rebound.error["code"] == "forbidden_host"
    assert local.status == 200
