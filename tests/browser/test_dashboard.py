"""The dashboard in headless Chromium: what a person sees and does (ENVIRONMENT.md section 7)."""

from __future__ import annotations

import pytest
import pytest_twisted
from selenium.webdriver.common.by import By

from runtara.model import Event, EventType, PendingSignal, SignalType
from tests.e2e.support import persistence_of, unique

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

TENANT = "shop"


async def running(core, instance_id=None, tenant=TENANT):
    instance_id = instance_id or unique("order")
    await persistence_of(core).register_instance(instance_id, tenant, None)
    return instance_id


async def report(core, instance_id, kind, payload, tenant=TENANT):
    await persistence_of(core).record_event(instance_id, tenant, Event(kind, payload))


def rows(driver):
    return [
        row.get_attribute("data-instance")
        for row in driver.find_elements(By.CSS_SELECTOR, "table.instances tbody tr")
    ]


@pytest_twisted.ensureDeferred
async def test_the_list_shows_instances_with_counts_and_filters_by_status(browser, core):
    done = await running(core)
    await persistence_of(core).save_checkpoint(done, TENANT, "charged", b"{}")
    await report(core, done, EventType.COMPLETED, b'{"receipt": 41}')
    failed = await running(core)
    await report(core, failed, EventType.FAILED, b"card declined")
    busy = await running(core)
    await persistence_of(core).create_instance(unique("order"), "billing")

    await browser.open()
    await browser.wait_for(lambda driver: len(rows(driver)) == 4, "four instances")
    assert (await browser.text_of('[data-status="all"]')).split() == ["all", "4"]
    assert (await browser.text_of('[data-status="failed"]')).split() == ["failed", "1"]
    await browser.screenshot("instances")

    await browser.click('[data-status="failed"]')
    await browser.wait_for(lambda driver: rows(driver) == [failed], "only the failed instance")
    await browser.type_into("#filter-tenant", "billing")
    await browser.click(".filters button")
    await browser.wait_for(lambda driver: rows(driver) == [], "no failed billing instance")

    await browser.click('[data-status="all"]')
    await browser.wait_for(lambda driver: len(rows(driver)) == 1, "the billing instance")
    assert busy not in await browser.run(rows, browser.driver)


@pytest_twisted.ensureDeferred
async def test_a_failed_instance_shows_why_it_failed(browser, core):
    instance_id = await running(core)
    await persistence_of(core).save_checkpoint(
        instance_id, TENANT, "reserve-stock", b'{"sku": "TEA-42"}'
    )
    await report(core, instance_id, EventType.FAILED, b"payment service answered 503 twice")

    await browser.open()
    await browser.click(f'tr[data-instance="{instance_id}"] a')

    error = await browser.text_of(".panel.error pre")
    assert error == "payment service answered 503 twice"
    assert await browser.text_of(".heading .badge") == "failed"
    timeline = await browser.text_of(".timeline ol", contains="failed")
    assert "reserve-stock" in timeline and "started" in timeline
    await browser.click(".kind-checkpoint button.link")
    state = await browser.text_of(".timeline pre.state", contains="sku")
    assert state == '{\n  "sku": "TEA-42"\n}'
    facts = await browser.text_of("dl.facts")
    assert "Current checkpoint\nreserve-stock" in facts and "Events\n2" in facts
    for button in ("#signal-cancel", "#signal-pause", "#signal-resume"):
        assert not (await browser.element(button)).is_enabled()
    await browser.screenshot("instance-failed")


@pytest_twisted.ensureDeferred
async def test_the_page_follows_the_instance_without_reloading(browser, core):
    instance_id = await running(core)
    await browser.open(f"#/instances/{instance_id}")
    await browser.text_of(".heading .badge", contains="running")
    await browser.script("window.notReloaded = true;")

    await persistence_of(core).save_checkpoint(instance_id, TENANT, "step-1", b"")
    await report(core, instance_id, EventType.COMPLETED, b'{"total": 12.5}')

    output = await browser.text_of(".panel.output pre")
    assert output == '{\n  "total": 12.5\n}'
    assert await browser.text_of(".heading .badge") == "completed"
    assert await browser.script("return window.notReloaded;") is True


@pytest_twisted.ensureDeferred
async def test_pause_and_resume_from_the_instance_page(browser, core):
    instance_id = await running(core)
    persistence = persistence_of(core)
    await browser.open(f"#/instances/{instance_id}")

    await browser.click("#signal-pause")
    assert "Pause sent." in await browser.text_of(".flash")
    assert (await persistence.get_instance(instance_id)).pending_signal == PendingSignal(
        SignalType.PAUSE, b""
    )
    await persistence.acknowledge_signal(instance_id, TENANT, SignalType.PAUSE, True)
    await browser.text_of(".heading .badge", contains="suspended")
    await browser.screenshot("instance-paused")

    await browser.click("#signal-resume")
    assert "Resume sent." in await browser.text_of(".flash")
    await persistence.acknowledge_signal(instance_id, TENANT, SignalType.RESUME, True)
    await browser.text_of(".heading .badge", contains="running")


@pytest_twisted.ensureDeferred
async def test_a_custom_signal_from_the_form_waits_at_its_checkpoint(browser, core):
    instance_id = await running(core)
    await browser.open(f"#/instances/{instance_id}")

    await browser.type_into("#signal-checkpoint", "manager-approval")
    await browser.type_into("#signal-payload", '{"approved": true}')
    await browser.click(".custom-signal button")

    flash = await browser.text_of(".flash")
    assert flash == "Custom signal sent for checkpoint manager-approval."
    reached = await persistence_of(core).save_checkpoint(
        instance_id, TENANT, "manager-approval", b""
    )
    assert reached.custom_signal.payload == b'{"approved": true}'


@pytest_twisted.ensureDeferred
async def test_a_refused_signal_says_why(browser, core):
    instance_id = await running(core)
    await browser.open(f"#/instances/{instance_id}")
    await browser.text_of(".heading .badge", contains="running")
    await report(core, instance_id, EventType.COMPLETED, b"")

    await browser.type_into("#signal-checkpoint", "late")
    await browser.click(".custom-signal button")

    assert "expected 'non-terminal', got 'completed'" in await browser.text_of(".flash")


MARKUP = '<img src=x onerror="window.injected=1"><script>window.injected=2</script>'


@pytest_twisted.ensureDeferred
async def test_markup_in_an_id_or_an_error_shows_as_text(browser, core):
    instance_id = await running(core, f"evil{MARKUP}")
    await report(core, instance_id, EventType.FAILED, MARKUP.encode())

    await browser.open()
    link = await browser.text_of("table.instances tbody td a", contains="evil")
    assert link == f"evil{MARKUP}"
    await browser.click("table.instances tbody td a")
    assert await browser.text_of(".panel.error pre") == MARKUP
    assert await browser.text_of(".heading h1") == instance_id

    assert await browser.script("return window.injected === undefined;") is True
    images = await browser.run(browser.driver.find_elements, By.CSS_SELECTOR, "#view img")
    assert images == []


@pytest_twisted.ensureDeferred
async def test_an_unknown_instance_says_so(browser):
    await browser.open("#/instances/no-such-order")

    assert await browser.text_of(".notice.error") == "Instance 'no-such-order' not found"


@pytest_twisted.ensureDeferred
async def test_with_a_token_the_browser_signs_in_first(browser, servers, driver):
    guarded = await servers.start(admin_token="open-sesame")
    await browser.run(driver.get, f"{guarded.http_url}/")

    await browser.text_of("form h1", contains="runtara")
    await browser.screenshot("sign-in")
    await browser.type_into("#token", "open-sesame")
    await browser.click("form button")

    await browser.text_of("main h1", contains="Instances")
