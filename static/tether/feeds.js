// The /feeds/ page: topic subscriptions over /ws/stream/ with StreamClient.
// Subscriptions and their positions live in sessionStorage, so a reload
// resumes with `since` and shows whether the server could recover the gap.
import { StreamClient } from "./client.js";
import { Banner, el, onFrame } from "./ui.js";

const TOPIC_RE = /^[a-z0-9_-]{1,32}:[A-Za-z0-9_.@-]{1,128}$/;
const KEEP = 200; // publications kept on screen per topic
const app = document.getElementById("feeds-app");
const storageKey = `tether.feeds.${app.dataset.userId}`;
const topicsEl = document.getElementById("topics");
const form = document.getElementById("subscribe-form");
const input = document.getElementById("topic-input");
const errorEl = document.getElementById("subscribe-error");

const client = new StreamClient();
const views = new Map();
const queued = [];
const render = onFrame(flush);

function saved() {
  try {
    return JSON.parse(sessionStorage.getItem(storageKey) || "{}");
  } catch {
    return {};
  }
}

function save() {
  const out = {};
  for (const [topic, entry] of client.topics) out[topic] = { offset: entry.offset, epoch: entry.epoch };
  sessionStorage.setItem(storageKey, JSON.stringify(out));
}

function view(topic) {
  let v = views.get(topic);
  if (v) return v;
  const section = el("section", { class: "card topic", "data-topic": topic });
  const resume = el("span", { class: "resume", "data-testid": "recovered" }, "subscribing…");
  const offset = el("span", { class: "current" });
  const close = el("button", { type: "button", class: "link" }, "Unsubscribe");
  const heading = el("h3");
  heading.append(el("span", {}, topic), resume, offset, close);
  const list = el("ol", { class: "publications", reversed: "" });
  section.append(heading, list);
  topicsEl.prepend(section);
  close.addEventListener("click", () => {
    client.unsubscribe(topic);
    section.remove();
    views.delete(topic);
    save();
  });
  v = { section, resume, offset, list };
  views.set(topic, v);
  return v;
}

function subscribe(topic, since) {
  view(topic);
  client.subscribe(topic, since);
  save();
}

client.addEventListener("subscribed", (e) => {
  const { topic, offset, epoch, recovered, resumed, publications } = e.detail;
  const v = views.get(topic);
  if (!v) return;
  v.resume.dataset.recovered = String(Boolean(recovered));
  v.resume.dataset.resumed = String(Boolean(resumed));
  if (!resumed) v.resume.textContent = "live";
  else if (recovered) v.resume.textContent = `resumed: recovered ${publications.length} missed`;
  else v.resume.textContent = "resumed: NOT recovered (history lost; continuing from now)";
  v.offset.textContent = `offset ${offset} · epoch ${epoch}`;
  save();
});

function refused(topic, code, message) {
  const v = views.get(topic);
  if (v) {
    v.section.remove();
    views.delete(topic);
  }
  errorEl.textContent = `${topic}: ${code === "forbidden" ? "not allowed" : message || code}`;
  save();
}

client.addEventListener("subscribe-failed", (e) => {
  const { topic, code, message } = e.detail;
  refused(topic, code, message);
});

client.addEventListener("unsubscribed", (e) => {
  // With a reason, the server ended it (a right taken away); without, the user did.
  const { topic, reason } = e.detail;
  if (reason) refused(topic, reason);
});

client.addEventListener("pub", (e) => {
  queued.push(e.detail);
  render();
});

function flush() {
  const byTopic = new Map();
  for (const pub of queued.splice(0)) {
    if (!byTopic.has(pub.topic)) byTopic.set(pub.topic, []);
    byTopic.get(pub.topic).push(pub);
  }
  for (const [topic, pubs] of byTopic) {
    const v = views.get(topic);
    if (!v) continue;
    const items = pubs.map((pub) => {
      const li = el("li", {
        class: "publication",
        "data-testid": "publication",
        "data-offset": String(pub.offset),
        "data-topic": topic,
      });
      li.append(
        el("span", { class: "offset" }, `#${pub.offset}`),
        el("span", { class: "ts" }, pub.ts ? new Date(pub.ts).toLocaleTimeString() : ""),
        el("span", { class: "data" }, JSON.stringify(pub.data)),
      );
      return li;
    });
    v.list.prepend(...items.reverse());
    while (v.list.childElementCount > KEEP) v.list.lastElementChild.remove();
    const last = pubs[pubs.length - 1];
    v.offset.textContent = `offset ${last.offset} · epoch ${last.epoch}`;
  }
  save();
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  errorEl.textContent = "";
  const topic = input.value.trim();
  if (!TOPIC_RE.test(topic)) {
    errorEl.textContent = "A topic looks like namespace:name, e.g. prices:BTC-USD.";
    return;
  }
  if (!views.has(topic)) subscribe(topic);
  input.value = "";
});

new Banner(client, {
  root: document.getElementById("banner"),
  text: document.getElementById("banner-text"),
  retry: document.getElementById("banner-retry"),
});

for (const [topic, since] of Object.entries(saved())) {
  subscribe(topic, since && since.epoch ? since : undefined);
}
client.connect();
