// The siyi dashboard's page: a WebSocket feed (feed.py) applied to the DOM, charts drawn by hand.
// No framework, no CDN, nothing fetched but this server's own feed and API. Everything from the
// server is written with textContent, never as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = {
    role: null, csrf: "", doc: {}, history: null, sessions: null,
    query: "", page: 0, size: 50, selected: null, command: null, ws: null,
  };

  // JSON merge patch (RFC 7396): what each tick sends.
  function applyPatch(target, patch) {
    if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
    const out = (target && typeof target === "object" && !Array.isArray(target)) ? target : {};
    for (const [key, value] of Object.entries(patch)) {
      if (value === null) delete out[key];
      else out[key] = applyPatch(out[key], value);
    }
    return out;
  }

  function fmt(n, digits) {
    if (n === undefined || n === null) return "–";
    if (typeof n !== "number") return String(n);
    if (digits === undefined) digits = Number.isInteger(n) ? 0 : 2;
    return n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  }
  function bytes(n) {
    if (n === undefined || n === null) return "–";
    const units = ["B", "KB", "MB", "GB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return fmt(n, i ? 1 : 0) + " " + units[i];
  }
  function duration(s) {
    if (s === undefined) return "–";
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    return m + "m " + (s % 60) + "s";
  }
  function text(id, value) { const el = $(id); if (el) el.textContent = value; }
  function cell(row, value, cls) {
    const td = document.createElement("td");
    td.textContent = value;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  // Charts ------------------------------------------------------------------------------------
  function chart(canvas, series) {
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, pad = 24;
    ctx.clearRect(0, 0, w, h);
    let max = 0, len = 0;
    for (const s of series) {
      len = Math.max(len, s.values.length);
      for (const v of s.values) if (v !== null && v > max) max = v;
    }
    if (max === 0) max = 1;
    ctx.strokeStyle = "#e3e6ec"; ctx.fillStyle = "#5d6577"; ctx.font = "10px sans-serif";
    ctx.beginPath(); ctx.moveTo(pad, 4); ctx.lineTo(pad, h - 14); ctx.lineTo(w - 2, h - 14); ctx.stroke();
    ctx.fillText(fmt(max, 1), 2, 12); ctx.fillText("0", 2, h - 14);
    ctx.fillText("-15 min", pad, h - 2); ctx.fillText("now", w - 24, h - 2);
    const slots = 900, dx = (w - pad - 2) / (slots - 1);
    for (const s of series) {
      ctx.strokeStyle = s.color; ctx.lineWidth = 1.5; ctx.beginPath();
      let started = false;
      const offset = slots - s.values.length;
      s.values.forEach((v, i) => {
        if (v === null) { started = false; return; }
        const x = pad + (offset + i) * dx, y = (h - 14) - (v / max) * (h - 22);
        if (started) ctx.lineTo(x, y); else { ctx.moveTo(x, y); started = true; }
      });
      ctx.stroke();
    }
  }
  function spark(canvas, values) {
    const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    const last = values.slice(-180);
    let max = 0;
    for (const v of last) if (v !== null && v > max) max = v;
    if (!max) max = 1;
    ctx.strokeStyle = "#2457c5"; ctx.beginPath();
    last.forEach((v, i) => {
      const x = w - (last.length - i) * (w / 180), y = h - 1 - ((v || 0) / max) * (h - 2);
      if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.stroke();
  }
  function drawCharts() {
    const hist = state.history;
    if (!hist) return;
    chart($("chart-requests"), [
      { values: hist.node.requests, color: "#2457c5" }, { values: hist.node.errors, color: "#c62828" },
    ]);
    chart($("chart-connections"), [{ values: hist.node.connections, color: "#2e7d32" }]);
    const name = state.command;
    if (name && hist.commands[name]) {
      const c = hist.commands[name];
      chart($("chart-command"), [{ values: c.rate, color: "#2457c5" }, { values: c.error_rate, color: "#c62828" }]);
      text("chart-command-caption", name + ": rate/s (blue), errors/s (red)");
      chart($("chart-latency"), [{ values: c.p99, color: "#c62828" }, { values: c.p50, color: "#f9a825" }]);
      text("chart-latency-caption", name + ": p50 ms (yellow), p99 ms (red)");
    }
  }
  function addPoint(point) {
    const hist = state.history;
    if (!hist) return;
    const cap = 900;
    const push = (arr, v) => { arr.push(v); if (arr.length > cap) arr.shift(); };
    const len = hist.t.length;
    push(hist.t, point.t);
    for (const [k, v] of Object.entries(point.node)) { hist.node[k] = hist.node[k] || []; push(hist.node[k], v); }
    const keys = ["rate", "error_rate", "p50", "p99"];
    for (const [name, row] of Object.entries(point.commands)) {
      if (!hist.commands[name]) {
        hist.commands[name] = {};
        for (const k of keys) hist.commands[name][k] = new Array(Math.min(len, cap - 1)).fill(null);
      }
      keys.forEach((k, i) => push(hist.commands[name][k], row[i]));
    }
  }

  // The figures ------------------------------------------------------------------------------
  function renderNode() {
    const node = state.doc.node;
    if (!node) return;
    text("node-title", "node " + node.id + " · " + node.address);
    text("conn-websocket", fmt(node.connections.websocket));
    text("conn-http", fmt(node.connections.http));
    text("conn-upload", fmt(node.connections.upload));
    text("sessions-attached", fmt(node.sessions.attached));
    text("sessions-away", fmt(node.sessions.away));
    text("sessions-provisional", fmt(node.sessions.provisional));
    text("rate-requests", fmt(node.rates.requests, 1));
    text("rate-errors", fmt(node.rates.errors, 1));
    text("rate-events", fmt(node.rates.events, 1));
    text("rate-events-out", fmt(node.rates.events_out, 1));
    text("rate-bytes-in", bytes(node.rates.bytes_in));
    text("rate-bytes-out", bytes(node.rates.bytes_out));
    text("buffered", fmt(node.buffered));
    text("uptime", duration(node.uptime));
    text("version", "siyi " + node.version);
  }
  function renderNodes() {
    const body = $("nodes-body");
    const nodes = Object.values(state.doc.nodes || {});
    nodes.sort((a, b) => (a.id === state.doc.node.id ? -1 : b.id === state.doc.node.id ? 1 : a.id.localeCompare(b.id)));
    body.replaceChildren();
    for (const n of nodes) {
      const tr = document.createElement("tr");
      tr.dataset.node = n.id;
      tr.className = n.up ? "up" : "down";
      cell(tr, n.id + (n.id === state.doc.node.id ? " (this)" : ""));
      cell(tr, n.address);
      cell(tr, n.up ? "up" : "down", "state state-" + (n.up ? "up" : "down"));
      cell(tr, fmt(n.connections.websocket)); cell(tr, fmt(n.connections.http)); cell(tr, fmt(n.connections.upload));
      cell(tr, fmt(n.sessions.attached)); cell(tr, fmt(n.sessions.away)); cell(tr, fmt(n.sessions.provisional));
      cell(tr, fmt(n.rates.requests, 1)); cell(tr, fmt(n.rates.errors, 1)); cell(tr, fmt(n.rates.events, 1));
      cell(tr, fmt(n.rates.events_out, 1));
      cell(tr, bytes(n.rates.bytes_in)); cell(tr, bytes(n.rates.bytes_out));
      cell(tr, fmt(n.buffered));
      const redis = n.backplane;
      cell(tr, !redis ? "–" : redis.up ? "up" + (redis.round_trip_ms === undefined ? "" : " · " + fmt(redis.round_trip_ms, 2) + " ms") : "down");
      cell(tr, duration(n.uptime)); cell(tr, n.version);
      body.appendChild(tr);
    }
  }
  function renderCommands() {
    const body = $("commands-body");
    const commands = state.doc.commands || {};
    const names = Object.keys(commands).sort();
    if (!state.command && names.length) state.command = names[0];
    body.replaceChildren();
    for (const name of names) {
      const c = commands[name];
      const tr = document.createElement("tr");
      tr.id = "cmd-" + name;
      tr.dataset.command = name;
      if (name === state.command) tr.className = "selected";
      cell(tr, name, "name");
      cell(tr, fmt(c.rate, 1), "rate");
      cell(tr, fmt(c.error_rate, 1), "error-rate");
      cell(tr, c.p50 === undefined ? "–" : fmt(c.p50, 3), "p50");
      cell(tr, c.p99 === undefined ? "–" : fmt(c.p99, 3), "p99");
      cell(tr, fmt(c.count), "count");
      cell(tr, fmt(c.errors), "errors");
      const td = document.createElement("td");
      const canvas = document.createElement("canvas");
      canvas.width = 180; canvas.height = 24;
      td.appendChild(canvas); tr.appendChild(td);
      const series = state.history && state.history.commands[name];
      if (series) spark(canvas, series.rate);
      tr.addEventListener("click", () => { state.command = name; renderCommands(); drawCharts(); });
      body.appendChild(tr);
    }
  }

  // Sessions ---------------------------------------------------------------------------------
  function renderSessions() {
    const s = state.sessions;
    const body = $("sessions-body");
    body.replaceChildren();
    if (!s) return;
    const pages = Math.max(1, Math.ceil(s.total / s.size));
    text("page-info", "page " + (s.page + 1) + " of " + pages + " (" + fmt(s.total) + " sessions)");
    $("page-prev").disabled = s.page <= 0;
    $("page-next").disabled = s.page + 1 >= pages;
    for (const id of s.order) {
      const r = s.rows[id];
      if (!r) continue;
      const tr = document.createElement("tr");
      tr.dataset.id = r.id;
      if (r.id === state.selected) tr.className = "selected";
      cell(tr, r.id, "tag");
      cell(tr, r.remote); cell(tr, r.principal); cell(tr, r.transport); cell(tr, r.state, "state");
      cell(tr, new Date(r.since * 1000).toLocaleTimeString());
      cell(tr, fmt(r.in_flight)); cell(tr, fmt(r.buffered)); cell(tr, fmt(r.dropped));
      if (state.role === "operator") {
        const td = document.createElement("td");
        for (const [action, label] of [["disconnect", "disconnect"], ["end", "end"], ["trace", "trace"]]) {
          const b = document.createElement("button");
          b.type = "button"; b.textContent = label; b.className = "act-" + action; b.dataset.id = r.id;
          b.addEventListener("click", (e) => { e.stopPropagation(); act(action, r.id); });
          td.appendChild(b);
        }
        tr.appendChild(td);
      }
      tr.addEventListener("click", () => select(r.id));
      body.appendChild(tr);
    }
  }
  function select(id) {
    state.selected = id;
    text("event-target", id);
    renderSessions();
  }
  function subscribe() {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(JSON.stringify({ sessions: { query: state.query, page: state.page, size: state.size } }));
    }
  }

  // Actions ----------------------------------------------------------------------------------
  async function post(path, body) {
    const reply = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Siyi-CSRF": state.csrf },
      body: JSON.stringify(body || {}),
    });
    let answer = {};
    try { answer = await reply.json(); } catch (e) { answer = {}; }
    text("action-result", reply.ok ? "done: " + (answer.action || "ok") : "refused (" + reply.status + "): " + (answer.error || ""));
    return reply.ok;
  }
  function data(input) {
    const raw = $(input).value.trim();
    if (!raw) return null;
    try { return JSON.parse(raw); } catch (e) { return raw; }
  }
  function act(action, id) {
    if (action === "trace") {
      post("api/trace", { session: id, bodies: $("trace-bodies").checked });
    } else {
      post("api/sessions/" + encodeURIComponent(id) + "/" + action);
    }
  }
  function renderTrace(message) {
    text("trace-state", message.tag ? "of " + message.tag + (message.bodies ? " (with bodies)" : "") : "off");
    const body = $("trace-body");
    body.replaceChildren();
    for (const e of message.entries.slice(-200).reverse()) {
      const tr = document.createElement("tr");
      cell(tr, new Date(e.time * 1000).toLocaleTimeString());
      cell(tr, e.dir); cell(tr, e.kind); cell(tr, e.name + (e.note ? " (" + e.note + ")" : ""));
      cell(tr, e.id); cell(tr, fmt(e.size)); cell(tr, e.body === undefined ? "" : e.body);
      body.appendChild(tr);
    }
  }

  // The feed ---------------------------------------------------------------------------------
  function connect() {
    const url = new URL("feed", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url.href);
    state.ws = ws;
    ws.onopen = () => { $("feed-state").textContent = "live"; $("feed-state").className = "badge up"; };
    ws.onclose = () => {
      $("feed-state").textContent = "reconnecting…"; $("feed-state").className = "badge down";
      setTimeout(connect, 1000);
    };
    ws.onmessage = (m) => {
      const msg = JSON.parse(m.data);
      if (msg.type === "hello") {
        state.role = msg.role; state.csrf = msg.csrf; state.doc = msg.doc; state.history = msg.history;
        text("role", msg.role === "operator" ? "operator" : "read-only");
        if (msg.role === "operator") document.body.classList.add("operator");
        else document.querySelectorAll(".operator-only").forEach((el) => el.remove());
        subscribe();
        renderAll();
      } else if (msg.type === "tick") {
        state.doc = applyPatch(state.doc, msg.patch);
        addPoint(msg.point);
        renderAll();
      } else if (msg.type === "sessions") {
        state.sessions = msg.full ? msg.full : applyPatch(state.sessions, msg.patch);
        renderSessions();
      } else if (msg.type === "trace") {
        renderTrace(msg);
      }
      document.body.dataset.ticks = String((Number(document.body.dataset.ticks) || 0) + 1);
    };
  }
  function renderAll() { renderNode(); renderNodes(); renderCommands(); drawCharts(); }

  document.addEventListener("DOMContentLoaded", () => {
    let timer = null;
    $("session-search").addEventListener("input", (e) => {
      clearTimeout(timer);
      timer = setTimeout(() => { state.query = e.target.value; state.page = 0; subscribe(); }, 200);
    });
    $("page-prev").addEventListener("click", () => { if (state.page > 0) { state.page--; subscribe(); } });
    $("page-next").addEventListener("click", () => { state.page++; subscribe(); });
    const eventForm = $("event-form");
    if (eventForm) eventForm.addEventListener("submit", (e) => {
      e.preventDefault();
      if (!state.selected) { text("action-result", "pick a session first"); return; }
      post("api/sessions/" + encodeURIComponent(state.selected) + "/event", { name: $("event-name").value, data: data("event-data") });
    });
    const broadcastForm = $("broadcast-form");
    if (broadcastForm) broadcastForm.addEventListener("submit", (e) => {
      e.preventDefault();
      post("api/broadcast", { name: $("broadcast-name").value, data: data("broadcast-data") });
    });
    const stop = $("trace-stop");
    if (stop) stop.addEventListener("click", () => post("api/trace", { session: null }));
    connect();
  });
})();
