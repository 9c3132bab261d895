// The shared JSON vectors (clients/vectors/) against rtstream-logic.js; the
// Python client runs the same files (tests/clients/test_vectors.py).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  Cursor, StallWatch, TransportChooser, backoffDelay, classifyWsFrame, frameFromSse,
  isReplayed, normalizeTopics, sseQuery, subscribeFrame,
} from "../src/rtstream-logic.js";

/** @param {string} name */
const vectors = (name) => JSON.parse(readFileSync(new URL(`../../vectors/${name}`, import.meta.url), "utf8"));

test("backoff", () => {
  for (const c of vectors("backoff.json").cases) {
    assert.equal(backoffDelay(c.attempt, c.base, c.cap, () => c.rand), c.expect, c.name);
  }
});

test("cursor and dedup", () => {
  const v = vectors("cursor.json");
  for (const c of v.cases) {
    const cursor = new Cursor(c.start);
    c.steps.forEach((step, i) => {
      const where = `${c.name} step ${i}`;
      if ("advance" in step) cursor.advance(step.advance);
      else assert.equal(cursor.accept(step.accept, { older: Boolean(step.older) }), step.expect, where);
      assert.equal(cursor.lastId, step.last, where);
    });
  }
  for (const bad of v.malformed_start) assert.throws(() => new Cursor(bad), TypeError);
});

test("transport choice", () => {
  const v = vectors("transport.json");
  for (const c of v.cases) {
    const chooser = new TransportChooser(c.mode, c.limit, c.ws_retry_after, c.outage_probe_after);
    c.steps.forEach((step, i) => {
      if (step.op === "failed") chooser.failed(step.transport, step.now);
      else if (step.op === "opened") chooser.opened(step.transport, step.now);
      else if (step.op === "probed") chooser.probed(step.reachable, step.now);
      else if (step.op === "stalled") chooser.stalled(step.now);
      else if (step.op === "delivered") chooser.delivered();
      else throw new Error(`unknown op ${step.op}`);
      assert.deepEqual({ current: chooser.choose(), probe_at: chooser.probeAt }, step.expect, `${c.name} step ${i} (${step.op})`);
    });
  }
  for (const mode of v.invalid_modes) assert.throws(() => new TransportChooser(mode), TypeError);
});

test("stall watch (pong behind)", () => {
  for (const c of vectors("stall.json").cases) {
    const watch = new StallWatch(c.after, c.pongs);
    c.steps.forEach((step, i) => {
      if ("caught_up" in step) watch.caughtUp(step.caught_up);
      else assert.equal(watch.pong(step.pong, step.now), step.expect, `${c.name} step ${i}`);
    });
  }
});

test("subscribe frame and SSE query", () => {
  const v = vectors("subscribe.json");
  for (const c of v.cases) {
    assert.deepEqual(subscribeFrame(c.topics, c.filters, c.since, c.rewind), c.frame, c.name);
    assert.deepEqual(sseQuery(c.topics, c.filters, c.since ? null : c.rewind), c.sse_query, c.name);
  }
  for (const n of v.normalize) assert.deepEqual(normalizeTopics(n.topics), n.expect);
});

test("SSE messages, old and new format", () => {
  for (const c of vectors("sse_frames.json").cases) {
    assert.deepEqual(frameFromSse(c.event, c.data, c.id), c.expect, c.name);
  }
});

test("WebSocket frames", () => {
  for (const c of vectors("ws_frames.json").cases) {
    assert.equal(classifyWsFrame(c.frame, c.subscribed), c.expect, JSON.stringify(c.frame));
  }
});

test("replayed", () => {
  for (const c of vectors("replayed.json").cases) {
    assert.equal(isReplayed(c.id, c.resumed, c.started_ms), c.expect, JSON.stringify(c));
  }
});
