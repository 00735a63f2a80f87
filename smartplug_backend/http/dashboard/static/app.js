// The smartplug dashboard (SPEC 9): log in, then one WebSocket (/ui/live)
// brings a snapshot and every change; actions are POSTs with the session's
// CSRF token.  No polling: the only timer redraws the clock-relative parts.
// Everything from the server goes into the page as text, never as HTML.

const $ = (id) => document.getElementById(id);
const WEATHER = ["", "sunrise", "sunset", "clear", "cloudy", "rain", "storm", "snow", "mist", "wind"];
const MAX_PUBLICATIONS = 100;
const MAX_DATA_SHOWN = 300; // characters of a publication's data in the list
const REPORT_ROWS = 5;
const FILTER_FROM = 7; // plugs from which the page offers to find one by name
const SESSION_GONE = "The server restarted or your session ended; log in again.";

let csrf = null;
let socket = null;
let reconnectDelay = 1000;
let reconnectTimer = null; // a reconnect() waiting to try
// Moves on at every login and logout: an answer to a request made before
// that is about a session the page no longer holds.
let sessionGeneration = 0;
let clockOffset = 0; // server time minus ours, in seconds
let viewer = null; // this page's address, as bans name it
let bans = []; // the bans as last sent
const plugs = new Map(); // id -> {plug, history: [{value, at, source}] | null, card, chart}

// -- helpers -----------------------------------------------------------------

function now() { return Date.now() / 1000 + clockOffset; }

function when(t) {
  if (t == null) return "?";
  const d = new Date(t * 1000);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

function ago(t) {
  return t == null ? "" : duration(now() - t);
}

function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function rows(table, items, cells, none = "none") {
  table = typeof table === "string" ? $(table) : table;
  const body = table.tBodies[0];
  if (!items.length) {
    const columns = table.tHead.rows[0].cells.length;
    body.replaceChildren(el("tr", {}, el("td", { class: "none", colspan: columns, text: none })));
    return;
  }
  // Each cell names its column (a phone shows some tables' rows as lines of
  // "heading value": style.css); not a column whose heading is for screen
  // readers only.
  const labels = [...table.tHead.rows[0].cells].map((th) => (th.querySelector(".sr") ? null : th.textContent));
  body.replaceChildren(...items.map((item) => el("tr", {}, ...cells(item).map((c, i) => {
    const label = labels[i] ? { "data-label": labels[i] } : {};
    return c instanceof Node ? el("td", label, c) : el("td", { ...label, text: String(c) });
  }))));
}

async function api(path, body) {
  const generation = sessionGeneration;
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf || "" },
    body: JSON.stringify(body),
  };
  const answer = await fetch(`api/${path}`, { credentials: "same-origin", ...options });
  let data = null;
  try { data = await answer.json(); } catch (e) { data = { error: answer.statusText }; }
  // A session the server no longer knows (a restart logs everyone out, or it
  // expired while the page was offline): back to the login, saying so.  The
  // page's first look at the session, before any login, is left to its caller.
  if (answer.status === 401 && path !== "login" && csrf !== null && generation === sessionGeneration) {
    showLogin(SESSION_GONE);
  }
  return { ok: answer.ok, status: answer.status, data };
}

// Why a request got no answer.  A ban of the page's own address (failed
// logins or secrets from another client behind the same router) refuses its
// requests, while its live socket, which proved the session, stays open.
function ownBan() {
  return bans.find((b) => b.address === viewer);
}

function noAnswer(e) {
  const own = ownBan();
  return own
    ? `refused: this device's address ${viewer} is banned until ${when(own.until)} (too many failed logins or secrets from it); try again then, or from another device`
    : `no answer from the server (${e.message})`;
}

// -- logging in and out --------------------------------------------------------

function showLogin(message = "") {
  sessionGeneration += 1;
  csrf = null;
  viewer = null;
  closeSocket();
  setLive("closed");
  forget();
  $("app").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("login-user").focus();
}

// Nothing of the home stays in the page once it asks for the login: every
// list and table is emptied, every text the server filled in cleared, and
// the lamp controls (which show the display's colour and weather) reset.
function forget() {
  plugs.forEach((entry) => entry.chart && entry.chart.destroy());
  plugs.clear();
  $("plug-list").replaceChildren();
  $("no-plugs").hidden = false;
  $("no-plugs").textContent = "loading…";
  $("publications").replaceChildren();
  $("plug-filter").value = "";
  filterPlugs();
  bans = [];
  server = null;
  $("facts").replaceChildren();
  for (const id of ["devices", "client-list", "bans", "failures", "settings"]) $(id).tBodies[0].replaceChildren();
  $("devices-off").hidden = true;
  for (const id of ["weather-form", "color-form"]) $(id).reset();
  for (const id of ["display-state", "display-packet", "display-result", "backup-result", "tls"]) $(id).textContent = "";
  $("backup").disabled = true;
}

function showApp(session) {
  sessionGeneration += 1;
  csrf = session.csrf;
  viewer = session.address || null;
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = session.user;
  connect();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-submit").disabled = true;
  $("login-error").textContent = "";
  try {
    const { ok, data } = await api("login", { user: $("login-user").value, password: $("login-password").value });
    $("login-password").value = "";
    if (ok) {
      showApp(data);
      // The keyboard goes on from the page's first heading, not the
      // login form that is gone (a reconnect moves nothing).
      $("plugs-title").focus();
    }
    else $("login-error").textContent = data.error || "refused";
  } catch (e) {
    $("login-password").value = "";
    // A banned address's connections are refused: say why that may be.
    const banned = $("login-error").dataset.lastError || "";
    $("login-error").textContent = banned.includes("banned")
      ? "the server does not answer: this address is banned for a while after failed logins"
      : "the server cannot be reached";
  } finally {
    $("login-error").dataset.lastError = $("login-error").textContent;
    $("login-submit").disabled = false;
  }
});

$("logout").addEventListener("click", async () => {
  try {
    await api("logout", {});
    showLogin("Logged out.");
  } catch (e) {
    // Refused for a ban of this device's address: the server keeps the
    // session (and the browser its cookie), so the page stays logged in
    // and says so.
    if (ownBan()) return alert(`Not logged out: ${noAnswer(e)}.`);
    // The page forgets the session either way; the server's copy ends
    // when it expires.
    showLogin(`Logged out here; the server did not answer (${e.message}).`);
  }
});

// -- the live socket -------------------------------------------------------------

function setLive(state, why = "") {
  $("live").dataset.state = state;
  $("live").textContent = state === "open" ? "live" : "offline";
  $("live").title = why;
}

// The live socket, and any retry waiting to open one, closed for good: a
// retry left waiting would open a second socket after the next login.
function closeSocket() {
  clearTimeout(reconnectTimer);
  reconnectTimer = null;
  if (socket) { socket.onclose = null; socket.close(); socket = null; }
}

function connect() {
  closeSocket();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ui/live`);
  socket.onopen = () => { setLive("open"); reconnectDelay = 1000; };
  socket.onmessage = (event) => handle(JSON.parse(event.data));
  socket.onclose = (event) => {
    setLive("closed");
    socket = null;
    if (event.code === 4001) return showLogin("Your session ended; log in again.");
    reconnect();
  };
}

// The server restarted, the network dropped, or something between refuses
// the socket (a proxy that does not pass WebSocket upgrades): check the
// session, then try again, waiting twice as long after every failure (up to
// half a minute) until a socket opens.
function reconnect() {
  const wait = reconnectDelay;
  reconnectDelay = Math.min(reconnectDelay * 2, 30000);
  if (wait >= 8000) setLive("closed", "the live feed cannot be reached; trying again");
  reconnectTimer = setTimeout(async () => {
    reconnectTimer = null;
    const generation = sessionGeneration;
    let answer;
    try {
      answer = await api("session");
    } catch (e) {
      answer = null;
    }
    // Logged out (or in again) while the answer was on its way: this
    // retry is about a session the page no longer holds.
    if (generation !== sessionGeneration) return;
    if (answer === null) return reconnect();
    if (answer.status === 401) return; // api() has asked for the login
    if (answer.ok) showApp(answer.data);
    else reconnect();
  }, wait);
}

function handle(message) {
  switch (message.type) {
    case "snapshot":
      showPlugs(message.plugs);
      $("no-plugs").textContent = "No plug has reported yet.";
      $("no-plugs").hidden = plugs.size > 0;
      filterPlugs();
      showDisplay(message.display);
      $("publications").replaceChildren();
      message.publications.forEach(addPublication);
      update(message);
      break;
    case "update":
      update(message);
      break;
    case "report":
      addReport(message.report, message.plug);
      break;
    case "plugs":
      message.dropped.forEach(dropPlug);
      orderPlugs(message.order);
      $("no-plugs").hidden = plugs.size > 0;
      filterPlugs();
      break;
    case "display":
      showDisplay(message.display, message.command);
      break;
    case "publication":
      addPublication(message.publication);
      break;
  }
}

function update(message) {
  if ("clients" in message) showClients(message.clients);
  if ("devices" in message) showDevices(message.devices);
  if ("bans" in message) showSecurity(message);
  if ("server" in message) showServer(message.server);
}

// -- plugs ------------------------------------------------------------------------

// A snapshot is the server's whole view: after a dropped socket the page may
// have missed reports, so a plug it already shows reads its history again
// (the snapshot's recent reports are of all plugs together, and may not
// reach back far enough) unless its last report is the one the page has (a
// plug keeps up to HISTORY_KEEP reports: a reconnect that missed nothing
// should not fetch them all), and a plug the server no longer has goes.
function showPlugs(list) {
  const ids = new Set(list.map((plug) => plug.id));
  for (const id of [...plugs.keys()]) {
    if (!ids.has(id)) dropPlug(id);
  }
  for (const plug of list) {
    const known = plugs.get(plug.id);
    if (known) {
      known.plug = plug;
      drawPlug(known);
      if (!upToDate(known)) loadHistory(known);
    }
    else addPlug(plug);
  }
  orderPlugs(list.map((plug) => plug.id));
}

// The cards in the server's order (on Redis, a node that loaded another
// node's copy of the state lists its plugs in that copy's order), moved
// only if they are not in it already.
function orderPlugs(ids) {
  const list = $("plug-list");
  const cards = ids.filter((id) => plugs.has(id)).map((id) => plugs.get(id).card);
  const shown = [...list.children];
  if (cards.length === shown.length && cards.every((card, i) => card === shown[i])) return;
  // Any card the order leaves out goes after the others.
  const ordered = new Set(cards);
  for (const card of cards.concat(shown.filter((card) => !ordered.has(card)))) list.append(card);
}

// A plug the server no longer has (on Redis, another node's copy of the
// state won over this node's, or Redis lost it) goes, card and chart.
function dropPlug(id) {
  const entry = plugs.get(id);
  if (!entry) return;
  if (entry.chart) entry.chart.destroy();
  entry.card.remove();
  plugs.delete(id);
  filterPlugs();
}

// The page's history ends with the plug's last report (and none is on its way).
function upToDate(entry) {
  const h = entry.history;
  if (!h || !h.length || entry.pending) return false;
  const last = h[h.length - 1];
  return last.at === entry.plug.updated_at && last.value === entry.plug.value;
}

function addPlug(plug) {
  const entry = { plug, history: null, card: null, chart: null };
  plugs.set(plug.id, entry);
  const chart = el("div", { class: "chart", role: "img", "aria-label": `history of ${plug.id}`, "data-points": "0", "data-plug": plug.id });
  entry.card = el("article", { class: "plug", "data-plug": plug.id },
    el("div", { class: "plug-head" },
      el("span", { class: "plug-id", text: plug.id }),
      el("span", { class: "state" }),
      el("span", { class: "since muted" }),
      el("span", { class: "last muted" })),
    chart,
    el("table", { class: "reports" },
      el("thead", {}, el("tr", {}, el("th", { text: "Report" }), el("th", { text: "When" }), el("th", { text: "Via" }))),
      el("tbody")));
  entry.chartBox = chart;
  $("plug-list").append(entry.card);
  $("no-plugs").hidden = true;
  filterPlugs();
  drawPlug(entry);
  loadHistory(entry);
}

// How many plugs there are and, from FILTER_FROM plugs on, a box that
// shows only those whose name has the text typed in it.
function filterPlugs() {
  const box = $("plug-filter");
  box.hidden = plugs.size < FILTER_FROM && box.value === "";
  const wanted = box.value.trim().toLowerCase();
  let shown = 0;
  plugs.forEach((entry) => {
    const hide = wanted !== "" && !entry.plug.id.toLowerCase().includes(wanted);
    if (entry.card.hidden !== hide) entry.card.hidden = hide;
    if (!hide) shown++;
  });
  const count = plugs.size === 1 ? "1 plug" : `${plugs.size} plugs`;
  $("plug-count").textContent = !plugs.size ? "" : shown === plugs.size ? count : `${shown} of ${count} shown`;
}

$("plug-filter").addEventListener("input", () => { filterPlugs(); resizeCharts(); });

async function loadHistory(entry) {
  // Reports that arrive while the history is on its way are kept aside too.
  const asked = entry.asked = (entry.asked || 0) + 1;
  entry.pending = [];
  let answer = null;
  try {
    // In the query: a path segment "." or ".." would be resolved away.
    answer = await api(`history?plug=${encodeURIComponent(entry.plug.id)}`);
  } catch (e) {
    // No answer: the next snapshot (the socket drops too) asks again.
  }
  // Only the newest request's answer counts, and none once the page has
  // forgotten the plug (logged out).
  if (asked !== entry.asked || plugs.get(entry.plug.id) !== entry) return;
  const pending = entry.pending;
  entry.pending = null;
  if (!answer || !answer.ok) return;
  // The reports kept aside are already in the answer, or newer: keep those
  // newer than its last entry.
  const data = answer.data;
  const last = data.length ? data[data.length - 1].at : -Infinity;
  entry.history = data.concat(pending.filter((r) => r.at > last));
  drawPlug(entry);
}

function addReport(report, plug) {
  let entry = plugs.get(plug.id);
  if (!entry) { addPlug(plug); entry = plugs.get(plug.id); }
  entry.plug = plug;
  const item = { value: report.value, at: report.at, source: report.source };
  if (entry.pending) entry.pending.push(item);
  if (entry.history) entry.history.push(item);
  drawPlug(entry);
}

function since(entry) {
  // The feed knows "since" for reports it saw; the history knows the rest.
  if (entry.plug.since != null) return entry.plug.since;
  const h = entry.history;
  if (!h || !h.length) return null;
  let i = h.length - 1;
  while (i > 0 && h[i - 1].value === h[i].value) i--;
  return h[i].at;
}

// "since" as text, and as seconds in data-since (empty while not known).
function drawSince(entry) {
  const from = since(entry);
  const node = entry.card.querySelector(".since");
  node.textContent = from != null ? `since ${when(from)} (${ago(from)})` : "";
  node.dataset.since = from != null ? String(from) : "";
}

function drawPlug(entry) {
  const { plug, card } = entry;
  const state = card.querySelector(".state");
  state.dataset.value = plug.value;
  state.textContent = plug.value === 1 ? "plugged in" : "unplugged";
  drawSince(entry);
  const h = entry.history;
  const source = plug.source || (h && h.length ? h[h.length - 1].source : null);
  card.querySelector(".last").textContent = `last report ${when(plug.updated_at)}${source ? " via " + source : ""}`;
  if (h) {
    rows(card.querySelector(".reports"), h.slice(-REPORT_ROWS).reverse(),
      (r) => [r.value === 1 ? "1 plugged in" : "0 unplugged", when(r.at), r.source]);
    card.querySelector(".reports").tBodies[0].dataset.rows = Math.min(h.length, REPORT_ROWS);
  }
  chartSoon(entry);
}

// A burst of reports (60 plugs at once) draws each chart once per frame the
// browser paints, not once per report.
function chartSoon(entry) {
  if (entry.chartDue) return;
  entry.chartDue = true;
  requestAnimationFrame(() => {
    entry.chartDue = false;
    if (plugs.get(entry.plug.id) === entry) drawChart(entry);
  });
}

// The chart is made once per plug and then given new data (and the new
// range's ends): making a uPlot, with its canvas and axes, costs far more.
function drawChart(entry) {
  const box = entry.chartBox;
  const h = entry.history;
  if (!h) return;
  const range = Number($("range").value);
  const end = now();
  // The axis spans the chosen range whatever the plug's age (the line
  // starts at its first report); "everything" spans at least an hour, so a
  // new plug's axis reads in minutes, not milliseconds.
  const first = h.length ? h[0].at : end;
  const start = range ? end - range : Math.min(first, end - 3600);
  const inside = h.filter((r) => r.at >= start);
  const before = h.filter((r) => r.at < start).pop();
  const xs = [], ys = [];
  // Steps: the value holding at the range's start, every report, and the
  // value still holding now.
  if (before) { xs.push(start); ys.push(before.value); }
  for (const r of inside) { xs.push(r.at); ys.push(r.value); }
  if (xs.length) { xs.push(Math.max(end, xs[xs.length - 1])); ys.push(ys[ys.length - 1]); }
  box.dataset.points = String(inside.length);
  entry.span = [start, end];
  if (entry.chart) {
    entry.chart.setData([xs, ys]);
    return;
  }
  const width = Math.max(200, box.clientWidth || 300);
  entry.chart = new uPlot({
    width,
    height: 140,
    legend: { show: false },
    cursor: { show: true, points: { show: false } },
    scales: { x: { time: true, range: () => entry.span }, y: { range: [-0.1, 1.1] } },
    axes: [
      {},
      { values: (u, splits) => splits.map((v) => (v === 1 ? "in" : v === 0 ? "out" : "")), splits: () => [0, 1], size: 40 },
    ],
    series: [
      {},
      { label: entry.plug.id, stroke: "#1b65c9", width: 2, fill: "rgba(27,101,201,0.12)", paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } },
    ],
  }, [xs, ys], box);
}

$("range").addEventListener("change", () => plugs.forEach(drawChart));
// A chart made while its card was hidden (the filter), or before the list
// grew narrower (a window resized, a scroll bar that came with more plugs),
// takes its box's width.
function resizeCharts() {
  plugs.forEach((e) => {
    const width = Math.max(200, e.chartBox.clientWidth);
    if (e.chart && !e.card.hidden && e.chart.width !== width) e.chart.setSize({ width, height: 140 });
  });
}
new ResizeObserver(() => resizeCharts()).observe($("plug-list"));

// -- lamps ----------------------------------------------------------------------------

function describe(display) {
  if (display.mode === 1) return `weather ${display.weather} (${WEATHER[display.weather]}), intensity ${display.intensity}`;
  if (display.mode === 2) return `colour rgb(${display.color.join(", ")}), pulse ${display.pulse}`;
  return "off";
}

function showDisplay(display, command) {
  if (!display) {
    // A node on Redis that has not loaded the shared state yet.
    $("display-state").textContent = "not known yet (the shared state is not loaded)";
    $("display-packet").textContent = "";
    return;
  }
  $("display-state").textContent = describe(display);
  $("display-packet").textContent = display.packet;
  if (display.mode === 2) {
    $("color").value = "#" + display.color.map((c) => c.toString(16).padStart(2, "0")).join("");
    $("pulse").value = display.pulse;
  } else if (display.mode === 1) {
    $("weather").value = display.weather;
    $("intensity").value = display.intensity;
  }
  if (command) $("display-result").textContent = `${command} sent to the lamps`;
}

async function setDisplay(body) {
  $("display-result").textContent = "";
  try {
    const { ok, data } = await api("display", body);
    $("display-result").textContent = ok ? (data.packet ? `sent ${data.packet}` : "") : data.error;
  } catch (e) {
    $("display-result").textContent = noAnswer(e);
  }
}

// A result tells of the last send: it goes once a control changes, and when
// the browser's own validation stops a send (which then makes no request, so
// no new result would replace it).
for (const id of ["weather-form", "color-form"]) {
  const clear = () => { $("display-result").textContent = ""; };
  $(id).addEventListener("input", clear);
  $(id).addEventListener("change", clear);
  $(id).addEventListener("invalid", clear, true); // "invalid" does not bubble
}

$("weather-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setDisplay({ mode: 1, weather: Number($("weather").value), intensity: Number($("intensity").value) });
});
$("color-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const hex = $("color").value;
  const color = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  setDisplay({ mode: 2, color, pulse: Number($("pulse").value) });
});
$("display-off").addEventListener("click", () => setDisplay({ mode: 0 }));
$("display-reset").addEventListener("click", () => {
  if (confirm("Tell every lamp to restart now?")) setDisplay({ command: "reset" });
});
$("display-update").addEventListener("click", () => {
  if (confirm("Tell every lamp to update its firmware now?")) setDisplay({ command: "update" });
});

function showDevices(devices) {
  $("devices-off").hidden = devices !== null;
  // With several nodes (REDIS_URL) every device names its node; only the
  // node a device is connected to hears it, so another node's has no
  // "last heard".
  rows("devices", devices || [], (d) => [
    addressCell(d.address, d.node), when(d.connected_at),
    d.remote ? el("span", { class: "muted", text: "not known on this node" })
      : el("span", { class: "heard", "data-at": d.last_heard ?? "", text: heard(d.last_heard) }),
  ], "no device connected");
}

// An address on one line; its node (several nodes, REDIS_URL) under it, so
// that a phone's narrow table does not grow wider than the screen.
function addressCell(address, node) {
  return node ? addressWith(address, `node ${node}`) : address;
}

// An address with a note on the line under it.
function addressWith(address, note) {
  return el("span", {}, el("span", { class: "address", text: address }), el("span", { class: "node muted", text: note }));
}

function heard(t) {
  return t == null ? "not yet" : `${when(t)} (${ago(t)} ago)`;
}

// A silent device's list is not sent again: its "ago" moves on with the clock.
function drawHeard() {
  for (const span of $("devices").querySelectorAll(".heard")) {
    span.textContent = heard(span.dataset.at === "" ? null : Number(span.dataset.at));
  }
}

// -- clients ---------------------------------------------------------------------------

function showClients(clients) {
  // A client's connected_at is RFC 3339 (as PiCloud lists connections).
  // With several nodes (REDIS_URL) each names its node, as devices do.
  rows("client-list", clients, (c) => [
    c.client_name, addressCell(c.ip_address, c.node),
    when(Date.parse(c.connected_at) / 1000), c.events.join(", "),
  ], "no app connected");
}

function addPublication(p) {
  const list = $("publications");
  const data = shownData(p.data);
  const cut = data.length > MAX_DATA_SHOWN;
  const text = document.createTextNode(` ${cut ? shortened(data, MAX_DATA_SHOWN) : data} `);
  const item = el("li", {}, el("strong", { text: p.event }), text,
    p.origin ? `(via ${p.origin}) ` : "", el("span", { class: "muted", text: when(p.at) }));
  if (cut) {
    // The whole text in the tooltip, and behind a button for a phone,
    // which shows no tooltip.
    item.title = data.length > 4000 ? shortened(data, 4000) : data;
    const more = el("button", { type: "button", class: "more", "aria-expanded": "false", text: "more" });
    more.addEventListener("click", () => {
      const open = more.getAttribute("aria-expanded") !== "true";
      text.textContent = ` ${open ? data : shortened(data, MAX_DATA_SHOWN)} `;
      more.textContent = open ? "less" : "more";
      more.setAttribute("aria-expanded", String(open));
    });
    item.append(" ", more);
  }
  list.prepend(item);
  while (list.children.length > MAX_PUBLICATIONS) list.lastChild.remove();
}

// The first n UTF-16 units of text and "…", not cutting a character
// written as a surrogate pair (an emoji) in two.
function shortened(text, n) {
  const code = text.charCodeAt(n - 1);
  return text.slice(0, code >= 0xd800 && code < 0xdc00 ? n - 1 : n) + "…";
}

// PiCloud's clients publish strings: shown as they are; other JSON as JSON.
// A string that is JSON text (the smartplug event's data is the app's
// broadcast) shows the characters its \u escapes stand for, not the escapes:
// a plug named "Küche" reads "Küche".  Control characters stay escaped.
function shownData(data) {
  if (typeof data !== "string") return JSON.stringify(data);
  if (!data.includes("\\u")) return data;
  try {
    const parsed = JSON.parse(data);
    if (parsed === null || typeof parsed !== "object") return data;
  } catch (e) {
    return data;
  }
  return data.replace(/\\(\\|u([0-9a-fA-F]{4}))/g, (escape, _, hex) => {
    const code = hex === undefined ? 0 : parseInt(hex, 16);
    return hex === undefined || code < 0x20 || (code >= 0x7f && code < 0xa0) ? escape : String.fromCharCode(code);
  });
}

// -- security ----------------------------------------------------------------------------

function showSecurity(message) {
  bans = message.bans;
  // The page's own address: its requests (a lift too) are refused until the
  // ban ends; another device, or the ban's end, lifts it.
  rows("bans", message.bans, (b) => b.address === viewer ? [
    addressWith(b.address, "this device"),
    when(b.until), b.failures,
    el("button", { type: "button", class: "secondary", disabled: "", "data-address": b.address, text: "Lift",
      title: "This device's requests are refused while its address is banned: lift the ban from another device, or wait for its end." }),
  ] : [
    b.address, when(b.until), b.failures,
    el("button", { type: "button", class: "secondary", "data-address": b.address, "aria-label": `Lift the ban on ${b.address}`, text: "Lift", onclick: () => lift(b.address) }),
  ], "no address is banned");
  rows("failures", message.failures.slice().reverse(), (f) => [when(f.at), f.address, f.reason], "none since the server started");
}

async function lift(address) {
  try {
    const { ok, data } = await api("bans/lift", { address });
    if (!ok) alert(data.error);
  } catch (e) {
    alert(noAnswer(e));
  }
}

// -- server ---------------------------------------------------------------------------------

let server = null;
let backingUp = false;

// Backups are of the state database: none in memory, none of Redis.
const canBackUp = (facts) => !!facts && !!facts.store && !facts.store.redis;
const showBackupButton = () => { $("backup").disabled = backingUp || !canBackUp(server); };

function showServer(facts) {
  server = facts;
  clockOffset = facts.now - Date.now() / 1000;
  const tls = facts.tls;
  const left = tls ? tls.not_after - now() : 0;
  $("tls").textContent = tls && tls.endpoint
    ? tls.note
    : tls
    ? `${tls.subject}: ${left > 0 ? "expires" : "EXPIRED"} ${new Date(tls.not_after * 1000).toLocaleString()}${left > 0 ? ` (in ${duration(left)})` : ""}`
    : "none: the server speaks plain http and ws";
  drawFacts();
  const body = $("settings").tBodies[0];
  body.replaceChildren(...Object.entries(facts.settings).map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: python(v) }))));
  showBackupButton();
}

// A setting as the settings file writes it (None, True, False).
function python(value) {
  if (value === null) return "None";
  // A secret setting: only whether it is set, not a string of the file.
  if (value === "(set)" || value === "(not set)") return value;
  if (value === true) return "True";
  if (value === false) return "False";
  if (Array.isArray(value)) return `[${value.map(python).join(", ")}]`;
  if (typeof value === "object") return `{${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${python(v)}`).join(", ")}}`;
  return JSON.stringify(value);
}

const LINK_NAMES = { redis: "Redis", mqtt: "MQTT (Home Assistant)" };

function drawFacts() {
  if (!server) return;
  const f = server;
  const facts = [
    ["Version", f.version],
    ["Node", f.node],
    ["Up for", ago(f.started_at)],
    ["Store", !f.store ? "memory only (STATE_DB = None)"
      : f.store.redis ? "Redis (REDIS_URL): back it up with Redis's own snapshots"
      : `${f.store.path}, ${(f.store.bytes / 1024).toFixed(1)} KiB`],
  ];
  // "none yet" only where a backup can be taken; a backup taken before the
  // store changed is still shown.
  if (f.last_backup || canBackUp(f)) {
    facts.push(["Last backup", f.last_backup ? `${f.last_backup.file}, ${when(f.last_backup.at)}` : "none yet"]);
  }
  // The outside services set up (REDIS_URL, MQTT_URL), live.
  for (const link of f.links || []) {
    facts.push([LINK_NAMES[link.name] || link.name, link.up
      ? `connected to ${link.where} for ${ago(link.since)}`
      : link.answers
      ? `NOT IN USE for ${ago(link.since)}: ${link.where} answers, but ${link.why}`
      : `NOT CONNECTED to ${link.where} for ${ago(link.since)}: ${link.why}`]);
  }
  $("facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
}

$("backup").addEventListener("click", async () => {
  backingUp = true;
  showBackupButton();
  $("backup-result").textContent = "backing up…";
  try {
    const { ok, data } = await api("backup", {});
    $("backup-result").textContent = ok ? `written to ${data.path}` : data.error;
  } catch (e) {
    $("backup-result").textContent = noAnswer(e);
  } finally {
    backingUp = false;
    showBackupButton();
  }
});

// The clock-relative texts (uptime, "since", "ago") move on without the
// server, and the charts' time axis once a minute.
let ticks = 0;
setInterval(() => {
  drawFacts();
  plugs.forEach(drawSince);
  drawHeard();
  if (++ticks % 60 === 0) plugs.forEach(drawChart);
}, 1000);

// -- start ------------------------------------------------------------------------------------

(async () => {
  try {
    const { ok, data } = await api("session");
    if (ok) showApp(data);
    else showLogin();
  } catch (e) {
    showLogin("the server cannot be reached");
  }
})();
