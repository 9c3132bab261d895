// rtstream-client: browser client for realtime-streaming. One ES module (plus
// its pure decision module rtstream-logic.js), no dependencies, no build step.
//
//   import { RealtimeClient } from "rtstream-client";
//   const client = new RealtimeClient({ wsUrl, sseUrl, getToken: () => fetchToken(), topics: [] });
//   client.subscribe("transactions.new", { filters: { minAmount: 10 }, rewind: 20 });
//   client.on("transactions.new", (event) => render(event));    // {id, topic, data, replayed, transport, ...}
//   client.addEventListener("state", (e) => showStatus(e.detail)); // {status, transport, fallback, retryIn, ...}
//   client.addEventListener("replaygap", () => reloadData());      // history no longer covers the gap
//   client.start();
//
// WebSocket first (url?token=JWT); SSE (EventSource) when the WebSocket cannot
// be opened, keeps failing, or stops delivering (behind the cursor its pongs
// report). Reconnects with capped exponential backoff and full jitter; every
// reconnect resumes from the last delivered id (WebSocket `since`, SSE
// `lastEventId`) and drops ids already delivered, so each event shows once.
// Pings under the 10-minute idle timeout, renews before the 2-hour limit, asks
// getToken() for a fresh token before every connect. The decisions live in
// rtstream-logic.js, shared with the Python client through clients/vectors/.

import {
  Cursor,
  EVENT_TOPICS,
  StallWatch,
  TransportChooser,
  WILDCARD,
  backoffDelay,
  classifyWsFrame,
  combineSubscriptions,
  frameFromSse,
  isReplayed,
  matchesFilters,
  normalizeTopics,
  sseQuery,
  subscribeFrame,
} from "./rtstream-logic.js";

export * from "./rtstream-logic.js";

/** @typedef {import("./rtstream-logic.js").Filters} Filters */
/** @typedef {{id: string | null, topic: string, data: any, source: string | null, timestamp: string | null, transport: "ws" | "sse", replayed: boolean}} StreamEvent */
/** @typedef {{status: string, connection: string, transport: "ws" | "sse" | null, fallback: boolean, retryIn: number | null, retryAt: number | null, attempt: number, reconnects: number, replayed: number, lastEventId: string | null, error: string | null}} ClientState */
/** @typedef {{opened: boolean, renew?: boolean, stalled?: boolean, error?: string, fatal?: string}} SessionResult */
/** @typedef {{since: string | null, resumed: boolean, startedMs: number}} Session */
/** @typedef {(event: StreamEvent) => void} EventHandler */

const STATE_EVENT_NAMES = ["presence", "error", "replay_gap", "cursor", "message"];

export class RealtimeClient extends EventTarget {
  /** @param {Record<string, any>} options see rtstream.d.ts (ClientOptions) */
  constructor(options = {}) {
    super();
    const o = options;
    if (!o.wsUrl && !o.sseUrl) throw new Error("rtstream: give wsUrl, sseUrl or both");
    if (o.token == null && !o.getToken) throw new Error("rtstream: give token or getToken");
    /** @type {string | null} */
    this.wsUrl = o.wsUrl || null;
    /** @type {string | null} */
    this.sseUrl = o.sseUrl || null;
    /** @type {string | null} */
    this.presenceUrl = o.presenceUrl || (this.sseUrl ? new URL("/presence", new URL(this.sseUrl, baseHref())).toString() : null);
    /** @type {() => string | Promise<string>} */
    this.getToken = o.getToken || (() => o.token);
    /** @type {Map<string, Filters | null>} topic -> its filters */
    this.wanted = new Map();
    const initial = o.topics === undefined ? [WILDCARD] : o.topics.length ? normalizeTopics(o.topics) : [];
    for (const topic of initial) this.wanted.set(topic, o.filters || null);
    /** @type {number | null} */
    this.rewind = o.rewind ?? null;
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
    this.stallAfterMs = o.stallAfterMs ?? 10_000;
    this.stallPongs = o.stallPongs ?? 2;
    this.renewAfterMs = o.renewAfterMs ?? (7200 - 300) * 1000; // before the 2-hour maximum
    /** @type {() => number} */
    this.rand = o.rand || Math.random;
    this.cursor = new Cursor(o.since || null);
    /** @type {ClientState} */
    this.state = { status: "idle", connection: "idle", transport: null, fallback: false, retryIn: null, retryAt: null, attempt: 0, reconnects: 0, replayed: 0, lastEventId: this.cursor.lastId, error: null };
    /** @type {Map<string, Set<EventHandler>>} */
    this._handlers = new Map();
    /** @type {Set<string>} topics whose rewind may deliver ids below the cursor */
    this._rewinding = new Set();
    this._running = false;
    this._openedOnce = false;
    this._generation = 0;
    /** @type {((result: SessionResult) => void) | null} ends the current session */
    this._endSession = null;
    /** @type {(() => void) | null} cuts a backoff sleep short */
    this._wake = null;
    /** @type {WebSocket | null} the subscribed WebSocket, for run-time frames */
    this._ws = null;
    /** @type {string | null} the topic of the server subscription on this._ws */
    this._serverTopic = null;
    /** @type {Array<(users: any[]) => void>} */
    this._presenceWaiters = [];
    if (o.onEvent) this.addEventListener("event", (e) => o.onEvent(/** @type {CustomEvent} */ (e).detail));
    if (o.onState) this.addEventListener("state", (e) => o.onState(/** @type {CustomEvent} */ (e).detail));
    if (o.onReplayGap) this.addEventListener("replaygap", (e) => o.onReplayGap(/** @type {CustomEvent} */ (e).detail));
    this._onOnline = () => { if (this._wake) this._wake(); };
  }

  /** The resume point: the newest event id delivered (or the server's start point). */
  get lastEventId() {
    return this.cursor.lastId;
  }

  start() {
    if (this._running) return this;
    this._running = true;
    this._generation += 1; // a loop left over from an earlier stop() ends itself
    if (typeof window !== "undefined") window.addEventListener("online", this._onOnline);
    this._loop(this._generation);
    return this;
  }

  stop() {
    this._running = false;
    if (typeof window !== "undefined") window.removeEventListener("online", this._onOnline);
    if (this._endSession) this._endSession({ opened: true, error: "stopped" });
    if (this._wake) this._wake();
    this._setState({ status: "closed", transport: null, fallback: false, retryIn: null, retryAt: null });
  }

  /**
   * Subscribe to a topic at run time (or change its filters). `rewind` asks for
   * the last N matching events first (WebSocket; over SSE only when the stream
   * starts without a cursor).
   * @param {string} topic
   * @param {{filters?: Filters | null, rewind?: number | null}} [options]
   */
  subscribe(topic, options = {}) {
    if (typeof topic !== "string" || !topic.trim()) throw new TypeError("rtstream: topic must be a non-empty string");
    this.wanted.set(topic.trim(), options.filters || null);
    if (options.rewind) {
      this._rewinding.add(topic.trim());
      if (topic.trim() === WILDCARD) for (const t of this.wanted.keys()) this._rewinding.add(t);
    }
    this._subscriptionsChanged(options.rewind || null);
    return this;
  }

  /** @param {string} topic */
  unsubscribe(topic) {
    if (this.wanted.delete(topic)) this._subscriptionsChanged(null);
    return this;
  }

  /**
   * A handler for one topic's events ("*" for every topic); returns a function that removes it.
   * @param {string} topic
   * @param {EventHandler} handler
   */
  on(topic, handler) {
    let set = this._handlers.get(topic);
    if (!set) this._handlers.set(topic, (set = new Set()));
    set.add(handler);
    return () => this.off(topic, handler);
  }

  /**
   * @param {string} topic
   * @param {EventHandler} handler
   */
  off(topic, handler) {
    const set = this._handlers.get(topic);
    if (set) set.delete(handler);
  }

  /**
   * The users online for this entity: over the open WebSocket, else GET /presence.
   * @param {{timeoutMs?: number}} [options]
   * @returns {Promise<any[]>}
   */
  async presence(options = {}) {
    const timeoutMs = options.timeoutMs ?? this.openTimeoutMs;
    const ws = this._ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      return new Promise((resolve, reject) => {
        /** @param {any[]} users */
        const waiter = (users) => { clearTimeout(timer); resolve(users); };
        const timer = setTimeout(() => {
          this._presenceWaiters = this._presenceWaiters.filter((w) => w !== waiter);
          reject(new Error("rtstream: no presence reply"));
        }, timeoutMs);
        this._presenceWaiters.push(waiter);
        ws.send('{"type":"presence"}');
      });
    }
    if (!this.presenceUrl) throw new Error("rtstream: presence needs an open WebSocket or an SSE server");
    const token = await this.getToken();
    const res = await fetch(this.presenceUrl, { headers: { Authorization: `Bearer ${token}` }, cache: "no-store", signal: AbortSignal.timeout(timeoutMs) });
    const body = await res.json();
    if (!res.ok) throw new Error(`rtstream: presence refused: ${body.code || res.status}: ${body.message || ""}`);
    return body.users || [];
  }

  /** @param {Partial<ClientState>} changes */
  _setState(changes) {
    const next = { ...this.state, ...changes };
    // one word for a status line: open on SSE while the WebSocket is wanted is "fallback-sse"
    const connection = next.status === "open" && next.fallback ? "fallback-sse" : next.status;
    this.state = { ...next, connection, lastEventId: this.cursor.lastId };
    this.dispatchEvent(new CustomEvent("state", { detail: { ...this.state } }));
  }

  /** @param {number | null} rewind */
  _subscriptionsChanged(rewind) {
    if (!this._running) return;
    if (this._wake) this._wake(); // idle with no topics, or waiting to retry
    const ws = this._ws;
    if (ws && ws.readyState === WebSocket.OPEN && this.wanted.size) {
      // in place on the open WebSocket: the new subscription first, then drop the old one
      const combined = combineSubscriptions(this.wanted);
      const frame = subscribeFrame(combined.topics, combined.filters, null, rewind);
      ws.send(JSON.stringify(frame));
      if (this._serverTopic && this._serverTopic !== frame.topic) ws.send(JSON.stringify({ type: "unsubscribe", topic: this._serverTopic }));
      this._serverTopic = frame.topic;
    } else if (this._endSession) {
      // SSE (its query is fixed) or nothing left: start again, resuming from the cursor
      this._endSession({ opened: true, renew: true });
    }
  }

  /** @param {number} generation */
  async _loop(generation) {
    let attempt = 0;
    const current = () => this._running && this._generation === generation;
    while (current()) {
      if (!this.wanted.size) {
        this._setState({ status: "idle", transport: null, retryIn: null, retryAt: null });
        await new Promise((resolve) => { this._wake = () => { this._wake = null; resolve(undefined); }; });
        continue;
      }
      const transport = this.chooser.choose();
      const fallback = transport === "sse" && this.chooser.mode === "auto";
      if (this.state.status === "reconnecting") this._setState({ transport, fallback, retryIn: null, retryAt: null });
      else this._setState({ status: "connecting", transport, fallback, retryIn: null, retryAt: null, attempt });
      /** @type {SessionResult} */
      let result;
      try {
        const token = await this.getToken();
        result = transport === "ws" ? await this._wsSession(token) : await this._sseSession(token);
      } catch (err) {
        result = { opened: false, error: String(err instanceof Error ? err.message : err) };
      }
      if (!current()) return;
      if (result.fatal) {
        this._running = false;
        this._setState({ status: "closed", transport: null, error: result.error || null });
        this.dispatchEvent(new CustomEvent("fatal", { detail: { code: result.fatal, message: result.error } }));
        return;
      }
      if (result.stalled) {
        this.chooser.stalled(Date.now());
        this.dispatchEvent(new CustomEvent("stalled", { detail: { lastEventId: this.cursor.lastId, transport } }));
      }
      if (result.opened || result.renew) { // a renew before opening (topics changed) is no failure
        attempt = 0;
        if (result.renew || result.stalled) {
          this._setState({ status: "reconnecting", retryIn: 0, retryAt: Date.now(), attempt: 0, error: result.error || null });
          continue;
        }
      } else {
        this.chooser.failed(transport, Date.now());
      }
      const delay = backoffDelay(attempt, this.backoffBaseMs, this.backoffCapMs, this.rand);
      attempt += 1;
      this._setState({ status: "reconnecting", retryIn: Math.round(delay), retryAt: Date.now() + delay, attempt, error: result.error || null });
      await new Promise((resolve) => {
        const timer = setTimeout(done, delay);
        const self = this;
        function done() { clearTimeout(timer); self._wake = null; resolve(undefined); }
        this._wake = done;
      });
    }
  }

  /**
   * @param {"ws" | "sse"} transport
   * @param {Session} session
   */
  _opened(transport, session) {
    this.chooser.opened(transport, Date.now());
    const reconnects = this.state.reconnects + (this._openedOnce ? 1 : 0);
    this._openedOnce = true;
    const fallback = transport === "sse" && this.chooser.mode === "auto";
    this._setState({ status: "open", transport, fallback, retryIn: null, retryAt: null, attempt: 0, reconnects, error: null });
    if (fallback) this.dispatchEvent(new CustomEvent("fallback", { detail: { transport } }));
    if (session.resumed && reconnects > 0) this.dispatchEvent(new CustomEvent("recovered", { detail: { since: session.since, transport } }));
  }

  /**
   * Deliver one event or error frame; drops ids already delivered.
   * @param {Record<string, any>} frame
   * @param {"ws" | "sse"} transport
   * @param {Session} session
   */
  _deliver(frame, transport, session) {
    if (frame.type === "event") {
      const topic = String(frame.topic || "");
      const older = this._rewinding.has(topic) || this._rewinding.has(WILDCARD);
      if (!this.cursor.accept(frame.id, { older })) return;
      const combined = combineSubscriptions(this.wanted);
      const own = this.wanted.has(topic) ? this.wanted.get(topic) : this.wanted.has(WILDCARD) ? this.wanted.get(WILDCARD) : undefined;
      if (own === undefined && topic !== "presence") return; // unsubscribed meanwhile
      if (combined.local && own !== undefined && !matchesFilters(own, topic, frame.source, frame.data)) return;
      const replayed = isReplayed(frame.id, session.resumed, session.startedMs);
      /** @type {StreamEvent} */
      const event = { id: frame.id ?? null, topic, data: frame.data, source: frame.source ?? null, timestamp: frame.timestamp ?? null, transport, replayed };
      if (replayed) this.state = { ...this.state, replayed: this.state.replayed + 1 };
      this.state = { ...this.state, lastEventId: this.cursor.lastId };
      this.dispatchEvent(new CustomEvent("event", { detail: event }));
      for (const key of [topic, WILDCARD]) {
        for (const handler of this._handlers.get(key) || []) {
          try { handler(event); } catch (err) { console.error("rtstream: handler failed", err); }
        }
      }
      if (replayed) this._setState({});
    } else if (frame.type === "error") {
      if (frame.code === "replay_gap") {
        this.dispatchEvent(new CustomEvent("replaygap", { detail: { since: session.since, message: frame.message || "", transport } }));
      } else {
        this.dispatchEvent(new CustomEvent("servererror", { detail: { code: frame.code, message: frame.message } }));
      }
    }
  }

  /** @returns {Session} */
  _newSession() {
    if (this.cursor.lastId) this._rewinding = new Set(); // a resume replays from the cursor instead
    // rewound events are older than the start point the server gives first: let unseen ones through
    else if (this.rewind) this._rewinding.add(WILDCARD);
    return { since: this.cursor.lastId, resumed: Boolean(this.cursor.lastId), startedMs: Date.now() };
  }

  /**
   * One WebSocket connection.
   * @param {string} token
   * @returns {Promise<SessionResult>}
   */
  _wsSession(token) {
    return new Promise((resolve) => {
      const session = this._newSession();
      const combined = combineSubscriptions(this.wanted);
      const first = subscribeFrame(combined.topics, combined.filters, session.since, session.since ? null : this.rewind);
      // only an unfiltered subscription sees every id, so only then is "behind the pong's cursor" a stall
      const watch = first.topic === WILDCARD && !first.filters ? new StallWatch(this.stallAfterMs, this.stallPongs) : null;
      if (watch) watch.caughtUp(session.since);
      /** @type {WebSocket | null} */
      let ws = null;
      let subscribed = false;
      let finished = false;
      /** @type {ReturnType<typeof setInterval> | undefined} */
      let pingTimer;
      /** @type {ReturnType<typeof setTimeout> | undefined} */
      let pongTimer;
      /** @param {SessionResult} result */
      const finish = (result) => {
        if (finished) return;
        finished = true;
        clearTimeout(openTimer); clearTimeout(renewTimer); clearInterval(pingTimer); clearTimeout(pongTimer);
        this._endSession = null;
        this._ws = null;
        if (ws) {
          ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
          try { ws.close(1000); } catch (_) { /* already closed */ }
        }
        resolve(result);
      };
      const openTimer = setTimeout(() => finish({ opened: false, error: "websocket: no subscription confirmation" }), this.openTimeoutMs);
      const renewTimer = setTimeout(() => finish({ opened: true, renew: true }), this.renewAfterMs);
      this._endSession = (result) => finish({ ...result, opened: subscribed && result.opened });
      try {
        ws = new WebSocket(withQuery(/** @type {string} */ (this.wsUrl), { token }));
      } catch (err) {
        finish({ opened: false, error: `websocket: ${err instanceof Error ? err.message : err}` });
        return;
      }
      const socket = ws;
      const confirm = () => {
        if (subscribed) return;
        subscribed = true;
        clearTimeout(openTimer);
        this._ws = socket;
        this._opened("ws", session);
        pingTimer = setInterval(() => {
          if (socket.readyState !== WebSocket.OPEN) return;
          socket.send('{"type":"ping"}');
          if (!pongTimer) pongTimer = setTimeout(() => finish({ opened: true, error: "websocket: no pong" }), this.pongTimeoutMs);
        }, this.pingIntervalMs);
      };
      socket.onopen = () => {
        this._serverTopic = first.topic;
        socket.send(JSON.stringify(first));
      };
      socket.onmessage = (msg) => {
        /** @type {any} */
        let frame;
        try { frame = JSON.parse(String(msg.data)); } catch (_) { return; }
        switch (classifyWsFrame(frame, subscribed)) {
          case "confirm":
            // a server that tells where the subscription starts gives a fresh client a resume point
            if (!session.since && frame.cursor) {
              this.cursor.advance(frame.cursor);
              if (watch) watch.caughtUp(frame.cursor);
            }
            return confirm();
          case "ack":
            if (frame.type === "subscribed" && frame.cursor && watch) watch.caughtUp(frame.cursor);
            return;
          case "pong": {
            clearTimeout(pongTimer);
            pongTimer = undefined;
            if (!watch) return;
            const verdict = watch.pong(frame.cursor, Date.now());
            if (verdict === "ok") this.chooser.delivered();
            if (verdict === "stalled") finish({ opened: true, stalled: true, error: `websocket: no events past ${watch.seen || "the start"} while the server has ${frame.cursor}` });
            return;
          }
          case "presence": {
            const waiters = this._presenceWaiters.splice(0);
            for (const waiter of waiters) waiter(Array.isArray(frame.users) ? frame.users : []);
            return;
          }
          case "fatal":
            return finish({ opened: false, fatal: frame.code, error: `${frame.code}: ${frame.message}` });
          case "event":
            confirm(); // a server that replays before confirming still confirms by delivering
            if (watch) watch.caughtUp(frame.id);
            this.chooser.delivered();
            return this._deliver(frame, "ws", session);
          case "gap":
          case "error":
            return this._deliver(frame, "ws", session);
          default:
            return;
        }
      };
      socket.onclose = (e) => finish({ opened: subscribed, error: `websocket closed (${e.code})` });
    });
  }

  /**
   * One EventSource; its own auto-reconnect is cut off so every reconnect goes
   * through the same backoff, token refresh and resume as the WebSocket.
   * @param {string} token
   * @returns {Promise<SessionResult>}
   */
  _sseSession(token) {
    return new Promise((resolve) => {
      const session = this._newSession();
      const combined = combineSubscriptions(this.wanted);
      let opened = false;
      let finished = false;
      /** @type {Record<string, string>} */
      const query = { access_token: token, ...sseQuery(combined.topics, combined.filters, session.since ? null : this.rewind) };
      if (session.since) query.lastEventId = session.since;
      const es = new EventSource(withQuery(/** @type {string} */ (this.sseUrl), query));
      /** @type {ReturnType<typeof setTimeout> | undefined} */
      let probeTimer;
      /** @type {WebSocket | null} */
      let probe = null;
      /** @param {SessionResult} result */
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
        const at = this.chooser.probeAt;
        if (!this.wsUrl || this.chooser.mode !== "auto" || at === null || finished) return;
        probeTimer = setTimeout(() => {
          try { probe = new WebSocket(withQuery(/** @type {string} */ (this.wsUrl), { token })); } catch (_) { this.chooser.probed(false, Date.now()); return scheduleProbe(); }
          probe.onopen = () => { this.chooser.probed(true, Date.now()); finish({ opened: true, renew: true }); };
          probe.onclose = () => { probe = null; this.chooser.probed(false, Date.now()); scheduleProbe(); };
        }, Math.max(0, at - Date.now()));
      };
      const openTimer = setTimeout(() => finish({ opened: false, error: "sse: no response" }), this.openTimeoutMs);
      const renewTimer = setTimeout(() => finish({ opened: true, renew: true }), this.renewAfterMs);
      this._endSession = (result) => finish({ ...result, opened: opened && result.opened });
      es.onopen = () => {
        opened = true;
        clearTimeout(openTimer);
        this._opened("sse", session);
        scheduleProbe();
      };
      es.onerror = (e) => {
        if (e && typeof (/** @type {MessageEvent} */ (e)).data === "string") return; // a server-sent "event: error" frame, handled below
        finish({ opened, error: opened ? "sse: connection lost" : "sse: cannot connect" });
      };
      /** @param {MessageEvent} msg */
      const onFrame = (msg) => {
        if (typeof msg.data !== "string") return;
        const frame = frameFromSse(msg.type, msg.data, msg.lastEventId);
        if (!frame) return;
        if (frame.type === "cursor") {
          // where this stream starts: resume from here later
          if (!session.since) this.cursor.advance(frame.id);
          return;
        }
        this._deliver(frame, "sse", session);
      };
      // one SSE event name per topic (onmessage never fires for them): listen to every wanted one
      const names = new Set([...STATE_EVENT_NAMES, ...combined.topics.filter((t) => t !== WILDCARD)]);
      if (combined.topics.includes(WILDCARD)) for (const t of EVENT_TOPICS) names.add(t);
      for (const name of names) es.addEventListener(name, (msg) => onFrame(/** @type {MessageEvent} */ (msg)));
    });
  }
}

function baseHref() {
  return typeof location !== "undefined" ? location.href : "http://localhost/";
}

/**
 * @param {string} url
 * @param {Record<string, string | undefined | null>} params
 */
function withQuery(url, params) {
  const u = new URL(url, baseHref());
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") u.searchParams.set(k, v);
  }
  return u.toString();
}

/**
 * Claims of a JWT for display only (the server verifies tokens, never the page).
 * @param {string} token
 * @returns {Record<string, any>}
 */
export function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(Array.from(atob(part + "===".slice((part.length + 3) % 4)), (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""));
    return JSON.parse(json);
  } catch (_) {
    return {};
  }
}
