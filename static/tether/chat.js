// The /chat/ page: DOM on top of ChatClient. Every user-supplied string goes
// through textContent or an attribute, never through HTML parsing.
import { ChatClient, api, applyEvent, csrfToken } from "./client.js";
import { NotificationsToggle } from "./notifications.js";
import { DurableOutbox } from "./outbox.js";
import { Banner, el, onFrame } from "./ui.js";

const app = document.getElementById("chat-app");
const me = { id: Number(app.dataset.userId), username: app.dataset.username };
const listEl = document.getElementById("conversation-list");
const messagesEl = document.getElementById("message-list");
const ackedEl = document.getElementById("acked-messages");
const pendingEl = document.getElementById("pending-messages");
const olderEl = document.getElementById("older-status");
const titleEl = document.getElementById("conversation-title");
const membersEl = document.getElementById("members");
const typingEl = document.getElementById("typing");
const composer = document.getElementById("composer");
const sendButton = document.getElementById("send");
const composerError = document.getElementById("composer-error");
const jumpButton = document.getElementById("jump-latest");
const contextBar = document.getElementById("composer-context");
const contextText = document.getElementById("composer-context-text");
const contextCancel = document.getElementById("composer-context-cancel");
const attachInput = document.getElementById("attach");
const stagedEl = document.getElementById("staged-attachments");
const paneEl = document.getElementById("pane");

// The DOM holds at most this many messages of the open conversation; the rest
// stay in memory (or on the server) and are swapped in while scrolling.
const MAX_DOM_MESSAGES = 240;
const PAGE = 80;
const EDGE_PX = 400;
const TYPING_SHOW_MS = 4000;
const TYPING_SEND_EVERY_MS = 2000;
// The reaction picker's choices; any 1–16 characters are accepted by the server.
const EMOJIS = ["👍", "❤️", "😂", "🎉", "😮", "😢"];
// Image types the server serves inline (PROTOCOL 10): shown as thumbnails.
const INLINE_IMAGES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);

const client = new ChatClient();
const durable = new DurableOutbox(me.id);
const conversations = new Map();
const presence = new Map();
let openId = null;
let stickToBottom = true;

function store(id) {
  return conversations.get(id);
}

function newStore(c) {
  return {
    id: c.id,
    info: c,
    msgs: [], // acknowledged `kind: "message"` events in increasing seq
    byId: new Map(), // message_id -> the same objects, where events are applied
    pending: new Map(), // client id -> {id, body, state, seq}
    loaded: false,
    loading: false,
    hasOlder: true,
    lastSeq: c.last_seq || 0,
    unread: c.unread || 0,
    last: null,
    readBy: readPositions(c), // user id -> {username, seq}
    typing: new Map(), // user id -> {username, until}
    winFirst: null,
    winLast: null,
    atTail: true,
    li: null,
  };
}

// Other members' read positions as the server keeps them (PROTOCOL 10,
// `read_positions`): receipts show after a reload, not only what arrived live.
function readPositions(c, into = new Map()) {
  for (const [id, seq] of Object.entries(c.read_positions || {})) {
    const member = (c.members || []).find((m) => m.id === Number(id));
    if (!member || member.id === me.id) continue;
    const known = into.get(member.id);
    if (!known || known.seq < seq) into.set(member.id, { username: member.username, seq });
  }
  return into;
}

// --- conversation list ---------------------------------------------------

function title(c) {
  if (c.kind === "group") return c.title || "group";
  const other = c.members.find((m) => m.id !== me.id);
  return other ? other.username : me.username;
}

function others(c) {
  return c.members.filter((m) => m.id !== me.id);
}

function upsertConversation(c) {
  let s = store(c.id);
  if (!s) {
    s = newStore(c);
    conversations.set(c.id, s);
    s.li = renderListItem(s);
    listEl.prepend(s.li);
    if (s.lastSeq > 0) queuePreview(s);
    queuePresence(others(c).map((m) => m.id));
  } else {
    s.info = { ...s.info, ...c };
    s.lastSeq = Math.max(s.lastSeq, c.last_seq || 0);
    readPositions(c, s.readBy);
    refreshListItem(s);
  }
  return s;
}

function renderListItem(s) {
  const li = el("li", {
    class: "conversation",
    "data-testid": "conversation",
    "data-conversation-id": s.id,
    tabindex: "0",
    role: "button",
  });
  li.append(
    el("span", { class: "dots" }),
    el("span", { class: "conv-title" }),
    el("span", { class: "unread", "data-testid": "unread" }),
    el("span", { class: "preview" }),
  );
  li.addEventListener("click", () => openConversation(s.id));
  li.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      openConversation(s.id);
    }
  });
  fillListItem(s, li);
  return li;
}

function fillListItem(s, li) {
  li.querySelector(".conv-title").textContent = title(s.info);
  const dots = li.querySelector(".dots");
  dots.replaceChildren(
    ...others(s.info)
      .slice(0, 5)
      .map((m) =>
        el("span", {
          class: "presence",
          "data-testid": "presence",
          "data-user-id": String(m.id),
          "data-username": m.username,
          "data-status": presence.get(m.id) || "offline",
          title: m.username,
        }),
      ),
  );
  refreshListItem(s, li);
}

function refreshListItem(s, li = s.li) {
  li.classList.toggle("active", s.id === openId);
  const unread = li.querySelector(".unread");
  unread.textContent = String(s.unread);
  unread.dataset.count = String(s.unread);
  const text = s.last ? (s.last.deleted ? "message deleted" : s.last.body || attachmentsLabel(s.last)) : "";
  li.querySelector(".preview").textContent = s.last
    ? s.last.sender
      ? `${isMine(s.last) ? "You" : s.last.sender.username}: ${text}`
      : text
    : "";
}

function bumpToTop(s) {
  if (listEl.firstElementChild !== s.li) listEl.prepend(s.li);
}

// Previews come over REST, one at a time, so a long list does not burst.
const previewQueue = [];
let previewRunning = false;
function queuePreview(s) {
  previewQueue.push(s);
  if (!previewRunning) runPreviews();
}
async function runPreviews() {
  previewRunning = true;
  while (previewQueue.length) {
    const s = previewQueue.shift();
    if (s.last) continue;
    try {
      // A few rows: the newest events may be edits or reactions, not messages.
      const data = await api(`/api/conversations/${encodeURIComponent(s.id)}/messages/?limit=10`);
      const m = data.messages.filter(isMessage).pop();
      if (m && !s.last) {
        s.last = m;
        refreshListItem(s);
      }
    } catch {
      // A preview is decoration; the message pane loads the real thing.
    }
  }
  previewRunning = false;
}

// --- presence ---------------------------------------------------------------

let presenceAsk = new Set();
let presenceTimer = null;
function queuePresence(ids) {
  for (const id of ids) presenceAsk.add(id);
  if (!presenceTimer) presenceTimer = setTimeout(askPresence, 50);
}
async function askPresence() {
  presenceTimer = null;
  const ids = [...presenceAsk].slice(0, 500);
  presenceAsk = new Set([...presenceAsk].slice(500));
  if (!ids.length || !client.conn.welcome) return;
  try {
    const data = await client.presence(ids);
    for (const [id, status] of Object.entries(data)) setPresence(Number(id), status);
  } catch {
    for (const id of ids) presenceAsk.add(id); // asked again after the next sync
  }
}
function setPresence(userId, status) {
  presence.set(userId, status);
  for (const dot of document.querySelectorAll(`[data-testid="presence"][data-user-id="${userId}"]`)) {
    dot.dataset.status = status;
  }
  for (const chip of membersEl.querySelectorAll(`[data-user-id="${userId}"]`)) chip.dataset.status = status;
}

// --- message pane -------------------------------------------------------------

function timeOf(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function readers(s, seq) {
  const names = [];
  for (const r of s.readBy.values()) if (r.seq >= seq) names.push(r.username);
  return names.join(", ");
}

// A system message (from the application's backend, PROTOCOL 12) has no sender.
function isMine(m) {
  return m.sender !== null && m.sender.id === me.id;
}

function isMessage(m) {
  return (m.kind || "message") === "message";
}

function attachmentsLabel(m) {
  const n = (m.attachments || []).length;
  return n ? `📎 ${n === 1 ? m.attachments[0].name : `${n} files`}` : "";
}

function sizeLabel(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function nameOf(s, userId) {
  if (userId === me.id) return me.username;
  const member = s.info.members.find((u) => u.id === userId);
  return member ? member.username : `user ${userId}`;
}

// The creator of a group may delete anyone's message in it (PROTOCOL 10).
function mayDelete(s, m) {
  if (m.deleted || !m.sender) return false;
  if (isMine(m)) return true;
  return s.info.kind === "group" && s.info.created_by && s.info.created_by.id === me.id;
}

function quoteText(s, id) {
  const target = s.byId.get(id);
  if (!target) return "an earlier message";
  const who = target.sender ? target.sender.username : "system";
  const text = target.deleted ? "message deleted" : target.body || attachmentsLabel(target);
  return `${who}: ${text.length > 120 ? `${text.slice(0, 120)}…` : text}`;
}

function messageEl(s, m) {
  const mine = isMine(m);
  const node = el("div", {
    class: mine ? "msg mine" : m.sender ? "msg" : "msg system",
    "data-testid": "message",
    "data-seq": String(m.seq),
    "data-message-id": m.message_id,
    "data-state": "sent",
    "data-sender": m.sender ? m.sender.username : "",
    "data-time": timeOf(m.ts),
    tabindex: "-1",
  });
  if (m.client_id) node.dataset.clientId = m.client_id;
  if (m.edited_at) node.dataset.edited = "true";
  if (m.deleted) node.dataset.deleted = "true";
  if (mine) markRead(node, readers(s, m.seq));
  if (m.reply_to) {
    const quote = el("div", {
      class: "quote",
      "data-testid": "reply-quote",
      "data-reply-to": m.reply_to,
      role: "button",
      tabindex: "0",
    }, `↩ ${quoteText(s, m.reply_to)}`);
    quote.addEventListener("click", () => scrollToMessage(s, m.reply_to));
    quote.addEventListener("keydown", (e) => {
      if (e.key === "Enter") scrollToMessage(s, m.reply_to);
    });
    node.append(quote);
  }
  node.append(el("span", { class: "body" }, m.deleted ? "" : m.body));
  if (m.deleted) node.append(el("span", { class: "note" }, "message deleted"));
  else if (m.edited_at) node.append(el("span", { class: "edited", title: new Date(m.edited_at).toLocaleString() }, "edited"));
  if (!m.deleted && (m.attachments || []).length) node.append(attachmentsEl(m.attachments));
  const reactions = reactionsEl(s, m);
  if (reactions) node.append(reactions);
  if (!m.deleted && m.sender) node.append(actionsEl(s, m));
  return node;
}

function attachmentsEl(list) {
  const box = el("div", { class: "attachments" });
  for (const a of list) {
    const link = el("a", {
      class: "attachment",
      "data-testid": "attachment",
      "data-name": a.name,
      "data-size": String(a.size),
      href: a.url,
      title: `${a.name} (${sizeLabel(a.size)})`,
    });
    if (INLINE_IMAGES.has(a.content_type)) {
      link.setAttribute("target", "_blank");
      link.setAttribute("rel", "noopener");
      link.append(el("img", { class: "thumb", src: a.url, alt: a.name, loading: "lazy" }));
    } else {
      link.setAttribute("download", a.name);
      link.textContent = `📎 ${a.name} · ${sizeLabel(a.size)}`;
    }
    box.append(link);
  }
  return box;
}

function reactionsEl(s, m) {
  const entries = Object.entries(m.reactions || {}).filter(([, users]) => users.length);
  if (!entries.length || m.deleted) return null;
  const box = el("div", { class: "reactions" });
  for (const [emoji, users] of entries) {
    const names = users.map((id) => nameOf(s, id));
    const chip = el("button", {
      type: "button",
      class: users.includes(me.id) ? "reaction mine" : "reaction",
      "data-testid": "reaction",
      "data-emoji": emoji,
      "data-count": String(users.length),
      "data-users": names.join(", "),
      title: names.join(", "),
      "aria-pressed": String(users.includes(me.id)),
    }, `${emoji} ${users.length}`);
    chip.addEventListener("click", () => client.react(s.id, m.message_id, emoji, !users.includes(me.id)));
    box.append(chip);
  }
  return box;
}

function actionsEl(s, m) {
  const box = el("div", { class: "actions" });
  const button = (testid, label, onClick) => {
    const b = el("button", { type: "button", class: "link", "data-testid": testid, "aria-label": label, title: label }, label);
    b.addEventListener("click", (e) => {
      e.stopPropagation();
      onClick(b);
    });
    box.append(b);
  };
  button("message-reply", "Reply", () => startReply(s, m));
  button("message-react", "React", (b) => togglePicker(s, m, b));
  if (isMine(m)) button("message-edit", "Edit", () => startEdit(s, m));
  if (mayDelete(s, m)) button("message-delete", "Delete", () => client.delete(s.id, m.message_id));
  return box;
}

let picker = null;
function togglePicker(s, m, anchor) {
  const open = picker && picker.dataset.for === m.message_id;
  closePicker();
  if (open) return;
  picker = el("div", { class: "picker", role: "menu", "data-for": m.message_id });
  for (const emoji of EMOJIS) {
    const mine = (m.reactions?.[emoji] || []).includes(me.id);
    const option = el("button", { type: "button", class: "link", role: "menuitem", "data-testid": "reaction-option", "data-emoji": emoji }, emoji);
    option.addEventListener("click", (e) => {
      e.stopPropagation();
      client.react(s.id, m.message_id, emoji, !mine);
      closePicker();
    });
    picker.append(option);
  }
  anchor.after(picker);
  picker.querySelector("button").focus();
}
function closePicker() {
  if (picker) picker.remove();
  picker = null;
}
document.addEventListener("click", closePicker);
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape") {
    closePicker();
    endContext();
  }
});

// One message changed (an event applied, a fresher copy from history): its
// element, if shown, and the quotes of replies to it.
function refreshMessage(s, m) {
  if (openId !== s.id) return;
  const old = ackedEl.querySelector(`[data-message-id="${CSS.escape(m.message_id)}"]`);
  if (old) old.replaceWith(messageEl(s, m));
  for (const quote of ackedEl.querySelectorAll(`[data-reply-to="${CSS.escape(m.message_id)}"]`)) {
    quote.textContent = `↩ ${quoteText(s, m.message_id)}`;
  }
}

function markRead(node, names) {
  if (names) node.dataset.readBy = names;
  else delete node.dataset.readBy;
}

function pendingEl_(entry) {
  const node = el("div", {
    class: "msg mine",
    "data-testid": "message",
    "data-state": entry.state,
    "data-client-id": entry.id,
    "data-sender": me.username,
    "data-time": "",
  });
  if (entry.seq) node.dataset.seq = String(entry.seq);
  node.append(el("span", { class: "body" }, entry.body));
  if (entry.state === "failed") {
    const retry = el("button", { type: "button", class: "retry", "data-testid": "retry" }, "Retry");
    retry.addEventListener("click", () => {
      entry.state = "pending";
      client.retry(entry.id);
      renderPending();
    });
    node.append(retry);
  }
  return node;
}

function renderPending() {
  const s = openId && store(openId);
  pendingEl.replaceChildren(...(s ? [...s.pending.values()].map(pendingEl_) : []));
}

function indexOfSeq(msgs, seq) {
  let lo = 0;
  let hi = msgs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (msgs[mid].seq < seq) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Only `kind: "message"` events are rows; the others change them (applyEvent).
// A copy already held is refreshed in place: history and replays carry the
// message's current state (PROTOCOL 10).
function insertMessage(s, m) {
  const msgs = s.msgs;
  const held = s.byId.get(m.message_id);
  if (held) {
    Object.assign(held, m);
    return false;
  }
  s.byId.set(m.message_id, m);
  if (!msgs.length || msgs[msgs.length - 1].seq < m.seq) {
    msgs.push(m);
    return true;
  }
  const i = indexOfSeq(msgs, m.seq);
  msgs.splice(i, 0, m);
  return true;
}

// A page of history: its messages with their current state. Its edits,
// deletions and reactions are already in those states, and older than what
// the page may hold from live frames: not applied again.
function mergeHistory(s, rows) {
  for (const m of rows) {
    if (!isMessage(m)) continue;
    const held = s.byId.get(m.message_id);
    insertMessage(s, m);
    if (held) refreshMessage(s, held);
  }
}

function openConversation(id) {
  const s = store(id);
  if (!s) return;
  const previous = openId && store(openId);
  openId = id;
  if (previous) refreshListItem(previous);
  refreshListItem(s);
  titleEl.textContent = title(s.info);
  membersEl.replaceChildren(
    ...s.info.members.map((m) =>
      el("span", { class: "member", "data-user-id": String(m.id), "data-status": presence.get(m.id) || "offline" }, m.username),
    ),
  );
  composer.disabled = false;
  sendButton.disabled = false;
  attachInput.disabled = false;
  composerError.textContent = "";
  if (previous && previous.id !== id) {
    endContext();
    clearStaged();
  }
  history.replaceState(null, "", `${location.pathname}#${encodeURIComponent(id)}`);
  resetWindow(s);
  renderTyping();
  if (!s.loaded) loadLatest(s);
  markSeen(s);
  composer.focus();
}

function resetWindow(s) {
  // Show the newest page; older ones come back as the user scrolls up.
  const start = Math.max(0, s.msgs.length - PAGE);
  const slice = s.msgs.slice(start);
  ackedEl.replaceChildren(...slice.map((m) => messageEl(s, m)));
  s.winFirst = slice.length ? slice[0].seq : null;
  s.winLast = slice.length ? slice[slice.length - 1].seq : null;
  s.atTail = true;
  renderPending();
  updateOlderStatus(s);
  stickToBottom = true;
  scrollToBottom();
}

function scrollToBottom() {
  messagesEl.scrollTop = messagesEl.scrollHeight;
  jumpButton.hidden = true;
}

function updateOlderStatus(s) {
  const first = s.winFirst !== null ? indexOfSeq(s.msgs, s.winFirst) : 0;
  if (s.loading) olderEl.textContent = "Loading…";
  else if (first === 0 && !s.hasOlder && s.loaded) olderEl.textContent = s.msgs.length ? "Beginning of the conversation" : "No messages yet";
  else olderEl.textContent = "";
}

async function loadLatest(s) {
  s.loading = true;
  updateOlderStatus(s);
  try {
    const data = await client.history(s.id, { limit: PAGE });
    mergeHistory(s, data.messages);
    s.hasOlder = data.has_more;
    s.loaded = true;
    if (data.messages.length) {
      const m = data.messages.filter(isMessage).pop();
      if (m && (!s.last || s.last.seq < m.seq)) s.last = s.byId.get(m.message_id);
      s.lastSeq = Math.max(s.lastSeq, data.messages[data.messages.length - 1].seq);
    }
  } catch {
    s.loading = false;
    updateOlderStatus(s);
    return; // retried when the socket is back (see "synced")
  }
  s.loading = false;
  if (openId === s.id) {
    resetWindow(s);
    markSeen(s);
  }
}

async function loadOlder(s) {
  if (s.loading || !s.loaded) return;
  const first = s.msgs.length ? s.msgs[0].seq : s.lastSeq + 1;
  s.loading = true;
  updateOlderStatus(s);
  try {
    const data = await client.history(s.id, { before: first, limit: PAGE });
    mergeHistory(s, data.messages);
    s.hasOlder = data.has_more;
  } catch {
    // Scrolling up again retries.
  }
  s.loading = false;
  if (openId === s.id) showOlder(s);
}

// Scroll handling: swap pages in and out at the edges, once per frame.
let scrollQueued = false;
messagesEl.addEventListener(
  "scroll",
  () => {
    if (scrollQueued) return;
    scrollQueued = true;
    requestAnimationFrame(() => {
      scrollQueued = false;
      onScroll();
    });
  },
  { passive: true },
);

function onScroll() {
  const s = openId && store(openId);
  if (!s) return;
  const fromBottom = messagesEl.scrollHeight - messagesEl.scrollTop - messagesEl.clientHeight;
  stickToBottom = fromBottom < 40 && s.atTail;
  if (stickToBottom) {
    jumpButton.hidden = true;
    markSeen(s);
  }
  if (messagesEl.scrollTop < EDGE_PX) showOlder(s);
  else if (fromBottom < EDGE_PX && !s.atTail) showNewer(s);
}

function showOlder(s) {
  const first = s.winFirst === null ? s.msgs.length : indexOfSeq(s.msgs, s.winFirst);
  if (first === 0) {
    if (s.hasOlder) loadOlder(s);
    updateOlderStatus(s);
    return;
  }
  const start = Math.max(0, first - PAGE);
  const slice = s.msgs.slice(start, first);
  const before = messagesEl.scrollHeight;
  ackedEl.prepend(...slice.map((m) => messageEl(s, m)));
  s.winFirst = slice[0].seq;
  if (s.winLast === null) s.winLast = slice[slice.length - 1].seq;
  // Keep what the reader looks at in place, then cut the far end.
  messagesEl.scrollTop += messagesEl.scrollHeight - before;
  trimBottom(s);
  updateOlderStatus(s);
}

function showNewer(s) {
  const last = indexOfSeq(s.msgs, s.winLast) + 1;
  const slice = s.msgs.slice(last, last + PAGE);
  ackedEl.append(...slice.map((m) => messageEl(s, m)));
  if (slice.length) s.winLast = slice[slice.length - 1].seq;
  s.atTail = last + slice.length >= s.msgs.length;
  trimTop(s);
}

function trimBottom(s) {
  let extra = ackedEl.childElementCount - MAX_DOM_MESSAGES;
  if (extra <= 0) return;
  while (extra-- > 0) ackedEl.lastElementChild.remove();
  s.winLast = Number(ackedEl.lastElementChild.dataset.seq);
  s.atTail = false;
}

function trimTop(s) {
  let extra = ackedEl.childElementCount - MAX_DOM_MESSAGES;
  if (extra <= 0) return;
  const before = messagesEl.scrollHeight;
  while (extra-- > 0) ackedEl.firstElementChild.remove();
  s.winFirst = Number(ackedEl.firstElementChild.dataset.seq);
  messagesEl.scrollTop -= before - messagesEl.scrollHeight;
  updateOlderStatus(s);
}

// Live messages are queued and rendered once per animation frame, so a burst
// of hundreds of frames costs one layout, not hundreds.
const incoming = [];
const render = onFrame(flushIncoming);

function flushIncoming() {
  const s = openId && store(openId);
  const fresh = [];
  for (const m of incoming.splice(0)) if (s && m.conversation === s.id) fresh.push(m);
  if (s && fresh.length) {
    if (s.atTail) {
      const from = s.winLast === null ? 0 : indexOfSeq(s.msgs, s.winLast + 1);
      // A reader scrolled up keeps their place: fill the DOM only up to its bound
      // and leave the rest for scrolling down (or the jump button).
      const room = stickToBottom ? s.msgs.length : MAX_DOM_MESSAGES - ackedEl.childElementCount;
      const slice = s.msgs.slice(from, from + Math.max(0, room));
      ackedEl.append(...slice.map((m) => messageEl(s, m)));
      if (slice.length) {
        s.winLast = slice[slice.length - 1].seq;
        if (s.winFirst === null) s.winFirst = slice[0].seq;
      }
      s.atTail = from + slice.length >= s.msgs.length;
      if (stickToBottom) {
        trimTop(s);
        scrollToBottom();
        markSeen(s);
      } else {
        jumpButton.hidden = false;
      }
    } else {
      jumpButton.hidden = false;
    }
    renderPending();
    updateOlderStatus(s);
  }
}

jumpButton.addEventListener("click", () => {
  const s = openId && store(openId);
  if (s) resetWindow(s);
  markSeen(s);
});

let readTimer = null;
function markSeen(s) {
  if (!s || openId !== s.id || document.visibilityState !== "visible" || !stickToBottom) return;
  // Events after the last message (an edit, a reaction) are read too.
  const seq = Math.max(s.lastSeq, s.msgs.length ? s.msgs[s.msgs.length - 1].seq : 0);
  if (s.unread !== 0) {
    s.unread = 0;
    refreshListItem(s);
  }
  if (seq > (s.info.read_seq || 0)) {
    // Coalesce a burst into one read frame.
    clearTimeout(readTimer);
    readTimer = setTimeout(() => {
      if (seq > (s.info.read_seq || 0) && client.markRead(s.id, seq)) s.info.read_seq = seq;
    }, 150);
  }
}
document.addEventListener("visibilitychange", () => markSeen(openId && store(openId)));

// --- typing -------------------------------------------------------------------

function renderTyping() {
  const s = openId && store(openId);
  const now = Date.now();
  const names = [];
  if (s) {
    for (const [id, t] of s.typing) {
      if (t.until > now) names.push(t.username);
      else s.typing.delete(id);
    }
  }
  typingEl.textContent = names.length ? `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…` : "";
  typingEl.dataset.users = names.join(",");
}
setInterval(renderTyping, 1000);

// --- client events --------------------------------------------------------------

client.addEventListener("joined", (e) => upsertConversation(e.detail));

client.addEventListener("left", (e) => {
  const s = store(e.detail.conversation);
  if (!s) return;
  s.li.remove();
  conversations.delete(s.id);
  if (openId === s.id) {
    openId = null;
    titleEl.textContent = "Pick a conversation";
    ackedEl.replaceChildren();
    pendingEl.replaceChildren();
    composer.disabled = true;
    sendButton.disabled = true;
    attachInput.disabled = true;
    endContext();
    clearStaged();
  }
});

client.addEventListener("message", async (e) => {
  const m = e.detail;
  let s = store(m.conversation);
  if (!s) {
    // A conversation this page has not heard of yet (joined elsewhere, joined frame lost).
    try {
      s = upsertConversation(await api(`/api/conversations/${encodeURIComponent(m.conversation)}/`));
    } catch {
      return;
    }
  }
  s.lastSeq = Math.max(s.lastSeq, m.seq);
  if (!isMessage(m)) {
    // An edit, deletion or reaction: applied to its message where this page
    // holds it; one it does not hold comes with its current state from history.
    const target = applyEvent(s.byId, m);
    if (target) {
      refreshMessage(s, target);
      if (s.last && s.last.message_id === target.message_id) refreshListItem(s);
    }
    if (isMine(m) && m.client_id) s.pending.delete(m.client_id);
    return;
  }
  if (isMine(m) && m.client_id) s.pending.delete(m.client_id);
  // Kept even before the history is loaded: loadLatest merges by seq.
  insertMessage(s, m);
  if (!s.last || s.last.seq < m.seq) s.last = s.byId.get(m.message_id);
  if (m.sender) s.typing.delete(m.sender.id);
  const seen = openId === s.id && stickToBottom && document.visibilityState === "visible";
  if (!isMine(m) && !seen && m.seq > (s.info.read_seq || 0)) s.unread += 1;
  if (isMine(m)) s.info.read_seq = Math.max(s.info.read_seq || 0, m.seq);
  refreshListItem(s);
  bumpToTop(s);
  if (openId === s.id) {
    incoming.push(m);
    render();
  }
});

client.addEventListener("ack", (e) => {
  const { id, conversation, seq, duplicate } = e.detail;
  durable.forget(id);
  const s = store(conversation);
  const entry = s && s.pending.get(id);
  if (!entry) return;
  if (duplicate) {
    // Stored before (a page closed before its ack came): the message is in the
    // conversation's history already, not to be shown twice.
    s.pending.delete(id);
    if (openId === s.id) renderPending();
    if (s.loaded) loadLatest(s);
    return;
  }
  entry.state = "sent";
  entry.seq = seq;
  if (openId === s.id) renderPending();
});

client.addEventListener("send-failed", (e) => {
  const { id, conversation, code, message } = e.detail;
  const s = store(conversation);
  // Refused for good (not a member any more, a bad body): no later page should
  // send it again. A timeout may still be stored: kept, sent again with its id.
  if (code !== "timeout") durable.forget(id);
  const entry = s && s.pending.get(id);
  if (!entry) return;
  entry.state = "failed";
  entry.error = message || code;
  if (openId === s.id) {
    renderPending();
    composerError.textContent = `Not sent: ${entry.error}`;
  }
});

client.addEventListener("receipt", (e) => {
  const { conversation, user, seq } = e.detail;
  const s = store(conversation);
  if (!s || user.id === me.id) return;
  s.readBy.set(user.id, { username: user.username, seq });
  if (openId !== s.id) return;
  for (const node of ackedEl.querySelectorAll(".msg.mine")) {
    markRead(node, readers(s, Number(node.dataset.seq)));
  }
});

client.addEventListener("typing", (e) => {
  const { conversation, user } = e.detail;
  const s = store(conversation);
  if (!s || user.id === me.id) return;
  s.typing.set(user.id, { username: user.username, until: Date.now() + TYPING_SHOW_MS });
  if (openId === s.id) renderTyping();
});

client.addEventListener("presence", (e) => setPresence(e.detail.user.id, e.detail.status));
// The server tells others about us, not us: our own dot follows our socket.
client.addEventListener("welcome", () => setPresence(me.id, "online"));
client.addEventListener("disconnect", () => setPresence(me.id, "offline"));

let restored = false;
client.addEventListener("synced", () => {
  if (!restored) {
    restored = true;
    restoreOutbox();
  }
  // Presence changes while we were away were not sent to us: ask again.
  const ids = new Set();
  for (const s of conversations.values()) for (const m of others(s.info)) ids.add(m.id);
  queuePresence(ids);
  const s = openId && store(openId);
  if (s && !s.loaded && !s.loading) loadLatest(s);
  if (!openId) {
    // `/chat/?c=<id>` (a notification's link) or `/chat/#<id>` (the page's own).
    const wanted = new URLSearchParams(location.search).get("c") || decodeURIComponent(location.hash.slice(1));
    if (wanted && store(wanted)) openConversation(wanted);
  }
});

// Sends an earlier page of this user kept and never saw acknowledged (a tab closed
// offline): sent once more with their own ids, shown as pending meanwhile.
async function restoreOutbox() {
  for (const entry of await durable.entries()) {
    if (client.outbox.has(entry.id)) continue;
    // Sent even to a conversation this page does not list: a user who left it
    // gets `forbidden`, and the entry is forgotten with the failure.
    client.send(entry.conversation, entry.body, { id: entry.id, ...(entry.options || {}) });
    const s = store(entry.conversation);
    if (!s) continue;
    s.pending.set(entry.id, { id: entry.id, body: entry.body || attachmentsLabel(entry.options || {}), state: "pending", seq: null });
    if (openId === s.id) renderPending();
  }
}

// A notification clicked while this page is open (static/tether/sw.js).
new NotificationsToggle(document.getElementById("notifications-toggle"), {
  onOpen: (id) => {
    if (store(id)) openConversation(id);
  },
});

new Banner(client, {
  root: document.getElementById("banner"),
  text: document.getElementById("banner-text"),
  retry: document.getElementById("banner-retry"),
});

// --- composer and new conversations ----------------------------------------------

let lastTypingSent = 0;
composer.addEventListener("input", () => {
  const now = Date.now();
  if (openId && composer.value && now - lastTypingSent > TYPING_SEND_EVERY_MS) {
    lastTypingSent = now;
    client.typing(openId);
  }
});
composer.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    submit();
  }
});
document.getElementById("composer-form").addEventListener("submit", (e) => {
  e.preventDefault();
  submit();
});

function submit() {
  const s = openId && store(openId);
  const body = composer.value;
  if (!s) return;
  const max = client.conn.welcome ? client.conn.welcome.limits.max_body_chars : 4000;
  if ([...body].length > max) {
    composerError.textContent = `Too long: at most ${max} characters.`;
    return;
  }
  if (context && context.kind === "edit") {
    if (!body.trim()) return;
    composerError.textContent = "";
    client.edit(s.id, context.message.message_id, body);
    composer.value = "";
    endContext();
    return;
  }
  if (staged.some((u) => !u.attachment)) {
    composerError.textContent = "Wait for the uploads to finish.";
    return;
  }
  const attachments = staged.map((u) => u.attachment);
  if (!body.trim() && !attachments.length) return;
  composerError.textContent = "";
  const options = {};
  if (context && context.kind === "reply") options.reply_to = context.message.message_id;
  if (attachments.length) options.attachments = attachments.map((a) => a.id);
  const id = client.send(s.id, body, options);
  s.pending.set(id, { id, body: body || attachmentsLabel({ attachments }), state: "pending", seq: null });
  durable.keep({ id, conversation: s.id, body, options });
  composer.value = "";
  clearStaged();
  endContext();
  stickToBottom = true;
  if (!s.atTail) resetWindow(s);
  renderPending();
  scrollToBottom();
}

// --- reply and edit: the composer's context ---------------------------------------

let context = null; // {kind: "reply" | "edit", message}
function startReply(s, m) {
  context = { kind: "reply", message: m };
  contextText.textContent = `Replying to ${quoteText(s, m.message_id)}`;
  contextBar.hidden = false;
  composer.focus();
}
function startEdit(s, m) {
  context = { kind: "edit", message: m };
  contextText.textContent = "Editing your message";
  contextBar.hidden = false;
  composer.value = m.body;
  composer.focus();
}
function endContext() {
  if (context && context.kind === "edit") composer.value = "";
  context = null;
  contextBar.hidden = true;
  contextText.textContent = "";
}
contextCancel.addEventListener("click", endContext);

// Click on a quote: the replied-to message, loading older history until it is
// there, then shown in the middle of the pane.
async function scrollToMessage(s, id) {
  while (!s.byId.has(id) && s.hasOlder && openId === s.id) {
    const before = s.msgs.length;
    const first = s.msgs.length ? s.msgs[0].seq : s.lastSeq + 1;
    try {
      const data = await client.history(s.id, { before: first, limit: PAGE });
      mergeHistory(s, data.messages);
      s.hasOlder = data.has_more;
    } catch {
      return;
    }
    if (s.msgs.length === before && !s.hasOlder) break;
  }
  const target = s.byId.get(id);
  if (!target || openId !== s.id) return;
  let node = ackedEl.querySelector(`[data-message-id="${CSS.escape(id)}"]`);
  if (!node) {
    const i = indexOfSeq(s.msgs, target.seq);
    const start = Math.max(0, i - PAGE / 2);
    const slice = s.msgs.slice(start, start + PAGE);
    ackedEl.replaceChildren(...slice.map((m) => messageEl(s, m)));
    s.winFirst = slice[0].seq;
    s.winLast = slice[slice.length - 1].seq;
    s.atTail = start + slice.length >= s.msgs.length;
    stickToBottom = false;
    updateOlderStatus(s);
    node = ackedEl.querySelector(`[data-message-id="${CSS.escape(id)}"]`);
  }
  if (!node) return;
  node.scrollIntoView({ block: "center" });
  node.classList.add("flash");
  node.focus({ preventScroll: true });
  setTimeout(() => node.classList.remove("flash"), 1500);
}

// --- attachments: button, drag and drop, paste ------------------------------------

let staged = []; // {file, el, attachment once uploaded}

function upload(file) {
  const s = openId && store(openId);
  if (!s) return;
  const row = el("div", { class: "upload", "data-name": file.name });
  const progress = el("progress", { "data-testid": "upload-progress", max: "100", value: "0" });
  const remove = el("button", { type: "button", class: "link", "aria-label": `Remove ${file.name}` }, "×");
  row.append(el("span", {}, `${file.name} · ${sizeLabel(file.size)}`), progress, remove);
  stagedEl.append(row);
  const entry = { file, el: row, attachment: null, xhr: new XMLHttpRequest() };
  staged.push(entry);
  remove.addEventListener("click", () => {
    entry.xhr.abort();
    staged = staged.filter((u) => u !== entry);
    row.remove();
  });
  // XMLHttpRequest, not fetch: it reports upload progress.
  const xhr = entry.xhr;
  xhr.open("POST", `/api/conversations/${encodeURIComponent(s.id)}/attachments/`);
  xhr.setRequestHeader("X-CSRFToken", csrfToken());
  xhr.setRequestHeader("Accept", "application/json");
  xhr.upload.addEventListener("progress", (e) => {
    if (e.lengthComputable) progress.value = Math.round((100 * e.loaded) / e.total);
  });
  xhr.addEventListener("load", () => {
    let data = null;
    try {
      data = JSON.parse(xhr.responseText);
    } catch {
      data = null;
    }
    if (xhr.status === 201 && data) {
      entry.attachment = data;
      progress.value = 100;
      row.dataset.state = "done";
    } else {
      row.dataset.state = "failed";
      staged = staged.filter((u) => u !== entry);
      composerError.textContent = `Not uploaded: ${file.name}: ${(data && (data.detail || data.error)) || `HTTP ${xhr.status}`}`;
      setTimeout(() => row.remove(), 4000);
    }
  });
  xhr.addEventListener("error", () => {
    row.dataset.state = "failed";
    staged = staged.filter((u) => u !== entry);
    composerError.textContent = `Not uploaded: ${file.name}: the connection failed`;
  });
  const form = new FormData();
  form.append("file", file, file.name);
  xhr.send(form);
}

function clearStaged() {
  staged = [];
  stagedEl.replaceChildren();
}

attachInput.addEventListener("change", () => {
  for (const file of attachInput.files) upload(file);
  attachInput.value = "";
});
paneEl.addEventListener("dragover", (e) => {
  if (!openId || !e.dataTransfer || ![...e.dataTransfer.types].includes("Files")) return;
  e.preventDefault();
  paneEl.classList.add("dropping");
});
paneEl.addEventListener("dragleave", () => paneEl.classList.remove("dropping"));
paneEl.addEventListener("drop", (e) => {
  paneEl.classList.remove("dropping");
  if (!openId || !e.dataTransfer || !e.dataTransfer.files.length) return;
  e.preventDefault();
  for (const file of e.dataTransfer.files) upload(file);
});
composer.addEventListener("paste", (e) => {
  const files = e.clipboardData ? [...e.clipboardData.files] : [];
  if (!files.length) return;
  e.preventDefault();
  for (const file of files) upload(file);
});

const newForm = document.getElementById("new-conversation-form");
const newError = document.getElementById("new-conversation-error");
newForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  newError.textContent = "";
  const names = newForm.usernames.value.split(",").map((n) => n.trim()).filter(Boolean);
  const groupTitle = newForm.title.value.trim();
  if (!names.length) return;
  try {
    const found = await api(`/api/users/?username=${encodeURIComponent(names.join(","))}`);
    const byName = new Map(found.users.map((u) => [u.username.toLowerCase(), u]));
    const missing = names.filter((n) => !byName.has(n.toLowerCase()));
    if (missing.length) {
      newError.textContent = `No such user: ${missing.join(", ")}`;
      return;
    }
    const ids = [...new Set(found.users.map((u) => u.id))].filter((id) => id !== me.id);
    const direct = ids.length === 1 && !groupTitle;
    const body = direct
      ? { kind: "direct", members: ids }
      : { kind: "group", title: groupTitle || [me.username, ...names].join(", ").slice(0, 200), members: ids };
    const c = await api("/api/conversations/", { method: "POST", body });
    upsertConversation(c);
    client.follow(c.id, c.last_seq);
    newForm.reset();
    openConversation(c.id);
  } catch (error) {
    newError.textContent = error.message;
  }
});

client.connect();
