// tokenfactory dashboard: polls dashboard/state and draws it with plain DOM and SVG.
// No library: the page needs a table, one scatter plot, one stacked bar and three
// sparklines, and must work offline.
"use strict";

const POLL_MS = 1500;
const HISTORY = 120; // polls kept for the sparklines
const SVG_NS = "http://www.w3.org/2000/svg";
const TIER_COLORS = ["#8b96a1", "#58a6ff", "#3fb950", "#d29922", "#db61a2", "#a371f7"];
const history = { tokens: [], revenue: [], waiting: [] };

function $(id) { return document.getElementById(id); }

function fmt(x, digits = 1) {
  if (x === null || x === undefined || Number.isNaN(x)) return "-";
  if (Math.abs(x) >= 1000) return Math.round(x).toLocaleString("en-US");
  if (x !== 0 && Math.abs(x) < 0.1) return x.toPrecision(2); // a promise of 0.01 tokens/s
  return x.toFixed(digits);
}

function pct(x) { return x === null || x === undefined ? "-" : (100 * x).toFixed(1) + "%"; }

function seconds(x) {
  if (x === null || x === undefined) return "-";
  return x < 1 ? (1000 * x).toFixed(0) + " ms" : x.toFixed(2) + " s";
}

// Money arrives in integer micro-dollars; shown in dollars with enough digits to move.
function usd(micro) {
  if (micro === null || micro === undefined) return "-";
  const d = micro / 1e6;
  if (d === 0) return "$0";
  if (Math.abs(d) >= 100) return "$" + d.toFixed(0);
  if (Math.abs(d) >= 1) return "$" + d.toFixed(2);
  return "$" + d.toPrecision(3);
}

function svg(tag, attrs, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function attainmentClass(a) {
  if (a === null || a === undefined) return "";
  return a >= 0.95 ? "good" : a >= 0.8 ? "warn" : "bad";
}

function speedBar(td, promised, delivered) {
  const bar = document.createElement("span");
  bar.className = "bar";
  const scale = Math.max(promised * 1.5, delivered || 0, 1e-9);
  if (delivered !== null && delivered !== undefined) {
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = Math.min(100, (100 * delivered) / scale) + "%";
    fill.style.background = delivered >= promised ? "var(--good)" : "var(--bad)";
    bar.appendChild(fill);
  }
  const mark = document.createElement("span"); // the promise
  mark.className = "mark";
  mark.style.left = (100 * promised) / scale + "%";
  bar.appendChild(mark);
  td.appendChild(bar);
}

function renderTiers(state) {
  const body = $("tiers").querySelector("tbody");
  body.replaceChildren();
  for (const t of state.tiers) {
    const r = t.recent;
    const row = document.createElement("tr");
    row.dataset.tier = t.name;
    row.dataset.open = String(t.open);
    row.className = t.open ? "open" : "closed";
    cell(row, t.name);
    const status = cell(row, t.open ? "open" : "closed", "status " + (t.open ? "open" : "closed"));
    if (!t.open && t.reason) status.title = t.reason;
    cell(row, fmt(t.promise.tokens_per_s));
    const delivered = r.tokens_per_s_p50;
    cell(row, fmt(delivered), delivered === null ? "" :
      delivered >= t.promise.tokens_per_s ? "good" : "bad").dataset.field = "delivered";
    speedBar(cell(row, ""), t.promise.tokens_per_s, delivered);
    cell(row, seconds(t.promise.ttft_s));
    cell(row, seconds(r.ttft_p50_s), r.ttft_p50_s > t.promise.ttft_s ? "bad" : "");
    cell(row, seconds(r.ttft_p99_s), r.ttft_p99_s > t.promise.ttft_s ? "warn" : "");
    cell(row, pct(r.attainment), attainmentClass(r.attainment));
    cell(row, String(t.totals.requests)).dataset.field = "requests";
    cell(row, t.totals.refused_429 + " / " + t.totals.refused_503);
    cell(row, usd(t.totals.revenue_micro_usd));
    body.appendChild(row);
  }
}

function renderCards(state) {
  const rec = state.recent, tot = state.totals, eng = state.engine;
  $("revenue-per-s").textContent = usd(rec.revenue_micro_usd_per_s);
  $("revenue-per-hour").textContent = usd(rec.revenue_micro_usd_per_hour);
  $("tokens-per-s").textContent = fmt(rec.completion_tokens_per_s);
  $("attainment").textContent = pct(rec.attainment);
  $("attainment").className = "value " + attainmentClass(rec.attainment);
  $("running").textContent = String(eng.running);
  $("waiting").textContent = String(eng.waiting);
  $("kv-cache").textContent = pct(eng.kv_cache_usage);
  $("refused").textContent = tot.refused_429 + " / " + tot.refused_503;
  $("requests-total").textContent = tot.requests.toLocaleString("en-US");
  $("revenue-total").textContent = usd(tot.revenue_micro_usd);
  $("model").textContent = state.model;
  $("policy").textContent = "policy " + state.policy;
  $("health").textContent = eng.healthy ? "engine ok" : "engine dead";
  $("health").className = "badge " + (eng.healthy ? "ok" : "dead");
  $("window").textContent = "last " + state.window_s.toFixed(0) + " s";
  $("updated").textContent = "updated " + new Date(state.time * 1000).toLocaleTimeString();
}

// An axis step of 1, 2 or 5 times a power of ten, giving about four ticks up to `max`.
function niceStep(max) {
  const raw = max / 4, power = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5]) if (m * power >= raw) return m * power;
  return 10 * power;
}

function tick(v) { return String(Number(v.toPrecision(6))); }

function renderFrontier(state) {
  const f = state.frontier, plot = $("frontier");
  const W = 640, H = 320, L = 50, R = 15, T = 15, B = 35;
  plot.replaceChildren();
  const op = f.operating_point;
  const openTiers = state.tiers.filter((t) => t.open);
  const xs = f.points.map((p) => p.tokens_per_s).concat([op.tokens_per_s || 0]);
  const ys = f.points.map((p) => p.tokens_per_s_per_user)
    .concat([op.tokens_per_s_per_user || 0], openTiers.map((t) => t.promise.tokens_per_s));
  const xStep = niceStep(Math.max(...xs, 1) * 1.05), yStep = niceStep(Math.max(...ys, 1) * 1.05);
  const xMax = xStep * Math.ceil((Math.max(...xs, 1) * 1.05) / xStep);
  const yMax = yStep * Math.ceil((Math.max(...ys, 1) * 1.05) / yStep);
  const x = (v) => L + ((W - L - R) * v) / xMax;
  const y = (v) => H - B - ((H - T - B) * v) / yMax;
  plot.appendChild(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#2a3540" }));
  plot.appendChild(svg("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#2a3540" }));
  for (let v = 0; v <= xMax + xStep / 2; v += xStep) {
    plot.appendChild(svg("text", { x: x(v), y: H - B + 14, "text-anchor": "middle" }, tick(v)));
  }
  for (let v = 0; v <= yMax + yStep / 2; v += yStep) {
    plot.appendChild(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, tick(v)));
  }
  plot.appendChild(svg("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" },
    "total tokens/s"));
  plot.appendChild(svg("text", { x: 12, y: T + 110, transform: `rotate(-90 12 ${T + 110})`,
    "text-anchor": "middle" }, "tokens/s per user"));
  // One dashed line per promised speed, named by the open tiers that promise it.
  const promises = new Map();
  for (const t of openTiers) {
    const v = t.promise.tokens_per_s;
    if (!promises.has(v)) promises.set(v, { names: [], color: TIER_COLORS[t.rank % TIER_COLORS.length] });
    promises.get(v).names.push(t.name);
  }
  for (const [v, p] of promises) {
    const yy = y(v);
    plot.appendChild(svg("line", { x1: L, y1: yy, x2: W - R, y2: yy, stroke: p.color,
      "stroke-dasharray": "4 4", "stroke-opacity": 0.7 }));
    plot.appendChild(svg("text", { x: W - R - 4, y: yy - 3, "text-anchor": "end" },
      p.names.join(", ") + " promise"));
  }
  const pts = f.points.map((p) => `${x(p.tokens_per_s)},${y(p.tokens_per_s_per_user)}`);
  plot.appendChild(svg("polyline", { points: pts.join(" "), fill: "none", stroke: "#58a6ff",
    "stroke-width": 2 }));
  for (const p of f.points) {
    plot.appendChild(svg("circle", { cx: x(p.tokens_per_s), cy: y(p.tokens_per_s_per_user),
      r: 4, fill: "#58a6ff" }));
    plot.appendChild(svg("text", { x: x(p.tokens_per_s) + 6, y: y(p.tokens_per_s_per_user) - 6 },
      "batch " + p.batch));
  }
  const note = $("frontier-note");
  if (op.tokens_per_s_per_user !== null && op.tokens_per_s !== null) {
    const dot = svg("circle", { cx: x(op.tokens_per_s), cy: y(op.tokens_per_s_per_user), r: 7,
      fill: "#f85149", stroke: "#e6e9ec", "stroke-width": 1.5, id: "operating-point" });
    plot.appendChild(dot);
    note.textContent = `now: ${fmt(op.tokens_per_s_per_user)} tokens/s per user (mean), ` +
      `${fmt(op.tokens_per_s)} tokens/s in all, ${op.running} running. ` +
      `Probe on ${f.machine} (${f.device}).`;
  } else {
    note.textContent = `no requests finished in the window yet. Probe on ${f.machine} (${f.device}).`;
  }
}

// Two stacked bars: requests by the tier asked for, tokens by the tier billed at (a request
// that missed its promise is billed at a slower tier, so the two can differ).
function renderMix(state) {
  const plot = $("mix"), legend = $("mix-legend");
  plot.replaceChildren();
  legend.replaceChildren();
  const requests = state.tiers.reduce((n, t) => n + t.recent.requests, 0);
  const bars = [
    { label: "requests, by tier asked", y: 4, share: (t) => requests ? t.recent.requests / requests : 0 },
    { label: "tokens, by tier billed", y: 52, share: (t) => t.recent.token_share || 0 },
  ];
  const X = 150, Wbar = 480 - X;
  for (const bar of bars) {
    plot.appendChild(svg("text", { x: 0, y: bar.y + 24 }, bar.label));
    let left = 0;
    for (const t of state.tiers) {
      const share = bar.share(t);
      if (share <= 0) continue;
      plot.appendChild(svg("rect", { x: X + Wbar * left, y: bar.y, width: Wbar * share,
        height: 36, fill: TIER_COLORS[t.rank % TIER_COLORS.length] }));
      left += share;
    }
    if (left === 0) {
      plot.appendChild(svg("text", { x: X + Wbar / 2, y: bar.y + 24, "text-anchor": "middle" },
        "none in the window"));
    }
  }
  for (const t of state.tiers) {
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = TIER_COLORS[t.rank % TIER_COLORS.length];
    li.appendChild(sw);
    li.appendChild(document.createTextNode(
      `${t.name}: ${t.recent.requests} req, ${pct(t.recent.token_share)} of tokens`));
    li.dataset.tier = t.name;
    legend.appendChild(li);
  }
}

function spark(id, values, digits = true) {
  const plot = $(id);
  plot.replaceChildren();
  if (values.length < 2) return;
  const top = Math.max(...values), max = top > 0 ? top : 1;
  const pts = values.map((v, i) =>
    `${(300 * i) / (HISTORY - 1)},${38 - (34 * v) / max}`).join(" ");
  plot.appendChild(svg("polyline", { points: pts, fill: "none", stroke: "#58a6ff",
    "stroke-width": 1.5 }));
  plot.appendChild(svg("text", { x: 296, y: 12, "text-anchor": "end" },
    (digits ? top.toPrecision(3) : fmt(top, 0)) + " max"));
}

function remember(state) {
  const push = (arr, v) => { arr.push(v || 0); if (arr.length > HISTORY) arr.shift(); };
  push(history.tokens, state.recent.completion_tokens_per_s);
  push(history.revenue, (state.recent.revenue_micro_usd_per_s || 0) / 1e6); // dollars
  push(history.waiting, state.engine.waiting);
  spark("spark-tokens", history.tokens);
  spark("spark-revenue", history.revenue);
  spark("spark-waiting", history.waiting, false);
}

async function poll() {
  try {
    const res = await fetch("dashboard/state", { cache: "no-store" });
    const body = await res.json();
    if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
    renderCards(body);
    renderTiers(body);
    renderFrontier(body);
    renderMix(body);
    remember(body);
    $("error").hidden = true;
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  } catch (err) {
    $("error").textContent = "Could not read the state: " + err.message;
    $("error").hidden = false;
  }
  setTimeout(poll, POLL_MS);
}

poll();
