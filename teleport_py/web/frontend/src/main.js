// teleport_py's web UI: sign-in, Kubernetes clusters, the audit log, session
// recordings and their player. Pages are routed here by location.pathname
// (the proxy answers index.html for every page under /web/); all data comes
// from /web/api/ with the session cookie, POSTs carry the CSRF token.
import { Terminal } from "@xterm/xterm";
import "@xterm/xterm/css/xterm.css";
import "./app.css";
import { Player, parseAsciicast } from "./player.js";
import { requestsPage } from "./requests.js";
import { terminalPage } from "./terminal.js";

const main = () => document.getElementById("main");
let session = null; // {user, csrf_token, expires, cluster_name, proxy_public_addr}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    if (session) headers["X-CSRF-Token"] = session.csrf_token;
  }
  const response = await fetch(`/web/api/${path}`, {
    method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
  });
  let payload = {};
  try {
    payload = await response.json();
  } catch (e) {
    payload = {};
  }
  if (!response.ok) {
    const message = (payload.error && payload.error.message) || `HTTP ${response.status}`;
    throw new ApiError(response.status, message);
  }
  return payload;
}

// -- small DOM helpers (text only: nothing from the server becomes HTML) --------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(...nodes) {
  main().replaceChildren(...nodes.filter((node) => node !== null && node !== undefined));
}

// Pages load asynchronously: one still loading when the user moves on must
// not draw over the page they moved to. Every route() is a new navigation;
// a page draws through its navigation's view(), which refuses (and so stops
// the stale page's work) once a newer navigation has begun. What a page asked
// to run when it is left (closing the terminal's socket, pausing a player)
// runs as the next navigation begins.
let navigation = 0;
let leaving = [];

class StalePage extends Error {}

function viewFor(current) {
  return (...nodes) => {
    if (current !== navigation) throw new StalePage();
    show(...nodes);
  };
}

function onLeave(action) {
  leaving.push(action);
}

function table(headers, rows, attrs = {}) {
  return el("table", attrs,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

function problem(error) {
  if (error.status === 401) {
    session = null;
    go("/web/login");
    return;
  }
  const title = error.status === 403 ? "403 Forbidden" : error.status === 404 ? "404 Not found" : "Something went wrong";
  document.title = `${title} · teleport_py`;
  show(el("section", { class: "problem", dataset: { status: String(error.status || 0) } },
    el("h1", {}, title), el("p", { role: "alert" }, error.message)));
}

function formatTime(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  return Number.isNaN(when.getTime()) ? String(iso) : when.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function go(path) {
  if (location.pathname + location.search !== path) history.pushState(null, "", path);
  route();
}

// -- pages -----------------------------------------------------------------------
async function loginPage(view, message) {
  document.getElementById("top").hidden = true;
  document.title = "Sign in · teleport_py";
  // Whether Auth asks for an OTP code with the password (second_factor: otp).
  let secondFactor = "off";
  try {
    const ping = await fetch("/webapi/ping", { headers: { Accept: "application/json" } });
    if (ping.ok) secondFactor = (await ping.json()).second_factor || "off";
  } catch (e) { /* the sign-in answer will say what is wrong */ }
  const error = el("p", { role: "alert", id: "login-error" }, message || "");
  const form = el("form", { id: "login", class: "card", dataset: { secondFactor } },
    el("h1", {}, "Sign in"),
    el("label", {}, "User", el("input", { name: "user", autocomplete: "username", required: true })),
    el("label", {}, "Password", el("input", { name: "password", type: "password", autocomplete: "current-password", required: true })),
    secondFactor === "otp" ? el("label", {}, "OTP code", el("input", { name: "otp", inputmode: "numeric", autocomplete: "one-time-code", pattern: "[0-9]{6}", required: true })) : null,
    error,
    el("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      const body = { user: form.user.value, password: form.password.value };
      if (form.otp) body.otp = form.otp.value;
      session = await api("POST", "login", body);
      go("/web/clusters");
    } catch (e) {
      error.textContent = e.status === 403 ? (form.otp ? "Wrong user name, password or OTP code." : "Wrong user name or password.") : e.message;
    }
  });
  view(form);
}

async function clustersPage(view) {
  document.title = "Kubernetes clusters · teleport_py";
  const { items } = await api("GET", "clusters");
  const rows = items.map((c) => el("tr", { dataset: { cluster: c.name } },
    el("td", {}, c.name),
    el("td", {}, Object.entries(c.labels || {}).map(([k, v]) => el("span", { class: "label" }, `${k}=${v}`))),
    el("td", {}, (c.kubernetes_users || []).join(", ")),
    el("td", {}, (c.kubernetes_groups || []).join(", ")),
    el("td", {}, el("code", {}, c.login_command),
      el("button", { type: "button", class: "copy", onclick: () => navigator.clipboard && navigator.clipboard.writeText(c.login_command) }, "Copy"),
      " ", el("a", { href: `/web/terminal?${new URLSearchParams({ cluster: c.name })}`, class: "terminal" }, "Terminal"))));
  view(el("h1", {}, "Kubernetes clusters"),
    items.length ? table(["Name", "Labels", "Kubernetes users", "Kubernetes groups", "Connect"], rows, { id: "clusters" })
      : el("p", {}, "No Kubernetes cluster your roles reach is online."));
}

function summary(event) {
  const parts = [];
  for (const key of ["kube_cluster", "namespace", "pod", "verb", "path", "command", "port", "code", "exitCode", "error"]) {
    if (event[key] !== undefined && event[key] !== "") parts.push(`${key}=${Array.isArray(event[key]) ? event[key].join(" ") : event[key]}`);
  }
  return parts.join(" ");
}

function toInput(date) {
  return new Date(date.getTime() - date.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

async function auditPage(view) {
  document.title = "Audit log · teleport_py";
  const params = new URLSearchParams(location.search);
  const now = new Date();
  const from = params.get("from") || toInput(new Date(now.getTime() - 24 * 3600 * 1000));
  const to = params.get("to") || toInput(new Date(now.getTime() + 60 * 1000));
  // Pages are cursors Auth hands out: "after" is this page's, each "back" one
  // of the pages before it (the first page's is empty), so Previous is exact.
  const after = params.get("after") || "";
  const back = params.getAll("back");
  const form = el("form", { id: "audit-filters", class: "filters" },
    el("label", {}, "From", el("input", { type: "datetime-local", name: "from", value: from })),
    el("label", {}, "To", el("input", { type: "datetime-local", name: "to", value: to })),
    el("label", {}, "Type", el("input", { name: "type", value: params.get("type") || "", placeholder: "exec, kube.request, …" })),
    el("label", {}, "User", el("input", { name: "user", value: params.get("user") || "" })),
    el("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const name of ["from", "to", "type", "user"]) if (form[name].value) next.set(name, form[name].value);
    go(`/web/audit?${next}`);
  });
  const query = new URLSearchParams({ page_size: params.get("page_size") || "25" });
  if (after) query.set("after", after);
  query.set("from", new Date(from).toISOString());
  query.set("to", new Date(to).toISOString());
  for (const name of ["type", "user"]) if (params.get(name)) query.set(name, params.get(name).replace(/\s+/g, ""));
  const result = await api("GET", `events?${query}`);
  const detail = el("pre", { id: "event-detail", class: "detail", hidden: true });
  const rows = result.items.map((event) => el("tr", {
    class: event.success === false ? "failed" : "", tabindex: "0", dataset: { event: event.event, user: event.user || "", uid: event.uid || "", time: event.time || "" },
    onclick: () => { detail.hidden = false; detail.textContent = JSON.stringify(event, null, 2); },
  }, el("td", {}, formatTime(event.time)), el("td", {}, event.event), el("td", {}, event.user || ""),
  el("td", {}, event.success === false ? "failed" : "ok"), el("td", {}, summary(event))));
  const pageLink = (cursor, cursors, label, id) => {
    const next = new URLSearchParams(params);
    next.delete("after");
    next.delete("back");
    if (cursor) next.set("after", cursor);
    for (const c of cursors) next.append("back", c);
    return el("a", { href: `/web/audit?${next}`, class: "pager", id, onclick: (e) => { e.preventDefault(); go(`/web/audit?${next}`); } }, label);
  };
  view(el("h1", {}, "Audit log"), form,
    result.items.length ? table(["Time", "Event", "User", "Result", "Details"], rows,
      { id: "events", "data-type-filter": params.get("type") || "", "data-user-filter": params.get("user") || "" }) : el("p", { id: "no-events" }, "No events match."),
    el("p", { class: "pages" }, back.length ? pageLink(back[back.length - 1], back.slice(0, -1), "← Previous page", "previous-page") : null,
      ` Page ${back.length + 1} `, result.has_more ? pageLink(result.next, [...back, after], "Next page →", "next-page") : null),
    detail);
}

function duration(meta) {
  const ms = meta.duration_ms;
  if (typeof ms !== "number") return meta.complete ? "" : "in progress";
  return `${(ms / 1000).toFixed(1)} s${meta.complete ? "" : " so far"}`;
}

function kindOf(meta) {
  if (meta.kind === "portforward") return "port-forward";
  return meta.tty ? `${meta.kind || "exec"} (interactive)` : `${meta.kind || "exec"} (non-interactive)`;
}

async function recordingsPage(view) {
  document.title = "Session recordings · teleport_py";
  const { items } = await api("GET", "recordings");
  const rows = items.slice().reverse().map((m) => el("tr", { dataset: { session: m.session_id, user: m.user || "" } },
    el("td", {}, m.user || ""), el("td", {}, m.kube_cluster || ""), el("td", {}, `${m.namespace || ""}/${m.pod || ""}`),
    el("td", {}, m.container || ""), el("td", {}, formatTime(m.time)), el("td", {}, duration(m)), el("td", {}, kindOf(m)),
    el("td", {}, el("a", { href: `/web/recordings/${m.session_id}`, class: "play" }, "Play"), " ",
      el("a", { href: `/web/api/recordings/${m.session_id}/asciicast`, download: `${m.session_id}.cast` }, "asciicast"))));
  view(el("h1", {}, "Session recordings"),
    items.length ? table(["User", "Cluster", "Pod", "Container", "Started", "Duration", "Kind", ""], rows, { id: "recordings" })
      : el("p", {}, "No recordings you may view."));
}

async function playerPage(view, sessionId) {
  document.title = "Recording · teleport_py";
  const meta = await api("GET", `recordings/${encodeURIComponent(sessionId)}`);
  const response = await fetch(`/web/api/recordings/${encodeURIComponent(sessionId)}/asciicast`, { credentials: "same-origin" });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    throw new ApiError(response.status, message);
  }
  const cast = parseAsciicast(await response.text());
  const command = (meta.command || []).join(" ");
  const heading = el("div", { class: "meta" },
    el("h1", {}, `${kindOf(meta)}: ${meta.namespace || ""}/${meta.pod || ""}${meta.container ? ` [${meta.container}]` : ""}`),
    el("p", {}, `${meta.user || ""} on ${meta.kube_cluster || ""}, ${formatTime(meta.time)}${command ? `: ${command}` : ""}`),
    el("a", { href: `/web/api/recordings/${sessionId}/asciicast`, download: `${sessionId}.cast`, id: "download" }, "Download asciicast"));
  if (meta.kind === "portforward") {
    const rows = cast.events.filter((e) => e[1] === "m").map((e) => el("tr", {}, el("td", {}, `${e[0].toFixed(3)} s`), el("td", {}, e[2])));
    view(heading, el("p", { id: "kind-note" }, "A port-forward session: connections are listed, there is no terminal."),
      table(["At", "What happened"], rows, { id: "port-events" }));
    return;
  }
  const screen = el("div", { id: "terminal" });
  const note = meta.tty ? null : el("p", { id: "kind-note" }, "A non-interactive command: its output (stdout and stderr) as it came, without a terminal of its own.");
  const play = el("button", { type: "button", id: "play" }, "Play");
  const seek = el("input", { type: "range", id: "seek", min: "0", max: String(Math.round(cast.duration * 1000)), step: "1", value: "0" });
  const clock = el("span", { id: "clock" }, "");
  const speed = el("select", { id: "speed" }, [0.5, 1, 2, 4, 8, 16].map((s) => el("option", { value: String(s), selected: s === 1 }, `${s}×`)));
  const size = el("span", { id: "size" }, "");
  const markers = el("ol", { id: "markers" });
  view(heading, note, el("div", { class: "controls" }, play, seek, clock, el("label", {}, "Speed ", speed), size), screen, markers);
  const terminal = new Terminal({ cols: cast.header.width, rows: cast.header.height, convertEol: !meta.tty, disableStdin: true, scrollback: 5000 });
  terminal.open(screen);
  const player = new Player(cast, terminal, {
    onTick(position) {
      clock.textContent = `${position.toFixed(2)} / ${cast.duration.toFixed(2)} s`;
      clock.dataset.position = String(position);
      seek.value = String(Math.round(position * 1000));
      size.textContent = `${terminal.cols}×${terminal.rows}`;
      size.dataset.size = `${terminal.cols}x${terminal.rows}`;
    },
    onMarker(event) { markers.append(el("li", {}, `${event[0].toFixed(3)} s: ${event[2]}`)); },
    onState(playing) { play.textContent = playing ? "Pause" : "Play"; play.dataset.state = playing ? "playing" : "paused"; },
  });
  play.addEventListener("click", () => (player.playing ? player.pause() : player.play()));
  seek.addEventListener("input", () => { markers.replaceChildren(); player.seek(Number(seek.value) / 1000); });
  speed.addEventListener("change", () => player.setSpeed(Number(speed.value)));
  window.teleportPlayer = player; // what the browser tests read positions from
  onLeave(() => { player.pause(); terminal.dispose(); });
  player.seek(0);
}

// -- routing -----------------------------------------------------------------------
async function route() {
  const current = ++navigation;
  for (const action of leaving.splice(0)) action();
  const view = viewFor(current);
  const path = location.pathname.replace(/\/+$/, "");
  const failed = (e) => {
    if (e instanceof StalePage || current !== navigation) return;
    if (e instanceof ApiError) problem(e);
    else problem(new ApiError(0, String(e && e.message ? e.message : e)));
  };
  if (path === "/web/login") {
    loginPage(view).catch(failed);
    return;
  }
  try {
    if (!session) session = await api("GET", "session");
  } catch (e) {
    if (e.status === 401) { loginPage(view).catch(failed); return; }
    failed(e);
    return;
  }
  if (current !== navigation) return;
  document.getElementById("top").hidden = false;
  document.getElementById("who").textContent = session.user;
  const section = path.split("/")[2] || "clusters";
  for (const link of document.querySelectorAll("[data-nav]")) link.classList.toggle("active", link.dataset.nav === section);
  try {
    if (section === "clusters") await clustersPage(view);
    else if (section === "audit") await auditPage(view);
    else if (section === "recordings" && path.split("/")[3]) await playerPage(view, path.split("/")[3]);
    else if (section === "recordings") await recordingsPage(view);
    else if (section === "requests") await requestsPage({ api, el, show: view, table, formatTime, session });
    else if (section === "terminal") await terminalPage({ api, el, show: view, onLeave, session });
    else throw new ApiError(404, `There is no page ${location.pathname}.`);
  } catch (e) {
    failed(e);
  }
}

document.addEventListener("click", (event) => {
  const link = event.target.closest && event.target.closest("a[href^='/web/']");
  if (!link || link.hasAttribute("download") || link.getAttribute("href").startsWith("/web/api/")) return;
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey) return;
  event.preventDefault();
  go(link.getAttribute("href"));
});
window.addEventListener("popstate", route);
window.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("POST", "logout", {}); } finally { session = null; go("/web/login"); }
  });
  route();
});
