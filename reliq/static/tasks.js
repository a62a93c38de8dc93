// reliq monitor page, the tasks panel: every pending, scheduled, retrying, running and dead
// task, a page at a time (GET /tasks, by cursor), filtered by type and key, with run now,
// cancel and requeue on each row, and each task's own view (#task=<id>: its record, its
// progress while it runs, its failed runs, and the same actions as its row).
// The view is in the address (#tasks=pending&type=T&key=K), so it can be linked and reloaded.
// Uses the helpers of app.js ($, h, api, toast, confirmDialog, state, ...), loaded before it.
"use strict";

const TASK_VIEWS = ["pending", "scheduled", "retrying", "running", "dead"];
/** The time column of each view: its title and the row's field. */
const TASK_WHEN = {
  pending: ["Queued", (t) => t.queued_at || t.enqueued_at, "ago"],
  scheduled: ["Due", (t) => t.due_at, "in"],
  retrying: ["Retry due", (t) => t.due_at, "in"],
  running: ["Started", (t) => t.started_at, "ago"],
  dead: ["Failed", (t) => t.finished_at, "ago"],
};
const TASK_DETAIL = { pending: "Place", scheduled: "", retrying: "Last error", running: "Worker · progress", dead: "Reason · error" };
/** A page without a type or key filter is refreshed while shown (a few Redis commands; scheduled
 * and retrying at most one bounded scan). A filtered one is a scan of up to 10,000 records:
 * read only when asked (Filter, Next, a tab, an action), so an open page costs Redis nothing. */
const TASKS_REFRESH_MS = 5000;
/** Rows a page (as the dead-letter table). */
const TASKS_PAGE = 20;

const tasks = { view: "pending", type: "", key: "", cursor: "", back: [], page: null, loadedAt: 0, loading: null };

function inFuture(date) {
  const s = Math.max(0, (date.getTime() - Date.now()) / 1000);
  return "in " + fmtSecs(Math.round(s));
}

function tasksHash() {
  const q = new URLSearchParams({ tasks: tasks.view });
  if (tasks.type) q.set("type", tasks.type);
  if (tasks.key) q.set("key", tasks.key);
  if (tasks.cursor) q.set("cursor", tasks.cursor);
  return "#" + q;
}

/** Take the view from the address (#tasks=...); false when the address is about something else. */
function readTasksHash() {
  if (!location.hash.startsWith("#tasks=")) return false;
  const q = new URLSearchParams(location.hash.slice(1));
  const view = q.get("tasks");
  tasks.view = TASK_VIEWS.includes(view) ? view : "pending";
  tasks.type = q.get("type") || "";
  tasks.key = q.get("key") || "";
  if ((q.get("cursor") || "") !== tasks.cursor) { tasks.cursor = q.get("cursor") || ""; tasks.back = []; }
  return true;
}

function showTasksView(view, { type = tasks.type, key = tasks.key } = {}) {
  tasks.view = view; tasks.type = type; tasks.key = key; tasks.cursor = ""; tasks.back = [];
  history.replaceState(null, "", tasksHash());
  loadTasks();
}

async function loadTasks() {
  if (tasks.loading) return tasks.loading;
  tasks.loading = (async () => {
    const q = new URLSearchParams({ state: tasks.view, limit: String(TASKS_PAGE) });
    if (tasks.type) q.set("type", tasks.type);
    if (tasks.key) q.set("key", tasks.key);
    if (tasks.cursor) q.set("cursor", tasks.cursor);
    try {
      const page = await api("GET", "tasks?" + q);
      tasks.page = page; tasks.loadedAt = Date.now();
      renderTasks(page);
    } catch (e) {
      if (e.status === 400) toast(`Cannot list: ${e.message}`, true);
      else if (e.status !== 401) console.warn("task listing failed", e);
    } finally { tasks.loading = null; }
  })();
  return tasks.loading;
}

function progressCell(t) {
  if (t.progress === null || t.progress === undefined) return null;
  const pct = Math.max(0, Math.min(100, 100 * t.progress));
  return h("span", { class: "meter small", title: t.progress_message || "" },
    h("span", {}, h("i", { style: `width:${pct}%` })), `${pct.toFixed(0)}%`);
}

function detailCell(t, page) {
  switch (tasks.view) {
    case "pending": {
      if (t.source.startsWith("held:")) return h("span", { class: "badge", title: "its type is paused" }, "held · paused");
      // Its place in its list; with several priorities in use, claims merge the lists
      // (reliq/priorities.py), so the place is within its priority.
      const src = page.sources.find((s) => s.source === t.source);
      if (!src) return "";
      const place = fmtInt(src.length - t.position);
      const ready = page.sources.filter((s) => s.source === "pending" || s.source.startsWith("pending:"));
      return ready.length > 1 ? `priority ${t.priority} · #${place} of it` : `#${place} in line`;
    }
    case "retrying": return h("div", { class: "err", title: t.last_error || "" }, t.last_error || "");
    case "running": return h("span", {}, h("span", { class: "mono", title: t.worker || "" }, shortWorker(t.worker || "")), " ",
      progressCell(t), t.progress_message ? h("span", { class: "hint" }, " " + t.progress_message) : null);
    case "dead": return h("span", {}, h("span", { class: "badge " + (t.reason || "") }, t.reason || "?"), " ",
      h("span", { class: "err", title: t.last_error || "" }, t.last_error || ""));
    default: return "";
  }
}

function taskButton(label, onclick, danger = false) {
  return h("button", { type: "button", class: "btn small" + (danger ? " danger" : ""), "data-act": label.toLowerCase().replace(" ", "-"),
    onclick: (e) => { e.stopPropagation(); onclick(); } }, label);
}

/** The state of the tasks of each view. */
const VIEW_STATE = { pending: "pending", scheduled: "scheduled", retrying: "retrying", running: "processing", dead: "dead" };
/** States a task can still be cancelled in (a running one: its worker is asked to stop it). */
const CANCELLABLE = new Set(["pending", "scheduled", "retrying", "processing"]);

/** The actions a task in ``state`` offers, on its row and on its own page: run now (it waits
 * for a due time), cancel (it has not ended), requeue (dead: a succeeded or cancelled task
 * ended as asked, and a succeeded record no longer holds its payload: enqueue it anew). */
function taskActions(id, state, { cancelling = false } = {}) {
  const out = [];
  if (state === "scheduled" || state === "retrying") out.push(taskButton("Run now", () => runTaskNow(id)));
  if (CANCELLABLE.has(state) && !cancelling) out.push(taskButton("Cancel", () => cancelTask(id), true));
  if (state === "dead") out.push(taskButton("Requeue", () => requeueTask(id)));
  return out;
}

function renderTasks(page) {
  for (const b of $$("#tasks-tabs button")) b.setAttribute("aria-selected", String(b.dataset.view === tasks.view));
  const [whenTitle, when, dir] = TASK_WHEN[tasks.view];
  $('#tasks-table [data-slot="when"]').textContent = whenTitle;
  $('#tasks-table [data-slot="detail"]').textContent = TASK_DETAIL[tasks.view];
  $("#tasks-type").value = document.activeElement === $("#tasks-type") ? $("#tasks-type").value : tasks.type;
  $("#tasks-key").value = document.activeElement === $("#tasks-key") ? $("#tasks-key").value : tasks.key;
  $("#tasks-clear").hidden = !tasks.type && !tasks.key;
  const rows = page.items.map((t) => {
    const at = when(t);
    // A dead task opens the dead-letter detail (payload, error, edits); any other its own view.
    return h("tr", { "data-id": t.task_id, class: "open",
      onclick: () => { if (tasks.view === "dead") showDetail(t.task_id); else openTask(t.task_id); } },
      h("td", { class: "mono", title: t.task_id }, t.task_id),
      h("td", { class: "mono" }, t.type),
      h("td", { class: "mono wide" }, t.key || "–"),
      h("td", { class: "num" }, t.max_retries === null ? `${t.attempts}` : `${t.attempts} / ${t.max_retries + 1}`),
      h("td", { title: at || "" }, at ? (dir === "in" ? inFuture(new Date(at)) : ago(new Date(at))) : "–"),
      h("td", { class: "wide" }, detailCell(t, page)),
      h("td", { class: "actions" }, ...taskActions(t.task_id, VIEW_STATE[tasks.view])));
  });
  $("#tasks-table tbody").replaceChildren(...rows);
  $("#tasks-table").hidden = rows.length === 0;
  const filtered = tasks.type || tasks.key || tasks.view === "scheduled" || tasks.view === "retrying";
  const empty = $("#tasks-empty");
  empty.hidden = rows.length > 0;
  empty.textContent = page.next_cursor ? `None in the ${fmtInt(page.scanned)} tasks read here: press Next to read on.`
    : tasks.cursor ? "No more." : `No ${tasks.view} task${tasks.type ? ` of type “${tasks.type}”` : ""}${tasks.key ? ` with key “${tasks.key}”` : ""}.`;
  const scan = $("#tasks-scan");
  scan.textContent = filtered && page.total ? `read ${fmtInt(page.scanned)} of ${page.total_exact ? "" : "≤ "}${fmtInt(page.total)} from ${page.cursor || "the start"}` +
    (page.next_cursor ? " · Next reads on" : " · to the end") : "";
  const first = page.items.length ? page.items[0].position : 0;
  $("#tasks-info").textContent = filtered ? `${page.items.length} shown`
    : page.items.length ? `${fmtInt(first + 1)}–${fmtInt(first + page.items.length)} of ${fmtInt(page.total)}` : `0 of ${fmtInt(page.total)}`;
  $("#tasks-next").disabled = !page.next_cursor;
  $("#tasks-prev").disabled = tasks.back.length === 0;
  $("#tasks-first").disabled = !tasks.cursor;
  $("#tasks-hint").textContent = tasks.view === "scheduled" || tasks.view === "retrying" ? "soonest due first" : "newest first";
}

/** Counts on the tabs, from the live reading app.js keeps (no request of their own). */
function renderTaskCounts() {
  const st = state.last && state.last.stats;
  if (!st) return;
  const counts = { pending: st.pending, running: st.processing, dead: st.dead_letter, scheduled: null, retrying: null };
  for (const [view, n] of Object.entries(counts)) $(`#tasks-tabs [data-count="${view}"]`).textContent = n === null ? "" : fmtInt(n);
  $('#tasks-tabs [data-count="scheduled"]').textContent = st.delayed ? `≤ ${fmtInt(st.delayed)}` : "0";
  $('#tasks-tabs [data-count="retrying"]').textContent = st.delayed ? `≤ ${fmtInt(st.delayed)}` : "0";
  const known = new Set((state.last.types || []).map((t) => t.type));
  for (const t of Object.keys((st.paused && st.paused.types) || {})) known.add(t);
  const list = $("#tasks-types");
  if (list.children.length !== known.size) list.replaceChildren(...[...known].sort().map((t) => h("option", { value: t })));
}

/** Run one action, say how it went, and show its effect: the listing, the dead letters, and
 * the task's own page if it is open. */
async function taskAction(fn, done) {
  try {
    toast(done(await fn()));
  } catch (e) {
    toast(`Failed: ${e.message}`, true);
  }
  loadTasks();
  if (typeof loadDead === "function") loadDead();
  await refreshTask();
}

async function runTaskNow(id) {
  await taskAction(() => api("POST", `task/${encodeURIComponent(id)}/run`), () => "Task pending now: the next free worker runs it");
}

async function cancelTask(id) {
  if (!await confirmDialog({ title: "Cancel this task?", body: `Task ${id} will not run (a running one: its worker is asked to stop it).`, ok: "Cancel task", danger: true })) return;
  await taskAction(() => api("POST", `task/${encodeURIComponent(id)}/cancel`),
    (r) => r.status === "cancelling" ? "Its worker was asked to stop it" : `Task cancelled (it was ${r.previous_state})`);
}

async function requeueTask(id) {
  if (!await confirmDialog({ title: "Requeue this task?", body: `Task ${id} goes back to pending with a fresh retry budget.`, ok: "Requeue" })) return;
  await taskAction(() => api("POST", `task/${encodeURIComponent(id)}/requeue`), () => "Task requeued");
}

// -- one task: its record, its progress while it runs, cancel (#task=<id>) ------------------------

const ENDED = new Set(["succeeded", "dead", "cancelled"]);
let taskTimer = null;
/** The id of the task whose page is open ("" when none). */
let shownTask = "";

/** Its runs that did not succeed, oldest first (GET /task's runs: docs/retries.md). */
function renderRuns(runs) {
  const rows = runs.map((r) => h("tr", { "data-attempt": String(r.attempt) },
    h("td", { class: "num" }, String(r.attempt)),
    h("td", { title: r.at || "" }, r.at ? ago(new Date(r.at)) : "–"),
    h("td", { class: "mono", title: r.worker || "" }, r.worker ? shortWorker(r.worker) : "–"),
    h("td", {}, h("span", { class: "badge " + r.outcome }, r.outcome)),
    h("td", {}, r.state),
    h("td", { class: "err wide", title: r.error || "" }, r.error || "")));
  $('#task [data-slot="runs"] tbody').replaceChildren(...rows);
  $('#task [data-slot="runs"]').hidden = rows.length === 0;
  $('#task [data-slot="no-runs"]').hidden = rows.length > 0;
}

function renderTask(t) {
  const dlg = $("#task");
  $('[data-slot="id"]', dlg).textContent = t.task_id;
  $('[data-slot="state"]', dlg).textContent = t.state;
  const bar = $('[data-slot="progress"]', dlg);
  bar.hidden = t.progress === null || t.progress === undefined;
  if (!bar.hidden) {
    $(".bar i", bar).style.width = (100 * t.progress).toFixed(1) + "%";
    $('[data-slot="progress-text"]', bar).textContent = `${(100 * t.progress).toFixed(0)}%` +
      (t.progress_message ? ` · ${t.progress_message}` : "") + (t.progress_at ? ` · ${ago(new Date(t.progress_at))}` : "");
  }
  const asked = t.cancel_requested_at && !ENDED.has(t.state);
  const note = $('[data-slot="cancelling"]', dlg);
  note.hidden = !asked;
  note.textContent = asked ? `Cancel asked for ${ago(new Date(t.cancel_requested_at))}: its worker is stopping it.` : "";
  const kv = [["type", t.type], ["attempts", `${t.attempts}` + (t.max_retries === null ? "" : ` (max retries ${t.max_retries})`)],
    ["failures", t.failures], ["crashes", t.crashes], ["worker", t.worker], ["enqueued", t.enqueued_at],
    ["started", t.started_at], ["finished", t.finished_at], ["reason", t.reason]];
  $('[data-slot="fields"]', dlg).replaceChildren(...kv.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "–")]));
  $('[data-slot="error"]', dlg).textContent = t.last_error || "–";
  $('[data-slot="payload"]', dlg).textContent = t.payload === null ? "–" : JSON.stringify(t.payload, null, 2);
  renderRuns(t.runs || []);
  const acts = $('[data-slot="actions"]', dlg);
  if (acts.dataset.state !== t.state + (asked ? ":asked" : "")) {  // not rebuilt every second: a click stays on its button
    acts.dataset.state = t.state + (asked ? ":asked" : "");
    acts.replaceChildren(...taskActions(t.task_id, t.state, { cancelling: Boolean(asked) }));
  }
}

/** Read the open task again (after an action); its page says "gone" once its record is. */
async function refreshTask() {
  const dlg = $("#task");
  if (!dlg.open || !shownTask) return;
  const id = shownTask;
  try {
    const t = await api("GET", `task/${encodeURIComponent(id)}`);
    if (id === shownTask) renderTask(t);
  } catch (e) {
    if (e.status === 404) { clearInterval(taskTimer); $('[data-slot="state"]', dlg).textContent = "gone"; }
  }
}

/** Open one task; while it has not ended, read it again every second (its progress moves). */
async function showTask(id) {
  let t;
  try { t = await api("GET", `task/${encodeURIComponent(id)}`); } catch (e) { toast(`Cannot open ${id}: ${e.message}`, true); return; }
  const dlg = $("#task");
  shownTask = id;
  $('[data-slot="actions"]', dlg).dataset.state = "";
  renderTask(t);
  clearInterval(taskTimer);
  taskTimer = setInterval(() => { if (dlg.open) refreshTask(); else clearInterval(taskTimer); }, 1000);
  if (!dlg.open) dlg.showModal();
}

/** The view closed: the address no longer names its task. Chromium may fire the close event
 * late, once the view is open again (another task, linked meanwhile): that open owns them. */
function taskClosed() {
  if ($("#task").open) return;
  const id = shownTask;
  shownTask = "";
  clearInterval(taskTimer);
  if (id && linkedTask() === id) history.replaceState(null, "", tasksHash());
}

/** Open a task's own view; the address names it (#task=<id>), so it can be linked. */
function openTask(id) {
  if (!id) return;
  history.replaceState(null, "", "#task=" + encodeURIComponent(id));
  showTask(id);
}

/** The task the address names (#task=<id>), if any. */
function linkedTask() {
  const m = location.hash.match(/^#task=(.+)$/);
  return m ? decodeURIComponent(m[1]) : "";
}

function initTasks() {
  $("#task").addEventListener("close", taskClosed);
  for (const b of $$("#tasks-tabs button")) b.addEventListener("click", () => showTasksView(b.dataset.view));
  $("#tasks-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    showTasksView(tasks.view, { type: $("#tasks-type").value.trim(), key: $("#tasks-key").value.trim() });
  });
  $("#tasks-clear").addEventListener("click", () => showTasksView(tasks.view, { type: "", key: "" }));
  $("#tasks-next").addEventListener("click", () => {
    if (!tasks.page || !tasks.page.next_cursor) return;
    tasks.back.push(tasks.cursor); tasks.cursor = tasks.page.next_cursor;
    history.replaceState(null, "", tasksHash()); loadTasks();
  });
  $("#tasks-prev").addEventListener("click", () => {
    if (!tasks.back.length) return;
    tasks.cursor = tasks.back.pop(); history.replaceState(null, "", tasksHash()); loadTasks();
  });
  $("#tasks-first").addEventListener("click", () => { tasks.cursor = ""; tasks.back = []; history.replaceState(null, "", tasksHash()); loadTasks(); });
  $("#tasks-open").addEventListener("click", () => openTask($("#tasks-find").value.trim()));
  $("#tasks-find").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); openTask(e.target.value.trim()); } });
  window.addEventListener("hashchange", () => { if (readTasksHash()) loadTasks(); else if (linkedTask()) showTask(linkedTask()); });
  if (readTasksHash()) $("#tasks-panel").scrollIntoView();
  if (linkedTask()) showTask(linkedTask());
  loadTasks();
  setInterval(() => {
    renderTaskCounts();
    if (!tasks.type && !tasks.key && !document.hidden && Date.now() - tasks.loadedAt > TASKS_REFRESH_MS) loadTasks();
  }, 1000);
}

document.addEventListener("DOMContentLoaded", initTasks);
