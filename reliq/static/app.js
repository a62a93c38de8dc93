// reliq monitor page: live counts over Server-Sent Events (polling /stats as a fallback),
// canvas charts of the monitor's 15-minute history, and dead-letter actions.
// Plain JS, no build step, nothing loaded from anywhere but this monitor.
"use strict";

const HISTORY_S = 15 * 60;
const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

// -- small helpers --------------------------------------------------------------------

/** Build an element; children are nodes or text (never parsed as HTML). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style") el.style.cssText = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}

function fmtInt(n) {
  if (n === null || n === undefined) return "–";
  if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(n >= 1e7 ? 0 : 1) + "M";
  if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(n >= 1e5 ? 0 : 1) + "k";
  return n.toLocaleString("en-US");
}
function fmtRate(r) {
  if (r === null || r === undefined) return "–";
  if (r >= 1000) return fmtInt(Math.round(r));
  if (r >= 10) return r.toFixed(0);
  if (r > 0) return r.toFixed(1);
  return "0";
}
function fmtSecs(s) {
  if (s === null || s === undefined) return "–";
  if (s === 0) return "0 s";
  if (s < 0.001) return (s * 1e6).toFixed(0) + " µs";
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 1 : 0) + " ms";
  if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
  if (s < 3600) return Math.floor(s / 60) + "m " + Math.round(s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.round((s % 3600) / 60) + "m";
}
function ago(date) {
  const s = Math.max(0, (Date.now() - date.getTime()) / 1000);
  if (s < 60) return Math.round(s) + "s ago";
  if (s < 3600) return Math.round(s / 60) + "m ago";
  if (s < 86400) return Math.round(s / 3600) + "h ago";
  return Math.round(s / 86400) + "d ago";
}
function clock(t) { return new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }); }

function toast(text, bad = false) {
  const el = h("div", { class: "toast" + (bad ? " bad" : ""), role: "status" }, text);
  $("#toasts").append(el);
  setTimeout(() => el.remove(), bad ? 7000 : 3500);
}

function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

// -- talking to the monitor -------------------------------------------------------------

const TOKEN_KEY = "reliq-token";
let tokenPrompt = null;

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: "Bearer " + token } : {};
}

let tokenDeclined = false;

/** Ask for the API token (concurrent 401s share one dialog); false when cancelled.
 * Once declined, background reads stop asking; a button press (``force``) asks again. */
function askToken(force = false) {
  if (tokenPrompt) return tokenPrompt;
  if (tokenDeclined && !force) {
    showBanner("This monitor is private: press any button, or reload the page, to enter its token.");
    return Promise.resolve(false);
  }
  const dlg = $("#token");
  const input = $("input", dlg);
  input.value = "";
  tokenPrompt = new Promise((resolve) => {
    dlg.addEventListener("close", () => {
      tokenPrompt = null;
      if (dlg.returnValue === "ok" && input.value) {
        sessionStorage.setItem(TOKEN_KEY, input.value);
        tokenDeclined = false;
        resolve(true);
      } else {
        tokenDeclined = true;
        resolve(false);
      }
    }, { once: true });
    dlg.showModal();
  });
  return tokenPrompt;
}

/** The queue this page shows: ``?queue=`` in the address, else the monitor's first. */
const QUEUE = new URLSearchParams(location.search).get("queue");

function withQueue(path) {
  if (!QUEUE) return path;
  return path + (path.includes("?") ? "&" : "?") + "queue=" + encodeURIComponent(QUEUE);
}

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** fetch() a JSON endpoint (relative, so the page works behind a path prefix). */
async function api(method, path, body) {
  for (let attempt = 0; ; attempt++) {
    const init = { method, headers: { ...authHeaders() } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(withQueue(path), init);
    if (res.status === 401 && attempt < 2) {
      if (sessionStorage.getItem(TOKEN_KEY)) toast("The token was refused; enter it again.", true);
      if (await askToken(method !== "GET")) continue;
      throw new HttpError(401, "a token is needed for this");
    }
    if (res.status === 403 && method !== "GET" && attempt < 2) {
      // A read-only token: this action needs the write token.
      toast("This token may only read; enter the write token (RELIQ_API_TOKEN).", true);
      if (await askToken(true)) continue;
    }
    const data = await res.json().catch(() => ({}));
    if (!res.ok) throw new HttpError(res.status, data.error || res.statusText);
    return data;
  }
}

// -- charts -----------------------------------------------------------------------------

/** A line chart of the last 15 minutes on a canvas, with a hover read-out. */
class LineChart {
  constructor(canvas, legend, series, opts = {}) {
    this.canvas = canvas;
    this.legend = legend;
    this.series = series; // [{index, label, color (css var)}]
    this.opts = opts;
    this.points = [];
    this.hover = null;
    this.legendItems = series.map((s) => {
      const value = h("b", {}, "–");
      const li = h("li", { style: `--c: var(${s.color})` }, h("i"), s.label, value);
      legend.append(li);
      return value;
    });
    new ResizeObserver(() => this.draw()).observe(canvas);
    canvas.addEventListener("pointermove", (e) => { this.hover = e.offsetX; this.draw(); });
    canvas.addEventListener("pointerleave", () => { this.hover = null; this.draw(); });
  }

  update(points) { this.points = points; this.draw(); }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, hgt = c.clientHeight;
    if (!w || !hgt) return;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(hgt * dpr)) {
      c.width = Math.round(w * dpr); c.height = Math.round(hgt * dpr);
    }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, hgt);
    const pad = { l: 44, r: 10, t: 8, b: 22 };
    const pw = w - pad.l - pad.r, ph = hgt - pad.t - pad.b;
    const now = this.points.length ? this.points[this.points.length - 1][0] : Date.now() / 1000;
    const span = chartSpan(now, this.opts.since && this.opts.since());
    const t0 = now - span;
    let max = 0;
    for (const p of this.points) for (const s of this.series) max = Math.max(max, p[s.index]);
    const top = niceCeil(max || 1);
    const x = (t) => pad.l + ((t - t0) / span) * pw;
    const y = (v) => pad.t + ph - (v / top) * ph;
    const muted = cssVar("--muted"), line = cssVar("--line");
    g.font = "11px system-ui, sans-serif";
    g.lineWidth = 1;
    g.fillStyle = muted;
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const v = (top * i) / 4, yy = Math.round(y(v)) + 0.5;
      g.strokeStyle = line;
      g.beginPath(); g.moveTo(pad.l, yy); g.lineTo(w - pad.r, yy); g.stroke();
      g.fillText(fmtInt(Math.round(v * 100) / 100), pad.l - 6, yy);
    }
    g.textAlign = "center";
    g.textBaseline = "top";
    const step = [30, 60, 120, 300].find((s) => span / s <= 5) || 300;
    for (let ago = Math.floor(span / step) * step; ago >= 0; ago -= step) {
      const label = ago === 0 ? "now" : ago < 60 ? `−${ago}s` : `−${ago / 60}m`;
      g.fillText(label, Math.min(Math.max(x(now - ago), pad.l + 12), w - pad.r - 12), pad.t + ph + 6);
    }
    if (this.opts.since && this.opts.since() > t0) {
      // Shade the span before the monitor started: there is no history there, not zero.
      g.fillStyle = cssVar("--panel2");
      g.fillRect(pad.l, pad.t, Math.max(0, x(this.opts.since()) - pad.l), ph);
    }
    for (const s of this.series) {
      g.strokeStyle = cssVar(s.color);
      g.lineWidth = s.dash ? 1.5 : 2;
      g.setLineDash(s.dash || []);
      g.lineJoin = "round";
      g.beginPath();
      let started = false, prevT = null;
      for (const p of this.points) {
        if (p[0] < t0) continue;
        // A gap of several seconds (monitor could not read Redis) breaks the line.
        if (!started || p[0] - prevT > 5) g.moveTo(x(p[0]), y(p[s.index]));
        else g.lineTo(x(p[0]), y(p[s.index]));
        started = true; prevT = p[0];
      }
      g.stroke();
      g.setLineDash([]);
      if (s.fill) {
        g.globalAlpha = 0.08;
        g.lineTo(x(now), y(0)); g.lineTo(x(Math.max(t0, this.points[0]?.[0] ?? now)), y(0)); g.closePath();
        g.fillStyle = cssVar(s.color); g.fill();
        g.globalAlpha = 1;
      }
    }
    let shown = this.points[this.points.length - 1];
    if (this.hover !== null && this.points.length) {
      const t = t0 + ((this.hover - pad.l) / pw) * span;
      shown = nearest(this.points, t);
      const xx = Math.round(x(shown[0])) + 0.5;
      g.strokeStyle = muted; g.lineWidth = 1; g.setLineDash([3, 3]);
      g.beginPath(); g.moveTo(xx, pad.t); g.lineTo(xx, pad.t + ph); g.stroke(); g.setLineDash([]);
      for (const s of this.series) {
        g.fillStyle = cssVar(s.color);
        g.beginPath(); g.arc(xx, y(shown[s.index]), 3, 0, Math.PI * 2); g.fill();
      }
      g.fillStyle = muted; g.textAlign = "left"; g.textBaseline = "top";
      g.fillText(new Date(shown[0] * 1000).toLocaleTimeString(), Math.min(xx + 6, w - 70), pad.t + 2);
    }
    this.series.forEach((s, i) => {
      this.legendItems[i].textContent = shown ? this.opts.format(shown[s.index]) : "–";
    });
  }
}

/** Seconds the x axis spans: the whole 15 minutes, or less while the monitor is young. */
function chartSpan(now, since) {
  const span = since ? Math.min(HISTORY_S, Math.max(60, Math.ceil((now - since) / 60) * 60)) : HISTORY_S;
  for (const el of $$(".span-hint")) el.textContent = span >= HISTORY_S ? "last 15 min" : `last ${span / 60} min (since the monitor started)`;
  return span;
}

function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
function nearest(points, t) {
  let lo = 0, hi = points.length - 1;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (points[mid][0] < t) lo = mid + 1; else hi = mid; }
  if (lo > 0 && Math.abs(points[lo - 1][0] - t) < Math.abs(points[lo][0] - t)) lo--;
  return points[lo];
}

// -- live state -------------------------------------------------------------------------

const state = {
  points: [], since: null, fields: null, last: null, deadCount: null,
  dead: { offset: 0, limit: 20, type: "", reason: "", total: 0 }, deadLoadedAt: 0, job: null, selected: new Set(),
};
let rateChart, depthChart;

function setConn(kind, text) {
  const pill = $("#conn");
  pill.dataset.state = kind;
  $("b", pill).textContent = text;
}

function setStat(name, value, text) {
  const out = $(`[data-stat="${name}"]`);
  if (!out) return;
  const shown = text ?? fmtInt(value);
  if (out.textContent !== shown) {
    out.textContent = shown;
    const card = out.closest(".card");
    card.classList.remove("flash"); void card.offsetWidth; card.classList.add("flash");
  }
}
function setSub(name, text) { const el = $(`[data-sub="${name}"]`); if (el) el.textContent = text; }

/** Pending by priority under the pending count, while any task waits at another priority than 5. */
function renderPriorities(byPriority) {
  const el = $('[data-sub="priorities"]');
  const waiting = Object.entries(byPriority || {}).filter(([, n]) => n > 0).sort(([a], [b]) => b - a);
  el.hidden = !waiting.some(([p]) => p !== "5");
  if (!el.hidden) el.textContent = "by priority: " + waiting.map(([p, n]) => `${p}: ${fmtInt(n)}`).join(" · ");
}

/** Show one reading: counts, rates, latency, totals, workers; extend the charts. */
function render(sample) {
  const st = sample.stats;
  state.last = sample;
  $("#queue-name").textContent = st.queue;
  document.title = `${fmtInt(st.pending)} pending · ${st.queue} · reliq`;
  for (const k of ["pending", "processing", "delayed", "dead_letter", "workers"]) setStat(k, st[k]);
  setStat("ok_rate", null, fmtRate(st.rates.succeeded));
  setStat("fail_rate", null, fmtRate(st.rates.failed));
  setStat("lag", null, fmtSecs(st.lag_s));
  setSub("lag", fmtRate(st.rates.enqueued) + "/s arriving");
  renderPriorities(st.pending_by_priority);
  setSub("succeeded", fmtInt(st.succeeded) + " total");
  setSub("failed", fmtInt(st.failed) + " total");
  setSub("dead", fmtInt(st.dead) + " all-time");
  setSub("recovered", fmtInt(st.recovered) + " tasks recovered");
  const lagCard = $(".c-lag");
  lagCard.dataset.level = st.lag_s > 60 ? "bad" : st.lag_s > 5 ? "warn" : "";
  $(".c-dead").dataset.level = st.dead_letter > 0 ? "bad" : "";
  $(".c-fail").dataset.level = st.rates.failed > 0 ? "warn" : "";
  renderMemory(st.redis_memory);
  renderPaused(st.paused);
  renderTotals(st);
  if (sample.latency) renderLatency(sample.latency);
  if (sample.workers) renderWorkers(sample.workers);
  renderPartitions(st.partitions);
  if (sample.types) renderTypes(sample.types);
  if (sample.point) addPoint(sample.point);
  // Refresh the dead-letter table when its size changes (at most every 2 s while tasks
  // keep dying), and every 10 s regardless so ages and replaced rows stay true.
  const since = Date.now() - state.deadLoadedAt;
  if ((st.dead_letter !== state.deadCount && since > 2000) || since > 10000) {
    state.deadCount = st.dead_letter;
    loadDead();
  }
}

/** Redis used memory against its maxmemory: past 90% (the default admission limit) new tasks get 507. */
function renderMemory(m) {
  if (!m) return;
  const mib = (b) => (b / 1048576).toFixed(1) + " MiB";
  setStat("memory", null, m.max_bytes ? Math.round(m.ratio * 100) + "%" : mib(m.used_bytes));
  setSub("memory", m.max_bytes ? `${mib(m.used_bytes)} of ${mib(m.max_bytes)}` : "no maxmemory set");
  $(".c-mem").dataset.level = m.ratio >= 0.9 ? "bad" : m.ratio >= 0.75 ? "warn" : "";
}

function addPoint(p) {
  const pts = state.points;
  if (pts.length && p[0] <= pts[pts.length - 1][0]) return;
  pts.push(p);
  const cut = p[0] - HISTORY_S - 5;
  while (pts.length && pts[0][0] < cut) pts.shift();
  rateChart.update(pts);
  depthChart.update(pts);
}

const TOTALS = ["enqueued", "succeeded", "failed", "retried", "dead", "recovered", "requeued", "cancelled", "cancelled_running"];
function renderTotals(st) {
  const dl = $("#totals");
  if (!dl.children.length) {
    for (const k of TOTALS) dl.append(h("div", {}, h("dt", {}, k.replace("_", " ")), h("dd", { "data-total": k }, "–")));
  }
  for (const k of TOTALS) $(`[data-total="${k}"]`, dl).textContent = fmtInt(st[k]);
}

function renderLatency(lat) {
  let recent = lat.wait.count + lat.run.count > 0;
  $("#latency-window").textContent = recent ? `last ${lat.window_s} s` : "all time (nothing ran in the last minute)";
  for (const kind of ["wait", "run"]) {
    const p = recent ? lat[kind] : lat[kind + "_all"];
    const cells = $$(`tr[data-kind="${kind}"] td`);
    cells[0].textContent = fmtSecs(p.p50);
    cells[1].textContent = fmtSecs(p.p95);
    cells[2].textContent = fmtSecs(p.p99);
    cells[3].textContent = fmtInt(p.count);
  }
}

function renderWorkers(workers) {
  const body = $("#workers tbody");
  const rows = [...workers].sort((a, b) => a.id.localeCompare(b.id)).map((w) => {
    const pct = w.concurrency ? Math.min(100, (100 * w.in_flight) / w.concurrency) : 0;
    const age = w.heartbeat_age_s;
    const cls = age < 3 ? "age-ok" : age < 10 ? "age-warn" : "age-bad";
    return h("tr", { "data-worker": w.id },
      h("td", { class: "mono", title: w.id }, shortWorker(w.id)),
      h("td", {}, w.host),
      h("td", { class: "num" }, String(w.pid)),
      h("td", { class: "num" }, String(w.concurrency)),
      h("td", {}, h("span", { class: "meter" }, h("span", {}, h("i", { style: `width:${pct}%` })), `${w.in_flight}`)),
      h("td", { class: "num" }, fmtInt(w.processed)),
      h("td", { class: "num " + cls }, fmtSecs(age) + " ago"));
  });
  body.replaceChildren(...rows);
  $("#workers-empty").hidden = workers.length > 0;
  const slots = workers.reduce((n, w) => n + w.concurrency, 0);
  const busy = workers.reduce((n, w) => n + w.in_flight, 0);
  $("#workers-hint").textContent = workers.length ? `${busy} of ${slots} slots busy at the last heartbeats` : "";
  setSub("slots", slots ? `of ${fmtInt(slots)} worker slots` : "no worker running");
}
/** A partitioned queue's partitions (docs/partitions.md): where each lives, its depths; hidden for one. */
function renderPartitions(parts) {
  $("#partitions-panel").hidden = !parts;
  if (!parts) return;
  $("#partitions tbody").replaceChildren(...parts.map((p) => h("tr", { "data-partition": String(p.partition) },
    h("td", { class: "num" }, String(p.partition)),
    h("td", { class: "mono" }, `{${p.tag}}`),
    h("td", { class: "mono" }, p.node || "this server"),
    h("td", { class: "num" }, fmtInt(p.pending)),
    h("td", { class: "num" }, fmtInt(p.processing)),
    h("td", { class: "num" }, fmtInt(p.delayed)),
    h("td", { class: "num" }, fmtInt(p.dead_letter)),
    h("td", { class: "num" }, fmtInt(p.workers)),
    h("td", { class: "num" }, fmtSecs(p.lag_s)),
    h("td", { class: "num wide" }, fmtInt(p.succeeded)))));
  const nodes = new Set(parts.map((p) => p.node).filter(Boolean));
  $("#partitions-hint").textContent = `${parts.length} partitions` + (nodes.size ? ` on ${nodes.size} primaries` : "");
}

/** When a time (ISO) is from now: "in 5s", "3m ago". */
function relative(iso) {
  const s = (new Date(iso).getTime() - Date.now()) / 1000;
  return s >= 0 ? "in " + fmtSecs(Math.round(s)) : ago(new Date(iso));
}

/** Periodic schedules: when each runs next, how its last run went, whether it is paused. */
function renderSchedules(schedules) {
  const rows = schedules.map((s) => {
    const when = s.error ? "unreadable" : s.every !== null ? `every ${s.every} s` : `${s.cron} (${s.tz})`;
    const next = s.paused ? h("span", { class: "badge warn", title: `by ${s.paused_by || "?"}` }, "paused")
      : s.next_run ? h("span", { title: s.next_run }, relative(s.next_run)) : "–";
    const last = s.last_task_id ? h("span", { title: s.last_task_id },
      (s.last_enqueued_at ? relative(s.last_enqueued_at) + " · " : ""),
      h("span", { class: "state state-" + (s.last_task_state || "gone") }, s.last_task_state || "gone")) : "never";
    return h("tr", { "data-schedule": s.name },
      h("td", { class: "mono" }, s.name, s.source === "api" ? h("span", { class: "hint", title: "defined at run time" }, " (api)") : ""),
      h("td", { class: "mono", title: s.error || "" }, when),
      h("td", {}, s.type || "–"),
      h("td", { "data-col": "next" }, next),
      h("td", { "data-col": "last" }, last),
      h("td", { class: "num" }, fmtInt(s.enqueued)),
      h("td", { class: "num wide" + (s.skipped ? " warn" : "") }, fmtInt(s.skipped)));
  });
  $("#schedules tbody").replaceChildren(...rows);
  $("#schedules-empty").hidden = schedules.length > 0;
}

async function loadSchedules() {
  try {
    renderSchedules((await api("GET", "schedules")).schedules);
  } catch (e) {
    console.warn("schedules:", e.message);
  }
}

/** The pause state: the queue's Pause/Resume button, a banner, and (through renderTypes) each type's. */
function renderPaused(paused) {
  if (!paused) return;
  state.paused = paused;
  const btn = $("#pause-queue");
  btn.hidden = false;
  btn.textContent = paused.queue ? "Resume" : "Pause";
  btn.dataset.paused = paused.queue ? "1" : "";
  const parts = [];
  if (paused.queue) parts.push(`Queue paused for ${fmtSecs(paused.queue.paused_s)} by ${paused.queue.by}: workers claim nothing, pending tasks wait.`);
  const types = Object.entries(paused.types);
  if (types.length) {
    parts.push("Paused type" + (types.length > 1 ? "s " : " ") +
      types.map(([t, p]) => `${t} (${fmtInt(p.held)} held${p.resuming ? ", resuming" : ""})`).join(", ") + ".");
  }
  const banner = $("#paused-banner");
  banner.hidden = !parts.length;
  banner.textContent = parts.join(" ");
}

/** Pause (asked first) or resume the whole queue, or one type of it. */
async function togglePause(type) {
  const p = state.paused || { queue: null, types: {} };
  const resume = type ? Boolean(p.types[type]) : Boolean(p.queue);
  const queue = state.last ? state.last.stats.queue : QUEUE;
  const what = type ? `type “${type}”` : `queue “${queue}”`;
  if (!resume && !await confirmDialog({ title: `Pause ${what}?`,
    body: "Workers stop claiming its tasks at once, fleet-wide; running tasks finish and pending tasks stay until you resume.",
    ok: "Pause" })) return;
  const path = `queues/${encodeURIComponent(queue)}/${resume ? "resume" : "pause"}` + (type ? "?type=" + encodeURIComponent(type) : "");
  await act(async () => {
    const r = await api("POST", path);
    renderPaused(r.paused);
    if (state.last && state.last.types) renderTypes(state.last.types);
    return r;
  }, (r) => `${what[0].toUpperCase() + what.slice(1)} ${resume ? "resumed" : "paused"}` +
    (r.requeued_held ? `: ${fmtInt(r.requeued_held)} held task(s) back in pending` : ""));
}

function pauseButton(type) {
  const paused = Boolean(state.paused && state.paused.types[type]);
  return h("button", { type: "button", class: "btn small", "data-act": paused ? "resume" : "pause",
    onclick: () => togglePause(type) }, paused ? "Resume" : "Pause");
}

function renderTypes(types) {
  // Paused types show even when nothing of theirs ran lately: that is what a pause does.
  const seen = new Set(types.map((t) => t.type));
  const idle = { succeeded_s: 0, failed_s: 0, failure_ratio: null, run: { count: 0 }, run_all: {}, wait: {}, runs_total: 0, failed_total: 0 };
  types = [...types, ...Object.keys((state.paused || { types: {} }).types).filter((t) => !seen.has(t)).map((t) => ({ ...idle, type: t }))];
  const rows = types.map((t) => {
    // Nothing ran in the window: show the all-time run time, dimmed, rather than nothing.
    const run = t.run.count ? t.run : t.run_all;
    const dim = t.run.count ? "" : " dim";
    const ratio = t.failure_ratio;
    const level = ratio === null ? "" : ratio >= 0.1 ? " age-bad" : ratio > 0 ? " age-warn" : "";
    const paused = Boolean(state.paused && state.paused.types[t.type]);
    return h("tr", { "data-type": t.type, class: paused ? "paused" : "" },
      h("td", { class: "mono" }, t.type),
      h("td", { class: "num" }, fmtRate(t.succeeded_s)),
      h("td", { class: "num" + (t.failed_s > 0 ? " age-warn" : "") }, fmtRate(t.failed_s)),
      h("td", { class: "num" + level }, ratio === null ? "–" : (100 * ratio).toFixed(ratio < 0.1 ? 1 : 0) + " %"),
      h("td", { class: "num" + dim }, fmtSecs(run.p50)),
      h("td", { class: "num" + dim }, fmtSecs(run.p95)),
      h("td", { class: "num wide" }, fmtSecs(t.wait.p95)),
      h("td", { class: "num wide", title: `${t.failed_total} failed` }, fmtInt(t.runs_total)),
      h("td", { class: "act" }, pauseButton(t.type)));
  });
  $("#types tbody").replaceChildren(...rows);
  $("#types-empty").hidden = types.length > 0;
}

function shortWorker(id) { const parts = id.split(":"); return parts.length >= 3 ? parts.slice(-2).join(":") : id; }

// -- dead letters ----------------------------------------------------------------------

function deadQuery(extra = {}) {
  const d = state.dead;
  const q = new URLSearchParams({ facets: "1", offset: d.offset, limit: d.limit, ...extra });
  if (d.type) q.set("type", d.type);
  if (d.reason) q.set("reason", d.reason);
  return q;
}

let deadLoading = null;
async function loadDead() {
  if (deadLoading) return deadLoading;
  deadLoading = (async () => {
    try {
      const page = await api("GET", "dead?" + deadQuery());
      state.deadLoadedAt = Date.now();
      renderDead(page);
    } catch (e) {
      if (e.status !== 401) console.warn("dead-letter listing failed", e);
    } finally { deadLoading = null; }
  })();
  return deadLoading;
}

function fillSelect(sel, counts, current) {
  const keys = Object.keys(counts).sort();
  if (current && !keys.includes(current)) keys.push(current);
  const opts = [h("option", { value: "" }, "any")].concat(
    keys.map((k) => h("option", { value: k, selected: k === current }, `${k || "(none)"} (${counts[k] || 0})`)));
  sel.replaceChildren(...opts);
  sel.value = current;
}

function renderDead(page) {
  const d = state.dead;
  d.total = page.total;
  if (document.activeElement !== $("#f-type")) fillSelect($("#f-type"), page.types, d.type);
  if (document.activeElement !== $("#f-reason")) fillSelect($("#f-reason"), page.reasons, d.reason);
  const onPage = new Set(page.items.map((t) => t.task_id));
  for (const id of state.selected) if (!onPage.has(id)) state.selected.delete(id);
  const rows = page.items.map((t) => h("tr", { "data-id": t.task_id, onclick: () => showDetail(t.task_id) },
    h("td", { class: "pick", onclick: (e) => e.stopPropagation() },
      h("input", { type: "checkbox", "aria-label": "select", checked: state.selected.has(t.task_id),
        onchange: (e) => { e.target.checked ? state.selected.add(t.task_id) : state.selected.delete(t.task_id); showSelection(); } })),
    h("td", { title: t.failed_at || "" }, t.failed_at ? ago(new Date(t.failed_at)) : "–"),
    h("td", { class: "mono" }, t.type),
    h("td", {}, h("span", { class: "badge " + t.reason }, t.reason || "?")),
    h("td", { class: "num" }, `${t.attempts}`),
    h("td", { class: "wide" }, h("div", { class: "err", title: t.last_error }, t.last_error)),
    h("td", { class: "actions" },
      h("button", { type: "button", class: "btn small", "data-act": "requeue", title: "Requeue",
        onclick: (e) => { e.stopPropagation(); requeueOne(t.task_id); } }, "Requeue"),
      h("button", { type: "button", class: "btn small danger", "data-act": "delete", title: "Delete",
        onclick: (e) => { e.stopPropagation(); deleteOne(t.task_id); } }, "Delete"))));
  $("#dead-table tbody").replaceChildren(...rows);
  showSelection();
  $("#dead-empty").hidden = page.total > 0;
  $("#dead-empty").textContent = d.type || d.reason ? "No dead task matches this filter." : "Nothing in the dead-letter queue. 🎉";
  $("#dead-table").hidden = page.total === 0;
  const filtered = d.type || d.reason;
  const all = Object.values(page.types).reduce((a, b) => a + b, 0);
  $("#dead-hint").textContent = filtered ? `${page.total} of ${all} match` : `${all} task${all === 1 ? "" : "s"}`;
  $("#requeue-all").textContent = filtered ? `Requeue ${fmtInt(page.total)} matching` : "Requeue all";
  $("#purge").textContent = filtered ? `Delete ${fmtInt(page.total)} matching` : "Purge";
  $("#requeue-all").disabled = $("#purge").disabled = page.total === 0;
  const from = page.total ? page.offset + 1 : 0, to = page.offset + page.items.length;
  $("#page-info").textContent = `${from}–${to} of ${fmtInt(page.total)}`;
  $("#prev").disabled = page.offset === 0;
  $("#next").disabled = to >= page.total;
  if (page.offset > 0 && page.items.length === 0) { d.offset = Math.max(0, page.total - d.limit); loadDead(); }
}

function showSelection() {
  const n = state.selected.size;
  $("#selection").hidden = n === 0;
  $("#selection b").textContent = `${n} selected`;
  const boxes = $$("#dead-table tbody input[type=checkbox]");
  $("#pick-all").checked = boxes.length > 0 && n === boxes.length;
  $("#pick-all").indeterminate = n > 0 && n < boxes.length;
}

/** Requeue or delete the selected rows, one request each (a page holds at most a few dozen). */
async function actOnSelected(kind) {
  const ids = [...state.selected];
  const requeue = kind === "requeue";
  if (!await confirmDialog({
    title: `${requeue ? "Requeue" : "Delete"} ${ids.length} selected task${ids.length === 1 ? "" : "s"}?`,
    body: requeue ? "They go back to pending with a fresh retry budget." : "They and their records are deleted for good.",
    ok: requeue ? "Requeue" : "Delete", danger: !requeue,
  })) return;
  await act(async () => {
    let done = 0;
    for (const id of ids) {
      const path = `dead/${encodeURIComponent(id)}` + (requeue ? "/requeue" : "");
      try { await api(requeue ? "POST" : "DELETE", path); done++; } catch (e) { if (e.status !== 404) throw e; }
      state.selected.delete(id);
    }
    return done;
  }, (done) => `${requeue ? "Requeued" : "Deleted"} ${done} task(s)`);
}

/** An in-page confirmation; resolves to the dialog's form (ok) or null (cancel). */
function confirmDialog({ title, body, ok, danger = false, extra = null }) {
  const dlg = $("#confirm");
  $('[data-slot="title"]', dlg).textContent = title;
  $('[data-slot="body"]', dlg).textContent = body;
  $('[data-slot="extra"]', dlg).replaceChildren(...(extra ? [extra] : []));
  const okBtn = $('[data-slot="ok"]', dlg);
  okBtn.textContent = ok;
  okBtn.className = "btn primary" + (danger ? " danger" : "");
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok" ? $("form", dlg) : null), { once: true });
    dlg.returnValue = "";
    dlg.showModal();
    okBtn.focus();
  });
}

async function act(fn, done) {
  try {
    const result = await fn();
    if (done) toast(done(result));
  } catch (e) {
    toast(`Failed: ${e.message}`, true);
  }
  loadDead();
}

async function requeueOne(id) {
  if (!await confirmDialog({ title: "Requeue this task?", body: `Task ${id} goes back to pending with a fresh retry budget.`, ok: "Requeue" })) return;
  await act(() => api("POST", `dead/${encodeURIComponent(id)}/requeue`), () => "Task requeued");
}

async function deleteOne(id) {
  if (!await confirmDialog({ title: "Delete this task?", body: `Task ${id} and its record are deleted for good.`, ok: "Delete", danger: true })) return;
  await act(() => api("DELETE", `dead/${encodeURIComponent(id)}`), () => "Task deleted");
}

function filterText() {
  const d = state.dead, parts = [];
  if (d.type) parts.push(`type “${d.type}”`);
  if (d.reason) parts.push(`reason “${d.reason}”`);
  return parts.length ? " with " + parts.join(" and ") : "";
}

async function requeueAll() {
  const d = state.dead;
  const rate = h("input", { type: "number", name: "rate", min: "0.1", step: "any", placeholder: "no limit", inputmode: "decimal" });
  const extra = h("label", { class: "field" }, "Pace (tasks per second) — so a replay cannot flatten a recovering downstream", rate);
  const form = await confirmDialog({
    title: `Requeue ${fmtInt(d.total)} dead task${d.total === 1 ? "" : "s"}?`,
    body: `Every dead task${filterText()} goes back to pending, oldest first.`, ok: "Requeue", extra,
  });
  if (!form) return;
  const body = { type: d.type || null, reason: d.reason || null };
  if (rate.value) body.rate = Number(rate.value);
  await act(async () => { const job = await api("POST", "dead/requeue", body); followJob(job); return job; },
    (job) => `Requeue started${job.rate ? ` at ${job.rate}/s` : ""}`);
}

async function purge() {
  const d = state.dead;
  const what = d.type || d.reason ? `${fmtInt(d.total)} dead task(s)${filterText()}` : "every task in the dead-letter queue";
  if (!await confirmDialog({ title: "Purge the dead-letter queue?", body: `This deletes ${what} and their records. It cannot be undone.`, ok: "Purge", danger: true })) return;
  const q = new URLSearchParams();
  if (d.type) q.set("type", d.type);
  if (d.reason) q.set("reason", d.reason);
  await act(() => api("DELETE", "dead" + (q.size ? "?" + q : "")), (r) => `Deleted ${fmtInt(r.deleted)} task(s)`);
}

async function followJob(job) {
  state.job = job;
  const box = $("#job");
  box.hidden = false;
  while (state.job && state.job.id === job.id) {
    const j = state.job;
    const pct = j.total ? (100 * (j.requeued + j.skipped)) / j.total : j.state === "done" ? 100 : 0;
    $(".bar i", box).style.width = pct + "%";
    $("span", box).textContent = `Requeue ${j.state}: ${fmtInt(j.requeued)} of ${j.total === null ? "…" : fmtInt(j.total)}` +
      (j.rate ? ` at ${j.rate}/s` : "") + (j.skipped ? ` · ${j.skipped} skipped` : "") + (j.error ? ` · ${j.error}` : "");
    $("#job-cancel").hidden = j.state !== "running";
    if (j.state !== "running") { setTimeout(() => { if (state.job === j) box.hidden = true; }, 4000); loadDead(); return; }
    await new Promise((r) => setTimeout(r, 500));
    try { state.job = await api("GET", `jobs/${encodeURIComponent(job.id)}`); } catch { return; }
  }
}

async function showDetail(id) {
  let t;
  try { t = await api("GET", `dead/${encodeURIComponent(id)}`); } catch (e) { toast(`Cannot open ${id}: ${e.message}`, true); loadDead(); return; }
  const dlg = $("#detail");
  $('[data-slot="id"]', dlg).textContent = t.task_id;
  const kv = [["type", t.type], ["reason", t.reason], ["attempts", `${t.attempts} (max retries ${t.max_retries})`],
    ["failures", t.failures], ["crashes", t.crashes], ["enqueued", t.enqueued_at], ["started", t.started_at],
    ["failed", t.finished_at], ["worker", t.worker]];
  $('[data-slot="fields"]', dlg).replaceChildren(...kv.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "–")]));
  $('[data-slot="error"]', dlg).textContent = t.last_error || "–";
  $('[data-slot="payload"]', dlg).textContent = JSON.stringify(t.payload, null, 2);
  const edits = t.edits || [];
  $('[data-slot="edits"]', dlg).replaceChildren(...(edits.length ? [
    h("h3", {}, `Edits (${edits.length})`),
    h("ul", { class: "edits" }, ...edits.map((e) => h("li", {}, `${e.at} by ${e.by}; it replaced `,
      h("code", {}, JSON.stringify(e.previous_payload))))),
  ] : []));
  dlg.returnValue = "";
  dlg.addEventListener("close", () => {
    if (dlg.returnValue === "requeue") requeueOne(id);
    else if (dlg.returnValue === "delete") deleteOne(id);
    else if (dlg.returnValue === "edit") editPayload(id, t.payload);
  }, { once: true });
  dlg.showModal();
}

/** Change a dead task's payload (recorded on the task), then save it or requeue it with it. */
function editPayload(id, payload) {
  const dlg = $("#edit");
  const area = $("textarea", dlg), problem = $('[data-slot="problem"]', dlg);
  $('[data-slot="id"]', dlg).textContent = id;
  area.value = JSON.stringify(payload, null, 2);
  problem.hidden = true;
  const path = `dead/${encodeURIComponent(id)}`;
  const onClose = async () => {
    const how = dlg.returnValue;
    if (how !== "save" && how !== "requeue") return;
    let value;
    try { value = JSON.parse(area.value); } catch (e) {
      problem.textContent = `Not valid JSON: ${e.message}`;
      problem.hidden = false;
      dlg.returnValue = "";
      dlg.addEventListener("close", onClose, { once: true });
      dlg.showModal();
      return;
    }
    if (how === "save") await act(() => api("PATCH", path, { payload: value }), () => "Payload saved");
    else await act(() => api("POST", `${path}/requeue`, { payload: value }), () => "Payload saved and task requeued");
  };
  dlg.returnValue = "";
  dlg.addEventListener("close", onClose, { once: true });
  dlg.showModal();
  area.focus();
}

// -- the live stream, with polling as a fallback ----------------------------------------------

let pollTimer = null;

/** Read /events with fetch (so the token header can be sent), one SSE message at a time. */
async function stream() {
  const res = await fetch(withQueue("events"), { headers: { Accept: "text/event-stream", ...authHeaders() } });
  if (res.status === 401) { if (await askToken()) return stream(); throw new Error("token needed"); }
  if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error("stream ended");
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const msg = buf.slice(0, cut); buf = buf.slice(cut + 2);
      const data = msg.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) onSample(JSON.parse(data), "live");
    }
  }
}

function onSample(sample, mode) {
  if (sample.error || !sample.stats) {
    setConn("down", sample.error && sample.error.startsWith("Redis") ? "Redis down" : "waiting");
    showBanner(sample.error);
    return;
  }
  showBanner(null);
  setConn(mode, mode === "live" ? "live" : "polling");
  render(sample);
}

function showBanner(text) {
  const b = $("#banner");
  b.hidden = !text;
  b.textContent = text || "";
}

async function pollOnce() {
  try {
    const [stats, workers] = await Promise.all([api("GET", "stats"), api("GET", "workers")]);
    const point = [Date.now() / 1000, stats.pending, stats.processing, stats.delayed, stats.dead_letter,
      stats.rates.succeeded, stats.rates.failed, stats.rates.enqueued];
    onSample({ stats, latency: stats.latency, types: stats.types, workers: workers.workers, point }, "polling");
  } catch (e) {
    setConn("down", e.status === 503 ? "Redis down" : "offline");
  }
}

async function connect() {
  let failures = 0;
  for (;;) {
    try {
      await stream();
    } catch (e) {
      failures++;
      console.warn("event stream:", e.message);
    }
    // The stream broke: poll /stats each second meanwhile, and try the stream again later.
    if (!pollTimer) { pollOnce(); pollTimer = setInterval(pollOnce, 1000); }
    await new Promise((r) => setTimeout(r, Math.min(15000, 1000 * 2 ** Math.min(failures, 4))));
    clearInterval(pollTimer); pollTimer = null;
  }
}

/** Offer a choice of queue when the monitor watches several (switching reloads the page). */
async function loadQueues() {
  try {
    const { queues } = await api("GET", "queues");
    if (queues.length < 2) return;
    const sel = $("#queue-select");
    sel.replaceChildren(...queues.map((q) => h("option", { value: q, selected: q === (QUEUE || queues[0]) }, q)));
    sel.hidden = false;
    $("#queue-name").hidden = true;
    sel.addEventListener("change", () => { location.search = "?queue=" + encodeURIComponent(sel.value); });
  } catch (e) {
    console.warn("queues:", e.message);
  }
}

async function loadHistory() {
  try {
    const hist = await api("GET", "history");
    state.fields = hist.fields;
    state.since = hist.since;
    $("#since").textContent = `history since ${clock(hist.since)}`;
    $("#since").title = "The monitor keeps 15 minutes of history in memory, from when it started.";
    for (const p of hist.points) addPoint(p);
  } catch (e) {
    console.warn("history:", e.message);
  }
}

function init() {
  const since = () => state.since;
  const f = (name) => ["t", "pending", "processing", "delayed", "dead_letter", "succeeded_s", "failed_s", "enqueued_s"].indexOf(name);
  rateChart = new LineChart($("#chart-rate"), $("#legend-rate"), [
    { index: f("succeeded_s"), label: "succeeded", color: "--ok", fill: true },
    { index: f("failed_s"), label: "failed", color: "--fail" },
    { index: f("enqueued_s"), label: "enqueued", color: "--pending", dash: [5, 4] },
  ], { format: fmtRate, since });
  depthChart = new LineChart($("#chart-depth"), $("#legend-depth"), [
    { index: f("pending"), label: "pending", color: "--pending", fill: true },
    { index: f("processing"), label: "processing", color: "--processing" },
    { index: f("delayed"), label: "scheduled", color: "--delayed" },
    { index: f("dead_letter"), label: "dead", color: "--dead" },
  ], { format: fmtInt, since });
  $("#f-type").addEventListener("change", (e) => { state.dead.type = e.target.value; state.dead.offset = 0; loadDead(); });
  $("#f-reason").addEventListener("change", (e) => { state.dead.reason = e.target.value; state.dead.offset = 0; loadDead(); });
  $("#prev").addEventListener("click", () => { state.dead.offset = Math.max(0, state.dead.offset - state.dead.limit); loadDead(); });
  $("#next").addEventListener("click", () => { state.dead.offset += state.dead.limit; loadDead(); });
  $("#requeue-all").addEventListener("click", requeueAll);
  $("#requeue-selected").addEventListener("click", () => actOnSelected("requeue"));
  $("#delete-selected").addEventListener("click", () => actOnSelected("delete"));
  $("#pick-all").addEventListener("change", (e) => {
    for (const box of $$("#dead-table tbody tr")) {
      if (e.target.checked) state.selected.add(box.dataset.id); else state.selected.delete(box.dataset.id);
    }
    for (const box of $$("#dead-table tbody input[type=checkbox]")) box.checked = e.target.checked;
    showSelection();
  });
  $("#purge").addEventListener("click", purge);
  $("#pause-queue").addEventListener("click", () => togglePause(null));
  $("#job-cancel").addEventListener("click", () => state.job &&
    act(() => api("DELETE", `jobs/${encodeURIComponent(state.job.id)}`), () => "Requeue stopped"));
  matchMedia("(prefers-color-scheme: light)").addEventListener("change", () => { rateChart.draw(); depthChart.draw(); });
  setInterval(() => { rateChart.draw(); depthChart.draw(); }, 30000);
  setInterval(loadSchedules, 5000);
  loadHistory().then(() => { loadQueues(); loadDead(); loadSchedules(); connect(); });
}

document.addEventListener("DOMContentLoaded", init);
