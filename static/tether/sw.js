// Tether's service worker (PROTOCOL 14): shows a notification for each Web Push
// while no Tether page is visible, and opens the conversation when it is clicked.
// Served at /sw.js (scope "/": project/pages.py) and registered by the chat page.
/* eslint-env serviceworker */

const TITLE_FALLBACK = "Tether";

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

async function visibleTetherPage() {
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  return windows.some((w) => w.visibilityState === "visible");
}

// A group's title is not in the push (it carries what PROTOCOL 14 lists); the
// conversation is asked for with the browser's session, and the sender's name
// stands in when that fails (signed out, offline).
async function conversationTitle(id) {
  try {
    const response = await fetch(`/api/conversations/${encodeURIComponent(id)}/`, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (!response.ok) return null;
    const c = await response.json();
    return c.kind === "group" && c.title ? c.title : null;
  } catch {
    return null;
  }
}

async function show(push) {
  // While a Tether page is visible its own socket shows the message: no notification.
  if (await visibleTetherPage()) return;
  const sender = push.sender ? push.sender.username : TITLE_FALLBACK;
  const group = await conversationTitle(push.conversation);
  const title = group || sender;
  const body = group ? `${sender}: ${push.body}` : push.body;
  await self.registration.showNotification(title, {
    body,
    tag: `tether:${push.conversation}`, // one notification per conversation, the newest
    renotify: true,
    data: { conversation: push.conversation, seq: push.seq, message_id: push.message_id },
  });
}

self.addEventListener("push", (event) => {
  let push = null;
  try {
    push = event.data ? event.data.json() : null;
  } catch {
    push = null;
  }
  if (!push || push.type !== "message" || typeof push.conversation !== "string") return;
  event.waitUntil(show(push));
});

async function openConversation(conversation) {
  const url = new URL(`/chat/?c=${encodeURIComponent(conversation)}`, self.location.origin).href;
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const chat = windows.find((w) => new URL(w.url).pathname === "/chat/");
  if (chat) {
    // The chat page opens it itself (chat.js listens), keeping its socket and state.
    chat.postMessage({ type: "tether.open", conversation });
    return chat.focus();
  }
  const other = windows[0];
  if (other) {
    const navigated = await other.navigate(url).catch(() => null);
    if (navigated) return navigated.focus();
  }
  return self.clients.openWindow(url);
}

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const conversation = event.notification.data && event.notification.data.conversation;
  if (!conversation) return;
  event.waitUntil(openConversation(conversation));
});
