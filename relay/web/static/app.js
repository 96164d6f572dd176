// The relay's page: plain JS, no library. Every text from a provider or the config reaches the DOM
// through text nodes (el() below, textContent); nothing here ever assigns HTML markup.
"use strict";

const S = { csrf: null, logged: false, open: false, tab: "status", channels: [], selected: null,
  order: [], events: [], feed: null, filter: { channel: "", level: "" } };
const LEVELS = ["debug", "info", "warn", "error"];
const $ = (id) => document.getElementById(id);

function el(tag, props, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}

async function api(path, body) {
  const opts = { credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    if (S.csrf) opts.headers["X-CSRF-Token"] = S.csrf;
    opts.body = JSON.stringify(body);
  }
  const r = await fetch("/ui/api/" + path, opts);
  let data = {};
  try { data = await r.json(); } catch (_) { /* an empty or non-JSON answer */ }
  if (!r.ok) {
    const err = new Error(data.error || r.statusText);
    err.status = r.status;
    throw err;
  }
  return data;
}

// ---- formatting -------------------------------------------------------------------------------------

function duration(s) {
  if (s === null || s === undefined) return "";
  s = Math.max(0, Math.round(s));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${s % 60} s`;
  return `${s} s`;
}
function clock(ts) {
  const d = new Date(ts);
  return isNaN(d) ? String(ts || "") : d.toLocaleString();
}
function failoverText(f) {
  if (!f) return "";
  const ms = typeof f.switch_ms === "number" ? `, ${Math.round(f.switch_ms)} ms` : "";
  return `${f.from_stream || "?"} → ${f.to_stream || "?"}, ${f.reason || ""}${ms}`;
}

// ---- session, login, tabs ---------------------------------------------------------------------------

async function boot() {
  document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => show(b.dataset.tab)));
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("show-login").addEventListener("click", () => showLogin());
  $("tl-channel").addEventListener("input", debounce(loadEvents, 250));
  $("tl-level").addEventListener("change", loadEvents);
  $("ch-search").addEventListener("input", debounce(renderChannels, 150));
  $("d-number-save").addEventListener("click", saveNumber);
  $("d-enabled").addEventListener("change", saveEnabled);
  $("d-order-save").addEventListener("click", saveOrder);
  $("d-find").addEventListener("input", debounce(findStreams, 200));
  $("sync-now").addEventListener("click", syncNow);
  document.querySelector("#channels .list").addEventListener("scroll", onListScroll, { passive: true });
  window.addEventListener("hashchange", () => { if (S.logged || S.open) show(location.hash.slice(1) || "status"); });
  const info = await api("session");
  S.csrf = info.csrf;
  S.logged = info.logged_in;
  S.open = info.public_status;
  S.configured = info.login_configured;
  if (S.logged || S.open) enter();
  else showLogin();
}

function showLogin(message) {
  $("login").hidden = false;
  document.querySelectorAll(".tab").forEach((t) => (t.hidden = true));
  $("tabs").hidden = true;
  $("login-error").textContent = message || (S.configured === false
    ? "No login is configured: set ui.password in the config (relay ui-hash makes its hash)." : "");
  $("password").focus();
}

async function login(ev) {
  ev.preventDefault();
  $("login-error").textContent = "";
  try {
    const r = await api("login", { password: $("password").value });
    S.csrf = r.csrf;
    S.logged = true;
    $("password").value = "";
    enter();
  } catch (e) {
    $("login-error").textContent = e.message;
  }
}

async function logout() {
  try { await api("logout", {}); } catch (_) { /* already logged out */ }
  S.logged = false;
  S.csrf = null;
  if (S.feed) S.feed.close();
  location.reload();
}

function enter() {
  $("login").hidden = true;
  $("tabs").hidden = false;
  $("logout").hidden = !S.logged;
  $("show-login").hidden = S.logged;
  $("who").textContent = S.logged ? "logged in" : "read-only";
  document.querySelectorAll("[data-needs-login]").forEach((b) => (b.hidden = !S.logged));
  const want = (location.hash || "#status").slice(1);
  show(["status", "timeline", "channels", "sync"].includes(want) ? want : "status");
  loadStatus();
  loadEvents();
  connectFeed();
}

function show(tab) {
  if ((tab === "channels" || tab === "sync") && !S.logged) tab = "status";
  S.tab = tab;
  history.replaceState(null, "", "#" + tab);
  document.querySelectorAll(".tab").forEach((t) => (t.hidden = t.id !== tab));
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === tab));
  if (tab === "channels" && !S.channels.length) loadChannels();
  if (tab === "sync") loadSync();
}

function failed(e) {
  if (e.status === 401) { S.logged = false; showLogin("Your login ended; log in again."); return true; }
  return false;
}

// ---- the live feed ----------------------------------------------------------------------------------

function connectFeed() {
  if (S.feed) S.feed.close();
  const feed = new EventSource("/ui/api/live");
  S.feed = feed;
  feed.addEventListener("open", () => { $("live").textContent = "live"; $("live").className = "live on"; });
  feed.addEventListener("error", () => { $("live").textContent = "reconnecting"; $("live").className = "live off"; });
  feed.addEventListener("status", (m) => renderStatus(JSON.parse(m.data)));
  feed.addEventListener("event", (m) => addEvent(JSON.parse(m.data), true));
  feed.addEventListener("sync", () => { if (S.logged) loadSync(); loadStatus(); });
}

// ---- status -----------------------------------------------------------------------------------------

async function loadStatus() {
  try { renderStatus(await api("status")); } catch (e) { failed(e); }
}

function renderStatus(st) {
  document.body.dataset.statusAt = String(st.now);
  const sessions = st.sessions || [];
  const rows = sessions.map((s) => el("tr", { "data-channel": s.channel, class: "state-" + s.state },
    el("td", { class: "channel" }, s.name, el("br"), el("span", { class: "muted" }, s.channel)),
    el("td", { class: "stream" }, s.stream || "–"),
    el("td", { class: "account" }, s.account || "–"),
    el("td", { class: "num priority" }, s.priority ?? "–"),
    el("td", { class: "state" }, s.state),
    el("td", { class: "num" }, duration(s.uptime_s)),
    el("td", { class: "num viewers", title: (s.addresses || []).join(", ") || null },
      s.viewers, s.addresses && s.addresses.length ? el("span", { class: "muted" }, " (" + s.addresses.join(", ") + ")") : null),
    el("td", { class: "num" }, `${Math.round(s.bitrate_kbps)} kbit/s`),
    el("td", { class: "num" }, `${s.lag_ms} ms`),
    el("td", { class: "num failovers" }, s.failovers),
    el("td", { class: "last-failover" }, failoverText(s.last_failover))));
  $("sessions").tBodies[0].replaceChildren(...rows);
  $("no-sessions").hidden = rows.length > 0;
  const held = Object.values(st.connections || {}).reduce((a, b) => a + b, 0);
  const busy = sessions.filter((s) => s.viewers > 0).length;
  $("summary").textContent = `${busy} of ${st.tuners} tuners busy · ${held} provider connection(s) · ` +
    `recovered ${(100 * st.recovery_ratio).toFixed(0)} % of failures` + (st.sync_running ? " · sync running" : "");
  if (st.accounts) renderAccounts(st);
  else if (S.accounts) updateConnections(st);
}

function renderAccounts(st) {
  S.accounts = st.accounts;
  const last = st.last_sync;
  const rows = st.accounts.map((a) => el("tr", { "data-account": a.name },
    el("td", null, a.name),
    el("td", { class: a.active ? "" : "error" }, a.active ? "active" : `inactive (${a.reason || "?"})`),
    el("td", null, a.expires_in_s === null ? "never" : (a.expires_in_s > 0 ? "in " + duration(a.expires_in_s) : "expired")),
    el("td", { class: "num connections" }, `${a.connections} / ${a.max_connections}`),
    el("td", null, a.synced_at ? clock(a.synced_at) : "never"),
    el("td", null, last ? (last.accounts[a.name] || "") : "")));
  $("accounts").tBodies[0].replaceChildren(...rows);
}

function updateConnections(st) {
  for (const tr of $("accounts").tBodies[0].rows) {
    const name = tr.dataset.account;
    const cell = tr.querySelector(".connections");
    if (cell && name in (st.limits || {})) cell.textContent = `${st.connections[name] || 0} / ${st.limits[name]}`;
  }
}

// ---- timeline ---------------------------------------------------------------------------------------

async function loadEvents() {
  S.filter = { channel: $("tl-channel").value.trim(), level: $("tl-level").value };
  const q = new URLSearchParams({ limit: "300" });
  if (S.filter.channel) q.set("channel", S.filter.channel);
  if (S.filter.level) q.set("level", S.filter.level);
  try {
    const r = await api("events?" + q);
    $("events").tBodies[0].replaceChildren();
    r.events.forEach((e) => addEvent(e, false));
  } catch (e) { failed(e); }
}

const TIMELINE = new Set(["failover", "upgrade", "upgrade_failed", "exhausted", "holding", "account_inactive", "account_active", "transcode"]);

function addEvent(e, live) {
  if (!TIMELINE.has(e.event)) return;
  if (S.filter.channel && e.channel !== S.filter.channel) return;
  if (S.filter.level && LEVELS.indexOf(e.level) < LEVELS.indexOf(S.filter.level)) return;
  let what = e.message || "";
  if (e.event === "failover" || e.event === "upgrade") what = failoverText(e);
  else if (e.event === "exhausted") what = `all streams failed after ${e.from_stream || "start"} (${e.reason || ""})`;
  const tr = el("tr", { class: `level-${e.level}` + (live ? " flash" : ""), "data-event": e.event },
    el("td", { class: "num" }, clock(e.timestamp)),
    el("td", { class: "level" }, e.level),
    el("td", null, e.channel || e.account || ""),
    el("td", null, e.event),
    el("td", { class: "what" }, what));
  const body = $("events").tBodies[0];
  body.prepend(tr);
  while (body.rows.length > 500) body.deleteRow(-1);
}

// ---- channels ---------------------------------------------------------------------------------------

async function loadChannels() {
  try {
    const t0 = performance.now();
    const r = await api("channels");
    S.channels = r.channels;
    renderChannels();
    document.body.dataset.channelsRendered = String(performance.now());
    document.body.dataset.channelsMs = String(performance.now() - t0);
    // after the next frame: the table is laid out and painted (bench/ui.py reads this)
    requestAnimationFrame(() => setTimeout(() => (document.body.dataset.channelsPainted = String(performance.now()))));
    if (S.selected) select(S.selected);
  } catch (e) { failed(e); }
}

// The channel list can hold 20,000 rows: only the rows in view (and a margin) are in the DOM, between
// two spacer rows of the height of the rest, redrawn as the list scrolls.
const ROW_H = 30;  // px: #channel-table tbody tr's height in app.css
const MARGIN = 30;  // rows drawn above and below the visible ones
S.list = [];

function renderChannels() {
  const q = $("ch-search").value.trim().toLowerCase();
  S.list = q ? S.channels.filter((c) => c.name.toLowerCase().includes(q) || c.id.toLowerCase().includes(q) || c.number === q) : S.channels;
  $("ch-count").textContent = `${S.list.length} of ${S.channels.length} channels`;
  drawRows();
}

function spacer(rows) {
  const tr = el("tr", { class: "spacer", "aria-hidden": "true" });
  tr.style.height = `${rows * ROW_H}px`;
  return tr;
}

function drawRows() {
  const box = document.querySelector("#channels .list");
  const first = Math.max(0, Math.floor(box.scrollTop / ROW_H) - MARGIN);
  const shown = S.list.slice(first, first + Math.ceil((box.clientHeight || 900) / ROW_H) + 2 * MARGIN);
  const rows = shown.map((c) => el("tr", { "data-id": c.id, class: (c.enabled ? "" : "off") + (c.id === S.selected ? " selected" : ""),
    onclick: () => select(c.id) },
  el("td", { class: "num" }, c.number), el("td", null, c.name), el("td", { class: "muted" }, c.id),
  el("td", { class: "num" }, c.streams), el("td", null, c.enabled ? "✓" : "–")));
  $("channel-table").tBodies[0].replaceChildren(spacer(first), ...rows, spacer(S.list.length - first - shown.length));
}

let drawPending = false;
function onListScroll() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => { drawPending = false; drawRows(); });
}

async function select(id) {
  const c = S.channels.find((x) => x.id === id);
  if (!c) return;
  S.selected = id;
  let detail;
  try { detail = await api("channel?" + new URLSearchParams({ id })); } catch (e) { if (!failed(e)) say(e.message, false); return; }
  if (S.selected !== id) return;  // another channel was clicked meanwhile
  S.order = detail.streams;
  for (const tr of $("channel-table").tBodies[0].rows) if (tr.dataset.id) tr.classList.toggle("selected", tr.dataset.id === id);
  $("detail").hidden = false;
  $("d-name").textContent = c.name;
  $("d-id").textContent = c.id;
  $("d-from").textContent = c.from === "config" ? "from the config file" : "from the guide";
  $("d-number").value = c.number;
  $("d-number").disabled = $("d-number-save").disabled = c.from === "config";
  $("d-enabled").checked = c.enabled;
  renderOrder();
}

function renderOrder() {
  const items = S.order.map((s, i) => el("li", { "data-stream": s.stream },
    el("span", { class: "ref" }, s.stream),
    el("span", { class: "sname" }, s.name || ""),
    s.quality ? el("span", { class: "tag" }, s.quality) : null,
    el("span", { class: "tag" }, s.source + (s.active ? "" : ", inactive")),
    el("button", { type: "button", class: "up", title: "try earlier", disabled: i === 0, onclick: () => move(i, -1) }, "↑"),
    el("button", { type: "button", class: "down", title: "try later", disabled: i === S.order.length - 1, onclick: () => move(i, 1) }, "↓"),
    el("button", { type: "button", class: "unmap", title: "remove from this channel", onclick: () => unmap(s.stream) }, "✕")));
  $("d-streams").replaceChildren(...items);
}

function move(i, d) {
  const j = i + d;
  [S.order[i], S.order[j]] = [S.order[j], S.order[i]];
  renderOrder();
}

function say(text, good) {
  const m = $("d-message");
  m.textContent = text;
  m.className = "message " + (good ? "good" : "bad");
}

async function change(path, body, done) {
  try {
    await api(path, body);
    say(done, true);
    await loadChannels();
  } catch (e) {
    if (!failed(e)) say(e.message, false);
  }
}

const saveNumber = () => change("channels/number", { channel: S.selected, number: $("d-number").value.trim() }, "Number set.");
const saveEnabled = () => change("channels/enabled", { channel: S.selected, enabled: $("d-enabled").checked },
  $("d-enabled").checked ? "In the lineup." : "Taken off the lineup.");
const saveOrder = () => change("channels/order", { channel: S.selected, streams: S.order.map((s) => s.stream) },
  "Order saved: the next tune tries them in this order.");
const unmap = (stream) => change("channels/unmap", { channel: S.selected, stream }, `${stream} removed; a sync will not map it again.`);

async function findStreams() {
  const q = $("d-find").value.trim();
  if (!q) { $("d-found").replaceChildren(); $("d-found-count").textContent = ""; return; }
  try {
    const r = await api("streams?" + new URLSearchParams({ q, limit: "50" }));
    $("d-found-count").textContent = `${r.total} match(es)` + (r.total > r.streams.length ? `, first ${r.streams.length} shown` : "");
    $("d-found").replaceChildren(...r.streams.map((s) => el("li", { "data-stream": s.stream },
      el("span", { class: "ref" }, s.stream),
      el("span", { class: "sname" }, s.name || ""),
      s.category ? el("span", { class: "tag" }, s.category) : null,
      el("button", { type: "button", class: "map", onclick: () => {
        change("channels/map", { channel: S.selected, stream: s.stream, priority: S.order.length },
          `${s.stream} mapped (manual: a sync keeps it).`);
      } }, "Add"))));
  } catch (e) { failed(e); }
}

// ---- sync -------------------------------------------------------------------------------------------

async function syncNow() {
  try {
    await api("sync", {});
    $("sync-state").textContent = "Sync running…";
  } catch (e) {
    if (!failed(e)) $("sync-state").textContent = e.message;
  }
}

async function loadSync() {
  let r;
  try { r = await api("sync"); } catch (e) { failed(e); return; }
  $("sync-state").textContent = r.running ? "Sync running…" : "";
  const rep = r.report;
  if (!rep) { $("sync-report").replaceChildren(el("p", { class: "empty" }, "No sync since the relay started.")); return; }
  if (rep.failed) { $("sync-report").replaceChildren(el("p", { class: "error" }, `The sync of ${clock(rep.at * 1000)} failed; the log says why.`)); return; }
  const m = rep.mapping, g = rep.guide;
  const parts = [
    el("p", null, `Sync of ${clock(rep.at * 1000)} (${rep.by}), ${rep.seconds.toFixed(1)} s.`),
    el("table", { id: "sync-accounts" },
      el("thead", null, el("tr", null, ...["Account", "State", "Streams", "Via", "Notes"].map((h) => el("th", null, h)))),
      el("tbody", null, ...rep.accounts.map((a) => el("tr", null, el("td", null, a.name), el("td", null, a.state),
        el("td", { class: "num" }, a.streams), el("td", null, a.via), el("td", null, a.detail))))),
    el("p", null, `Guide: ${g.channels} channels from ${g.sources_ok}/${g.sources} source(s).`),
    ...g.errors.map((x) => el("p", { class: "error" }, "failed: " + x)),
    el("p", null, `Mapping: ${m.served} guide channel(s) served, ${m.mapped_streams} stream(s) mapped to ${m.mapped_channels} channel(s); ` +
      `${m.unmapped_streams} unmapped, ${m.ambiguous_streams} ambiguous.`),
  ];
  if (m.channels_without_streams.length) parts.push(el("p", null, "No stream for: " + m.channels_without_streams.join(", ")));
  const un = rep.unmapped;
  parts.push(el("h3", null, `Skipped: ${un.count} stream(s) on no channel`));
  parts.push(el("ul", { id: "sync-unmapped" }, ...un.streams.map((s) => el("li", null, el("span", { class: "ref" }, s.stream), " ", s.name || "",
    s.category ? el("span", { class: "tag" }, s.category) : null))));
  $("sync-report").replaceChildren(...parts);
}

function debounce(fn, ms) {
  let t = null;
  return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
}

boot();
