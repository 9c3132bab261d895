// Rules of rtstream-logic.js that only the browser package has: run-time
// subscriptions combined into one server subscription, per-topic filtering.
import { test } from "node:test";
import assert from "node:assert/strict";
import { combineSubscriptions, compareIds, eventIdKey, matchesFilters } from "../src/rtstream-logic.js";

test("ids compare numerically and reject what the server rejects", () => {
  assert.equal(compareIds("9-0", "10-0"), -1);
  assert.equal(compareIds("10-10", "10-2"), 1);
  assert.equal(compareIds("5-1", "5-1"), 0);
  assert.equal(eventIdKey("1-0\n"), null);
  assert.equal(eventIdKey("18446744073709551616-0"), null);
  assert.throws(() => compareIds("bad", "1-0"), TypeError);
});

test("same filters go to the server; different ones are filtered on the client", () => {
  const same = combineSubscriptions(new Map([["transactions.new", { minAmount: 5 }], ["balance.updated", { minAmount: 5 }]]));
  assert.deepEqual(same, { topics: ["transactions.new", "balance.updated"], filters: { minAmount: 5 }, local: false });
  const differ = combineSubscriptions(new Map([["transactions.new", { minAmount: 50 }], ["balance.updated", { minAmount: 5, sources: ["core"] }]]));
  assert.deepEqual(differ, { topics: ["transactions.new", "balance.updated"], filters: { minAmount: 5 }, local: true });
  const none = combineSubscriptions(new Map([["transactions.new", { minAmount: 50 }], ["sync.completed", null]]));
  assert.deepEqual(none, { topics: ["transactions.new", "sync.completed"], filters: null, local: true });
  assert.deepEqual(combineSubscriptions(new Map()), { topics: ["*"], filters: null, local: false });
});

test("client-side filter follows the server's rule", () => {
  assert.ok(matchesFilters({ minAmount: 10 }, "transactions.new", null, { amount: -12 }));
  assert.ok(!matchesFilters({ minAmount: 10 }, "transactions.new", null, { amount: 9.99 }));
  assert.ok(!matchesFilters({ minAmount: 10 }, "balance.updated", null, { change: 1 }));
  assert.ok(matchesFilters({ minAmount: 10 }, "sync.completed", null, { recordsUpdated: 1 }));
  assert.ok(!matchesFilters({ types: ["sync.completed"] }, "transactions.new", null, {}));
  assert.ok(!matchesFilters({ sources: ["plaid"] }, "sync.completed", "core", {}));
  assert.ok(matchesFilters({ sources: ["plaid"] }, "sync.completed", null, {})); // SSE carries no source
  assert.ok(matchesFilters(null, "x", null, null));
});
