// rtstream.js: browser client for realtime-streaming. One ES module, no
// dependencies, no build step.
//
//   import { RealtimeClient } from "/static/rtstream.js";
//   const client = new RealtimeClient({ wsUrl, sseUrl, getToken: () => fetchToken() });
//   client.addEventListener("event", (e) => render(e.detail));          // {id, topic, data, replayed, transport, ...}
//   client.addEventListener("state", (e) => showStatus(e.detail));      // {status, transport, retryIn, replayed, ...}
//   client.addEventListener("replaygap", () => reloadData());           // history no longer covers the gap
//   client.start();
//
// WebSocket first (url?token=JWT); SSE (EventSource) when the WebSocket cannot
// be opened or keeps failing. Reconnects with capped exponential backoff and full
// jitter; every reconnect resumes from the last delivered id (WebSocket `since`,
// SSE `lastEventId`) and drops ids already delivered, so each event shows once.
// Pings under the 10-minute idle timeout, renews before the 2-hour limit, asks
// getToken() for a fresh token before every connect. Same rules as the Python
// client (rtstream_client/logic.py).

export const EVENT_TOPICS = ["transactions.new", "agent.action.completed", "balance.updated", "sync.completed"];
const WILDCARD = "*";
const ID_PATTERN = /^(\d{1,20})-(\d{1,20})$/;

/** "1764090000000-3" -> [1764090000000n, 3n]; null when missing or malformed. */
export function eventIdKey(id) {
  const m = typeof id === "string" ? ID_PATTERN.exec(id) : null;
  return m ? [BigInt(m[1]), BigInt(m[2])] : null;
}

/** Numeric comparison of two ids: <0, 0, >0 (never string order: "9-0" < "10-0"). */
export function compareIds(a, b) {
  const x = eventIdKey(a), y = eventIdKey(b);
  if (x[0] !== y[0]) return x[0] < y[0] ? -1 : 1;
  if (x[1] !== y[1]) return x[1] < y[1] ? -1 : 1;
  return 0;
}

/** Full-jitter exponential backoff in ms: uniform in [0, min(cap, base * 2^attempt)). */
export function backoffDelay(attempt, baseMs, capMs, rand = Math.random) {
  return rand() * Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
}

/**
 * One WebSocket subscription for all wanted topics: several topics become "*"
 * with a `types` filter, so there is one replay and one ordered stream and a
 * single cursor resumes everything.
 */
export function subscribeFrame(topics, filters, since) {
  const f = { ...(filters || {}) };
  let topic;
  if (topics.includes(WILDCARD) || topics.length > 1) {
    topic = WILDCARD;
    const wanted = topics.filter((t) => t !== WILDCARD);
    if (wanted.length && !topics.includes(WILDCARD)) {
      f.types = wanted.filter((t) => !f.types || f.types.includes(t));
    }
  } else {
    topic = topics[0];
  }
  const frame = { type: "subscribe", topic };
  if (Object.keys(f).length) frame.filters = f;
  if (since) frame.since = since;
  return frame;
}

function withQuery(url, params) {
  const u = new URL(url, location.href);
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") u.searchParams.set(k, v);
  }
  return u.toString();
}

function sseQuery(topics, filters, since) {
  const f = filters || {};
  return {
    topics: topics.join(","),
    types: f.types ? f.types.join(",") : undefined,
    sources: f.sources ? f.sources.join(",") : undefined,
    minAmount: f.minAmount != null ? String(f.minAmount) : undefined,
    lastEventId: since || undefined,
  };
}

/**
 * Which transport the next attempt uses (TransportChooser in logic.py): WebSocket
 * first; SSE after repeated WebSocket failures; while on SSE the WebSocket is
 * probed (SSE stays up) every wsRetryAfterMs, or soon after an outage (SSE
 * failed too, or the WebSocket had worked before), and a successful probe
 * switches back.
 */
class TransportChooser {
  constructor(mode, failuresBeforeFallback, wsRetryAfterMs, outageProbeAfterMs) {
    this.mode = mode;
    this.limit = failuresBeforeFallback;
    this.wsRetryAfterMs = wsRetryAfterMs;
    this.outageProbeAfterMs = outageProbeAfterMs;
    this.current = mode === "sse" ? "sse" : "ws";
    this.probeAt = null;
    this.wsFailures = 0;
    this.sseFailures = 0;
    this.sseFailed = false;
    this.wsWorked = false;
  }
  choose() {
    return this.current;
  }
  failed(transport) {
    if (this.mode !== "auto") return;
    this.probeAt = null;
    if (transport === "ws") {
      if (++this.wsFailures >= this.limit) {
        this.current = "sse";
        this.sseFailures = 0;
      }
    } else {
      this.sseFailed = true;
      if (++this.sseFailures >= this.limit) {
        // SSE failing too: the server is likely down; either may come back first
        this.current = "ws";
        this.wsFailures = 0;
      }
    }
  }
  opened(transport, now) {
    if (transport === "ws") {
      this.wsFailures = 0;
      this.wsWorked = true;
      this.probeAt = null;
    } else {
      this.sseFailures = 0;
      // SSE may come back before the client sees it fail: a WebSocket that worked
      // before and now fails means an outage, not a network that blocks it
      const outage = this.sseFailed || this.wsWorked;
      if (this.mode === "auto") this.probeAt = now + (outage ? this.outageProbeAfterMs : this.wsRetryAfterMs);
    }
    this.sseFailed = false;
  }
  probed(reachable, now) {
    if (reachable) {
      this.current = "ws";
      this.wsFailures = 0;
      this.probeAt = null;
    } else {
      this.probeAt = now + this.wsRetryAfterMs;
    }
  }
}

const FATAL_CODES = new Set(["unknown_topic", "invalid_message", "forbidden", "unauthorized"]);

export class RealtimeClient extends EventTarget {
  constructor(options = {}) {
    super();
    const o = options;
    if (!o.wsUrl && !o.sseUrl) throw new Error("rtstream: give wsUrl, sseUrl or both");
    if (o.token == null && !o.getToken) throw new Error("rtstream: give token or getToken");
    this.wsUrl = o.wsUrl || null;
    this.sseUrl = o.sseUrl || null;
    this.getToken = o.getToken || (() => o.token);
    this.topics = (o.topics && o.topics.length ? [...new Set(o.topics)] : [WILDCARD]);
    this.filters = o.filters || null;
    let mode = o.transport || "auto";
    if (!["auto", "ws", "sse"].includes(mode)) throw new Error(`rtstream: transport must be auto, ws or sse, got ${mode}`);
    if (mode === "auto" && !this.wsUrl) mode = "sse";
    if (mode === "auto" && !this.sseUrl) mode = "ws";
    this.chooser = new TransportChooser(mode, o.wsFailuresBeforeFallback ?? 2, o.wsRetryAfterMs ?? 300_000, o.outageProbeAfterMs ?? 1_000);
    this.backoffBaseMs = o.backoffBaseMs ?? 500;
    this.backoffCapMs = o.backoffCapMs ?? 30_000;
    this.openTimeoutMs = o.openTimeoutMs ?? 5_000;
    this.pingIntervalMs = o.pingIntervalMs ?? 300_000; // well under the 10-minute idle timeout
    this.pongTimeoutMs = o.pongTimeoutMs ?? 15_000;
    this.renewAfterMs = o.renewAfterMs ?? (7200 - 300) * 1000; // before the 2-hour maximum
    this.rand = o.rand || Math.random;
    this.lastEventId = o.since || null;
    this.state = { status: "idle", transport: null, retryIn: null, retryAt: null, attempt: 0, reconnects: 0, replayed: 0, lastEventId: this.lastEventId, error: null };
    this._running = false;
    this._openedOnce = false;
    this._endSession = null; // ends the current connection (stop, proactive renew)
    this._wake = null; // cuts a backoff sleep short (browser back online)
    if (o.onEvent) this.addEventListener("event", (e) => o.onEvent(e.detail));
    if (o.onState) this.addEventListener("state", (e) => o.onState(e.detail));
    if (o.onReplayGap) this.addEventListener("replaygap", (e) => o.onReplayGap(e.detail));
    this._onOnline = () => this._wake && this._wake();
  }

  start() {
    if (this._running) return this;
    this._running = true;
    this._generation = (this._generation || 0) + 1; // a loop left over from an earlier stop() ends itself
    if (typeof window !== "undefined") window.addEventListener("online", this._onOnline);
    this._loop(this._generation);
    return this;
  }

  stop() {
    this._running = false;
    if (typeof window !== "undefined") window.removeEventListener("online", this._onOnline);
    if (this._endSession) this._endSession();
    if (this._wake) this._wake();
    this._setState({ status: "closed", transport: null, retryIn: null, retryAt: null });
  }

  _setState(changes) {
    this.state = { ...this.state, ...changes, lastEventId: this.lastEventId };
    this.dispatchEvent(new CustomEvent("state", { detail: { ...this.state } }));
  }

  async _loop(generation) {
    let attempt = 0;
    const current = () => this._running && this._generation === generation;
    while (current()) {
      const transport = this.chooser.choose();
      if (this.state.status === "reconnecting") this._setState({ transport, retryIn: null, retryAt: null });
      else this._setState({ status: "connecting", transport, retryIn: null, retryAt: null, attempt });
      let result;
      try {
        const token = await this.getToken();
        result = transport === "ws" ? await this._wsSession(token) : await this._sseSession(token);
      } catch (err) {
        result = { opened: false, error: String(err && err.message ? err.message : err) };
      }
      if (!current()) return;
      if (result.fatal) {
        this._running = false;
        this._setState({ status: "closed", transport: null, error: result.error });
        this.dispatchEvent(new CustomEvent("fatal", { detail: { code: result.fatal, message: result.error } }));
        return;
      }
      if (result.opened) {
        attempt = 0;
        if (result.renew) {
          this._setState({ status: "reconnecting", retryIn: 0, retryAt: Date.now(), attempt: 0, error: null });
          continue;
        }
      } else {
        this.chooser.failed(transport);
      }
      const delay = backoffDelay(attempt, this.backoffBaseMs, this.backoffCapMs, this.rand);
      attempt += 1;
      this._setState({ status: "reconnecting", retryIn: Math.round(delay), retryAt: Date.now() + delay, attempt, error: result.error || null });
      await new Promise((resolve) => {
        const timer = setTimeout(done, delay);
        const self = this;
        function done() { clearTimeout(timer); self._wake = null; resolve(); }
        this._wake = done;
      });
    }
  }

  _opened(transport) {
    this.chooser.opened(transport, Date.now());
    const reconnects = this.state.reconnects + (this._openedOnce ? 1 : 0);
    this._openedOnce = true;
    this._setState({ status: "open", transport, retryIn: null, retryAt: null, attempt: 0, reconnects, error: null });
  }

  // Deliver one protocol frame; drops ids already delivered.
  _deliver(frame, transport, session) {
    if (frame.type === "event") {
      const key = eventIdKey(frame.id);
      if (key) {
        if (this.lastEventId && compareIds(frame.id, this.lastEventId) <= 0) return;
        this.lastEventId = frame.id;
      }
      const replayed = Boolean(session.resumed && key && key[0] <= BigInt(session.startedMs));
      const event = { id: frame.id ?? null, topic: frame.topic, data: frame.data, source: frame.source ?? null, timestamp: frame.timestamp ?? null, transport, replayed };
      if (replayed) this.state = { ...this.state, replayed: this.state.replayed + 1 };
      this.state = { ...this.state, lastEventId: this.lastEventId };
      this.dispatchEvent(new CustomEvent("event", { detail: event }));
      if (replayed) this._setState({});
    } else if (frame.type === "error") {
      if (frame.code === "replay_gap") {
        this.dispatchEvent(new CustomEvent("replaygap", { detail: { since: session.since, message: frame.message || "", transport } }));
      } else {
        this.dispatchEvent(new CustomEvent("servererror", { detail: { code: frame.code, message: frame.message } }));
      }
    }
  }

  // One WebSocket connection; resolves {opened, renew, error, fatal}.
  _wsSession(token) {
    return new Promise((resolve) => {
      const session = { since: this.lastEventId, resumed: Boolean(this.lastEventId), startedMs: Date.now() };
      let ws;
      let subscribed = false;
      let finished = false;
      let pingTimer = null, pongTimer = null;
      const finish = (result) => {
        if (finished) return;
        finished = true;
        clearTimeout(openTimer); clearTimeout(renewTimer); clearInterval(pingTimer); clearTimeout(pongTimer);
        this._endSession = null;
        if (ws) {
          ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
          try { ws.close(1000); } catch (_) { /* already closed */ }
        }
        resolve(result);
      };
      const openTimer = setTimeout(() => finish({ opened: false, error: "websocket: no subscription confirmation" }), this.openTimeoutMs);
      const renewTimer = setTimeout(() => finish({ opened: true, renew: true }), this.renewAfterMs);
      this._endSession = () => finish({ opened: subscribed, error: "stopped" });
      try {
        ws = new WebSocket(withQuery(this.wsUrl, { token }));
      } catch (err) {
        finish({ opened: false, error: `websocket: ${err.message}` });
        return;
      }
      const confirm = () => {
        if (subscribed) return;
        subscribed = true;
        clearTimeout(openTimer);
        this._opened("ws");
        pingTimer = setInterval(() => {
          if (ws.readyState !== WebSocket.OPEN) return;
          ws.send('{"type":"ping"}');
          if (!pongTimer) pongTimer = setTimeout(() => finish({ opened: true, error: "websocket: no pong" }), this.pongTimeoutMs);
        }, this.pingIntervalMs);
      };
      ws.onopen = () => ws.send(JSON.stringify(subscribeFrame(this.topics, this.filters, session.since)));
      ws.onmessage = (msg) => {
        let frame;
        try { frame = JSON.parse(msg.data); } catch (_) { return; }
        if (!frame || typeof frame !== "object") return;
        if (frame.type === "subscribed") {
          // a server that tells where the subscription starts gives a fresh client a resume point
          if (frame.cursor && eventIdKey(frame.cursor) && (!this.lastEventId || compareIds(frame.cursor, this.lastEventId) > 0)) this.lastEventId = frame.cursor;
          return confirm();
        }
        if (frame.type === "pong") { clearTimeout(pongTimer); pongTimer = null; return; }
        if (frame.type === "error" && !subscribed && FATAL_CODES.has(frame.code)) {
          return finish({ opened: false, fatal: frame.code, error: `${frame.code}: ${frame.message}` });
        }
        if (frame.type === "event") confirm();
        this._deliver(frame, "ws", session);
      };
      ws.onclose = (e) => finish({ opened: subscribed, error: `websocket closed (${e.code})` });
    });
  }

  // One EventSource; its own auto-reconnect is cut off so every reconnect goes
  // through the same backoff, token refresh and resume as the WebSocket.
  _sseSession(token) {
    return new Promise((resolve) => {
      const session = { since: this.lastEventId, resumed: Boolean(this.lastEventId), startedMs: Date.now() };
      let opened = false;
      let finished = false;
      const es = new EventSource(withQuery(this.sseUrl, { access_token: token, ...sseQuery(this.topics, this.filters, session.since) }));
      let probeTimer = null, probe = null;
      const finish = (result) => {
        if (finished) return;
        finished = true;
        clearTimeout(openTimer); clearTimeout(renewTimer); clearTimeout(probeTimer);
        if (probe) { probe.onopen = probe.onclose = probe.onerror = null; try { probe.close(); } catch (_) { /* closed */ } }
        this._endSession = null;
        es.close();
        resolve(result);
      };
      // While on SSE, probe the WebSocket now and then; switch when it answers.
      const scheduleProbe = () => {
        if (!this.wsUrl || this.chooser.mode !== "auto" || this.chooser.probeAt === null || finished) return;
        probeTimer = setTimeout(() => {
          try { probe = new WebSocket(withQuery(this.wsUrl, { token })); } catch (_) { this.chooser.probed(false, Date.now()); return scheduleProbe(); }
          probe.onopen = () => { this.chooser.probed(true, Date.now()); finish({ opened: true, renew: true }); };
          probe.onclose = () => { probe = null; this.chooser.probed(false, Date.now()); scheduleProbe(); };
        }, Math.max(0, this.chooser.probeAt - Date.now()));
      };
      const openTimer = setTimeout(() => finish({ opened: false, error: "sse: no response" }), this.openTimeoutMs);
      const renewTimer = setTimeout(() => finish({ opened: true, renew: true }), this.renewAfterMs);
      this._endSession = () => finish({ opened, error: "stopped" });
      es.onopen = () => {
        opened = true;
        clearTimeout(openTimer);
        this._opened("sse");
        scheduleProbe();
      };
      es.onerror = (e) => {
        if (e && typeof e.data === "string") return; // a server-sent "event: error" frame, handled below
        finish({ opened, error: opened ? "sse: connection lost" : "sse: cannot connect" });
      };
      const onFrame = (msg) => {
        let payload;
        try { payload = JSON.parse(msg.data); } catch (_) { return; }
        if (msg.type === "cursor" || (payload && payload.type === "cursor")) {
          // where this stream starts (a server may send it as a named event, which
          // EventSource exposes, unlike an id-only frame): resume from here later
          const id = (payload && payload.id) || msg.lastEventId;
          if (eventIdKey(id) && (!this.lastEventId || compareIds(id, this.lastEventId) > 0)) this.lastEventId = id;
          return;
        }
        let frame;
        if (payload && (payload.type === "event" || payload.type === "error")) frame = payload;
        else if (msg.type === "error" || msg.type === "replay_gap") frame = { type: "error", code: "replay_gap", ...payload };
        else frame = { type: "event", topic: msg.type, id: msg.lastEventId || null, data: payload };
        if (frame.type === "event" && frame.id == null && msg.lastEventId) frame.id = msg.lastEventId;
        this._deliver(frame, "sse", session);
      };
      for (const name of [...EVENT_TOPICS, "presence", "message", "error", "replay_gap", "cursor"]) {
        es.addEventListener(name, (msg) => { if (typeof msg.data === "string") onFrame(msg); });
      }
    });
  }
}

/** Claims of a JWT for display only (the server verifies tokens, never the page). */
export function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(Array.from(atob(part + "===".slice((part.length + 3) % 4)), (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""));
    return JSON.parse(json);
  } catch (_) {
    return {};
  }
}
