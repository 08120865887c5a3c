// Small DOM helpers shared by the chat and feeds pages (not part of the client library).

/** An element with attributes and, optionally, text (always as text, never as HTML). */
export function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Wrap `fn` so that any number of calls within one frame run it once, before the next paint. */
export function onFrame(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      fn();
    });
  };
}

/**
 * The connection banner: data-state is "connected", "reconnecting" (with a
 * countdown to the next attempt) or "offline" (no network, or the server said
 * not to come back: logged out, banned).
 */
export class Banner {
  constructor(client, { root, text, retry }) {
    this.client = client;
    this.root = root;
    this.text = text;
    this.retry = retry;
    this.detail = null;
    this.timer = null;
    retry.addEventListener("click", () => {
      if (this.detail && this.detail.reason === "auth") {
        location.assign(`/accounts/login/?next=${encodeURIComponent(location.pathname + location.hash)}`);
      } else {
        client.conn.reconnectNow("button");
      }
    });
    client.addEventListener("state", (e) => this.update(e.detail));
  }

  update(detail) {
    this.detail = detail;
    clearInterval(this.timer);
    this.timer = null;
    const { state } = detail;
    if (state === "connected") {
      this.show("connected", `Connected${detail.node ? ` to ${detail.node}` : ""}`, null);
    } else if (state === "connecting" || state === "reconnecting") {
      this.countdown();
      if (detail.retryAt && detail.retryAt > Date.now()) this.timer = setInterval(() => this.countdown(), 250);
    } else if (detail.reason === "auth") {
      this.show("offline", "Signed out: log in again to reconnect.", "Log in");
    } else if (detail.reason === "network") {
      this.show("offline", "Offline: waiting for the network.", "Retry now");
    } else if (detail.reason === "forbidden") {
      this.show("offline", "Disconnected by the server (account disabled or session ended).", null);
    } else {
      this.show("offline", "Disconnected.", "Reconnect");
    }
  }

  countdown() {
    const d = this.detail;
    const left = d.retryAt ? Math.ceil((d.retryAt - Date.now()) / 1000) : 0;
    if (d.state === "connecting") this.show("reconnecting", "Connecting…", null);
    else if (left > 0) this.show("reconnecting", `Connection lost. Reconnecting in ${left} s…`, "Retry now");
    else this.show("reconnecting", "Reconnecting…", null);
    this.root.dataset.countdown = String(Math.max(0, left));
  }

  show(state, message, button) {
    this.root.dataset.state = state;
    this.text.textContent = message;
    this.retry.hidden = !button;
    if (button) this.retry.textContent = button;
  }
}
