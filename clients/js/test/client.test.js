// The RealtimeClient's API without a network (Node 20 has no WebSocket or
// EventSource; the browser tests in tests/browser drive it against a real system).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as rtstream from "../src/rtstream.js";

const { RealtimeClient } = rtstream;

test("every name the declarations export exists at run time, and no other", () => {
  const declared = new Set();
  for (const file of ["rtstream.d.ts", "rtstream-logic.d.ts"]) {
    const text = readFileSync(new URL(`../src/${file}`, import.meta.url), "utf8");
    for (const m of text.matchAll(/^export declare (?:function|class|const) (\w+)/gm)) declared.add(m[1]);
  }
  assert.deepEqual(new Set(Object.keys(rtstream)), declared);
});

test("options are checked", () => {
  assert.throws(() => new RealtimeClient({ token: "t" }), /wsUrl, sseUrl or both/);
  assert.throws(() => new RealtimeClient({ wsUrl: "ws://x" }), /token or getToken/);
  assert.throws(() => new RealtimeClient({ wsUrl: "ws://x", token: "t", transport: "pigeon" }), /auto, ws or sse/);
  assert.throws(() => new RealtimeClient({ wsUrl: "ws://x", token: "t", since: "yesterday" }), TypeError);
  assert.equal(new RealtimeClient({ sseUrl: "http://x/events", token: "t" }).chooser.mode, "sse");
  assert.equal(new RealtimeClient({ wsUrl: "ws://x", token: "t" }).chooser.mode, "ws");
});

test("topics: default everything, [] none until subscribe(), run-time changes", () => {
  assert.deepEqual([...new RealtimeClient({ wsUrl: "ws://x", token: "t" }).wanted.keys()], ["*"]);
  const client = new RealtimeClient({ wsUrl: "ws://x", sseUrl: "http://x/events", token: "t", topics: [] });
  assert.equal(client.wanted.size, 0);
  client.subscribe("transactions.new", { filters: { minAmount: 10 } }).subscribe("sync.completed");
  assert.deepEqual(Object.fromEntries(client.wanted), { "transactions.new": { minAmount: 10 }, "sync.completed": null });
  client.unsubscribe("transactions.new");
  assert.deepEqual([...client.wanted.keys()], ["sync.completed"]);
  assert.throws(() => client.subscribe(""), TypeError);
  assert.equal(client.state.status, "idle");
  assert.equal(client.presenceUrl, "http://x/presence");
});

test("a handler per topic, '*' for all, off() and the returned remover", () => {
  const client = new RealtimeClient({ wsUrl: "ws://x", token: "t", topics: ["transactions.new", "sync.completed"] });
  const got = [];
  const remove = client.on("transactions.new", (e) => got.push(`tx ${e.id}`));
  const all = (e) => got.push(`* ${e.id}`);
  client.on("*", all);
  const session = { since: null, resumed: false, startedMs: 0 };
  client._deliver({ type: "event", topic: "transactions.new", id: "5-0", data: {} }, "ws", session);
  client._deliver({ type: "event", topic: "sync.completed", id: "6-0", data: {} }, "ws", session);
  client._deliver({ type: "event", topic: "sync.completed", id: "6-0", data: {} }, "ws", session); // repeat: dropped
  client._deliver({ type: "event", topic: "balance.updated", id: "7-0", data: {} }, "ws", session); // not subscribed
  remove();
  client.off("*", all);
  client._deliver({ type: "event", topic: "transactions.new", id: "8-0", data: {} }, "ws", session);
  assert.deepEqual(got, ["tx 5-0", "* 5-0", "* 6-0"]);
  assert.equal(client.lastEventId, "8-0");
});

test("topics with different filters are filtered per topic on the client", () => {
  const client = new RealtimeClient({ wsUrl: "ws://x", token: "t", topics: [] });
  client.subscribe("transactions.new", { filters: { minAmount: 50 } }).subscribe("balance.updated");
  const got = [];
  client.on("*", (e) => got.push(e.id));
  const session = { since: null, resumed: false, startedMs: 0 };
  client._deliver({ type: "event", topic: "transactions.new", id: "1-0", data: { amount: 10 } }, "ws", session);
  client._deliver({ type: "event", topic: "transactions.new", id: "2-0", data: { amount: -60 } }, "ws", session);
  client._deliver({ type: "event", topic: "balance.updated", id: "3-0", data: { change: 1 } }, "ws", session);
  assert.deepEqual(got, ["2-0", "3-0"]);
});

test("replay_gap and other server errors become their own events", () => {
  const client = new RealtimeClient({ wsUrl: "ws://x", token: "t" });
  const seen = [];
  client.addEventListener("replaygap", (e) => seen.push(["gap", /** @type {CustomEvent} */ (e).detail.since]));
  client.addEventListener("servererror", (e) => seen.push(["err", /** @type {CustomEvent} */ (e).detail.code]));
  const session = { since: "1-0", resumed: true, startedMs: 0 };
  client._deliver({ type: "error", code: "replay_gap", message: "gone" }, "sse", session);
  client._deliver({ type: "error", code: "rate_limited", message: "slow" }, "ws", session);
  assert.deepEqual(seen, [["gap", "1-0"], ["err", "rate_limited"]]);
});

test("state names the connection, fallback-sse while open on SSE in auto mode", () => {
  const client = new RealtimeClient({ wsUrl: "ws://x", sseUrl: "http://x/events", token: "t" });
  const states = [];
  client.addEventListener("state", (e) => states.push(/** @type {CustomEvent} */ (e).detail.connection));
  client._setState({ status: "connecting", transport: "ws", fallback: false });
  client._setState({ status: "open", transport: "sse", fallback: true });
  client._setState({ status: "reconnecting" });
  client._setState({ status: "open", transport: "ws", fallback: false });
  client._setState({ status: "closed" });
  assert.deepEqual(states, ["connecting", "fallback-sse", "reconnecting", "open", "closed"]);
});
