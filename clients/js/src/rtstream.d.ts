// Types of rtstream-client (rtstream.js).
import type { EventTopic, Filters, Transport, TransportMode } from "./rtstream-logic.js";

export * from "./rtstream-logic.js";

/** Payloads of the contract's topics. */
export interface TopicPayloads {
  "transactions.new": { transactionId: string; amount: number; merchant?: string; category?: string; [key: string]: unknown };
  "balance.updated": { accountId: string; newBalance: number; change: number; [key: string]: unknown };
  "agent.action.completed": { agentId: string; action: string; result?: unknown; [key: string]: unknown };
  "sync.completed": { source: string; recordsUpdated?: number; [key: string]: unknown };
}

export interface StreamEvent<T = unknown> {
  id: string | null;
  topic: string;
  data: T;
  /** WebSocket only (SSE carries the payload alone). */
  source: string | null;
  /** WebSocket only. */
  timestamp: string | null;
  transport: Transport;
  /** Delivered by a resume: published while this client was disconnected. */
  replayed: boolean;
}

export type ConnectionStatus = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface ClientState {
  status: ConnectionStatus;
  /** `status`, except "fallback-sse" while open on SSE although the WebSocket is wanted. */
  connection: ConnectionStatus | "fallback-sse";
  transport: Transport | null;
  /** On SSE although the WebSocket is wanted (auto mode). */
  fallback: boolean;
  retryIn: number | null;
  retryAt: number | null;
  attempt: number;
  reconnects: number;
  replayed: number;
  lastEventId: string | null;
  error: string | null;
}

export interface PresenceUser {
  userId: string;
  [key: string]: unknown;
}

export interface ClientOptions {
  wsUrl?: string | null;
  sseUrl?: string | null;
  /** Default: /presence next to sseUrl. */
  presenceUrl?: string | null;
  token?: string;
  getToken?: () => string | Promise<string>;
  /** Topics at start (default ["*"]; [] = none until subscribe()). */
  topics?: string[];
  filters?: Filters | null;
  /** The last N events on a start without a cursor (1..100). */
  rewind?: number | null;
  since?: string | null;
  transport?: TransportMode;
  wsFailuresBeforeFallback?: number;
  wsRetryAfterMs?: number;
  outageProbeAfterMs?: number;
  backoffBaseMs?: number;
  backoffCapMs?: number;
  openTimeoutMs?: number;
  pingIntervalMs?: number;
  pongTimeoutMs?: number;
  /** Behind the pong's cursor this long (and for stallPongs pongs) = stalled. */
  stallAfterMs?: number;
  stallPongs?: number;
  renewAfterMs?: number;
  rand?: () => number;
  onEvent?: (event: StreamEvent) => void;
  onState?: (state: ClientState) => void;
  onReplayGap?: (gap: ReplayGapDetail) => void;
}

export interface ReplayGapDetail { since: string | null; message: string; transport: Transport }
export interface RecoveredDetail { since: string | null; transport: Transport }
export interface FatalDetail { code: string; message: string }
export interface ServerErrorDetail { code: string; message?: string }

export interface RealtimeClientEventMap {
  event: CustomEvent<StreamEvent>;
  state: CustomEvent<ClientState>;
  replaygap: CustomEvent<ReplayGapDetail>;
  recovered: CustomEvent<RecoveredDetail>;
  fallback: CustomEvent<{ transport: Transport }>;
  stalled: CustomEvent<{ lastEventId: string | null; transport: Transport }>;
  fatal: CustomEvent<FatalDetail>;
  servererror: CustomEvent<ServerErrorDetail>;
}

export declare class RealtimeClient extends EventTarget {
  constructor(options: ClientOptions);
  readonly state: ClientState;
  readonly lastEventId: string | null;
  start(): this;
  stop(): void;
  subscribe(topic: string, options?: { filters?: Filters | null; rewind?: number | null }): this;
  unsubscribe(topic: string): this;
  on<K extends EventTopic>(topic: K, handler: (event: StreamEvent<TopicPayloads[K]>) => void): () => void;
  on(topic: string, handler: (event: StreamEvent) => void): () => void;
  off(topic: string, handler: (event: StreamEvent<any>) => void): void;
  presence(options?: { timeoutMs?: number }): Promise<PresenceUser[]>;
  addEventListener<K extends keyof RealtimeClientEventMap>(type: K, listener: (ev: RealtimeClientEventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof RealtimeClientEventMap>(type: K, listener: (ev: RealtimeClientEventMap[K]) => void, options?: boolean | EventListenerOptions): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

export declare function tokenClaims(token: string): Record<string, any>;
