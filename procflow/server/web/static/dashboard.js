// procflow dashboard: job list, then one job's live state from its server-sent events.
// Everything shown comes from the API as data and goes into the page with textContent or as SVG
// attributes, never through innerHTML: job names, operator names and log lines are untrusted.
"use strict";

const FINAL = new Set(["succeeded", "failed", "stopped", "lost"]);
const SVG = "http://www.w3.org/2000/svg";
const LOG_LINES = 2000;

const state = { jobId: null, events: null, job: null, logName: null, logOffset: 0, logTimer: null, lastGraph: "",
                unreachable: false };

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function fmtNum(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(2) + "G";
  if (a >= 1e6) return (n / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return (n / 1e3).toFixed(1) + "k";
  if (Number.isInteger(n)) return String(n);
  return n.toFixed(a >= 100 ? 0 : 1);
}

function fmtPct(p) { return p === null || p === undefined ? "–" : p.toFixed(0) + "%"; }

function fmtDuration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + sec + "s";
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin", cache: "no-store" }, options || {}));
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response.json();
}

function setConnection(text) { $("connection").textContent = text; }

// -- job list ----------------------------------------------------------------------------------------

async function refreshJobs() {
  let jobs;
  try {
    jobs = await api("/api/jobs");
    if (state.unreachable) setConnection("connected");
    state.unreachable = false;
  } catch (e) {
    state.unreachable = true;
    setConnection("server unreachable: " + e.message);
    return;
  }
  const list = $("job-list");
  list.replaceChildren();
  $("no-jobs").hidden = jobs.length > 0;
  for (const job of jobs) {
    const button = el("button", job.id === state.jobId ? "selected" : "");
    button.dataset.jobId = job.id;
    button.append(el("span", "job-name", job.name || job.target), " ");
    button.append(el("span", "status " + job.status, job.status));
    button.append(el("span", "job-id", job.id));
    button.addEventListener("click", () => { location.hash = "job=" + encodeURIComponent(job.id); });
    const item = el("li");
    item.append(button);
    list.append(item);
  }
  if (!state.jobId && jobs.length && !location.hash) {
    const pick = jobs.find((j) => j.status === "running") || jobs[0];
    selectJob(pick.id);
  }
}

// -- one job -----------------------------------------------------------------------------------------

function selectJob(jobId) {
  if (state.events) { state.events.close(); state.events = null; }
  if (state.logTimer) { clearTimeout(state.logTimer); state.logTimer = null; }
  state.jobId = jobId;
  state.job = null;
  state.lastGraph = "";
  state.logName = null;
  $("job").hidden = !jobId;
  $("empty").hidden = !!jobId;
  $("log-tail").textContent = "";
  $("log-select").replaceChildren();
  for (const b of document.querySelectorAll("#job-list button")) {
    b.classList.toggle("selected", b.dataset.jobId === jobId);
  }
  if (!jobId) return;
  const source = new EventSource("/api/jobs/" + encodeURIComponent(jobId) + "/events");
  state.events = source;
  source.addEventListener("job", (event) => {
    if (state.jobId !== jobId) return;
    setConnection("live");
    render(JSON.parse(event.data));
  });
  source.addEventListener("end", () => {
    source.close();
    if (state.events === source) state.events = null;
    setConnection("job finished");
    refreshJobs();
  });
  source.onerror = () => {   // the browser retries by itself, except after an answer that is not a stream
    if (state.events !== source) return;
    setConnection(source.readyState === EventSource.CLOSED ? "cannot follow job " + jobId : "reconnecting…");
  };
  loadLogs(jobId);
}

function render(job) {
  state.job = job;
  const live = job.live || null;
  $("job-name").textContent = job.name || job.target;
  const status = $("job-status");
  status.textContent = job.status;
  status.className = "status " + job.status;
  $("job-elapsed").textContent = live ? fmtDuration(live.elapsed) : "";
  $("job-meta").textContent = [job.target, "job " + job.id,
    job.exit_code !== null && job.exit_code !== undefined ? "exit code " + job.exit_code : ""].filter(Boolean).join(" · ");
  const stop = $("stop");
  stop.disabled = FINAL.has(job.status) || stop.dataset.pending === job.id;
  renderProgress(live);
  renderThroughput(live);
  renderGraph(live);
  renderOperators(live);
  renderCheckpoints(live);
  renderError(job, live);
}

function renderProgress(live) {
  const p = live && live.progress;
  const fill = $("progress-fill");
  if (!p) {
    fill.style.width = "0";
    $("progress-text").textContent = live ? "no progress estimate for this source" : "waiting for the job to start";
    $("eta").textContent = "";
    return;
  }
  const fraction = p.fraction === null || p.fraction === undefined ? null : Math.min(1, Math.max(0, p.fraction));
  fill.style.width = fraction === null ? "0" : (fraction * 100).toFixed(1) + "%";
  const total = p.total === null || p.total === undefined ? "" : " / " + fmtNum(p.total);
  const pct = fraction === null ? "" : " (" + (fraction * 100).toFixed(1) + "%)";
  $("progress-text").textContent = fmtNum(p.done) + total + " " + (p.unit || "") + pct;
  $("eta").textContent = p.eta_s === null || p.eta_s === undefined ? "" : "ETA " + fmtDuration(p.eta_s);
}

function renderThroughput(live) {
  $("throughput").textContent = live ? fmtNum(live.throughput) : "–";
  const plot = $("plot");
  plot.replaceChildren();
  const history = (live && live.history) || [];
  if (history.length < 2) { $("plot-ymax").textContent = ""; $("plot-xmax").textContent = ""; return; }
  const t0 = history[0][0], t1 = history[history.length - 1][0];
  const ymax = Math.max(1, ...history.map((h) => h[2] || 0)) * 1.1;
  const x = (t) => ((t - t0) / Math.max(1e-9, t1 - t0)) * 600;
  const y = (v) => 140 - ((v || 0) / ymax) * 136;
  const points = history.map((h) => x(h[0]).toFixed(1) + "," + y(h[2]).toFixed(1));
  plot.append(svg("polygon", { points: "0,140 " + points.join(" ") + " 600,140" }));
  plot.append(svg("polyline", { points: points.join(" ") }));
  $("plot-ymax").textContent = "max " + fmtNum(ymax / 1.1) + " records/s";
  $("plot-xmax").textContent = fmtDuration(t0) + " → " + fmtDuration(t1);
}

// The graph is laid out by chain: a chain (operators joined one to one) runs as one task per instance.
// Chains are placed in columns by their longest distance from a source; edges between chains are drawn
// as SVG lines over the boxes, labelled with their routing kind.
function chainsOf(graph) {
  const chains = new Map();
  for (const node of graph.nodes || []) {
    if (!chains.has(node.chain)) chains.set(node.chain, { id: node.chain, nodes: [], parallelism: node.parallelism });
    const chain = chains.get(node.chain);
    chain.nodes.push(node);
    chain.parallelism = Math.max(chain.parallelism, node.parallelism);
  }
  const chainOf = new Map((graph.nodes || []).map((n) => [n.name, n.chain]));
  const links = [];
  for (const edge of graph.edges || []) {
    const a = chainOf.get(edge.from), b = chainOf.get(edge.to);
    if (a !== undefined && b !== undefined && a !== b) links.push({ from: a, to: b, kind: edge.kind });
  }
  const layer = new Map([...chains.keys()].map((c) => [c, 0]));
  for (let pass = 0; pass < chains.size; pass++) {
    for (const l of links) layer.set(l.to, Math.max(layer.get(l.to), layer.get(l.from) + 1));
  }
  return { chains, links, layer };
}

function renderGraph(live) {
  const graph = live && live.graph;
  const operators = new Map(((live && live.operators) || []).map((o) => [o.name, o]));
  const key = JSON.stringify(graph || null);
  if (key !== state.lastGraph) {
    state.lastGraph = key;
    buildGraph(graph);
  }
  for (const box of document.querySelectorAll("#graph .op")) {
    const op = operators.get(box.dataset.op);
    const bottleneck = live && live.bottleneck === box.dataset.op;
    box.classList.toggle("bottleneck", !!bottleneck);
    const stats = box.querySelector(".stats");
    stats.textContent = op ? fmtNum(op.rate) + " rec/s · busy " + fmtPct(op.busy_pct) : "";
    const tag = box.querySelector(".tag");
    if (bottleneck && !tag) box.querySelector(".name").append(el("span", "tag", "bottleneck"));
    if (!bottleneck && tag) tag.remove();
  }
  drawEdges();
}

function buildGraph(graph) {
  const root = $("graph");
  root.replaceChildren();
  if (!graph || !(graph.nodes || []).length) { root.append(el("p", "muted", "no graph yet")); return; }
  const { chains, links, layer } = chainsOf(graph);
  const columns = [];
  for (const chain of chains.values()) {
    const col = layer.get(chain.id);
    (columns[col] = columns[col] || []).push(chain);
  }
  for (const column of columns) {
    const layerBox = el("div", "layer");
    for (const chain of column || []) {
      const box = el("div", chain.parallelism > 1 ? "chain" : "chain single");
      box.dataset.chain = chain.id;
      const ops = el("div", "ops");
      chain.nodes.forEach((node, i) => {
        if (i) ops.append(el("span", "link", "→"));
        const op = el("div", "op");
        op.dataset.op = node.name;
        op.append(el("div", "name", node.name), el("div", "stats", ""));
        ops.append(op);
      });
      box.append(ops);
      const instances = el("div", "instances");
      instances.append(el("span", "muted", "×" + chain.parallelism + " "));
      const shown = Math.min(chain.parallelism, 16);
      for (let i = 0; i < shown; i++) instances.append(el("span", "instance", i));
      if (chain.parallelism > shown) instances.append(el("span", "muted", "…"));
      box.append(instances);
      layerBox.append(box);
    }
    root.append(layerBox);
  }
  root.dataset.links = JSON.stringify(links);
}

function drawEdges() {
  const root = $("graph"), edges = $("graph-edges");
  edges.replaceChildren();
  const links = JSON.parse(root.dataset.links || "[]");
  const wrap = $("graph-wrap").getBoundingClientRect();
  edges.setAttribute("width", String(root.scrollWidth));
  edges.setAttribute("height", String(root.scrollHeight));
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" });
  marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#6a7480" }));
  defs.append(marker);
  edges.append(defs);
  const seen = new Set();
  for (const l of links) {
    const tag = l.from + ">" + l.to + ">" + l.kind;
    if (seen.has(tag)) continue;
    seen.add(tag);
    const a = root.querySelector('.chain[data-chain="' + CSS.escape(String(l.from)) + '"]');
    const b = root.querySelector('.chain[data-chain="' + CSS.escape(String(l.to)) + '"]');
    if (!a || !b) continue;
    const ra = a.getBoundingClientRect(), rb = b.getBoundingClientRect();
    const x1 = ra.right - wrap.left, y1 = ra.top + ra.height / 2 - wrap.top;
    const x2 = rb.left - wrap.left - 2, y2 = rb.top + rb.height / 2 - wrap.top;
    edges.append(svg("line", { x1, y1, x2, y2 }));
    const label = svg("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 5, "text-anchor": "middle" });
    label.textContent = l.kind;
    edges.append(label);
  }
}

function renderOperators(live) {
  const body = $("operators").querySelector("tbody");
  body.replaceChildren();
  for (const op of (live && live.operators) || []) {
    const row = el("tr", live.bottleneck === op.name ? "bottleneck" : "");
    row.dataset.op = op.name;
    const name = el("td", "", op.name);
    if (live.bottleneck === op.name) name.append(el("span", "tag", "bottleneck"));
    const fill = el("td");
    if (op.fill_pct !== null && op.fill_pct !== undefined) {
      const bar = el("span", "fillbar"), inner = el("span");
      inner.style.width = Math.min(100, Math.max(0, op.fill_pct)).toFixed(0) + "%";
      bar.append(inner);
      fill.append(bar, fmtPct(op.fill_pct));
    } else {
      fill.textContent = "–";
    }
    row.append(name, el("td", "", op.tasks), el("td", "", fmtNum(op.records_in)), el("td", "", fmtNum(op.records_out)),
               el("td", "rate", fmtNum(op.rate)), el("td", "", fmtPct(op.busy_pct)), el("td", "", fmtPct(op.cpu_pct)),
               fill, el("td", "", op.errors));
    body.append(row);
  }
}

function renderCheckpoints(live) {
  const list = $("checkpoints");
  list.replaceChildren();
  const checkpoints = (live && live.checkpoints) || [];
  if (!checkpoints.length) { list.append(el("li", "muted", "none (this job takes no checkpoints)")); return; }
  for (const c of checkpoints) {
    const text = (c && typeof c === "object" && "checkpoint" in c)
      ? `#${c.checkpoint}: ${Number(c.duration_s).toFixed(2)} s, ${Number(c.bytes).toLocaleString()} bytes of state`
      : JSON.stringify(c);
    list.append(el("li", "", text));
  }
}

function renderError(job, live) {
  const error = live && live.error;
  const card = $("error-card");
  if (!error && !job.error) { card.hidden = true; return; }
  card.hidden = false;
  $("error-where").textContent = error ? (error.task ? "in " + error.task + ": " : "") + error.message : job.error;
  $("error-traceback").textContent = error ? error.traceback : "";
}

// -- logs --------------------------------------------------------------------------------------------

async function loadLogs(jobId) {
  let names = [];
  try { names = (await api("/api/jobs/" + encodeURIComponent(jobId) + "/logs")).logs; } catch (e) { return; }
  if (state.jobId !== jobId) return;
  const select = $("log-select");
  const current = state.logName;
  const listed = [...select.options].map((o) => o.value);
  if (listed.length === names.length && listed.every((n, i) => n === names[i])) return;   // an open list stays open
  select.replaceChildren();
  for (const name of names) {
    const option = el("option", "", name);
    option.value = name;
    select.append(option);
  }
  if (current && names.includes(current)) select.value = current;
  else if (names.length) {
    const bottleneck = state.job && state.job.live && state.job.live.bottleneck;
    select.value = (bottleneck && names.find((n) => n.endsWith("/" + bottleneck + "_0_info.log")))
      || names.find((n) => n.endsWith("Dispatcher.log")) || names.find((n) => n.endsWith("_info.log")) || names[0];
    showLog(jobId, select.value);
  }
}

function showLog(jobId, name) {
  if (state.logTimer) { clearTimeout(state.logTimer); state.logTimer = null; }
  state.logName = name;
  state.logOffset = 0;
  $("log-tail").textContent = "";
  tailLog(jobId, name);
}

async function tailLog(jobId, name) {
  const pre = $("log-tail");
  for (let chunk = 0; chunk < 64; chunk++) {   // catch up on a long log, 64 KiB a request
    let reply;
    try {
      reply = await api("/api/jobs/" + encodeURIComponent(jobId) + "/logs/" + name.split("/").map(encodeURIComponent).join("/")
                        + "?offset=" + state.logOffset);
    } catch (e) { break; }
    if (state.jobId !== jobId || state.logName !== name) return;
    state.logOffset = reply.next_offset;
    if (!reply.text) break;
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    const lines = (pre.textContent + reply.text).split("\n");
    pre.textContent = lines.slice(-LOG_LINES).join("\n");
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }
  const running = !state.job || !FINAL.has(state.job.status);
  if (running && state.jobId === jobId && state.logName === name) {
    state.logTimer = setTimeout(() => { tailLog(jobId, name); loadLogs(jobId); }, 1000);
  }
}

// -- wiring ------------------------------------------------------------------------------------------

async function stopJob() {
  const jobId = state.jobId;
  if (!jobId) return;
  const stop = $("stop");
  stop.disabled = true;
  stop.dataset.pending = jobId;
  try {
    const record = await api("/api/jobs/" + encodeURIComponent(jobId) + "/stop", { method: "POST" });
    setConnection("stop requested (" + record.status + ")");
  } catch (e) {
    setConnection("stop failed: " + e.message);
    delete stop.dataset.pending;
    stop.disabled = false;
  }
  refreshJobs();
}

function jobFromHash() {
  const match = /^#job=(.+)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

window.addEventListener("hashchange", () => selectJob(jobFromHash()));
window.addEventListener("resize", drawEdges);
document.addEventListener("DOMContentLoaded", () => {
  $("stop").addEventListener("click", stopJob);
  $("log-select").addEventListener("change", (e) => showLog(state.jobId, e.target.value));
  const fromHash = jobFromHash();
  if (fromHash) selectJob(fromHash);
  refreshJobs();
  setInterval(refreshJobs, 2000);
});
