// The web terminal: pick a Kubernetes cluster, namespace, pod and container
// (listed by the proxy through the agent, as the signed-in user), enter a
// command, and get an xterm.js terminal on it over a WebSocket to the proxy
// (docs/web-ui.md). The socket speaks Kubernetes' v5.channel.k8s.io: binary
// messages of a channel byte and its bytes (0 stdin, 1 stdout, 2 stderr,
// 3 the exit Status, 4 resize events). The terminal fills the window below
// the picker (xterm.js's fit addon picks its columns and rows); resizing the
// window resizes it, and each new size goes to the exec as a resize event.
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";

const STDIN = 0, STDOUT = 1, STDERR = 2, ERROR = 3, RESIZE = 4;
const encoder = new TextEncoder();

function message(channel, bytes) {
  const out = new Uint8Array(bytes.length + 1);
  out[0] = channel;
  out.set(bytes, 1);
  return out;
}

// What a Status on the error channel means to a person.
export function describeStatus(status) {
  if (status.status === "Success") return { ok: true, text: "The command exited with status 0." };
  const causes = (status.details && status.details.causes) || [];
  const exit = causes.find((c) => c.reason === "ExitCode");
  if (status.reason === "NonZeroExitCode" && exit) return { ok: true, text: `The command exited with status ${exit.message}.` };
  return { ok: false, text: status.message || "The terminal could not start." };
}

export async function terminalPage({ api, el, show, onLeave, session }) {
  document.title = "Terminal · teleport_py";
  const params = new URLSearchParams(location.search);
  const { items: clusters } = await api("GET", "clusters");
  const select = (name, label) => {
    const node = el("select", { name, id: `pick-${name}`, required: true });
    return [node, el("label", {}, label, node)];
  };
  const [cluster, clusterLabel] = select("cluster", "Cluster");
  const [namespace, namespaceLabel] = select("namespace", "Namespace");
  const [pod, podLabel] = select("pod", "Pod");
  const [container, containerLabel] = select("container", "Container");
  const command = el("input", { name: "command", id: "pick-command", value: params.get("command") || "sh", required: true });
  const problemLine = el("p", { role: "alert", id: "terminal-error" }, "");
  const connect = el("button", { type: "submit", id: "connect" }, "Connect");
  const form = el("form", { id: "terminal-form", class: "filters" }, clusterLabel, namespaceLabel, podLabel, containerLabel,
    el("label", {}, "Command", command), connect);
  const state = el("p", { id: "terminal-state", dataset: { state: "idle" } }, "");
  const screen = el("div", { id: "terminal", class: "fitted" });
  show(el("h1", {}, "Terminal"), form, problemLine, state, screen);

  const fill = (node, names, wanted) => {
    node.replaceChildren(...names.map((n) => el("option", { value: n, selected: n === wanted }, n)));
  };
  const failed = (e) => { problemLine.textContent = e.message; };
  const loadPods = async () => {
    pod.replaceChildren(); container.replaceChildren();
    if (!namespace.value) return;
    const { items } = await api("GET", `kube/${encodeURIComponent(cluster.value)}/namespaces/${encodeURIComponent(namespace.value)}/pods`);
    const containers = () => {
      const chosen = items.find((p) => p.name === pod.value);
      fill(container, chosen ? chosen.containers : [], params.get("container"));
    };
    pod.onchange = containers;
    fill(pod, items.map((p) => p.name), params.get("pod"));
    containers();
  };
  const loadNamespaces = async () => {
    namespace.replaceChildren(); pod.replaceChildren(); container.replaceChildren();
    if (!cluster.value) return;
    let items = ["default"];
    try {
      ({ items } = await api("GET", `kube/${encodeURIComponent(cluster.value)}/namespaces`));
    } catch (e) {
      // Listing namespaces may be refused where a namespace's pods are not.
      problemLine.textContent = `${e.message} (showing the default namespace)`;
    }
    fill(namespace, items, params.get("namespace") || (items.includes("default") ? "default" : items[0]));
    await loadPods();
  };
  cluster.onchange = () => loadNamespaces().catch(failed);
  namespace.onchange = () => loadPods().catch(failed);
  fill(cluster, clusters.map((c) => c.name), params.get("cluster"));
  if (!clusters.length) problemLine.textContent = "No Kubernetes cluster your roles reach is online.";
  else await loadNamespaces().catch(failed);

  let socket = null;
  let terminal = null;
  let fitAddon = null;
  // The terminal takes the window's height below its top (at least 10 rows'
  // worth) and the page's width; the fit addon turns that into columns and rows.
  let fitting = 0;
  const fit = () => {
    fitting = 0;
    if (!terminal) return;
    const top = screen.getBoundingClientRect().top + window.scrollY;
    screen.style.height = `${Math.max(160, window.innerHeight - top - 48)}px`;
    fitAddon.fit();
  };
  const refit = () => { if (!fitting) fitting = requestAnimationFrame(fit); };
  window.addEventListener("resize", refit);
  onLeave(() => {
    window.removeEventListener("resize", refit);
    if (fitting) cancelAnimationFrame(fitting);
    if (socket) socket.close();
    if (terminal) terminal.dispose();
  });
  const setState = (name, text) => { state.dataset.state = name; state.textContent = text; };
  const send = (channel, bytes) => { if (socket && socket.readyState === WebSocket.OPEN) socket.send(message(channel, bytes)); };
  const sendSize = () => send(RESIZE, encoder.encode(JSON.stringify({ Width: terminal.cols, Height: terminal.rows })));

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    problemLine.textContent = "";
    if (socket) socket.close();
    if (terminal) terminal.dispose();
    screen.replaceChildren();
    terminal = new Terminal({ scrollback: 5000 });
    fitAddon = new FitAddon();
    terminal.loadAddon(fitAddon);
    terminal.open(screen);
    fit();
    window.teleportTerminal = terminal; // what the browser tests read
    const query = new URLSearchParams({
      namespace: namespace.value, pod: pod.value, container: container.value, command: command.value, csrf: session.csrf_token,
    });
    socket = new WebSocket(`wss://${location.host}/web/api/kube/${encodeURIComponent(cluster.value)}/exec?${query}`,
      ["v5.channel.k8s.io"]);
    socket.binaryType = "arraybuffer";
    setState("connecting", `Connecting to ${namespace.value}/${pod.value}…`);
    let ended = false;
    let wrote = false;
    socket.onopen = () => {
      setState("open", `${session.user} on ${cluster.value}: ${namespace.value}/${pod.value} [${container.value}] $ ${command.value}`);
      sendSize();
      terminal.focus();
    };
    terminal.onData((data) => send(STDIN, encoder.encode(data)));
    terminal.onResize(() => sendSize());
    socket.onmessage = (event) => {
      const bytes = new Uint8Array(event.data);
      if (!bytes.length) return;
      const body = bytes.subarray(1);
      if ((bytes[0] === STDOUT || bytes[0] === STDERR) && body.length) {
        wrote = true;
        terminal.write(body);
      }
      else if (bytes[0] === ERROR && body.length) {
        ended = true;
        let status = {};
        try { status = JSON.parse(new TextDecoder().decode(body)); } catch (e) { status = { message: "The terminal ended with an unreadable status." }; }
        const { ok, text } = describeStatus(status);
        if (ok) setState("exited", text);
        else {
          setState("refused", wrote ? "The terminal ended." : "The terminal did not start.");
          if (!wrote) screen.replaceChildren(); // no empty terminal under the reason
          problemLine.textContent = text;
          problemLine.dataset.code = String(status.code || "");
        }
      }
    };
    socket.onclose = () => {
      if (!ended) setState("closed", "The connection closed.");
      socket = null;
    };
  });
}
