// Types for client.js (the npm package `tether-client`, also served as
// /static/tether/client.js). Every runtime export of client.js is declared
// here; tests/project/test_js_package.py checks the two lists match.
//
// Frames are typed for the fields the protocol names (docs/protocol.md); the
// server may add fields, so every frame also allows unknown keys.

/** Any frame: one JSON object with a string `type`. */
export interface Frame {
  type: string;
  id?: string;
  [key: string]: unknown;
}

/** A user representation. `external_id` is set for users from connection tokens. */
export interface User {
  id: number;
  username: string;
  external_id?: string;
}

export interface WelcomeFrame extends Frame {
  type: "welcome";
  protocol: number;
  connection_id: string;
  node: string;
  user: User;
  heartbeat: { interval: number; timeout: number };
  limits: {
    max_frame_bytes: number;
    max_body_chars: number;
    max_subscriptions: number;
    rate: { per_second: number; burst: number };
  };
  server_time: number;
  /** ms when the socket's credential ends (it closes with 4401 then, unless refreshed), or null. */
  expires_at?: number | null;
}

export type ErrorCode =
  | "bad_json"
  | "bad_request"
  | "unknown_type"
  | "forbidden"
  | "not_found"
  | "too_large"
  | "rate_limited"
  | "limit_exceeded"
  | "internal"
  | (string & {});

export interface ErrorFrame extends Frame {
  type: "error";
  code: ErrorCode;
  message: string;
  retry_after?: number;
}

/** What the client's promises reject with: HTTP errors, error frames, "disconnected", "timeout". */
export interface TetherError extends Error {
  /** HTTP status, for REST calls (`api`, `fetchTicket`, `exchangeToken`). */
  status?: number;
  /** The error code: REST `error`, an error frame's `code`, or `disconnected` / `timeout`. */
  code?: string;
  /** The decoded REST error body. */
  data?: unknown;
  /** The error frame, for socket requests. */
  frame?: ErrorFrame;
}

export interface Attachment {
  id: string;
  name: string;
  size: number;
  content_type: string;
  url: string;
}

/** A conversation event (PROTOCOL 6 and 10). */
export interface MessageFrame extends Frame {
  type: "message";
  conversation: string;
  seq: number;
  kind?: "message" | "edit" | "delete" | "reaction" | (string & {});
  message_id: string;
  client_id: string;
  sender: User | null;
  body: string;
  ts: number;
  reply_to?: string | null;
  attachments?: Attachment[];
  edited_at?: number | null;
  deleted?: boolean;
  reactions?: Record<string, number[]>;
  target?: string;
  emoji?: string;
  on?: boolean;
}

/** A message as REST and `history` list it: the `message` frame without `type`. */
export type Message = Omit<MessageFrame, "type">;

export interface Conversation {
  id: string;
  kind: "group" | "direct";
  title: string | null;
  members: User[];
  created_by: User | null;
  last_seq: number;
  read_seq?: number;
  unread?: number;
  read_positions?: Record<string, number>;
  [key: string]: unknown;
}

export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "offline" | "closed";

export interface StateDetail {
  state: ConnectionState;
  attempt: number;
  /** ms until the next attempt (reconnecting). */
  delay?: number;
  /** ms epoch of the next attempt, for a countdown; 0 when none is planned. */
  retryAt?: number;
  /** The close code that caused this state. */
  code?: number;
  /** Why: for `offline` one of `network`, `auth`, `forbidden`, `closed`. */
  reason?: string;
  node?: string;
  user?: User;
}

export interface PongDetail {
  rtt: number;
  load: number;
  serverTime: number;
}

export interface AuthRequiredDetail {
  status?: number;
  code?: string | number;
}

export interface RefreshDetail {
  /** The new end of the socket's credential, ms (server clock). */
  expires_at: number;
}

export interface RefreshFailedDetail {
  code?: string;
  status?: number;
  message: string;
}

/** A frame the client sends; `id` is filled in by `request()` when absent. */
export interface OutgoingFrame {
  type: string;
  id?: string;
  [key: string]: unknown;
}

/** A JWT, or a promise of one. */
export type TokenResult = string | Promise<string>;

export interface ConnectionOptions {
  /** Socket URL; default `ws(s)://<this page's host>/ws/chat/` (or `/ws/stream/`). Required outside a browser page. */
  url?: string;
  /**
   * `"session"`: the cookie rides the handshake; `"ticket"`: `getTicket()` before every attempt.
   * Default `"ticket"` when `getToken` is given, else `"session"`.
   */
  auth?: "session" | "ticket";
  /** A single-use ticket; default: from `getToken` when given, else `fetchTicket` (the session). */
  getTicket?: () => TokenResult;
  /**
   * A connection token (a JWT your backend signs, PROTOCOL 11). Called before
   * every connect (the token is traded for a ticket at `ticketUrl`), before the
   * token ends (sent as `refresh`), and after a 4401. Reject with an Error whose
   * `status` is 401 or 403 to mean "the user must log in again".
   */
  getToken?: () => TokenResult;
  /** Where tokens become tickets; default `http(s)://<the socket's host>/api/auth/ws-ticket/`. */
  ticketUrl?: string;
  /** Another WebSocket implementation; default `globalThis.WebSocket`. */
  WebSocket?: new (url: string) => WebSocket;
  /** The jitter source; default `Math.random`. */
  random?: () => number;
}

export interface ChatClientOptions extends ConnectionOptions {
  /** `{conversation: seq}` the app already holds, for the first `sync`. */
  positions?: Record<string, number>;
}

/** Where a subscription token comes from: a string, or a function of the topic. */
export type SubscriptionTokenSource =
  | string
  | ((topic: string) => string | null | undefined | Promise<string | null | undefined>);

export interface StreamClientOptions extends ConnectionOptions {
  /**
   * The subscription token for a topic (PROTOCOL 11), called before every
   * subscribe of a topic that has no token of its own, resubscribes after a
   * reconnect included. Return null or undefined for topics that need none.
   */
  getSubscriptionToken?: (topic: string) => string | null | undefined | Promise<string | null | undefined>;
}

export interface RequestOptions {
  /** ms to wait for the reply; default 15000. */
  timeout?: number;
  /** Return true to keep waiting after a frame with the request's id (for multi-frame replies). */
  keep?: (frame: Frame) => boolean;
}

export interface ConnectionEventMap {
  state: StateDetail;
  welcome: WelcomeFrame;
  /** Every frame received. */
  frame: Frame;
  /** An error frame that answers nothing the client asked. */
  error: ErrorFrame;
  pong: PongDetail;
  "auth-required": AuthRequiredDetail;
  /** A connection that had been welcomed is gone. */
  disconnect: Record<string, never>;
  refresh: RefreshDetail;
  "refresh-failed": RefreshFailedDetail;
}

export type Listener<T, D> = (this: T, event: CustomEvent<D>) => void;

/** One resilient socket: connect, welcome, heartbeat, backoff, close codes, request/reply by id. */
export declare class Connection extends EventTarget {
  constructor(path: string, options?: ConnectionOptions);
  readonly url: string;
  readonly auth: "session" | "ticket";
  readonly ticketUrl: string;
  readonly state: ConnectionState;
  /** The current connection's `welcome`, null while not connected. */
  readonly welcome: WelcomeFrame | null;
  readonly connected: boolean;
  /** When the socket's credential ends (ms, server clock), or null. */
  readonly expiresAt: number | null;
  getTicket: () => TokenResult;
  getToken: (() => TokenResult) | null;
  /** Start connecting (idempotent). */
  connect(): this;
  /** Close for good (code 1000); no reconnect until connect() is called again. */
  close(): void;
  /** Skip the backoff wait. */
  reconnectNow(why?: string): void;
  /** Send one frame if the socket is open; false otherwise (nothing is queued). */
  sendFrame(frame: OutgoingFrame): boolean;
  /** Send a frame with an `id` and resolve with the reply carrying it; reject with a TetherError. */
  request<R extends Frame = Frame>(frame: OutgoingFrame, options?: RequestOptions): Promise<R>;
  /** Send `refresh` with a token from getToken() now, instead of waiting for the planned time. */
  refreshToken(): Promise<void>;

  addEventListener<K extends keyof ConnectionEventMap>(
    type: K,
    listener: Listener<this, ConnectionEventMap[K]>,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof ConnectionEventMap>(
    type: K,
    listener: Listener<this, ConnectionEventMap[K]>,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/** The events both clients pass on from their Connection. */
export type SocketEventMap = Omit<ConnectionEventMap, "frame">;

/** What ChatClient and StreamClient share (not exported at run time). */
declare abstract class SocketClient<M> extends EventTarget {
  readonly conn: Connection;
  readonly state: ConnectionState;
  connect(): this;
  close(): void;

  addEventListener<K extends keyof M>(
    type: K,
    listener: Listener<this, M[K]>,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof M>(
    type: K,
    listener: Listener<this, M[K]>,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

export interface AckDetail {
  id: string;
  conversation: string;
  seq: number;
  message_id: string;
  ts: number;
  duplicate: boolean;
}

export interface SendFailedDetail {
  id: string;
  conversation: string;
  code: string;
  message?: string;
}

export interface ReceiptFrame extends Frame {
  type: "receipt";
  conversation: string;
  user: User;
  seq: number;
}

export interface TypingFrame extends Frame {
  type: "typing";
  conversation: string;
  user: User;
}

export interface PresenceFrame extends Frame {
  type: "presence";
  user: User;
  status: "online" | "offline";
  ts: number;
}

export interface SyncedFrame extends Frame {
  type: "synced";
  conversations: Record<string, { seq: number; replayed: number; complete: boolean }>;
  /** More of the user's conversations follow on later pages (paged sync, an addition). */
  more: boolean;
  /** The `page` to ask for next, when `more`. */
  next?: string;
}

export interface ChatEventMap extends SocketEventMap {
  message: MessageFrame;
  ack: AckDetail;
  "send-failed": SendFailedDetail;
  joined: Conversation;
  left: { conversation: string };
  receipt: ReceiptFrame;
  typing: TypingFrame;
  presence: PresenceFrame;
  synced: SyncedFrame;
}

export interface OutboxEntry {
  id: string;
  /** The frame it is sent as. */
  type: "send" | "edit" | "delete" | "react";
  conversation: string;
  /** The body sent (`""` for a delete or a reaction). */
  body: string;
  /** The frame's own fields (`body`, `message_id`, `emoji`, `on`, `reply_to`, `attachments`). */
  fields: Record<string, unknown>;
  failed: boolean;
  createdAt: number;
}

export interface SendOptions {
  /** The idempotency key (default: a random one). */
  id?: string;
  /** The message_id of a message of the same conversation this one replies to. */
  reply_to?: string | null;
  /** Ids of attachments the user uploaded to this conversation (at most 10). */
  attachments?: string[];
}

/**
 * Apply a conversation event to local messages (message_id → message): a
 * `kind: "message"` frame replaces its message; an edit, delete or reaction
 * changes its target. Returns the message changed, or undefined (unknown target).
 */
export declare function applyEvent(
  messages: Map<string, Message>,
  frame: MessageFrame | Message,
): Message | undefined;

export interface HistoryPage {
  messages: Message[];
  has_more: boolean;
}

export interface ConversationsPage {
  conversations: Conversation[];
  has_more?: boolean;
}

/** The chat client for `/ws/chat/`. */
export declare class ChatClient extends SocketClient<ChatEventMap> {
  constructor(options?: ChatClientOptions);
  /** Conversation → last `seq` delivered. */
  readonly positions: Map<string, number>;
  /** Unacknowledged sends, by client id. */
  readonly outbox: Map<string, OutboxEntry>;
  /** The user of the current connection (from `welcome`). */
  readonly user: User | null;
  /** Start tracking a conversation from `seq` (e.g. one just created over REST). */
  follow(conversation: string, seq: number): void;
  /** Queue a message; returns its client id at once. The third argument is the id,
   * or options (PROTOCOL 10: with attachments the body may be empty). */
  send(conversation: string, body: string, options?: string | SendOptions): string;
  /** Edit one of the user's messages; queued and acknowledged like a send. */
  edit(conversation: string, messageId: string, body: string, id?: string): string;
  /** Delete a message (its sender, the conversation's creator or staff). */
  delete(conversation: string, messageId: string, id?: string): string;
  /** Add (`on` true, the default) or remove the user's reaction on a message. */
  react(conversation: string, messageId: string, emoji: string, on?: boolean, id?: string): string;
  /** Send a failed message again with the same id. */
  retry(id: string): boolean;
  /** Forget a queued or failed message. */
  discard(id: string): boolean;
  history(
    conversation: string,
    options?: { before?: number; after?: number; limit?: number },
  ): Promise<HistoryPage>;
  conversations(): Promise<ConversationsPage>;
  presence(users: number[]): Promise<Record<string, "online" | "offline">>;
  markRead(conversation: string, seq: number): boolean;
  typing(conversation: string): boolean;
}

export interface Publication {
  offset: number;
  data: unknown;
  ts: number;
}

export interface PubFrame extends Frame {
  type: "pub";
  topic: string;
  offset: number;
  epoch: string;
  data: unknown;
  ts: number;
}

export interface SubscribedDetail extends Frame {
  type: "subscribed";
  topic: string;
  offset: number;
  epoch: string;
  recovered: boolean;
  publications: Publication[];
  /** Whether `since` was sent; `recovered` false after a resume means the gap is lost. */
  resumed: boolean;
}

export interface UnsubscribedFrame extends Frame {
  type: "unsubscribed";
  topic: string;
}

export interface SubscribeFailedDetail {
  topic: string;
  /** An error frame's code (e.g. `forbidden`), or `token` when the token source failed. */
  code: string;
  message: string;
}

export interface StreamEventMap extends SocketEventMap {
  subscribed: SubscribedDetail;
  pub: PubFrame;
  unsubscribed: UnsubscribedFrame;
  "subscribe-failed": SubscribeFailedDetail;
}

/** A topic's position, to persist and resume from after a reload. */
export interface TopicEntry {
  topic: string;
  offset: number | null;
  epoch: string | null;
  active: boolean;
}

export interface SubscribeOptions {
  /** Resume after this offset of `epoch` (both needed). */
  offset?: number | null;
  epoch?: string | null;
  /** The topic's subscription token, or a function called before every subscribe of it. */
  token?: SubscriptionTokenSource;
}

/** The topic client for `/ws/stream/`. */
export declare class StreamClient extends SocketClient<StreamEventMap> {
  constructor(options?: StreamClientOptions);
  readonly topics: Map<string, TopicEntry>;
  getSubscriptionToken: StreamClientOptions["getSubscriptionToken"] | null;
  /** Follow a topic, optionally from a known position and with a subscription token. */
  subscribe(topic: string, options?: SubscribeOptions): void;
  unsubscribe(topic: string): void;
}

/** A random hex id with a prefix, usable as an idempotency key. */
export declare function randomId(prefix?: string): string;
/** The csrftoken cookie (or `<meta name="csrf-token">`). */
export declare function csrfToken(): string;
/** fetch() for Tether's JSON API with the session and CSRF; rejects with a TetherError. */
export declare function api<T = any>(
  path: string,
  options?: { method?: string; body?: unknown; headers?: Record<string, string> },
): Promise<T>;
/** A single-use socket ticket with the session. */
export declare function fetchTicket(): Promise<string>;
/** Trade a connection token for a single-use socket ticket; rejects with a TetherError. */
export declare function exchangeToken(token: string, ticketUrl?: string): Promise<string>;
/** Full-jitter backoff in ms for the given attempt. */
export declare function backoffDelay(attempt: number, random?: () => number): number;

// Only what is marked `export` above is exported (SocketClient is not).
export {};
