// The /ops/ page: per-node figures from the staff topic `ops:stats`, as cards and
// small SVG line charts (one line per node) over a rolling window.
//
// Each node publishes `{node, at, ...figures}` every maintenance pass (1–5 s,
// monitoring/stats.py). On load the charts are filled from the topic's history,
// then StreamClient subscribes from the history's offset, so nothing between the
// two is missed or shown twice. All text from the server is set as text.
import { StreamClient, api } from "./client.js";
import { Banner, el, onFrame } from "./ui.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const app = document.getElementById("ops-app");
const TOPIC = app.dataset.topic;
const WINDOW_MS = Number(app.dataset.windowMinutes || 10) * 60_000;
// Nodes publish every 1–5 s: three missed passes of the slowest node mean trouble.
const SILENT_MS = 15_000;
const PALETTE = ["#2d6cdf", "#e4572e", "#17a398", "#f3a712", "#8e44ad", "#29335c", "#c2185b", "#4c9a2a"];
const MIB = 1024 * 1024;

const nodesEl = document.getElementById("ops-nodes");
const chartsEl = document.getElementById("ops-charts");
const emptyEl = document.getElementById("ops-empty");
const errorEl = document.getElementById("ops-error");

const sumValues = (obj) => Object.values(obj || {}).reduce((a, b) => a + (Number(b) || 0), 0);
const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

// `value` reads a gauge-like figure; `counter` reads a cumulative count that is
// charted as an increase per minute between two consecutive figures of a node.
const CHARTS = [
  { metric: "connections", title: "Connections", value: (s) => num(s.connections) },
  { metric: "messages_per_s", title: "Messages stored /s", value: (s) => num(s.messages_per_s) },
  { metric: "publications_per_s", title: "Publications /s", value: (s) => num(s.publications_per_s) },
  { metric: "deliveries_per_s", title: "Deliveries /s (pub + message frames)", value: (s) => num(s.deliveries_per_s) },
  {
    metric: "latency_ms.send_ack_p99",
    title: "send → ack p99 (ms)",
    value: (s) => num(s.latency_ms && s.latency_ms.send_ack_p99),
  },
  {
    metric: "latency_ms.publish_deliver_p99",
    title: "publish → deliver p99 (ms)",
    value: (s) => num(s.latency_ms && s.latency_ms.publish_deliver_p99),
  },
  {
    metric: "heartbeat_timeouts_per_min",
    title: "Heartbeat timeouts (4408) /min",
    counter: (s) => num(s.heartbeat_timeouts),
  },
  { metric: "closes_per_min", title: "Closes /min (all codes)", counter: (s) => sumValues(s.closes_by_code) },
  {
    metric: "process.rss_mib",
    title: "RSS (MiB)",
    value: (s) => (s.process && num(s.process.rss_bytes) !== null ? s.process.rss_bytes / MIB : null),
  },
  {
    metric: "process.event_loop_lag_ms",
    title: "Event-loop lag (ms)",
    value: (s) => num(s.process && s.process.event_loop_lag_ms),
  },
];

/** name → {color, points: [{at, stats, values}], card, fields} */
const nodes = new Map();
// Browser clock minus server clock, estimated from live figures, so the window's
// right edge is "now" on the servers' clock even if this machine's clock is off.
let skew = 0;
const render = onFrame(draw);

function serverNow() {
  return Date.now() - skew;
}

function fmt(v, digits = 2) {
  if (v === null || v === undefined) return "–";
  if (Math.abs(v) >= 100) return String(Math.round(v));
  if (Math.abs(v) >= 10) return v.toFixed(1);
  return v.toFixed(digits);
}

function niceCeil(v) {
  if (!(v > 0)) return 1;
  const exp = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * exp >= v) return m * exp;
  return 10 * exp;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- data ----------------------------------------------------------------

/** Take one published figure set; false when it is malformed, a repeat or too old. */
function ingest(stats) {
  if (!stats || typeof stats.node !== "string" || typeof stats.at !== "number") return false;
  let node = nodes.get(stats.node);
  if (!node) {
    node = { name: stats.node, color: PALETTE[nodes.size % PALETTE.length], points: [] };
    nodes.set(stats.node, node);
  }
  const prev = node.points[node.points.length - 1];
  // History and the live feed overlap by design only through offsets; a
  // duplicate or reordered figure (e.g. after an unrecovered resume) is dropped.
  if (prev && stats.at <= prev.at) return false;
  const values = {};
  for (const chart of CHARTS) {
    if (chart.value) {
      values[chart.metric] = chart.value(stats);
    } else {
      const now = chart.counter(stats);
      const before = prev ? chart.counter(prev.stats) : null;
      const minutes = prev ? (stats.at - prev.at) / 60_000 : 0;
      if (now === null || before === null || !(minutes > 0) || gapBetween(prev, stats)) {
        values[chart.metric] = null;
      } else {
        // A counter that went down means the node restarted: all of `now` is new.
        values[chart.metric] = (now >= before ? now - before : now) / minutes;
      }
    }
  }
  node.points.push({ at: stats.at, stats, values });
  const cutoff = stats.at - WINDOW_MS - SILENT_MS;
  while (node.points.length && node.points[0].at < cutoff) node.points.shift();
  return true;
}

/** Whether two consecutive figures of a node are too far apart to draw a line between. */
function gapBetween(a, b) {
  const interval = Math.max(1, Number(b.interval_s) || Number(a.stats && a.stats.interval_s) || 5);
  return b.at - a.at > Math.max(SILENT_MS, 3 * interval * 1000);
}

// --- node cards ------------------------------------------------------------

const FIELDS = [
  ["connections", "connections"],
  ["subscriptions", "subscriptions"],
  ["rates", "messages · pubs · deliveries /s"],
  ["send_ack", "send → ack p50 / p99"],
  ["publish_deliver", "publish → deliver p50 / p99"],
  ["timeouts", "heartbeat timeouts"],
  ["closes", "closes by code"],
  ["rss", "RSS"],
  ["fds", "open fds / limit"],
  ["threads", "threads"],
  ["lag", "event-loop lag"],
  ["gc", "GC collections (gen 0/1/2)"],
  ["pid", "pid"],
];

function card(node) {
  if (node.card) return node.card;
  const root = el("article", { class: "card ops-node", "data-testid": "ops-node", "data-node": node.name });
  const head = el("h3");
  const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
  swatch.style.background = node.color; // CSSOM, not a style attribute: allowed by the CSP
  const status = el("span", { class: "ops-status", "data-testid": "ops-node-status" });
  head.append(swatch, el("span", { class: "ops-node-name" }, node.name), status);
  const list = el("dl");
  const fields = {};
  for (const [key, label] of FIELDS) {
    const dd = el("dd", { "data-field": key });
    list.append(el("dt", {}, label), dd);
    fields[key] = dd;
  }
  root.append(head, list);
  node.card = { root, status, fields };
  // Cards stay in name order whatever order the nodes first appeared in.
  const after = [...nodesEl.children].find((c) => c.dataset.node > node.name);
  nodesEl.insertBefore(root, after || null);
  return node.card;
}

function windowIncrease(node, read) {
  const first = node.points.find((p) => p.at >= serverNow() - WINDOW_MS);
  const last = node.points[node.points.length - 1];
  if (!first || first === last) return null;
  const a = read(first.stats);
  const b = read(last.stats);
  return b >= a ? b - a : b;
}

function updateCard(node, now) {
  const { root, status, fields } = card(node);
  const last = node.points[node.points.length - 1];
  if (!last) return;
  const s = last.stats;
  const age = Math.max(0, now - s.at);
  // The server's liveness rule (registry.silent_after), sent with the figures.
  const alive = age <= (Number(s.silent_after_ms) || SILENT_MS);
  root.dataset.alive = String(alive);
  root.dataset.connections = String(s.connections ?? "");
  status.textContent = alive ? `live · ${Math.round(age / 1000)} s ago` : `silent for ${Math.round(age / 1000)} s`;
  const byEndpoint = s.connections_by_endpoint || {};
  const parts = Object.entries(byEndpoint).map(([k, v]) => `${k} ${v}`);
  fields.connections.textContent = `${s.connections ?? "–"}${parts.length ? ` (${parts.join(", ")})` : ""}`;
  fields.subscriptions.textContent = String(s.subscriptions ?? "–");
  fields.rates.textContent = `${fmt(num(s.messages_per_s))} · ${fmt(num(s.publications_per_s))} · ${fmt(num(s.deliveries_per_s))}`;
  const lat = s.latency_ms || {};
  fields.send_ack.textContent = `${fmt(num(lat.send_ack_p50))} / ${fmt(num(lat.send_ack_p99))} ms`;
  fields.publish_deliver.textContent = `${fmt(num(lat.publish_deliver_p50))} / ${fmt(num(lat.publish_deliver_p99))} ms`;
  const timeoutsNew = windowIncrease(node, (x) => num(x.heartbeat_timeouts) || 0);
  fields.timeouts.textContent = `${s.heartbeat_timeouts ?? "–"} total${timeoutsNew !== null ? `, +${timeoutsNew} in window` : ""}`;
  const codes = Object.entries(s.closes_by_code || {}).sort(([a], [b]) => Number(a) - Number(b));
  fields.closes.textContent = codes.length
    ? codes
        .map(([code, n]) => {
          const recent = windowIncrease(node, (x) => Number((x.closes_by_code || {})[code]) || 0);
          return `${code} × ${n}${recent ? ` (+${recent})` : ""}`;
        })
        .join(", ")
    : "none";
  const p = s.process || {};
  fields.rss.textContent = num(p.rss_bytes) !== null ? `${fmt(p.rss_bytes / MIB, 1)} MiB` : "–";
  const fdShare = num(p.open_fds) !== null && num(p.fd_limit) ? p.open_fds / p.fd_limit : null;
  fields.fds.textContent = num(p.open_fds) !== null ? `${p.open_fds} / ${p.fd_limit}` : `– / ${p.fd_limit ?? "–"}`;
  // Past 80 % of the descriptor limit new sockets start failing soon (accept: EMFILE).
  fields.fds.classList.toggle("warn", fdShare !== null && fdShare > 0.8);
  fields.threads.textContent = String(p.threads ?? "–");
  fields.lag.textContent = `${fmt(num(p.event_loop_lag_ms), 1)} ms`;
  fields.lag.classList.toggle("warn", num(p.event_loop_lag_ms) !== null && p.event_loop_lag_ms > 250);
  fields.gc.textContent = Array.isArray(p.gc_collections) ? p.gc_collections.join(" / ") : "–";
  fields.pid.textContent = String(p.pid ?? "–");
}

// --- charts ------------------------------------------------------------------

const W = 420;
const H = 160;
const PAD = { left: 40, right: 8, top: 10, bottom: 22 };

function buildChart(chart) {
  const root = el("figure", { class: "card ops-chart", "data-testid": "ops-chart", "data-metric": chart.metric });
  const caption = el("figcaption", {}, chart.title);
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": chart.title });
  const grid = svg("g", { class: "grid" });
  const lines = svg("g", { class: "lines" });
  plot.append(grid, lines);
  const legend = el("ul", { class: "legend" });
  root.append(caption, plot, legend);
  chartsEl.append(root);
  return { ...chart, root, grid, lines, legend, series: new Map() };
}

const charts = CHARTS.map(buildChart);

function drawGrid(chart, yMax) {
  chart.grid.replaceChildren();
  const x0 = PAD.left;
  const x1 = W - PAD.right;
  for (const share of [0, 0.5, 1]) {
    const y = PAD.top + (1 - share) * (H - PAD.top - PAD.bottom);
    chart.grid.append(
      svg("line", { x1: x0, x2: x1, y1: y, y2: y, class: share === 0 ? "axis" : "rule" }),
      svg("text", { x: x0 - 4, y: y + 3, "text-anchor": "end" }, fmt(yMax * share)),
    );
  }
  const minutes = Math.round(WINDOW_MS / 60_000);
  chart.grid.append(
    svg("text", { x: x0, y: H - 6, "text-anchor": "start" }, `−${minutes} min`),
    svg("text", { x: x1, y: H - 6, "text-anchor": "end" }, "now"),
  );
}

function series(chart, node) {
  let s = chart.series.get(node.name);
  if (s) return s;
  const path = svg("path", {
    "data-testid": "ops-series",
    "data-node": node.name,
    fill: "none",
    stroke: node.color,
    "stroke-width": 1.8,
    "stroke-linejoin": "round",
  });
  chart.lines.append(path);
  const item = el("li", { "data-node": node.name });
  const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
  swatch.style.background = node.color;
  const label = el("span");
  item.append(swatch, label);
  chart.legend.append(item);
  s = { path, label };
  chart.series.set(node.name, s);
  return s;
}

function drawChart(chart, now) {
  const t0 = now - WINDOW_MS;
  let top = 0;
  const visible = [];
  for (const node of nodes.values()) {
    const pts = node.points.filter((p) => p.at >= t0 && p.at <= now + SILENT_MS);
    for (const p of pts) {
      const v = p.values[chart.metric];
      if (v !== null && v > top) top = v;
    }
    visible.push([node, pts]);
  }
  const yMax = niceCeil(top);
  drawGrid(chart, yMax);
  const xScale = (at) => PAD.left + ((at - t0) / WINDOW_MS) * (W - PAD.left - PAD.right);
  const yScale = (v) => PAD.top + (1 - Math.min(v, yMax) / yMax) * (H - PAD.top - PAD.bottom);
  let total = 0;
  for (const [node, pts] of visible) {
    const s = series(chart, node);
    let d = "";
    let prev = null;
    let drawn = 0;
    let max = null;
    let last = null;
    for (const p of pts) {
      const v = p.values[chart.metric];
      if (v === null) {
        prev = null; // no observation in that interval: a gap, not a zero
        continue;
      }
      const x = Math.min(xScale(p.at), W - PAD.right).toFixed(1);
      const y = yScale(v).toFixed(1);
      d += `${prev && !gapBetween(prev, p.stats) ? "L" : "M"}${x} ${y} `;
      prev = p;
      drawn += 1;
      last = v;
      max = max === null ? v : Math.max(max, v);
    }
    // A single point would be an invisible zero-length path: draw it as a dot.
    s.path.setAttribute("d", drawn === 1 ? `${d}h0.1` : d.trim());
    s.path.setAttribute("stroke-linecap", "round");
    s.path.dataset.points = String(drawn);
    s.path.dataset.last = last === null ? "" : String(last);
    s.path.dataset.max = max === null ? "" : String(max);
    s.label.textContent = `${node.name}: ${fmt(last)}`;
    total += drawn;
  }
  chart.root.dataset.points = String(total);
}

function draw() {
  const now = serverNow();
  emptyEl.hidden = nodes.size > 0;
  for (const node of nodes.values()) updateCard(node, now);
  for (const chart of charts) drawChart(chart, now);
}

// --- feed ----------------------------------------------------------------------

const client = new StreamClient();
new Banner(client, {
  root: document.getElementById("banner"),
  text: document.getElementById("banner-text"),
  retry: document.getElementById("banner-retry"),
});

client.addEventListener("pub", (e) => {
  const pub = e.detail;
  if (pub.topic !== TOPIC) return;
  if (pub.data && typeof pub.data.at === "number") skew = Date.now() - pub.data.at;
  if (ingest(pub.data)) render();
});

client.addEventListener("subscribed", (e) => {
  if (e.detail.resumed && !e.detail.recovered) {
    errorEl.textContent = "Some figures were lost while disconnected; the charts show a gap.";
  } else {
    errorEl.textContent = "";
  }
  render();
});

client.addEventListener("subscribe-failed", (e) => {
  errorEl.textContent = `Cannot follow ${TOPIC}: ${e.detail.message || e.detail.code}`;
});

client.addEventListener("unsubscribed", (e) => {
  if (e.detail.topic !== TOPIC || !e.detail.reason) return;
  const why = e.detail.reason === "forbidden" ? "this account may no longer view operations" : e.detail.reason;
  errorEl.textContent = `Stopped following ${TOPIC}: ${why}`;
});

async function start() {
  let since;
  try {
    const history = await api(`/api/topics/${encodeURIComponent(TOPIC)}/history/`);
    for (const pub of history.publications || []) ingest(pub.data);
    if (history.epoch) since = { offset: history.offset, epoch: history.epoch };
  } catch (error) {
    // Live figures still come; only the first minutes of the charts are missing.
    errorEl.textContent = `History unavailable (${error.code || error.status || error.message}); showing live figures only.`;
  }
  render();
  client.subscribe(TOPIC, since);
  client.connect();
  // Slide the window and age the nodes even when no figure arrives.
  setInterval(render, 1000);
}

start();
