// Compiled by `tsc -p clients/js/tsconfig.json` (strict, no output) in the test
// suite: it uses the whole public API through the package's own name, as an
// application would, so a declaration that drifts from its use fails the build.
import {
  ChatClient,
  applyEvent,
  Connection,
  StreamClient,
  api,
  backoffDelay,
  csrfToken,
  exchangeToken,
  fetchTicket,
  randomId,
} from "tether-client";
import type {
  AckDetail,
  Conversation,
  HistoryPage,
  Message,
  MessageFrame,
  PubFrame,
  StateDetail,
  SubscribeOptions,
  TetherError,
  TopicEntry,
  WelcomeFrame,
} from "tether-client";

declare function appToken(): Promise<string>;
declare function roomToken(topic: string): Promise<string>;

const getToken = async (): Promise<string> => appToken();

const chat = new ChatClient({
  url: "wss://chat.example.com/ws/chat/",
  getToken,
  positions: { k3: 40 },
});
chat.addEventListener("state", (event) => {
  const detail: StateDetail = event.detail;
  if (detail.state === "reconnecting" && detail.retryAt) console.log(detail.retryAt - Date.now());
});
chat.addEventListener("welcome", (event) => {
  const welcome: WelcomeFrame = event.detail;
  console.log(welcome.user.username, welcome.expires_at ?? "no expiry", welcome.limits.max_body_chars);
});
chat.addEventListener("message", (event) => {
  const message: MessageFrame = event.detail;
  console.log(message.seq, message.body, message.sender?.username, message.kind);
});
chat.addEventListener("ack", (event) => {
  const ack: AckDetail = event.detail;
  console.log(ack.id, ack.seq, ack.duplicate);
});
chat.addEventListener("send-failed", (event) => {
  if (event.detail.code !== "forbidden") chat.retry(event.detail.id);
  else chat.discard(event.detail.id);
});
chat.addEventListener("joined", (event) => {
  const conversation: Conversation = event.detail;
  chat.follow(conversation.id, conversation.last_seq);
});
chat.addEventListener("left", (event) => console.log(event.detail.conversation));
chat.addEventListener("receipt", (event) => console.log(event.detail.user.id, event.detail.seq));
chat.addEventListener("typing", (event) => console.log(event.detail.user.username));
chat.addEventListener("presence", (event) => console.log(event.detail.status === "online"));
chat.addEventListener("synced", (event) => {
  for (const [id, info] of Object.entries(event.detail.conversations)) console.log(id, info.complete);
});
chat.addEventListener("refresh", (event) => console.log(new Date(event.detail.expires_at)));
chat.addEventListener("refresh-failed", (event) => console.warn(event.detail.message));
chat.addEventListener("auth-required", (event) => console.log(event.detail.status));
chat.addEventListener("pong", (event) => console.log(event.detail.rtt, event.detail.load));
chat.addEventListener("error", (event) => console.log(event.detail.code, event.detail.retry_after));
chat.addEventListener("disconnect", () => console.log("gone"));
chat.addEventListener("some-future-event", (event: Event) => console.log(event.type));
chat.connect().conn.reconnectNow("button");
const clientId: string = chat.send("k3", "hello");
chat.send("k3", "again", randomId("c"));
// PROTOCOL 10: replies, attachments, edits, deletions, reactions.
chat.send("k3", "", { reply_to: "m_1", attachments: ["a_1"] });
chat.send("k3", "re", { id: randomId("c"), reply_to: null });
const editId: string = chat.edit("k3", "m_1", "fixed");
chat.delete("k3", "m_1");
chat.react("k3", "m_1", "👍");
chat.react("k3", "m_1", "👍", false, randomId("c"));
const local = new Map<string, Message>();
chat.addEventListener("message", (event) => {
  const changed: Message | undefined = applyEvent(local, event.detail);
  console.log(editId, changed?.reactions, changed?.edited_at, changed?.deleted);
});
for (const entry of chat.outbox.values()) console.log(entry.type, entry.fields);
for (const entry of chat.outbox.values()) if (entry.failed) chat.retry(entry.id);
console.log(clientId, chat.positions.get("k3"), chat.user?.id, chat.state, chat.conn.welcome?.node);

async function pages(): Promise<void> {
  const page: HistoryPage = await chat.history("k3", { before: 40, limit: 50 });
  for (const m of page.messages) console.log(m.seq, m.body, m.deleted);
  const list = await chat.conversations();
  console.log(list.conversations.map((c) => c.unread));
  const presence = await chat.presence([7, 9]);
  console.log(presence["7"] === "online");
  chat.markRead("k3", 42);
  chat.typing("k3");
  try {
    await chat.conn.request({ type: "conversations" }, { timeout: 5000 });
  } catch (caught) {
    const error = caught as TetherError;
    console.log(error.code, error.frame?.code);
  }
  await chat.conn.refreshToken();
  console.log(chat.conn.expiresAt, chat.conn.connected, chat.conn.sendFrame({ type: "ping", ts: Date.now() }));
}
void pages();

// Topics: `room` needs a subscription token; the client asks for one before
// every subscribe, the ones after a reconnect included.
const feeds = new StreamClient({
  url: "wss://chat.example.com/ws/stream/",
  getToken,
  getSubscriptionToken: (topic) => (topic.startsWith("room:") ? roomToken(topic) : null),
});
feeds.addEventListener("subscribed", (event) => {
  if (event.detail.resumed && !event.detail.recovered) console.log("rebuild", event.detail.topic);
  for (const p of event.detail.publications) console.log(p.offset);
});
feeds.addEventListener("pub", (event) => {
  const pub: PubFrame = event.detail;
  console.log(pub.topic, pub.offset, pub.epoch, pub.data);
});
feeds.addEventListener("unsubscribed", (event) => console.log(event.detail.topic));
feeds.addEventListener("subscribe-failed", (event) => console.log(event.detail.code));
feeds.connect();
feeds.subscribe("prices:BTC-USD");
feeds.subscribe("prices:ETH-USD", { offset: 120, epoch: "e-5Kq" });
const withOwnToken: SubscribeOptions = { token: (topic) => roomToken(topic) };
feeds.subscribe("room:42", withOwnToken);
feeds.subscribe("room:43", { token: "a.static.jwt" });
const saved: Record<string, TopicEntry> = Object.fromEntries(feeds.topics);
console.log(saved);
feeds.unsubscribe("prices:BTC-USD");
feeds.close();

// The plumbing and the helpers.
const conn = new Connection("/ws/stream/", {
  url: "ws://127.0.0.1:8000/ws/stream/",
  auth: "ticket",
  getTicket: fetchTicket,
  random: () => 0.5,
});
conn.addEventListener("frame", (event) => console.log(event.detail.type));
conn.connect();
conn.close();

async function helpers(): Promise<void> {
  const me = await api<{ id: number; username: string }>("/api/me/");
  await api("/api/conversations/", { method: "POST", body: { kind: "direct", members: [me.id] } });
  const ticket: string = await exchangeToken(await appToken(), "https://chat.example.com/api/auth/ws-ticket/");
  console.log(ticket, csrfToken(), backoffDelay(3), backoffDelay(3, Math.random));
}
void helpers();
