// Types of rtstream-logic.js: the client's pure decisions (shared JSON vectors in clients/vectors/).

/** Subscription filters (the server's rule; see the README's contract section). */
export interface Filters {
  types?: string[];
  sources?: string[];
  minAmount?: number;
}

export type Transport = "ws" | "sse";
export type TransportMode = "auto" | Transport;

export declare const EVENT_TOPICS: readonly ["transactions.new", "agent.action.completed", "balance.updated", "sync.completed"];
export type EventTopic = (typeof EVENT_TOPICS)[number];
export declare const WILDCARD: "*";
export declare const FATAL_CODES: readonly string[];

export declare function eventIdKey(id: unknown): [bigint, bigint] | null;
export declare function compareIds(a: string, b: string): number;
export declare function backoffDelay(attempt: number, base: number, cap: number, rand?: () => number): number;

export declare class Cursor {
  constructor(lastId?: string | null);
  lastId: string | null;
  accept(id: unknown, options?: { older?: boolean }): boolean;
  advance(id: unknown): void;
}

export declare class TransportChooser {
  constructor(mode?: TransportMode, limit?: number, wsRetryAfter?: number, outageProbeAfter?: number);
  readonly mode: TransportMode;
  current: Transport;
  probeAt: number | null;
  choose(): Transport;
  failed(transport: Transport, now: number): void;
  stalled(now: number): void;
  opened(transport: Transport, now: number): void;
  delivered(): void;
  probed(reachable: boolean, now: number): void;
}

export type StallVerdict = "ok" | "behind" | "stalled";

export declare class StallWatch {
  constructor(afterMs?: number, pongs?: number);
  seen: string | null;
  caughtUp(id: unknown): void;
  pong(cursor: unknown, now: number): StallVerdict;
}

export interface SubscribeFrame {
  type: "subscribe";
  topic: string;
  filters?: Filters;
  since?: string;
  rewind?: number;
}

export declare function normalizeTopics(topics: Iterable<string> | string | null | undefined): string[];
export declare function subscribeFrame(topics: string[], filters: Filters | null | undefined, since: string | null | undefined, rewind?: number | null): SubscribeFrame;
export declare function sseQuery(topics: string[], filters: Filters | null | undefined, rewind?: number | null): Record<string, string>;
export declare function frameFromSse(eventName: string, data: string, lastId: string | null | undefined): Record<string, any> | null;
export type WsFrameKind = "confirm" | "pong" | "fatal" | "event" | "gap" | "error" | "presence" | "ack" | "ignore";
export declare function classifyWsFrame(frame: unknown, subscribed: boolean): WsFrameKind;
export declare function isReplayed(id: unknown, resumed: boolean, sessionStartedMs: number): boolean;
export declare function combineSubscriptions(wanted: Map<string, Filters | null>): { topics: string[]; filters: Filters | null; local: boolean };
export declare function matchesFilters(filters: Filters | null | undefined, topic: string, source: string | null | undefined, data: unknown): boolean;
