// ferry's dashboard: polls ferry's API twice a second (same origin, session cookie) and redraws what changed.
// No library, no other origin; charts are SVG built here.
"use strict";

const POLL_MS = 500;
const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2f6fd0", "#1f8a4c", "#b7791f", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d"];
const state = { q: "", offset: 0, limit: 50, selected: decodeURIComponent(location.hash.slice(1)) || null,
                seen: {}, page: null, every: 5 };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function put(id, ...children) {
  $(id).replaceChildren(...children.filter((c) => c !== null && c !== undefined));
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) if (value !== null && value !== undefined) node.setAttribute(key, value);
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { text: h })))),
    el("tbody", {}, ...rows));
}

function ago(unix) {
  if (unix === null || unix === undefined) return "-";
  const s = Math.max(0, Date.now() / 1000 - unix);
  if (s < 90) return `${Math.round(s)}s ago`;
  if (s < 5400) return `${Math.round(s / 60)}m ago`;
  if (s < 172800) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

function clock(unix) { return new Date(unix * 1000).toLocaleTimeString(); }

function fmt(value, digits = 1) {
  return value === null || value === undefined ? "-" : Number(value).toFixed(digits);
}

// Redraw `key` only when its data changed (polling sends the same JSON most of the time).
function changed(key, value) {
  const text = JSON.stringify(value);
  if (state.seen[key] === text) return false;
  state.seen[key] = text;
  return true;
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) throw new Error("logged out: run `ferry dashboard` for a new login link");
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

// -- the list of services ----------------------------------------------------------------------------------

function splitText(traffic) {
  return traffic.filter((t) => t.percent !== undefined).map((t) => `${t.revision} ${t.percent}%`).join(" · ")
    + traffic.filter((t) => t.tag).map((t) => ` · @${t.tag}`).join("");
}

function renderList(page) {
  state.page = page;
  const first = page.matched ? page.offset + 1 : 0;
  $("count").textContent = `${page.matched} of ${page.total} services` + (page.q ? ` match “${page.q}”` : "");
  $("pageinfo").textContent = `${first}–${page.offset + page.services.length}`;
  $("prev").disabled = page.offset === 0;
  $("next").disabled = page.offset + page.limit >= page.matched;
  if (!changed("list", [page.services, state.selected])) return;
  put("services", ...page.services.map((s) => {
    const health = s.ready === "True" ? "ok" : s.ready === "False" ? "bad" : "warn";
    const item = el("li", { "data-service": s.name, class: s.name === state.selected ? "selected" : null },
      el("div", { class: "name" }, el("span", { class: `dot ${health}` }), s.name,
        s.rollout ? el("span", { class: "muted", text: `  rollout ${s.rollout.phase}` }) : null),
      el("div", { class: "split", text: splitText(s.traffic) || (s.waiting ? `waiting: ${s.waiting}` : "-") }));
    item.addEventListener("click", () => select(s.name));
    return item;
  }));
}

function select(name) {
  state.selected = name;
  history.replaceState(null, "", `#${encodeURIComponent(name)}`);
  state.seen = {};
  tick();
}

// -- one service ---------------------------------------------------------------------------------------------

function renderTraffic(service) {
  const main = service.traffic.filter((t) => t.percent !== undefined);
  const bar = svg("svg", { class: "split-bar", viewBox: "0 0 100 6", preserveAspectRatio: "none" });
  let x = 0;
  main.forEach((t, i) => {
    if (t.percent <= 0) return;
    bar.append(svg("rect", { x, y: 0, width: t.percent, height: 6, fill: COLORS[i % COLORS.length] },
      svg("title", {}, `${t.revision} ${t.percent}%`)));
    x += t.percent;
  });
  const rows = service.traffic.map((t) => el("tr", { "data-revision": t.revision, "data-percent": t.percent ?? "",
                                                    "data-tag": t.tag ?? "" },
    el("td", { text: t.revision }), el("td", { class: "percent", text: t.percent !== undefined ? `${t.percent}%` : "" }),
    el("td", { text: t.tag ? `tag ${t.tag}` : "" }), el("td", { class: "muted", text: t.url || "" })));
  const owner = service.split_owner ? `split owned by ${service.split_owner}` : "";
  const waiting = service.waiting ? el("div", { class: "warn", text: `waiting: ${service.waiting}` }) : null;
  put("traffic", bar, table(["revision", "percent", "tag", "URL"], rows),
    el("div", { class: "muted", text: owner }), waiting);
  document.body.dataset.trafficShownAt = String(Date.now());  // benches time a traffic change to here
}

function renderRevisions(revisions) {
  const rows = revisions.slice(0, 30).map((r) => {
    const a = r.autoscaling || {};
    const health = r.state === "ready" || r.state === "at zero" ? "ok" : r.state === "stopped" ? "" : "warn";
    return el("tr", { "data-revision": r.name },
      el("td", {}, el("span", { class: `dot ${health}` }), r.name),
      el("td", { text: r.state }),
      el("td", { text: `${r.ready}/${r.desired}` }),
      el("td", { text: r.traffic ? `${r.traffic}%` : "" }),
      el("td", { text: (r.tags || []).join(", ") }),
      el("td", { text: ago(r.created_at) }),
      el("td", { text: r.rollout ? r.rollout.result : "" }),
      el("td", { text: a.panic_mode ? "panic" : a.tracked === false ? "" : a.metric ? "stable" : "" }),
      el("td", { text: a.activator_in_path ? "in path" : "" }));
  });
  put("revisions", table(["revision", "state", "ready/desired", "traffic", "tags", "created",
    "rollout", "mode", "activator"], rows));
}

// A line chart of [[t, value], ...] over [from, to]; missing samples count as `gap` (0 for rates, none otherwise).
function lineChart(points, from, to, unit, gap) {
  const W = 300, H = 48, top = 4;
  const values = points.map((p) => p[1]).filter((v) => v !== null);
  const max = Math.max(1e-9, ...values) * 1.15;
  const x = (t) => ((t - from) / (to - from)) * W;
  const y = (v) => H - 2 - (v / max) * (H - top - 2);
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  let path = "";
  let last = null;
  for (const [t, v] of points) {
    if (v === null) { last = null; continue; }
    if (gap === 0 && last !== null && t - last > 1.5 * state.every) path += `L${x(last + state.every)},${y(0)}L${x(t - state.every)},${y(0)}`;
    path += `${path && (last !== null || gap === 0) ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
    last = t;
  }
  const drawn = points.filter((p) => p[1] !== null);
  if (drawn.length === 1) {  // one sample: a stroke over its interval, so that it shows
    const [t, v] = drawn[0];
    path = `M${x(t - state.every).toFixed(1)},${y(v).toFixed(1)}L${x(t).toFixed(1)},${y(v).toFixed(1)}`;
  }
  if (path) chart.append(svg("path", { class: "line", d: path }));
  const now = values.length ? values[values.length - 1] : null;
  const peak = values.length ? Math.max(...values) : null;
  return el("div", { class: "chart-box" }, el("div", { class: "caption", text: `max ${fmt(peak, 2)} · now ${fmt(now, 2)} ${unit}` }), chart);
}

function renderCharts(history) {
  const to = Date.now() / 1000, from = to - history.window_s;
  state.every = history.every_s;
  const names = Object.keys(history.revisions);
  if (!names.length) {
    put("charts", el("div", { class: "muted", text: "no requests in the last 15 minutes" }));
    return;
  }
  const cells = [];
  for (const name of names) {
    const { tag, points } = history.revisions[name];
    cells.push(el("div", { "data-revision": name }, el("strong", { text: name }), tag ? el("div", { class: "muted", text: `tag ${tag}` }) : null),
      el("div", {}, lineChart(points.map((p) => [p[0], p[1]]), from, to, "req/s", 0)),
      el("div", {}, lineChart(points.map((p) => [p[0], p[2]]), from, to, "% 5xx", null)),
      el("div", {}, lineChart(points.map((p) => [p[0], p[3]]), from, to, "ms p99", null)));
  }
  put("charts", el("div", { class: "charts" }, el("div"), el("div", { class: "muted", text: "requests/s" }),
    el("div", { class: "muted", text: "5xx %" }), el("div", { class: "muted", text: "p99 ms" }), ...cells));
}

// Instances over time: the autoscaler's scale changes as a step line ending at the desired count now.
function renderScaling(revisions) {
  const running = revisions.filter((r) => r.autoscaling && r.autoscaling.tracked !== false);
  if (!running.length) {
    put("scaling", el("div", { class: "muted", text: "no revision of this service is autoscaled by ferry now" }));
    return;
  }
  const to = Date.now() / 1000, from = to - 900;
  const parts = [];
  for (const r of running) {
    const a = r.autoscaling;
    const events = a.scale_events || [];
    const steps = [];
    let level = events.length ? events[0].from : a.desired;
    steps.push([from, level ?? 0]);
    for (const e of events) { steps.push([Math.max(from, e.at), level ?? 0]); steps.push([Math.max(from, e.at), e.to]); level = e.to; }
    steps.push([to, a.desired ?? level ?? 0]);
    const observed = a.observed || {};
    parts.push(el("div", { "data-revision": r.name },
      el("strong", { text: r.name }),
      el("span", { class: "muted", text: `  desired ${a.desired}, ready ${a.ready}, ${a.metric} target ${a.target_per_instance}/instance, `
        + `now ${fmt(observed.concurrency, 2)} conc / ${fmt(observed.rps, 2)} rps, stable ${fmt(observed.stable, 2)}, panic ${fmt(observed.panic, 2)}`
        + (a.panic_mode ? " — PANIC" : "") + (a.activator_in_path ? ", activator in path" : "") }),
      lineChart(steps, from, to, "instances", null),
      a.last_decision ? el("div", { class: "muted", text: `last decision ${a.last_decision.seconds_ago}s ago: ${a.last_decision.reason}` }) : null,
      events.length ? table(["time", "from", "to", "why"], events.slice().reverse().map((e) =>
        el("tr", {}, el("td", { text: clock(e.at) }), el("td", { text: e.from }), el("td", { text: e.to }), el("td", { text: e.reason })))) : null));
  }
  put("scaling", ...parts);
}

function renderRollout(rollout) {
  if (!rollout || !rollout.phase) {
    put("rollout", el("div", { class: "muted", text: "no rollout (a `rollout:` block starts one on a template change)" }));
    return;
  }
  const phaseClass = ["rolled-back", "aborted"].includes(rollout.phase) ? "bad" : rollout.phase === "promoted" ? "ok" : "warn";
  const head = el("div", {}, el("strong", { class: phaseClass, text: rollout.phase }),
    ` ${rollout.strategy} ${rollout.stable} → ${rollout.candidate}, step ${rollout.step}, ${rollout.weight}% to the candidate`,
    rollout.reason ? el("div", { class: "muted", text: rollout.reason }) : null);
  const rows = (rollout.history || []).slice().reverse().map((h) => {
    const v = h.verdict || {};
    const verdictClass = v.outcome === "fail" ? "bad" : v.outcome === "pass" ? "ok" : "muted";
    return el("tr", { "data-event": h.event }, el("td", { text: clock(h.at) }), el("td", { text: h.event }),
      el("td", { text: h.step }), el("td", { text: `${h.weight}%` }),
      el("td", { class: verdictClass, text: v.outcome || "" }), el("td", { text: v.requests ?? "" }),
      el("td", { text: v.success_rate !== undefined && v.success_rate !== null ? `${fmt(v.success_rate, 2)}%` : "" }),
      el("td", { text: v.latency_p99_ms !== undefined && v.latency_p99_ms !== null ? `${fmt(v.latency_p99_ms)} ms` : "" }),
      el("td", { text: v.message || h.note || "" }));
  });
  put("rollout", head, table(["time", "event", "step", "weight", "verdict", "requests", "success", "p99", "why"], rows));
}

function renderDetail(detail) {
  if (!detail || detail.missing) {
    $("service-name").textContent = state.selected ? `${state.selected}: not found` : "no service selected";
    for (const id of ["service-meta", "traffic", "revisions", "charts", "scaling", "rollout"]) $(id).replaceChildren();
    return;
  }
  const s = detail.service;
  $("service-name").textContent = detail.name;
  put("service-meta", el("a", { href: s.url, text: s.url }),
    ` · latest created ${s.latest_created} · latest ready ${s.latest_ready ?? "-"} · ${s.visibility}`);
  if (changed("traffic", s.traffic.concat([s.waiting, s.split_owner]))) renderTraffic(s);
  if (changed("revisions", detail.revisions)) { renderRevisions(detail.revisions); renderScaling(detail.revisions); }
  if (changed("history", detail.traffic_history)) renderCharts(detail.traffic_history);
  if (changed("rollout", s.rollout)) renderRollout(s.rollout);
}

// -- gateways and the header -------------------------------------------------------------------------------

function renderOverview(o) {
  $("summary").textContent = `${o.services} services · ${o.gateways_in_sync}/${o.gateways_connected} gateways in sync`;
  const c = o.config || {};
  $("config").textContent = c.last_error ? `file error: ${c.last_error.split("\n")[0]}` : c.file ? `${c.file} applied ${ago(c.last_applied)}` : "";
  $("config").className = c.last_error ? "bad" : "muted";
  if (!changed("gateways", o.gateways)) return;
  const rows = o.gateways.map((g) => el("tr", { "data-node": g.node },
    el("td", {}, el("span", { class: `dot ${g.connected ? (g.in_sync ? "ok" : "warn") : "bad"}` }), g.node),
    el("td", { text: g.group || "-" }), el("td", { text: g.protocol }),
    el("td", { text: g.connected ? "yes" : "no" }), el("td", { text: g.in_sync ? "yes" : "no" }),
    el("td", { class: "muted", text: Object.entries(g.acked || {}).map(([t, v]) => `${t} ${String(v).slice(0, 8)}`).join(" ") }),
    el("td", { class: g.last_nack ? "bad" : "", text: g.last_nack ? `${g.last_nack.type}: ${g.last_nack.message}` : "" }),
    el("td", { class: "muted", text: g.via ? `via ${g.via}` : "" })));
  put("gateways", rows.length ? table(["node", "group", "xDS", "connected", "in sync", "acked", "last NACK", ""], rows)
    : el("div", { class: "muted", text: "no gateway connected" }));
}

// -- the loop ----------------------------------------------------------------------------------------------

let timer = null;
let running = false;

async function tick() {
  clearTimeout(timer);
  if (running) { timer = setTimeout(tick, 50); return; }
  running = true;
  const params = new URLSearchParams({ q: state.q, offset: state.offset, limit: state.limit });
  try {
    const [overview, page] = await Promise.all([getJSON("/ui/api/overview"), getJSON(`/ui/api/services?${params}`)]);
    if (!state.selected && page.services.length) state.selected = page.services[0].name;
    renderOverview(overview);
    renderList(page);
    const detail = state.selected
      ? await getJSON(`/ui/api/services/${encodeURIComponent(state.selected)}`).catch(() => ({ missing: true }))
      : null;
    renderDetail(detail);
    $("live").textContent = `live · ${new Date().toLocaleTimeString()}`;
    $("live").className = "live";
    document.body.dataset.updated = String(Date.now());  // when the page last showed fresh data (tests, benches)
  } catch (err) {
    $("live").textContent = err.message;
    $("live").className = "live error";
  } finally {
    running = false;
    timer = setTimeout(tick, POLL_MS);
  }
}

function start() {
  let typing = null;
  $("search").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { state.q = $("search").value; state.offset = 0; tick(); }, 150);
  });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); tick(); });
  $("next").addEventListener("click", () => { state.offset += state.limit; tick(); });
  window.addEventListener("hashchange", () => select(decodeURIComponent(location.hash.slice(1))));
  tick();
}

start();
