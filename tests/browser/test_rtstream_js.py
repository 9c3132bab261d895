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
