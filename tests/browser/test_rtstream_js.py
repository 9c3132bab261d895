"""The browser module's own rules, run in Chromium: numeric id order, full-jitter
backoff, one ordered subscription, token claims for display."""

import pytest

pytestmark = pytest.mark.browser


def run_module(browser, system, body):
    from urllib.parse import urljoin

    browser.get(urljoin(system.dashboard_url, "/static/rtstream.js"))  # same origin as the module
    script = (
        "const done = arguments[arguments.length - 1];"
        "import('/static/rtstream.js').then((m) => { " + body + " }).catch((e) => done({error: String(e)}));"
    )
    browser.set_script_timeout(10)
    result = browser.execute_async_script(script)
    assert not (isinstance(result, dict) and "error" in result), result
    return result


def test_module_rules(local_system, browser):
    result = run_module(
        browser,
        local_system,
        """
        const claims = m.tokenClaims("x." + btoa(unescape(encodeURIComponent(JSON.stringify({sub: "zoë", entity_id: "e1"})))).replace(/=+$/, "").replace(/\\+/g, "-").replace(/\\//g, "_") + ".y");
        done({
          order: [m.compareIds("9-0", "10-0"), m.compareIds("10-2", "10-10"), m.compareIds("5-1", "5-1")],
          key: m.eventIdKey("bad"),
          backoff: [m.backoffDelay(0, 500, 30000, () => 0.999) < 500, m.backoffDelay(3, 500, 30000, () => 1), m.backoffDelay(40, 500, 30000, () => 1)],
          frame: m.subscribeFrame(["transactions.new", "balance.updated"], {minAmount: 5}, "17-0"),
          single: m.subscribeFrame(["sync.completed"], null, null),
          claims,
        });
        """,
    )
    assert result["order"] == [-1, -1, 0]
    assert result["key"] is None
    assert result["backoff"] == [True, 4000, 30000]
    assert result["frame"] == {"type": "subscribe", "topic": "*", "filters": {"minAmount": 5, "types": ["transactions.new", "balance.updated"]}, "since": "17-0"}
    assert result["single"] == {"type": "subscribe", "topic": "sync.completed"}
    assert result["claims"] == {"sub": "zoë", "entity_id": "e1"}


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_replay_gap_reaches_the_page(local_system, browser, transport):
    import json

    from system_thread import fresh_entity

    entity = fresh_entity("gap")  # no history: a cursor into it is older than what is kept
    options = {"wsUrl": local_system.ws_url, "sseUrl": local_system.sse_url, "token": local_system.token(entity), "transport": transport, "since": "1000-0"}
    result = run_module(
        browser,
        local_system,
        f"""
        const client = new m.RealtimeClient({json.dumps(options)});
        const timer = setTimeout(() => {{ client.stop(); done({{error: "no replaygap; state " + JSON.stringify(client.state)}}); }}, 8000);
        client.addEventListener("replaygap", (e) => {{ clearTimeout(timer); const s = client.state; client.stop(); done({{gap: e.detail, transport: s.transport, status: s.status}}); }});
        client.start();
        """,
    )
    assert result["gap"]["since"] == "1000-0" and result["gap"]["transport"] == transport
    assert result["status"] == "open" and result["transport"] == transport


def wait_js(browser, expression, timeout=10.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.execute_script(f"return ({expression});")
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {expression}; state {browser.execute_script('return window.rt && window.rt.state')}; got {browser.execute_script('return window.got')}")


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_run_time_subscriptions_handlers_and_presence(local_system, browser, transport):
    """subscribe()/unsubscribe() while connected, a handler per topic, presence()."""
    import json

    from system_thread import fresh_entity

    entity = fresh_entity("rt")
    options = {"wsUrl": local_system.ws_url, "sseUrl": local_system.sse_url, "token": local_system.token(entity, user_id="zoe"), "transport": transport, "topics": [], "backoffCapMs": 1000}
    run_module(
        browser,
        local_system,
        f"""
        const client = new m.RealtimeClient({json.dumps(options)});
        window.rt = client; window.got = [];
        client.on("transactions.new", (e) => window.got.push("tx:" + e.data.transactionId));
        client.on("balance.updated", (e) => window.got.push("bal:" + e.data.accountId));
        client.subscribe("transactions.new");
        client.addEventListener("state", (e) => {{ if (e.detail.status === "open") done(true); }});
        client.start();
        """,
    )
    local_system.publish(entity, "balance.updated", {"accountId": "ignored", "newBalance": 1, "change": 1})
    local_system.transaction(entity, 1)
    wait_js(browser, "window.got.includes('tx:t1')")
    assert browser.execute_script("return window.got") == ["tx:t1"]  # balance was not subscribed

    browser.execute_script("window.rt.subscribe('balance.updated')")
    wait_js(browser, "window.rt.state.status === 'open'")
    if transport == "ws":
        import time

        time.sleep(0.5)  # the in-place subscribe is one frame on the open socket; let the server register it
    local_system.publish(entity, "balance.updated", {"accountId": "acc-1", "newBalance": 2, "change": 1})
    wait_js(browser, "window.got.includes('bal:acc-1')")

    browser.execute_script("window.rt.unsubscribe('transactions.new')")
    wait_js(browser, "window.rt.state.status === 'open'")
    if transport == "ws":
        import time

        time.sleep(0.5)
    local_system.transaction(entity, 2)
    local_system.publish(entity, "balance.updated", {"accountId": "acc-2", "newBalance": 3, "change": 1})
    wait_js(browser, "window.got.includes('bal:acc-2')")
    assert browser.execute_script("return window.got") == ["tx:t1", "bal:acc-1", "bal:acc-2"]  # t2: unsubscribed

    browser.set_script_timeout(10)
    users = browser.execute_async_script("const done = arguments[arguments.length - 1]; window.rt.presence().then(done, (e) => done({error: String(e)}));")
    assert isinstance(users, list), users
    assert "zoe" in [u.get("userId") for u in users]
    browser.execute_script("window.rt.stop()")


def test_recovered_signal_after_a_resume(local_system, browser):
    """After an outage the client resumes from its cursor and says so (`recovered`),
    and the event it missed arrives marked replayed."""
    import json

    from system_thread import fresh_entity

    entity = fresh_entity("rec")
    options = {"wsUrl": local_system.ws_url, "token": local_system.token(entity), "transport": "ws", "backoffBaseMs": 100, "backoffCapMs": 500}
    run_module(
        browser,
        local_system,
        f"""
        const client = new m.RealtimeClient({json.dumps(options)});
        window.rt = client; window.got = []; window.recovered = [];
        client.on("*", (e) => window.got.push([e.data.transactionId, e.replayed]));
        client.addEventListener("recovered", (e) => window.recovered.push(e.detail));
        client.addEventListener("state", (e) => {{ if (e.detail.status === "open") done(true); }});
        client.start();
        """,
    )
    first = local_system.transaction(entity, 1)
    wait_js(browser, "window.got.length === 1")
    local_system.stop_gateway()
    try:
        wait_js(browser, "window.rt.state.status === 'reconnecting'")
        local_system.transaction(entity, 2)
    finally:
        local_system.start_gateway()
    wait_js(browser, "window.got.length === 2", timeout=15)
    assert browser.execute_script("return window.got") == [["t1", False], ["t2", True]]
    assert browser.execute_script("return window.recovered") == [{"since": first, "transport": "ws"}]
    browser.execute_script("window.rt.stop()")
