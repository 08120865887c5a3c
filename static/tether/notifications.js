// The chat page's notifications toggle (PROTOCOL 14): registers the service worker,
// asks for permission, subscribes with the server's VAPID key and posts the
// subscription; off unsubscribes and deletes it. data-state is "on", "off" or
// "denied" (the browser refuses notifications for this site).
import { api } from "./client.js";

function b64urlBytes(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

export class NotificationsToggle {
  constructor(button, { onOpen }) {
    this.button = button;
    this.registration = null;
    this.busy = false;
    button.addEventListener("click", () => this.toggle());
    if (!("serviceWorker" in navigator) || !("PushManager" in window) || !("Notification" in window)) {
      button.hidden = true;
      return;
    }
    navigator.serviceWorker.addEventListener("message", (e) => {
      if (e.data && e.data.type === "tether.open" && typeof e.data.conversation === "string") {
        onOpen(e.data.conversation);
      }
    });
    this.ready = this.start();
    // Logging out here turns this browser's pushes off first: the next person at
    // this browser must not be shown the previous user's messages.
    const logout = document.querySelector('[data-testid="logout"]');
    const form = logout && logout.form;
    if (form) {
      form.addEventListener("submit", async (e) => {
        if (this.button.dataset.state !== "on" || form.dataset.pushOff) return;
        e.preventDefault();
        form.dataset.pushOff = "1";
        await this.off().catch(() => null);
        form.submit();
      });
    }
  }

  async start() {
    try {
      this.registration = await navigator.serviceWorker.register("/sw.js", { scope: "/" });
      await navigator.serviceWorker.ready;
    } catch (error) {
      this.show("off", `Notifications unavailable: ${error.message}`);
      return;
    }
    await this.refresh();
  }

  async refresh() {
    if (Notification.permission === "denied") return this.show("denied");
    const sub = await this.registration.pushManager.getSubscription();
    this.show(sub && Notification.permission === "granted" ? "on" : "off");
  }

  show(state, note) {
    this.button.dataset.state = state;
    this.button.setAttribute("aria-pressed", state === "on" ? "true" : "false");
    this.button.textContent = { on: "Notifications: on", off: "Notifications: off", denied: "Notifications: blocked" }[state];
    this.button.title = note || (state === "denied" ? "Allow notifications for this site in the browser's settings" : "");
  }

  async toggle() {
    if (this.busy || !this.registration) return;
    this.busy = true;
    try {
      if (this.button.dataset.state === "on") await this.off();
      else await this.on();
    } catch (error) {
      await this.refresh();
      this.button.title = `Notifications: ${error.message}`;
    } finally {
      this.busy = false;
    }
  }

  async on() {
    const permission = await Notification.requestPermission();
    if (permission !== "granted") return this.show(permission === "denied" ? "denied" : "off");
    const { public_key: key } = await api("/api/push/key/");
    let sub = await this.registration.pushManager.getSubscription();
    if (sub && !sameKey(sub, key)) {
      await sub.unsubscribe(); // made with an older server key: useless now
      sub = null;
    }
    sub = sub || (await this.registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: b64urlBytes(key) }));
    await api("/api/push/subscriptions/", { method: "POST", body: sub.toJSON() });
    this.show("on");
  }

  async off() {
    const sub = await this.registration.pushManager.getSubscription();
    if (sub) {
      await api("/api/push/subscriptions/", { method: "DELETE", body: { endpoint: sub.endpoint } });
      await sub.unsubscribe();
    }
    this.show("off");
  }
}

function sameKey(sub, key) {
  const used = sub.options && sub.options.applicationServerKey;
  if (!used) return true;
  const bytes = new Uint8Array(used);
  const wanted = b64urlBytes(key);
  return bytes.length === wanted.length && bytes.every((b, i) => b === wanted[i]);
}
