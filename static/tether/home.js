// Opens /ws/chat/ with the session cookie, shows the welcome frame and pings.
const status = document.getElementById("status");
const rtt = document.getElementById("rtt");
const welcome = document.getElementById("welcome");
const scheme = location.protocol === "https:" ? "wss" : "ws";
const ws = new WebSocket(`${scheme}://${location.host}/ws/chat/`);

function setState(state, text) {
  status.dataset.state = state;
  status.textContent = text;
}

ws.addEventListener("message", (event) => {
  const frame = JSON.parse(event.data);
  if (frame.type === "welcome") {
    setState("connected", `connected to ${frame.node}`);
    welcome.textContent = JSON.stringify(frame, null, 2);
    const ping = () => ws.send(JSON.stringify({ type: "ping", ts: Date.now() }));
    ping();
    setInterval(ping, frame.heartbeat.interval * 1000);
  } else if (frame.type === "pong") {
    rtt.textContent = `${Date.now() - frame.ts} ms (load ${frame.load})`;
  } else if (frame.type === "ping") {
    ws.send(JSON.stringify({ type: "pong" }));
  }
});
ws.addEventListener("close", (event) => setState("offline", `closed (${event.code})`));
