// rtstream-logic.js: the client's decisions, with no I/O and no clock of its
// own (times are passed in), so the shared JSON vectors (clients/vectors/) can
// drive them. The Python client's rtstream_client/logic.py implements the same
// rules and runs the same vectors.

/** @typedef {{types?: string[], sources?: string[], minAmount?: number}} Filters */

export const EVENT_TOPICS = Object.freeze(["transactions.new", "agent.action.completed", "balance.updated", "sync.completed"]);
export const WILDCARD = "*";
const ID_PATTERN = /^(\d{1,20})-(\d{1,20})$/;
const MAX_ID_PART = 18446744073709551615n; // 2^64 - 1, as on the server

/**
 * "1764090000000-3" -> [1764090000000n, 3n]; null when missing or malformed.
 * @param {unknown} id
 * @returns {[bigint, bigint] | null}
 */
export function eventIdKey(id) {
  const m = typeof id === "string" ? ID_PATTERN.exec(id) : null;
  if (!m) return null;
  const key = /** @type {[bigint, bigint]} */ ([BigInt(m[1]), BigInt(m[2])]);
  return key[0] <= MAX_ID_PART && key[1] <= MAX_ID_PART ? key : null;
}

/**
 * Numeric order of two valid ids: <0, 0, >0 (never string order: "9-0" < "10-0").
 * @param {string} a
 * @param {string} b
 * @returns {number}
 */
export function compareIds(a, b) {
  const x = eventIdKey(a), y = eventIdKey(b);
  if (!x || !y) throw new TypeError(`rtstream: malformed event id ${x ? b : a}`);
  if (x[0] !== y[0]) return x[0] < y[0] ? -1 : 1;
  if (x[1] !== y[1]) return x[1] < y[1] ? -1 : 1;
  return 0;
}

/**
 * Full-jitter exponential backoff: uniform in [0, min(cap, base * 2^attempt)).
 * @param {number} attempt
 * @param {number} base
 * @param {number} cap
 * @param {() => number} [rand]
 */
export function backoffDelay(attempt, base, cap, rand = Math.random) {
  return rand() * Math.min(cap, base * 2 ** Math.min(attempt, 30));
}

/**
 * The resume point and the dedupe rule. Ids of one entity only increase and all
 * topics travel in one ordered subscription, so "drop ids <= last" removes what
 * a resume or an at-least-once redelivery repeats. `older` admits an id below
 * the cursor that was never seen (rewind of a topic added at run time); it does
 * not move the cursor back.
 */
export class Cursor {
  /** @param {string | null} [lastId] */
  constructor(lastId = null) {
    if (lastId != null && !eventIdKey(lastId)) throw new TypeError(`rtstream: malformed event id ${lastId}`);
    /** @type {string | null} */
    this.lastId = lastId ?? null;
    /** @type {Set<string>} */
    this._seen = new Set();
  }

  /**
   * True if the event is new (the cursor advances), false for a repeat. Frames
   * without a valid id carry no cursor and always pass.
   * @param {unknown} id
   * @param {{older?: boolean}} [options]
   */
  accept(id, options = {}) {
    if (!eventIdKey(id)) return true;
    const eventId = /** @type {string} */ (id);
    if (this._seen.has(eventId)) return false;
    const newer = this.lastId === null || compareIds(eventId, this.lastId) > 0;
    if (!newer && !options.older) return false;
    this._seen.add(eventId);
    if (this._seen.size > 2000) this._seen.delete(/** @type {string} */ (this._seen.values().next().value));
    if (newer) this.lastId = eventId;
    return true;
  }

  /**
   * Move forward to a server-given start point (subscribed/SSE cursor) without an event.
   * @param {unknown} id
   */
  advance(id) {
    if (!eventIdKey(id)) return;
    const eventId = /** @type {string} */ (id);
    if (this.lastId === null || compareIds(eventId, this.lastId) > 0) this.lastId = eventId;
  }
}

/**
 * Which transport the next attempt uses. `auto`: WebSocket first; SSE after
 * `limit` WebSocket attempts in a row that never got a confirmed subscription,
 * or at once when the WebSocket's push path stalled (see StallWatch). While on
 * SSE the WebSocket is probed (SSE stays up): soon after an outage (SSE failed
 * too, or a WebSocket that worked failed), after `wsRetryAfter` when it looked
 * blocked or its push path stalled. A successful probe switches back. When SSE
 * keeps failing as well, attempts go back to the WebSocket.
 */
export class TransportChooser {
  /**
   * @param {"auto" | "ws" | "sse"} mode
   * @param {number} limit WebSocket failures before falling back
   * @param {number} wsRetryAfter probe interval while the WebSocket looks blocked
   * @param {number} outageProbeAfter first probe after an outage
   */
  constructor(mode = "auto", limit = 2, wsRetryAfter = 300_000, outageProbeAfter = 1_000) {
    if (!["auto", "ws", "sse"].includes(mode)) throw new TypeError(`rtstream: transport must be auto, ws or sse, got ${mode}`);
    this.mode = mode;
    this.limit = limit;
    this.wsRetryAfter = wsRetryAfter;
    this.outageProbeAfter = outageProbeAfter;
    /** @type {"ws" | "sse"} */
    this.current = mode === "sse" ? "sse" : "ws";
    /** @type {number | null} */
    this.probeAt = null;
    this.wsFailures = 0;
    this.sseFailures = 0;
    this.sseFailed = false;
    this.wsWorked = false;
    this.wsStalled = false;
  }

  /** @returns {"ws" | "sse"} */
  choose() {
    return this.current;
  }

  /**
   * An attempt that never got as far as a confirmed subscription.
   * @param {"ws" | "sse"} transport
   * @param {number} _now
   */
  failed(transport, _now) {
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
        this.current = "ws";
        this.wsFailures = 0;
      }
    }
  }

  /**
   * The WebSocket stayed open but stopped delivering (behind the pong's cursor).
   * @param {number} _now
   */
  stalled(_now) {
    this.wsStalled = true;
    if (this.mode !== "auto") return;
    this.current = "sse";
    this.sseFailures = 0;
    this.probeAt = null;
  }

  /**
   * @param {"ws" | "sse"} transport
   * @param {number} now
   */
  opened(transport, now) {
    if (transport === "ws") {
      this.wsFailures = 0;
      this.wsWorked = true;
      this.probeAt = null;
    } else {
      this.sseFailures = 0;
      // SSE may come back before the client sees it fail: a WebSocket that worked
      // before and now fails means an outage, not a network that blocks it
      const outage = (this.sseFailed || this.wsWorked) && !this.wsStalled;
      if (this.mode === "auto") this.probeAt = now + (outage ? this.outageProbeAfter : this.wsRetryAfter);
    }
    this.sseFailed = false;
  }

  /** The WebSocket delivered an event or caught up with a pong: its push path works. */
  delivered() {
    this.wsStalled = false;
  }

  /**
   * Result of a WebSocket probe made while on SSE.
   * @param {boolean} reachable
   * @param {number} now
   */
  probed(reachable, now) {
    if (reachable) {
      this.current = "ws";
      this.wsFailures = 0;
      this.probeAt = null;
    } else {
      this.probeAt = now + this.wsRetryAfter;
    }
  }
}

/**
 * Detects a WebSocket whose push path stalled: `pong.cursor` is the entity's
 * newest event id; if the newest id this client has seen (or was told it is
 * caught up to) stays behind a pong's cursor for `afterMs` and `pongs` pongs,
 * the stream is stalled. A live event in flight is behind for a moment only.
 * A filtered subscription never sees some ids: after a stall it resumes, and the
 * resume's start point catches the watch up.
 */
export class StallWatch {
  /**
   * @param {number} afterMs
   * @param {number} pongs pongs that must find the client behind (>= 2)
   */
  constructor(afterMs = 10_000, pongs = 2) {
    this.afterMs = afterMs;
    this.pongs = Math.max(2, pongs);
    /** @type {string | null} */
    this.seen = null;
    /** @type {string | null} */
    this.target = null;
    /** @type {number} */
    this.behindSince = 0;
    this.behindPongs = 0;
  }

  /**
   * The client has everything up to `id` (an event, or a server-given start point).
   * @param {unknown} id
   */
  caughtUp(id) {
    if (!eventIdKey(id)) return;
    const eventId = /** @type {string} */ (id);
    if (this.seen === null || compareIds(eventId, this.seen) > 0) this.seen = eventId;
    if (this.target !== null && compareIds(this.seen, this.target) >= 0) this.target = null;
  }

  /**
   * A pong arrived: "ok" (caught up), "behind" (within the bound) or "stalled".
   * @param {unknown} cursor
   * @param {number} now
   * @returns {"ok" | "behind" | "stalled"}
   */
  pong(cursor, now) {
    if (!eventIdKey(cursor) || cursor === "0-0") return "ok";
    const newest = /** @type {string} */ (cursor);
    if (this.seen !== null && compareIds(this.seen, newest) >= 0) {
      this.target = null;
      return "ok";
    }
    if (this.target === null) {
      this.target = newest;
      this.behindSince = now;
      this.behindPongs = 1;
      return "behind";
    }
    this.behindPongs += 1;
    return this.behindPongs >= this.pongs && now - this.behindSince >= this.afterMs ? "stalled" : "behind";
  }
}

/**
 * @param {Iterable<string> | string | null | undefined} topics
 * @returns {string[]}
 */
export function normalizeTopics(topics) {
  const list = typeof topics === "string" ? topics.split(",") : [...(topics || [])];
  const out = [...new Set(list.map((t) => t.trim()).filter(Boolean))];
  return out.length ? out : [WILDCARD];
}

/**
 * One WebSocket subscription for all wanted topics: several topics become "*"
 * with a `types` filter, so there is one replay and one ordered stream and a
 * single cursor resumes everything. `rewind` only without `since` (a resume
 * replays from the cursor instead).
 * @param {string[]} topics
 * @param {Filters | null | undefined} filters
 * @param {string | null | undefined} since
 * @param {number | null} [rewind]
 * @returns {{type: "subscribe", topic: string, filters?: Filters, since?: string, rewind?: number}}
 */
export function subscribeFrame(topics, filters, since, rewind = null) {
  /** @type {Filters} */
  const f = { ...(filters || {}) };
  let topic;
  if (topics.includes(WILDCARD) || topics.length > 1) {
    topic = WILDCARD;
    const wanted = topics.filter((t) => t !== WILDCARD);
    if (wanted.length && !topics.includes(WILDCARD)) {
      const types = f.types;
      f.types = wanted.filter((t) => !types || types.includes(t));
    }
  } else {
    topic = topics[0];
  }
  /** @type {{type: "subscribe", topic: string, filters?: Filters, since?: string, rewind?: number}} */
  const frame = { type: "subscribe", topic };
  if (Object.keys(f).length) frame.filters = f;
  if (since) frame.since = since;
  else if (rewind) frame.rewind = rewind;
  return frame;
}

/**
 * SSE query parameters (the token and the cursor are added by the caller).
 * @param {string[]} topics
 * @param {Filters | null | undefined} filters
 * @param {number | null} [rewind]
 * @returns {Record<string, string>}
 */
export function sseQuery(topics, filters, rewind = null) {
  const f = filters || {};
  /** @type {Record<string, string>} */
  const q = { topics: topics.join(",") };
  if (f.types) q.types = f.types.join(",");
  if (f.sources) q.sources = f.sources.join(",");
  if (f.minAmount != null) q.minAmount = String(f.minAmount);
  if (rewind) q.rewind = String(rewind);
  return q;
}

/**
 * The protocol frame one SSE message carries. The wire format is `id:` the
 * event id, `event:` the topic, `data:` the payload only (a payload is never
 * unwrapped, whatever fields it has). `cursor`, `error` and `replay_gap` are
 * control frames.
 * @param {string} eventName SSE `event:` ("message" when absent)
 * @param {string} data SSE `data:`
 * @param {string | null | undefined} lastId SSE `id:` of this message
 * @returns {Record<string, any> | null}
 */
export function frameFromSse(eventName, data, lastId) {
  const id = lastId || null;
  if (data === "" && (eventName === "" || eventName === "message") && id) return { type: "cursor", id };
  /** @type {any} */
  let payload;
  try { payload = JSON.parse(data); } catch (_) { return null; }
  const isObject = payload !== null && typeof payload === "object" && !Array.isArray(payload);
  if (eventName === "cursor" || (eventName === "message" && isObject && payload.type === "cursor")) {
    const cursorId = (isObject && payload.id) || id;
    return cursorId ? { type: "cursor", id: cursorId } : null;
  }
  if (eventName === "error" || eventName === "replay_gap") {
    return { type: "error", ...(isObject ? payload : {}), code: (isObject && payload.code) || "replay_gap" };
  }
  if (isObject && payload.type === "error" && eventName === "message") return payload;
  return { type: "event", topic: eventName, id, data: payload };
}

/**
 * What a WebSocket frame means to the session.
 * @param {any} frame
 * @param {boolean} subscribed whether the subscription is confirmed
 * @returns {"confirm" | "pong" | "fatal" | "event" | "gap" | "error" | "presence" | "ack" | "ignore"}
 */
export function classifyWsFrame(frame, subscribed) {
  if (!frame || typeof frame !== "object") return "ignore";
  switch (frame.type) {
    case "subscribed": return subscribed ? "ack" : "confirm";
    case "unsubscribed": return "ack";
    case "pong": return "pong";
    case "presence": return "presence";
    case "event": return "event";
    case "error":
      if (frame.code === "replay_gap") return "gap";
      return !subscribed && FATAL_CODES.includes(frame.code) ? "fatal" : "error";
    default: return "ignore";
  }
}

/** Subscribe errors no reconnect can fix. */
export const FATAL_CODES = Object.freeze(["unknown_topic", "invalid_message", "forbidden", "unauthorized"]);

/**
 * Replayed: arrived on a resumed session and published before it began (ids
 * start with the publish time in ms).
 * @param {unknown} id
 * @param {boolean} resumed
 * @param {number} sessionStartedMs
 */
export function isReplayed(id, resumed, sessionStartedMs) {
  const key = eventIdKey(id);
  return Boolean(resumed && key && key[0] <= BigInt(Math.floor(sessionStartedMs)));
}

/**
 * The one server subscription for a set of run-time subscriptions
 * (topic -> filters): the topics, the filters the server applies, and whether
 * the client must filter per topic itself (when the topics' filters differ the
 * server gets only what they share, so nothing wanted is filtered out).
 * @param {Map<string, Filters | null>} wanted
 * @returns {{topics: string[], filters: Filters | null, local: boolean}}
 */
export function combineSubscriptions(wanted) {
  const topics = normalizeTopics(wanted.keys());
  const all = [...wanted.values()].map((f) => canonicalFilters(f));
  if (!all.length) return { topics, filters: null, local: false };
  const first = JSON.stringify(all[0]);
  if (all.every((f) => JSON.stringify(f) === first)) return { topics, filters: all[0], local: false };
  /** @type {Filters} */
  const shared = {};
  if (all.every((f) => f.minAmount != null)) shared.minAmount = Math.min(...all.map((f) => /** @type {number} */ (f.minAmount)));
  if (all.every((f) => f.sources)) shared.sources = [...new Set(all.flatMap((f) => f.sources || []))].sort();
  return { topics, filters: Object.keys(shared).length ? shared : null, local: true };
}

/**
 * @param {Filters | null | undefined} f
 * @returns {Filters}
 */
function canonicalFilters(f) {
  /** @type {Filters} */
  const out = {};
  if (f && f.types) out.types = [...f.types].sort();
  if (f && f.sources) out.sources = [...f.sources].sort();
  if (f && f.minAmount != null) out.minAmount = Number(f.minAmount);
  return out;
}

/**
 * The server's filter rule, for per-topic filtering on the client: `types` keeps
 * listed topics, `sources` listed sources (an event whose source the transport
 * does not carry passes), `minAmount` keeps |data.amount| (or |data.change|) >= N
 * and passes events that carry neither.
 * @param {Filters | null | undefined} filters
 * @param {string} topic
 * @param {string | null | undefined} source
 * @param {unknown} data
 */
export function matchesFilters(filters, topic, source, data) {
  if (!filters) return true;
  if (filters.types && !filters.types.includes(topic)) return false;
  if (filters.sources && source != null && !filters.sources.includes(source)) return false;
  if (filters.minAmount != null && data !== null && typeof data === "object") {
    const d = /** @type {Record<string, unknown>} */ (data);
    const amount = "amount" in d ? d.amount : d.change;
    if (typeof amount === "number" && Math.abs(amount) < filters.minAmount) return false;
  }
  return true;
}
