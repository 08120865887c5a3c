// Tether's JavaScript client (wire protocol v1): an ES module with no
// dependencies and no DOM code, so any web app can import it. This file is both
// the npm package `tether-client` (clients/js/) and the web app's
// /static/tether/client.js. Types: client.d.ts beside it. See docs/client.md.

const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 30000;
// A connection that stayed up this long proves the trouble is over.
const BACKOFF_RESET_MS = 30000;
// Close codes after which reconnecting on our own would be wrong (PROTOCOL 4).
const NO_RETRY_CODES = new Set([1000, 4400, 4401, 4403]);
// A client-initiated close for a dead socket; 4000-4999 is ours to use.
const CLIENT_TIMEOUT_CODE = 4000;
const SEND_ACK_TIMEOUT_MS = 15000;
const REQUEST_TIMEOUT_MS = 15000;
// A handshake that neither opens nor fails (a black-holed network) is abandoned.
const CONNECT_TIMEOUT_MS = 15000;
// Out-of-order messages held while a gap is refilled; beyond this we drop and
// rely on the refill, so a broken server cannot grow our memory without end.
const MAX_HELD_PER_CONVERSATION = 2000;
const HISTORY_PAGE = 100;
// A connection token is refreshed a third of its remaining life before it ends,
// at most this early: short-lived tokens still leave time for getToken() and
// the round trip, long-lived ones are not renewed needlessly often.
const REFRESH_LEAD_MAX_MS = 60000;
// After a failed refresh, the next try (while the token has that long left).
const REFRESH_RETRY_MS = 5000;

/** A random id usable as an idempotency key (crypto.randomUUID needs a secure context). */
export function randomId(prefix = "") {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The csrftoken cookie (or a `<meta name="csrf-token">`), for REST calls with the session. */
export function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  if (match) return decodeURIComponent(match[1]);
  const meta = globalThis.document?.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

/**
 * fetch() for Tether's JSON API with the session cookie and CSRF header.
 * Resolves to the decoded body; rejects with an Error carrying `status` and `code`.
 */
export async function api(path, { method = "GET", body, headers = {} } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json", ...headers } };
  if (method !== "GET" && method !== "HEAD") init.headers["X-CSRFToken"] = csrfToken();
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  return readJson(await fetch(path, init));
}

/** The decoded JSON body of a response; rejects with an Error carrying `status` and `code`. */
async function readJson(response) {
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: "bad_json", detail: text.slice(0, 200) };
  }
  if (!response.ok) {
    const error = new Error((data && data.detail) || `HTTP ${response.status}`);
    error.status = response.status;
    error.code = data && data.error;
    error.data = data;
    throw error;
  }
  return data;
}

/** Fetch a single-use socket ticket with the session (POST /api/auth/ws-ticket/). */
export async function fetchTicket() {
  const data = await api("/api/auth/ws-ticket/", { method: "POST" });
  return data.ticket;
}

/**
 * Trade a connection token (a JWT from the application's backend, PROTOCOL 11)
 * for a single-use socket ticket: POST /api/auth/ws-ticket/ with
 * `Authorization: Bearer <jwt>`. Works across origins listed in the server's
 * ALLOWED_ORIGINS. Rejects with an Error carrying `status` and `code`.
 */
export async function exchangeToken(token, ticketUrl = "/api/auth/ws-ticket/") {
  // No cookies: a session riding along would make the server ask for CSRF.
  const response = await fetch(ticketUrl, {
    method: "POST",
    credentials: "omit",
    headers: { Accept: "application/json", Authorization: `Bearer ${token}` },
  });
  return (await readJson(response)).ticket;
}

function defaultUrl(path) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}${path}`;
}

/** The HTTP(S) URL of `path` on the server that a socket URL points to. */
function httpUrl(socketUrl, path) {
  const url = new URL(socketUrl);
  const scheme = url.protocol === "wss:" || url.protocol === "https:" ? "https" : "http";
  return `${scheme}://${url.host}${path}`;
}

/** Full jitter (PROTOCOL 4): random(0, min(30 s, 0.5 s * 2^attempt)). */
export function backoffDelay(attempt, random = Math.random) {
  const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 16));
  return Math.floor(random() * cap);
}

/**
 * One resilient socket: connect, welcome, heartbeat, backoff, close codes,
 * request/reply by id. ChatClient and StreamClient build on it; it is exported
 * for apps that want the plumbing only.
 *
 * Events (CustomEvent, data in `detail`): `state`, `welcome`, `frame`,
 * `error` (unsolicited error frames), `pong`, `auth-required`, `disconnect`,
 * `refresh` and `refresh-failed` (connection tokens from getToken).
 */
export class Connection extends EventTarget {
  constructor(path, options = {}) {
    super();
    this.url = options.url || defaultUrl(path);
    // A connection token source makes every attempt a ticket attempt: the token
    // itself never goes into a URL (proxy logs), only the single-use ticket.
    this.getToken = options.getToken || null;
    this.ticketUrl = options.ticketUrl || httpUrl(this.url, "/api/auth/ws-ticket/");
    // "session": the cookie rides the handshake; "ticket": a fresh ticket per attempt.
    this.auth = options.auth || (this.getToken ? "ticket" : "session");
    this.getTicket =
      options.getTicket || (this.getToken ? async () => exchangeToken(await this.getToken(), this.ticketUrl) : fetchTicket);
    this.WebSocketImpl = options.WebSocket || globalThis.WebSocket;
    this.random = options.random || Math.random;
    this.ws = null;
    this.state = "idle";
    this.attempt = 0;
    this.welcome = null;
    this.pending = new Map();
    this.stopped = true;
    this.retryTimer = null;
    this.retryAt = 0;
    this.tick = null;
    this.upSince = 0;
    this.lastHeard = 0;
    this.lastSent = 0;
    this.nextTicket = null;
    this.triedNewCredentials = false;
    this.closeInfo = null;
    this.requestSeq = 0;
    // The server's clock minus ours, from `welcome`: expiry times are the server's.
    this.clockOffset = 0;
    this.expiresAt = null;
    this.refreshAt = 0;
    this.refreshing = false;
    this.onOnline = () => this.reconnectNow("online");
    this.onOffline = () => this.dropForOffline();
    this.onVisible = () => {
      if (document.visibilityState === "visible") this.reconnectNow("visible");
    };
  }

  /** Start connecting (idempotent). */
  connect() {
    if (!this.stopped) return this;
    this.stopped = false;
    if (typeof window !== "undefined") {
      window.addEventListener("online", this.onOnline);
      window.addEventListener("offline", this.onOffline);
      document.addEventListener("visibilitychange", this.onVisible);
    }
    this.open();
    return this;
  }

  /** Close for good (code 1000); no reconnect until connect() is called again. */
  close() {
    this.stopped = true;
    if (typeof window !== "undefined") {
      window.removeEventListener("online", this.onOnline);
      window.removeEventListener("offline", this.onOffline);
      document.removeEventListener("visibilitychange", this.onVisible);
    }
    clearTimeout(this.retryTimer);
    this.teardown(1000);
    this.setState("closed", {});
  }

  get connected() {
    return this.state === "connected";
  }

  setState(state, extra) {
    this.state = state;
    this.emit("state", { state, attempt: this.attempt, ...extra });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  async open() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.stopped || this.ws) return;
    if (typeof navigator !== "undefined" && navigator.onLine === false) {
      // Nothing will get through; the `online` event brings us back at once.
      this.setState("offline", { reason: "network" });
      return;
    }
    this.setState(this.attempt === 0 && !this.welcome ? "connecting" : "reconnecting", {
      delay: 0,
      retryAt: 0,
    });
    let url = this.url;
    let ticket = this.nextTicket;
    this.nextTicket = null;
    if (!ticket && this.auth === "ticket") {
      try {
        ticket = await this.getTicket();
      } catch (error) {
        if (error.status === 401 || error.status === 403) return this.authRequired(error);
        return this.scheduleRetry({ code: 0, reason: "ticket" });
      }
      if (this.stopped || this.ws) return;
    }
    if (ticket) url += (url.includes("?") ? "&" : "?") + "ticket=" + encodeURIComponent(ticket);
    let ws;
    try {
      ws = new this.WebSocketImpl(url);
    } catch {
      return this.scheduleRetry({ code: 0, reason: "constructor" });
    }
    this.ws = ws;
    this.welcome = null;
    this.connectTimer = setTimeout(() => {
      if (ws !== this.ws || this.welcome) return;
      this.teardown(CLIENT_TIMEOUT_CODE);
      this.scheduleRetry({ code: CLIENT_TIMEOUT_CODE, reason: "connect timeout" });
    }, CONNECT_TIMEOUT_MS);
    ws.onmessage = (event) => this.onFrame(ws, event.data);
    ws.onclose = (event) => this.onClose(ws, event.code);
  }

  onFrame(ws, raw) {
    if (ws !== this.ws) return;
    this.lastHeard = Date.now();
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    if (!frame || typeof frame.type !== "string") return;
    if (frame.type === "welcome") return this.onWelcome(frame);
    if (frame.type === "ping") return this.sendFrame({ type: "pong" });
    if (frame.type === "pong" && typeof frame.ts === "number") {
      this.emit("pong", { rtt: Date.now() - frame.ts, load: frame.load, serverTime: frame.server_time });
    }
    if (frame.id !== undefined && this.pending.has(frame.id)) {
      const { resolve, reject, timer, keep } = this.pending.get(frame.id);
      if (!keep || !keep(frame)) {
        clearTimeout(timer);
        this.pending.delete(frame.id);
        if (frame.type === "error") {
          const error = new Error(frame.message || frame.code);
          error.code = frame.code;
          error.frame = frame;
          reject(error);
        } else {
          resolve(frame);
        }
      }
    }
    if (frame.type === "error" && (frame.id === undefined || !this.pending.has(frame.id))) {
      this.emit("error", frame);
    }
    this.emit("frame", frame);
  }

  onWelcome(frame) {
    clearTimeout(this.connectTimer);
    this.welcome = frame;
    this.upSince = Date.now();
    this.triedNewCredentials = false;
    if (typeof frame.server_time === "number") this.clockOffset = frame.server_time - Date.now();
    this.planRefresh(frame.expires_at);
    this.startHeartbeat();
    this.setState("connected", { node: frame.node, user: frame.user });
    this.emit("welcome", frame);
  }

  startHeartbeat() {
    clearInterval(this.tick);
    // One coarse timer does the ping, the silence check and the backoff reset.
    this.tick = setInterval(() => this.heartbeat(), 1000);
  }

  heartbeat() {
    if (!this.ws || !this.welcome) return;
    const now = Date.now();
    const { interval, timeout } = this.welcome.heartbeat;
    if (now - this.lastHeard >= timeout * 1000) {
      // The server went silent: the socket is probably dead behind a proxy or NAT.
      this.teardown(CLIENT_TIMEOUT_CODE);
      this.scheduleRetry({ code: CLIENT_TIMEOUT_CODE, reason: "heartbeat timeout" });
      return;
    }
    if (now - this.lastSent >= interval * 1000) this.sendFrame({ type: "ping", ts: now });
    if (this.attempt && now - this.upSince >= BACKOFF_RESET_MS) this.attempt = 0;
    if (this.refreshAt && now >= this.refreshAt && !this.refreshing) this.refreshToken();
  }

  /** When to refresh a credential that ends at `expiresAt` (server ms), if getToken can. */
  planRefresh(expiresAt) {
    this.expiresAt = typeof expiresAt === "number" ? expiresAt : null;
    this.refreshAt = 0;
    if (!this.getToken || this.expiresAt === null) return;
    const remaining = this.expiresAt - (Date.now() + this.clockOffset);
    this.refreshAt = Date.now() + Math.max(0, remaining - Math.min(REFRESH_LEAD_MAX_MS, remaining / 3));
  }

  /**
   * Send `refresh` with a new connection token before the current one ends, so
   * the server does not close the socket with 4401 (PROTOCOL 11).
   */
  async refreshToken() {
    const ws = this.ws;
    const before = this.expiresAt;
    this.refreshing = true;
    this.refreshAt = 0;
    try {
      const token = await this.getToken();
      if (ws !== this.ws || !this.welcome) return;
      const reply = await this.request({ type: "refresh", token });
      if (ws !== this.ws) return;
      const expiresAt = reply.data && reply.data.expires_at;
      this.emit("refresh", { expires_at: expiresAt });
      if (typeof expiresAt === "number" && (before === null || expiresAt > before)) {
        this.planRefresh(expiresAt);
      } else {
        // getToken() gave no later expiry (a cached token?): ask again a bit later.
        this.retryRefresh();
      }
    } catch (error) {
      // A socket that is gone needs no refresh: the next connect gets a token anyway.
      if (ws !== this.ws || !this.welcome) return;
      this.emit("refresh-failed", { code: error.code, status: error.status, message: error.message });
      this.retryRefresh();
    } finally {
      this.refreshing = false;
    }
  }

  retryRefresh() {
    // Only while there is time; otherwise the server closes with 4401 and the
    // reconnect that follows starts from a new token.
    const left = this.expiresAt === null ? 0 : this.expiresAt - (Date.now() + this.clockOffset);
    this.refreshAt = left > REFRESH_RETRY_MS ? Date.now() + REFRESH_RETRY_MS : 0;
  }

  onClose(ws, code) {
    if (ws !== this.ws) return;
    const wasUp = Boolean(this.welcome);
    this.teardown();
    if (this.stopped) return;
    this.closeInfo = { code, wasUp };
    if (code === 4401) {
      if (!this.triedNewCredentials) {
        this.triedNewCredentials = true;
        return this.refreshCredentials();
      }
      return this.authRequired({ code });
    }
    if (NO_RETRY_CODES.has(code)) {
      this.stopped = true;
      this.setState("offline", { code, reason: code === 4403 ? "forbidden" : "closed" });
      return;
    }
    // 1012: the node drains; PROTOCOL 4 asks for 0 to 2 s, whatever the attempt.
    const delay = code === 1012 ? Math.floor(this.random() * 2000) : undefined;
    this.scheduleRetry({ code, reason: "closed" }, delay);
  }

  async refreshCredentials() {
    // 4401: the session may have expired or the ticket was spent. One fresh
    // ticket tells the two apart; if even that fails, a person must log in.
    try {
      this.nextTicket = await this.getTicket();
    } catch (error) {
      if (error.status === undefined) {
        // The ticket request itself hit the network: that is trouble, not a verdict.
        this.triedNewCredentials = false;
        return this.scheduleRetry({ code: 4401, reason: "ticket" });
      }
      return this.authRequired(error);
    }
    this.open();
  }

  authRequired(error) {
    this.stopped = true;
    this.setState("offline", { code: 4401, reason: "auth" });
    this.emit("auth-required", { status: error && error.status, code: error && error.code });
  }

  scheduleRetry(info, delay) {
    if (this.stopped) return;
    const wait = delay !== undefined ? delay : backoffDelay(this.attempt, this.random);
    this.attempt += 1;
    this.retryAt = Date.now() + wait;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.open(), wait);
    this.setState("reconnecting", { ...info, delay: wait, retryAt: this.retryAt });
  }

  /** Skip the backoff wait (the network came back or the page became visible). */
  reconnectNow(why) {
    if (this.stopped || this.ws) return;
    this.open();
  }

  dropForOffline() {
    // The browser says the network is gone. Emulated or real, frames sent on
    // the old socket now would vanish or arrive late, so start over cleanly
    // when `online` fires; unacknowledged sends stay in the outbox.
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    if (this.ws) this.teardown(CLIENT_TIMEOUT_CODE);
    this.setState("offline", { reason: "network" });
  }

  teardown(code) {
    clearTimeout(this.connectTimer);
    clearInterval(this.tick);
    this.tick = null;
    this.refreshAt = 0;
    const ws = this.ws;
    this.ws = null;
    const wasUp = Boolean(this.welcome);
    this.welcome = null;
    if (ws) {
      ws.onmessage = null;
      ws.onclose = null;
      if (code !== undefined && ws.readyState <= 1) {
        try {
          ws.close(code);
        } catch {
          // Already closing; nothing to do.
        }
      }
    }
    for (const [id, entry] of this.pending) {
      clearTimeout(entry.timer);
      const error = new Error("disconnected");
      error.code = "disconnected";
      entry.reject(error);
      this.pending.delete(id);
    }
    if (wasUp) this.emit("disconnect", {});
  }

  /** Send one frame if the socket is open; false otherwise (nothing is queued here). */
  sendFrame(frame) {
    if (!this.ws || this.ws.readyState !== 1) return false;
    this.ws.send(JSON.stringify(frame));
    this.lastSent = Date.now();
    return true;
  }

  /**
   * Send a frame with a fresh `id` and resolve with the reply carrying it
   * (reject with the error frame's code, or "disconnected" / "timeout").
   */
  request(frame, { timeout = REQUEST_TIMEOUT_MS, keep } = {}) {
    const id = frame.id || `r${++this.requestSeq}`;
    return new Promise((resolve, reject) => {
      if (!this.welcome || !this.sendFrame({ ...frame, id })) {
        const error = new Error("not connected");
        error.code = "disconnected";
        reject(error);
        return;
      }
      const timer = setTimeout(() => {
        this.pending.delete(id);
        const error = new Error("no reply");
        error.code = "timeout";
        reject(error);
      }, timeout);
      this.pending.set(id, { resolve, reject, timer, keep });
    });
  }
}

/** What ChatClient and StreamClient share: one Connection, its events passed on. */
class SocketClient extends EventTarget {
  constructor(path, options) {
    super();
    this.conn = new Connection(path, options);
    const passed = ["state", "welcome", "pong", "auth-required", "error", "disconnect", "refresh", "refresh-failed"];
    for (const type of passed) {
      this.conn.addEventListener(type, (event) => this.emit(type, event.detail));
    }
    this.conn.addEventListener("frame", (event) => this.onFrame(event.detail));
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  connect() {
    this.conn.connect();
    return this;
  }

  close() {
    this.conn.close();
  }

  get state() {
    return this.conn.state;
  }
}

/**
 * Apply a conversation event (a `message` frame, PROTOCOL 10) to an app's local
 * messages, a Map of message_id → message. A `kind: "message"` frame carries its
 * message's state (current when replayed): it replaces what the map holds. An
 * edit replaces its target's body and `edited_at`; a delete marks it deleted and
 * empties it; a reaction adds or removes its sender in `reactions[emoji]`.
 * Returns the message changed (or added), or undefined when the target is unknown.
 */
export function applyEvent(messages, frame) {
  const kind = frame.kind || "message";
  if (kind === "message") {
    const { type: _type, ...message } = frame;
    messages.set(frame.message_id, message);
    return message;
  }
  const target = messages.get(frame.target);
  if (!target) return undefined;
  if (kind === "edit") {
    if (target.deleted) return target;
    target.body = frame.body;
    target.edited_at = frame.ts;
  } else if (kind === "delete") {
    target.deleted = true;
    target.body = "";
    target.attachments = [];
  } else if (kind === "reaction") {
    const reactions = { ...(target.reactions || {}) };
    const uid = frame.sender ? frame.sender.id : null;
    const before = reactions[frame.emoji] || [];
    let users;
    if (frame.on) users = before.includes(uid) ? before : [...before, uid];
    else users = before.filter((u) => u !== uid);
    if (users.length) reactions[frame.emoji] = users;
    else delete reactions[frame.emoji];
    target.reactions = reactions;
  }
  return target;
}

/**
 * The chat client for `/ws/chat/`: resumes with `sync`, delivers each
 * conversation's messages once and in order, refills gaps, and keeps an
 * outbox of unacknowledged sends that survives reconnects.
 *
 * Events: those of Connection, plus `message`, `ack`, `send-failed`,
 * `joined`, `left`, `receipt`, `typing`, `presence`, `synced`.
 */
export class ChatClient extends SocketClient {
  constructor(options = {}) {
    super("/ws/chat/", options);
    this.positions = new Map(Object.entries(options.positions || {}));
    this.held = new Map();
    this.refilling = new Set();
    this.outbox = new Map();
    this.user = null;
    this.conn.addEventListener("welcome", () => this.resume());
    this.conn.addEventListener("disconnect", () => this.onDisconnect());
  }

  /** Start following a conversation from `seq` (the last message the app holds). */
  follow(conversation, seq) {
    if (!this.positions.has(conversation) || this.positions.get(conversation) < seq) {
      this.positions.set(conversation, seq);
    }
  }

  async resume() {
    this.user = this.conn.welcome.user;
    // sync first: the server holds live messages until it arrives (resume window).
    const positions = Object.fromEntries(this.positions);
    let reply;
    try {
      reply = this.conn.request({ type: "sync", positions });
      // Resend after the sync went out: same ids, so the server stores each once.
      for (const entry of this.outbox.values()) if (!entry.failed) this.transmit(entry);
      reply = await reply;
      // One answer covers a page of the user's conversations: follow the pages.
      while (reply.more) {
        this.afterSynced(reply, false);
        reply = await this.conn.request({ type: "sync", positions, page: reply.next });
      }
    } catch {
      return; // disconnected meanwhile; the next welcome resumes again
    }
    this.afterSynced(reply);
  }

  afterSynced(reply, last = true) {
    for (const [conversation, info] of Object.entries(reply.conversations || {})) {
      this.refilling.delete(conversation);
      if (!info.complete) this.refill(conversation);
      else this.drainHeld(conversation, info.seq);
    }
    if (last) this.emit("synced", reply);
  }

  onDisconnect() {
    for (const entry of this.outbox.values()) clearTimeout(entry.timer);
    this.refilling.clear();
  }

  onFrame(frame) {
    switch (frame.type) {
      case "message":
        return this.onMessage(frame);
      case "ack":
        return this.onAck(frame);
      case "error":
        return this.onError(frame);
      case "joined": {
        const c = frame.conversation;
        if (!this.positions.has(c.id)) this.positions.set(c.id, c.last_seq || 0);
        return this.emit("joined", c);
      }
      case "left":
        this.positions.delete(frame.conversation);
        this.held.delete(frame.conversation);
        return this.emit("left", { conversation: frame.conversation });
      case "receipt":
      case "typing":
      case "presence":
        return this.emit(frame.type, frame);
      default:
        return undefined;
    }
  }

  onMessage(frame) {
    const conversation = frame.conversation;
    const last = this.positions.get(conversation);
    if (last === undefined) {
      // A conversation we were not told about yet (e.g. joined on another tab).
      this.positions.set(conversation, frame.seq - 1);
      return this.onMessage(frame);
    }
    if (frame.seq <= last) return; // duplicate: replay of something already delivered
    if (frame.seq > last + 1) {
      this.hold(frame);
      // A gap (seq > last + 1): read the store with `history`. (A `sync` on this
      // socket would not send again what the server already sent it.)
      if (!this.refilling.has(conversation)) this.refill(conversation);
      return;
    }
    this.deliver(frame);
    this.drainHeld(conversation);
  }

  deliver(frame) {
    this.positions.set(frame.conversation, frame.seq);
    const entry = frame.client_id && this.outbox.get(frame.client_id);
    if (entry && this.user && frame.sender && frame.sender.id === this.user.id) {
      this.settle(entry, { seq: frame.seq, message_id: frame.message_id, ts: frame.ts });
    }
    this.emit("message", frame);
  }

  hold(frame) {
    let held = this.held.get(frame.conversation);
    if (!held) this.held.set(frame.conversation, (held = new Map()));
    if (held.size < MAX_HELD_PER_CONVERSATION) held.set(frame.seq, frame);
  }

  drainHeld(conversation) {
    const held = this.held.get(conversation);
    if (!held) return;
    let last = this.positions.get(conversation);
    for (const seq of [...held.keys()]) if (seq <= last) held.delete(seq);
    while (held.has(last + 1)) {
      const frame = held.get(last + 1);
      held.delete(last + 1);
      this.deliver(frame);
      last += 1;
    }
    if (held.size === 0) this.held.delete(conversation);
    else if (!this.refilling.has(conversation)) this.refill(conversation);
  }

  async refill(conversation) {
    // A hole (synced said complete: false, or a gap): page it with history.
    this.refilling.add(conversation);
    try {
      for (;;) {
        const after = this.positions.get(conversation);
        const reply = await this.conn.request({
          type: "history",
          conversation,
          after,
          limit: HISTORY_PAGE,
        });
        for (const m of reply.data.messages) if (m.seq === this.positions.get(conversation) + 1) this.deliver({ type: "message", ...m });
        if (!reply.data.has_more) break;
      }
    } catch {
      return;
    } finally {
      this.refilling.delete(conversation);
    }
    this.drainHeld(conversation);
  }

  /**
   * Queue a message; returns its client id at once. It is sent now if the
   * socket is up, else after the next reconnect; `ack` or `send-failed` follows.
   * The third argument is the id, or options `{id, reply_to, attachments}`
   * (PROTOCOL 10: a message with attachments may have an empty body).
   */
  send(conversation, body, options = {}) {
    const { id = randomId("c"), reply_to: replyTo, attachments } =
      typeof options === "string" ? { id: options } : options;
    const fields = { body };
    if (replyTo !== undefined && replyTo !== null) fields.reply_to = replyTo;
    if (attachments !== undefined && attachments.length) fields.attachments = [...attachments];
    return this.queue("send", conversation, fields, id);
  }

  /** Edit one of the user's messages (PROTOCOL 10); queued and acknowledged like a send. */
  edit(conversation, messageId, body, id = randomId("c")) {
    return this.queue("edit", conversation, { message_id: messageId, body }, id);
  }

  /** Delete a message (its sender, the conversation's creator or staff). */
  delete(conversation, messageId, id = randomId("c")) {
    return this.queue("delete", conversation, { message_id: messageId }, id);
  }

  /** Add (`on` true) or remove the user's reaction `emoji` on a message. */
  react(conversation, messageId, emoji, on = true, id = randomId("c")) {
    return this.queue("react", conversation, { message_id: messageId, emoji, on }, id);
  }

  queue(type, conversation, fields, id) {
    const entry = {
      id,
      type,
      conversation,
      body: fields.body ?? "",
      fields,
      failed: false,
      timer: null,
      createdAt: Date.now(),
    };
    this.outbox.set(id, entry);
    if (this.conn.welcome) this.transmit(entry);
    return id;
  }

  /** Send a failed message again, with the same id (the server stores it once). */
  retry(id) {
    const entry = this.outbox.get(id);
    if (!entry) return false;
    entry.failed = false;
    if (this.conn.welcome) this.transmit(entry);
    return true;
  }

  /** Forget a queued or failed message (it may still have reached the server). */
  discard(id) {
    const entry = this.outbox.get(id);
    if (entry) clearTimeout(entry.timer);
    return this.outbox.delete(id);
  }

  transmit(entry) {
    clearTimeout(entry.timer);
    const sent = this.conn.sendFrame({
      type: entry.type,
      id: entry.id,
      conversation: entry.conversation,
      ...entry.fields,
    });
    if (!sent) return;
    entry.timer = setTimeout(() => this.fail(entry, { code: "timeout", message: "no ack" }), SEND_ACK_TIMEOUT_MS);
  }

  onAck(frame) {
    const entry = this.outbox.get(frame.id);
    if (entry) this.settle(entry, frame);
  }

  settle(entry, info) {
    clearTimeout(entry.timer);
    this.outbox.delete(entry.id);
    this.emit("ack", {
      id: entry.id,
      conversation: entry.conversation,
      seq: info.seq,
      message_id: info.message_id,
      ts: info.ts,
      duplicate: Boolean(info.duplicate),
    });
  }

  onError(frame) {
    const entry = frame.id !== undefined && this.outbox.get(frame.id);
    if (!entry) return;
    if (frame.code === "rate_limited") {
      // Not processed; the same id later is safe.
      clearTimeout(entry.timer);
      entry.timer = setTimeout(() => this.conn.welcome && this.transmit(entry), frame.retry_after || 500);
      return;
    }
    this.fail(entry, frame);
  }

  fail(entry, frame) {
    clearTimeout(entry.timer);
    entry.failed = true;
    this.emit("send-failed", {
      id: entry.id,
      conversation: entry.conversation,
      code: frame.code,
      message: frame.message,
    });
  }

  /** Older (or newer) messages of a conversation: `{messages, has_more}`. */
  async history(conversation, { before, after, limit = 50 } = {}) {
    const frame = { type: "history", conversation, limit };
    if (before !== undefined) frame.before = before;
    if (after !== undefined) frame.after = after;
    const reply = await this.conn.request(frame);
    return reply.data;
  }

  async conversations() {
    return (await this.conn.request({ type: "conversations" })).data;
  }

  async presence(users) {
    return (await this.conn.request({ type: "presence.query", users })).data;
  }

  /** Store the read position; other members get a `receipt`. */
  markRead(conversation, seq) {
    return this.conn.sendFrame({ type: "read", conversation, seq });
  }

  typing(conversation) {
    return this.conn.sendFrame({ type: "typing", conversation });
  }
}

/**
 * The topic client for `/ws/stream/`: subscribes, re-subscribes after a
 * reconnect with `since {offset, epoch}` (and a subscription token where the
 * topic needs one), and drops publications it has seen.
 *
 * Events: those of Connection, plus `subscribed` (with `recovered`), `pub`,
 * `unsubscribed` (with `reason` when the server ended it), `subscribe-failed`.
 */
export class StreamClient extends SocketClient {
  constructor(options = {}) {
    super("/ws/stream/", options);
    this.topics = new Map();
    // Kept apart from `topics`, which apps persist: tokens are credentials.
    this.tokens = new Map();
    this.getSubscriptionToken = options.getSubscriptionToken || null;
    this.conn.addEventListener("welcome", () => this.resubscribeAll());
  }

  /**
   * Follow a topic. `options.offset` and `options.epoch` resume from a known
   * position; `options.token` is the topic's subscription token (PROTOCOL 11):
   * a string, or a function of the topic called before every subscribe, the
   * ones after a reconnect included (else the client's getSubscriptionToken).
   */
  subscribe(topic, options) {
    const known = this.topics.get(topic);
    const entry = known || { topic, offset: null, epoch: null, active: false };
    if (options && (options.offset !== undefined || options.epoch !== undefined)) {
      Object.assign(entry, { offset: options.offset ?? null, epoch: options.epoch ?? null });
    }
    if (options && options.token !== undefined) this.tokens.set(topic, options.token);
    this.topics.set(topic, entry);
    if (this.conn.welcome) this.sendSubscribe(entry);
  }

  unsubscribe(topic) {
    this.tokens.delete(topic);
    if (!this.topics.delete(topic)) return;
    if (this.conn.welcome) {
      this.conn
        .request({ type: "unsubscribe", topic })
        .then((reply) => this.emit("unsubscribed", reply))
        .catch(() => {});
    }
  }

  resubscribeAll() {
    for (const entry of this.topics.values()) this.sendSubscribe(entry);
  }

  /** The subscription token for `topic`, or null when it needs none. */
  async subscriptionToken(topic) {
    const source = this.tokens.has(topic) ? this.tokens.get(topic) : this.getSubscriptionToken;
    if (!source) return null;
    return (typeof source === "function" ? await source(topic) : source) || null;
  }

  async sendSubscribe(entry) {
    const welcome = this.conn.welcome;
    entry.active = false;
    let token;
    try {
      token = await this.subscriptionToken(entry.topic);
    } catch (error) {
      if (this.topics.get(entry.topic) !== entry) return;
      this.topics.delete(entry.topic);
      this.tokens.delete(entry.topic);
      this.emit("subscribe-failed", { topic: entry.topic, code: "token", message: error.message });
      return;
    }
    // Reconnected (the new welcome subscribes again) or unsubscribed meanwhile.
    if (this.conn.welcome !== welcome || this.topics.get(entry.topic) !== entry) return;
    const frame = { type: "subscribe", topic: entry.topic };
    if (entry.offset !== null && entry.epoch) frame.since = { offset: entry.offset, epoch: entry.epoch };
    if (token) frame.token = token;
    let reply;
    try {
      reply = await this.conn.request(frame);
    } catch (error) {
      if (error.code === "disconnected") return; // the next welcome re-subscribes
      if (this.topics.get(entry.topic) !== entry) return;
      this.topics.delete(entry.topic);
      this.tokens.delete(entry.topic);
      this.emit("subscribe-failed", { topic: entry.topic, code: error.code, message: error.message });
      return;
    }
    if (this.topics.get(entry.topic) !== entry) return;
    const resumed = frame.since !== undefined;
    if (reply.epoch !== entry.epoch) entry.offset = null;
    for (const pub of reply.publications || []) {
      this.deliver(entry, { type: "pub", topic: entry.topic, epoch: reply.epoch, ...pub });
    }
    // Continue from the reply's offset: anything up to it was delivered above
    // or, when not recovered, is lost and up to the app to rebuild.
    entry.epoch = reply.epoch;
    entry.offset = reply.offset;
    entry.active = true;
    this.emit("subscribed", { ...reply, resumed });
  }

  onFrame(frame) {
    if (frame.type === "unsubscribed" && frame.id === undefined) {
      // Ended by the server, e.g. a right taken away (docs/protocol.md, section 7):
      // asking again after a reconnect would only be refused.
      if (this.topics.delete(frame.topic)) this.emit("unsubscribed", frame);
      return;
    }
    if (frame.type !== "pub") return;
    const entry = this.topics.get(frame.topic);
    if (!entry || !entry.active) return;
    this.deliver(entry, frame);
  }

  deliver(entry, pub) {
    if (entry.offset !== null && pub.epoch === entry.epoch && pub.offset <= entry.offset) return;
    entry.offset = pub.offset;
    entry.epoch = pub.epoch;
    this.emit("pub", pub);
  }
}
