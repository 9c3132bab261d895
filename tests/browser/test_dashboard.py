"""The dashboard in real headless Chromium: a published transaction shows up;
with the WebSocket blocked it falls back to SSE; across a server outage it
reconnects and shows the events published meanwhile exactly once."""

import time

import pytest

from system_thread import fresh_entity

pytestmark = pytest.mark.browser


def wait_until(browser, script, timeout=10.0, message=""):
    """Poll a JS expression until it is truthy; fail with the page state if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.execute_script(f"return ({script});")
        if value:
            return value
        time.sleep(0.05)
    state = browser.execute_script("return window.rtstreamDashboard && window.rtstreamDashboard.client.state")
    logs = [entry["message"] for entry in browser.get_log("browser")][-10:]
    raise AssertionError(f"timed out waiting for {message or script}; client state {state}; console {logs}")


def tx_ids(browser):
    return browser.execute_script("return [...document.querySelectorAll('#tx-list tr[data-tx]')].map(r => r.dataset.tx)")


def open_dashboard(browser, system, entity, **params):
    query = "&".join(f"{k}={v}" for k, v in {"token": system.token(entity, user_id="alice"), "retryCap": 1000, **params}.items())
    browser.get(f"{system.dashboard_url}?{query}")
    wait_until(browser, "document.querySelector('#conn').dataset.status === 'open'", message="connection open")


def test_dashboard_shows_a_published_transaction(local_system, browser, screenshot):
    entity = fresh_entity("dash")
    open_dashboard(browser, local_system, entity)
    assert browser.execute_script("return document.querySelector('#conn').dataset.transport") == "ws"
    # the token's user and entity are shown, and the token left the address bar
    assert "alice" in browser.find_element("id", "who").text and entity in browser.find_element("id", "who").text
    assert "token=" not in browser.current_url

    local_system.transaction(entity, 1, amount=-42.5, merchant="Blue Bottle Coffee")
    local_system.publish(entity, "balance.updated", {"accountId": "acc-checking", "newBalance": 1957.5, "change": -42.5})
    local_system.publish(entity, "agent.action.completed", {"agentId": "categorizer", "action": "categorize_transaction", "result": {"category": "Coffee"}})
    local_system.publish(entity, "sync.completed", {"source": "plaid", "recordsUpdated": 12})
    local_system.publish(entity, "balance.updated", {"accountId": "acc-checking", "newBalance": 1950.0, "change": -7.5})
    wait_until(browser, "document.querySelectorAll('#tx-list tr[data-tx]').length === 1", message="transaction row")
    wait_until(browser, "document.querySelector('#syncs [data-source=plaid]')", message="sync row")
    wait_until(browser, "(document.querySelector('[data-account=acc-checking] .amount')||{}).textContent === '1,950.00'", message="balance updated in place")
    row = browser.find_element("css selector", "#tx-list tr[data-tx=t1]").text
    assert "Blue Bottle Coffee" in row and "42.50" in row
    assert len(browser.find_elements("css selector", "[data-account]")) == 1  # one card, changed in place
    assert "categorize_transaction" in browser.find_element("id", "agent-list").text
    assert "Live" in browser.find_element("id", "conn-text").text
    screenshot()


def test_falls_back_to_sse_when_the_websocket_is_blocked(local_system, browser, screenshot):
    entity = fresh_entity("dash")
    local_system.stop_gateway()  # the WebSocket port now refuses connections
    try:
        open_dashboard(browser, local_system, entity)
        assert browser.execute_script("return document.querySelector('#conn').dataset.transport") == "sse"
        assert "Server-Sent Events" in browser.find_element("id", "conn-text").text
        local_system.transaction(entity, 1)
        local_system.transaction(entity, 2)
        wait_until(browser, "document.querySelectorAll('#tx-list tr[data-tx]').length === 2", message="two rows over SSE")
        assert tx_ids(browser) == ["t2", "t1"]  # newest first
        screenshot()
    finally:
        local_system.start_gateway()


def test_reconnects_after_an_outage_and_shows_missed_events_once(local_system, browser, screenshot):
    entity = fresh_entity("dash")
    open_dashboard(browser, local_system, entity)
    local_system.transaction(entity, 1)
    wait_until(browser, "document.querySelectorAll('#tx-list tr[data-tx]').length === 1", message="first row")

    local_system.stop_gateway()
    local_system.stop_sse()
    try:
        wait_until(browser, "document.querySelector('#conn').dataset.status === 'reconnecting'", message="reconnecting")
        assert "Reconnecting" in browser.find_element("id", "conn-text").text
        screenshot("outage")
        for n in (2, 3, 4):
            local_system.transaction(entity, n)
    finally:
        local_system.start_gateway()
        local_system.start_sse()

    wait_until(browser, "document.querySelectorAll('#tx-list tr[data-tx]').length >= 4", timeout=15, message="missed rows")
    assert browser.find_element("id", "replayed-count").text == "3"
    local_system.transaction(entity, 5)
    wait_until(browser, "document.querySelectorAll('#tx-list tr[data-tx]').length >= 5", message="live row after reconnect")
    time.sleep(0.3)  # a duplicate would arrive right behind
    assert tx_ids(browser) == ["t5", "t4", "t3", "t2", "t1"]
    assert int(browser.find_element("id", "reconnect-count").text) >= 1
    # whichever transport came back first, it ends on the WebSocket again, still without duplicates
    wait_until(browser, "document.querySelector('#conn').dataset.status === 'open' && document.querySelector('#conn').dataset.transport === 'ws'", message="back on the WebSocket")
    local_system.transaction(entity, 6)
    wait_until(browser, "document.querySelectorAll('#tx-list tr[data-tx]').length >= 6", message="live row over the WebSocket")
    assert tx_ids(browser) == ["t6", "t5", "t4", "t3", "t2", "t1"]
    screenshot()


def test_dashboard_gets_events_when_the_push_path_stalls(local_system, browser, screenshot):
    """The fan-out worker stops under an open WebSocket: pongs report newer ids
    than the page has, so it falls back to SSE and shows the events, once."""
    entity = fresh_entity("dash")
    open_dashboard(browser, local_system, entity, pingMs=400)
    assert browser.execute_script("return document.querySelector('#conn').dataset.transport") == "ws"
    local_system.transaction(entity, 1)
    wait_until(browser, "document.querySelectorAll('#tx-list tr[data-tx]').length === 1", message="first row")
    local_system.stop_worker()
    try:
        local_system.transaction(entity, 2)
        local_system.transaction(entity, 3)
        wait_until(browser, "document.querySelectorAll('#tx-list tr[data-tx]').length === 3", timeout=15, message="rows while the worker is down")
        assert browser.execute_script("return document.querySelector('#conn').dataset.transport") == "sse"
        assert "fallback" in browser.find_element("id", "conn-text").text
        screenshot("stalled")
    finally:
        local_system.start_worker()
    local_system.transaction(entity, 4)
    wait_until(browser, "document.querySelectorAll('#tx-list tr[data-tx]').length >= 4", message="row after the worker is back")
    time.sleep(0.3)
    assert tx_ids(browser) == ["t4", "t3", "t2", "t1"]


def publish_a_morning(system, entity) -> int:
    """Events of every topic, published before any page is open; returns how many."""
    for n, (amount, merchant, category) in enumerate(
        [(-4.8, "Blue Bottle Coffee", "Coffee"), (-62.35, "Whole Foods Market", "Groceries"), (2450.0, "Acme Corp Payroll", "Income"),
         (-18.9, "Lyft", "Transport"), (-129.99, "REI Co-op", "Outdoor")],
        start=1,
    ):
        system.publish(entity, "transactions.new", {"transactionId": f"t{n}", "amount": amount, "merchant": merchant, "category": category})
    system.publish(entity, "balance.updated", {"accountId": "acc-checking", "newBalance": 3120.4, "change": -4.8})
    system.publish(entity, "balance.updated", {"accountId": "acc-savings", "newBalance": 15200.0, "change": 200.0})
    system.publish(entity, "balance.updated", {"accountId": "acc-checking", "newBalance": 3233.96, "change": 113.56})
    system.publish(entity, "agent.action.completed", {"agentId": "categorizer", "action": "categorize_transaction", "result": {"message": "REI Co-op → Outdoor"}})
    system.publish(entity, "agent.action.completed", {"agentId": "budget-coach", "action": "check_budget", "result": {"message": "Groceries at 64% of the monthly budget"}})
    system.publish(entity, "sync.completed", {"source": "plaid", "recordsUpdated": 12})
    system.publish(entity, "sync.completed", {"source": "stripe", "recordsUpdated": 3})
    return 12


def assert_fresh_page_shows_the_morning(browser, total: int) -> None:
    # nothing is published after the page opened: all of this comes from the rewind
    wait_until(browser, f"document.querySelector('#event-count').textContent === '{total}'", message="rewound events")
    assert tx_ids(browser) == ["t5", "t4", "t3", "t2", "t1"]  # newest first
    assert browser.execute_script("return document.querySelector('[data-account=acc-checking] .amount').textContent") == "3,233.96"
    assert len(browser.find_elements("css selector", "[data-account]")) == 2
    assert {e.get_attribute("data-source") for e in browser.find_elements("css selector", "#syncs [data-source]")} == {"plaid", "stripe"}
    agents = browser.find_element("id", "agent-list").text
    assert "check_budget" in agents and "categorize_transaction" in agents
    assert browser.find_elements("css selector", ".empty") == []  # no "waiting" placeholder left
    assert browser.find_element("id", "replayed-count").text == "0"  # a fresh start, not a resume
    time.sleep(0.3)
    assert browser.find_element("id", "event-count").text == str(total)  # and nothing twice


def test_a_freshly_opened_dashboard_shows_the_latest_events_at_once(local_system, browser, screenshot):
    entity = fresh_entity("fresh")
    total = publish_a_morning(local_system, entity)
    open_dashboard(browser, local_system, entity)
    assert browser.execute_script("return document.querySelector('#conn').dataset.transport") == "ws"
    assert_fresh_page_shows_the_morning(browser, total)
    screenshot()  # docs/dashboard-fresh.png is this picture
    # live events follow the rewound ones
    local_system.transaction(entity, 6, amount=-3.5, merchant="Corner Bakery")
    wait_until(browser, "document.querySelectorAll('#tx-list tr[data-tx]').length === 6", message="live row after the rewind")
    assert tx_ids(browser) == ["t6", "t5", "t4", "t3", "t2", "t1"]


def test_a_freshly_opened_dashboard_on_sse_fallback_shows_the_latest_events_at_once(local_system, browser, screenshot):
    entity = fresh_entity("fresh")
    total = publish_a_morning(local_system, entity)
    local_system.stop_gateway()  # the WebSocket port now refuses connections
    try:
        open_dashboard(browser, local_system, entity)
        assert browser.execute_script("return document.querySelector('#conn').dataset.transport") == "sse"
        assert_fresh_page_shows_the_morning(browser, total)
        screenshot()
    finally:
        local_system.start_gateway()


def test_rewind_0_opens_an_empty_dashboard(local_system, browser):
    entity = fresh_entity("fresh")
    publish_a_morning(local_system, entity)
    open_dashboard(browser, local_system, entity, rewind=0)
    time.sleep(0.5)
    assert tx_ids(browser) == [] and browser.find_element("id", "event-count").text == "0"
