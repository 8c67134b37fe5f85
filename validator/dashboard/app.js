// The validator dashboard: polls /dashboard/state (and, on a learning chain,
// /fl/evaluations) and redraws. No library: the plots are SVG drawn here, and every
// value from the network goes into the page as text, never as markup.
"use strict";

const POLL_MS = 1500;
const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = ["#2f7ed8", "#e4572e", "#17a589", "#a05195", "#f1a208", "#5c6bc0",
  "#8d6e63", "#26a69a", "#d81b60", "#7cb342"];

let evaluations = null; // last /fl/evaluations answer, or null when there is none
let evaluationsStatus = "no evaluations yet";

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function text(id, value) { $(id).textContent = value; }
function short(hex) { return hex ? hex.slice(0, 12) : "–"; }
function pct(x, digits) { return (100 * x).toFixed(digits) + "%"; }

function seconds(ms) {
  const s = Math.round(ms / 100) / 10;
  return Math.abs(s) >= 100 ? Math.round(s) + " s" : s.toFixed(1) + " s";
}

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) {
    const error = new Error(`${path}: HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

// --- chain and validators ------------------------------------------------------------

function renderChain(state) {
  const c = state.chain;
  document.title = `flobc validator ${c.index} · ${c.chain_id}`;
  text("title-node", `validator ${c.index}`);
  text("chain-id", `${c.chain_id} · ${c.app === "fl" ? "learning" : "key-value"} chain`);
  text("height", c.height);
  text("view", c.view);
  text("primary", c.primary);
  text("checkpoint", c.stable_checkpoint);
  text("mempool", c.mempool_size);
  text("last-block", c.last_block_time_ms
    ? `${seconds(state.now_ms - c.last_block_time_ms)} ago` : "none yet");
  const vc = $("view-change");
  vc.hidden = !c.in_view_change;
  vc.textContent = c.in_view_change ? "view change in progress" : "";
  text("fault-note", `n = ${c.n}, tolerates f = ${c.f}, quorum 2f+1 = ${c.quorum}; ` +
    `${c.view_changes} view change(s) started here`);

  const body = $("validators").tBodies[0];
  body.replaceChildren(...state.validators.map((v) => {
    const roles = [];
    if (v.self) roles.push(el("span", { class: "badge self" }, "this node"));
    if (v.primary) roles.push(el("span", { class: "badge primary" }, "primary"));
    return el("tr", { "data-index": v.index },
      el("td", {}, v.index), el("td", {}, v.name),
      el("td", {}, el("code", { title: v.public_key }, short(v.public_key))),
      el("td", {}, ...roles),
      el("td", {}, el("span", { class: "dot " + (v.connected ? "up" : "down") }),
        v.self ? "self" : v.connected ? "connected" : "no link"),
      el("td", { class: v.in_last_commit ? "yes" : "no" }, v.in_last_commit ? "signed" : "–"),
      el("td", {}, v.last_signed_height ?? "–"));
  }));
}

// --- learning ------------------------------------------------------------------------

function renderModel(state, l) {
  text("model-version", l.model.version);
  text("round", l.round);
  text("sync", `${l.sync} / ${l.aggregator}`);
  const left = l.deadline_ms - state.now_ms;
  text("deadline", left > 0 ? `in ${seconds(left)}` : `passed ${seconds(-left)} ago`);
  const hash = $("model-hash");
  hash.textContent = l.model.hash;
  const mark = $("verified");
  const cert = l.certified;
  mark.dataset.verifiedBy = "0";
  if (!cert) {
    mark.className = "mark pending";
    mark.textContent = "awaiting a stable checkpoint";
  } else if (cert.verified && cert.verified_by >= cert.quorum) {
    mark.className = "mark ok";
    mark.dataset.verifiedBy = String(cert.verified_by);
    mark.dataset.version = String(cert.version);
    const which = cert.version === l.model.version ? "" : `version ${cert.version} `;
    mark.textContent = `✔ ${which}verified by ${cert.verified_by} of ${cert.n} validators ` +
      `(2f+1 = ${cert.quorum}), checkpoint ${cert.checkpoint}`;
    if (cert.version !== l.model.version) {
      mark.append(el("span", { class: "muted" },
        ` · version ${l.model.version} awaits its checkpoint`));
    }
  } else {
    mark.className = "mark bad";
    mark.textContent = `✘ version ${cert.version} does not verify: ${cert.error}`;
  }
}

function voteCell(vote) {
  if (!vote) return el("td", { class: "vote none" }, "·");
  const score = vote.score_milli >= 0 ? `+${vote.score_milli}` : String(vote.score_milli);
  return el("td", { class: "vote " + (vote.accept ? "yes" : "no"),
    title: `score ${score} (milli)` }, (vote.accept ? "✓ " : "✗ ") + score);
}

function roundTable(round, validators) {
  const keys = validators.map((v) => v.public_key);
  const head = el("tr", {}, el("th", {}, "trainer"), el("th", {}, "base"),
    el("th", {}, "samples"), el("th", {}, "local acc"), el("th", {}, "status"),
    ...validators.map((v) => el("th", { title: v.name }, `V${v.index}`)));
  const rows = round.updates.map((u) => el("tr", { "data-trainer": u.trainer },
    el("td", {}, el("code", { title: u.trainer }, short(u.trainer))),
    el("td", {}, `v${u.base}`), el("td", {}, u.samples),
    el("td", {}, pct(u.accuracy_milli / 1000, 1)),
    el("td", { class: "status " + u.status }, u.status),
    ...keys.map((k) => voteCell(u.votes[k]))));
  if (!rows.length) {
    rows.push(el("tr", {}, el("td", { colspan: String(5 + keys.length), class: "muted" },
      "no updates yet")));
  }
  const title = round.open
    ? `Round ${round.round} (open, expecting ${round.expected.length} trainer(s))`
    : `Round ${round.round} (closed)`;
  return el("div", { class: "round", "data-round": round.round, "data-open": round.open },
    el("h3", {}, title),
    el("table", { class: "votes" }, el("thead", {}, head), el("tbody", {}, ...rows)));
}

function renderRounds(state, l) {
  const tables = [roundTable(l.open_round, state.validators)];
  if (l.last_closed_round) tables.push(roundTable(l.last_closed_round, state.validators));
  $("round-tables").replaceChildren(...tables);
  const recent = l.rounds.slice(-8).reverse();
  $("rounds").tBodies[0].replaceChildren(...recent.map((r) => el("tr", {},
    el("td", {}, r.open ? `${r.round} (open)` : r.round), el("td", {}, r.submitted),
    el("td", {}, r.accepted), el("td", {}, r.rejected), el("td", {}, r.pending))));
}

// A plot of series of (x, y) points, y in 0..yMax, on a fixed frame; null y breaks a line.
function drawPlot(svg, { series, xs, threshold, yLabel, xLabel, yFormat, yTick, pointClass,
  yMax = 1 }) {
  const box = svg.viewBox.baseVal;
  const pad = { left: 44, right: 12, top: 10, bottom: 34 };
  const w = box.width - pad.left - pad.right;
  const h = box.height - pad.top - pad.bottom;
  const lo = Math.min(...xs);
  const hi = Math.max(...xs);
  const x = (v) => pad.left + (hi === lo ? w / 2 : ((v - lo) / (hi - lo)) * w);
  const y = (v) => pad.top + (1 - v / yMax) * h;
  const parts = [];
  for (const tick of [0, 0.25, 0.5, 0.75, 1].map((t) => t * yMax)) {
    parts.push(svgEl("line", { class: "grid", x1: pad.left, x2: pad.left + w,
      y1: y(tick), y2: y(tick) }));
    parts.push(svgEl("text", { class: "tick", x: pad.left - 6, y: y(tick) + 4,
      "text-anchor": "end" }, yTick(tick)));
  }
  const xticks = hi === lo ? [lo] : [lo, Math.round((lo + hi) / 2), hi];
  for (const tick of new Set(xticks)) {
    parts.push(svgEl("text", { class: "tick", x: x(tick), y: pad.top + h + 16,
      "text-anchor": "middle" }, tick));
  }
  parts.push(svgEl("text", { class: "axis-label", x: pad.left + w / 2,
    y: box.height - 2, "text-anchor": "middle" }, xLabel));
  parts.push(svgEl("text", { class: "axis-label", x: 10, y: pad.top + h / 2,
    transform: `rotate(-90 10 ${pad.top + h / 2})`, "text-anchor": "middle" }, yLabel));
  if (threshold !== undefined) {
    parts.push(svgEl("line", { class: "threshold", x1: pad.left, x2: pad.left + w,
      y1: y(threshold), y2: y(threshold) }));
  }
  for (const s of series) {
    let run = [];
    const runs = [run];
    s.points.forEach(([px, py]) => {
      if (py === null || py === undefined) { run = []; runs.push(run); } else run.push([px, py]);
    });
    for (const r of runs.filter((r) => r.length > 1)) {
      parts.push(svgEl("polyline", { class: "line", stroke: s.color, fill: "none",
        points: r.map(([px, py]) => `${x(px).toFixed(1)},${y(py).toFixed(1)}`).join(" ") }));
    }
    for (const [px, py] of s.points.filter(([, py]) => py !== null && py !== undefined)) {
      const dot = svgEl("circle", { class: pointClass, cx: x(px).toFixed(1),
        cy: y(py).toFixed(1), r: 3, fill: s.color, "data-x": px, "data-y": py });
      dot.append(svgEl("title", {}, `${s.name}, ${xLabel} ${px}: ${yFormat(py)}`));
      parts.push(dot);
    }
  }
  svg.replaceChildren(...parts);
}

// The task's own metrics, by the names the validator gives them (accuracy for
// classification; mae and rmse for regression); the loss for a task with no other.
function taskMetrics(versions) {
  const names = [...new Set(versions.flatMap((e) => Object.keys(e)))]
    .filter((name) => name !== "version" && name !== "loss");
  return names.length ? names : ["loss"];
}

// A round-looking upper bound of a plot's y axis: 1, 2 or 5 times a power of ten.
function niceCeiling(v) {
  if (!(v > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * power).find((c) => c >= v);
}

function renderMetrics() {
  const versions = (evaluations?.versions || []).slice(-100);
  const names = taskMetrics(versions);
  const points = versions.filter((e) => names.some((name) => Number.isFinite(e[name])));
  const svg = $("metrics-plot");
  text("metrics-title", `Test ${names.join(" and ")} per model version`);
  $("metrics-empty").hidden = points.length > 0;
  $("metrics-empty").textContent = evaluationsStatus;
  svg.hidden = points.length === 0;
  if (!points.length) {
    text("metrics-latest", "");
    return;
  }
  const fractions = names.every((name) => name === "accuracy");
  const format = fractions ? (v) => pct(v, 1) : (v) => v.toPrecision(4);
  const last = points[points.length - 1];
  const shown = names.filter((name) => Number.isFinite(last[name]))
    .map((name) => `${name} ${format(last[name])}`);
  text("metrics-latest", `version ${last.version}: ${shown.join(", ")} on the ` +
    `${evaluations.split} split` + (last.loss === null ? "" : `, loss ${last.loss.toFixed(3)}`));
  const highest = Math.max(...points.flatMap((e) => names.map((name) => e[name]))
    .filter(Number.isFinite));
  drawPlot(svg, {
    series: names.map((name, i) => ({ name, color: COLORS[i % COLORS.length],
      points: points.map((e) => [e.version, Number.isFinite(e[name]) ? e[name] : null]) })),
    xs: points.map((e) => e.version), yLabel: names.join(", "), xLabel: "version",
    yFormat: format, yTick: fractions ? (v) => pct(v, 0) : (v) => String(+v.toPrecision(2)),
    pointClass: "point metric", yMax: fractions ? 1 : niceCeiling(highest),
  });
}

function swatch(color) {
  const icon = svgEl("svg", { class: "swatch", width: 12, height: 12, viewBox: "0 0 12 12" });
  icon.append(svgEl("rect", { width: 12, height: 12, rx: 2, fill: color }));
  return icon;
}

function renderTrainers(l) {
  const color = (i) => COLORS[i % COLORS.length];
  text("trainers-note", l.trainers_total > l.trainers.length
    ? `(first ${l.trainers.length} of ${l.trainers_total})` : "");
  $("trainers").tBodies[0].replaceChildren(...l.trainers.map((t, i) => el("tr",
    { "data-trainer": t.trainer, class: t.excluded ? "excluded" : "" },
    el("td", {}, swatch(color(i))),
    el("td", {}, el("code", { title: t.trainer }, short(t.trainer))),
    el("td", { class: "trust" }, (t.trust_micro / 1e6).toFixed(4)),
    el("td", {}, pct(t.share_micro / 1e6, 1)),
    el("td", {}, t.accepted), el("td", {}, t.rejected), el("td", {}, t.registered_round),
    el("td", { class: t.excluded ? "no" : "yes" }, t.excluded ? "excluded" : "active"))));
  const rounds = l.rounds.map((r) => r.round);
  drawPlot($("trust-plot"), {
    series: l.trainers.map((t, i) => ({ name: short(t.trainer), color: color(i),
      points: t.trust_history.map((v, k) => [rounds[k], v === null ? null : v / 1e6]) })),
    xs: rounds, threshold: l.trust_threshold / 1e6, yLabel: "trust", xLabel: "round",
    yFormat: (v) => v.toFixed(4), yTick: (v) => v.toFixed(2), pointClass: "point trust",
  });
}

async function refreshEvaluations(version) {
  const have = evaluations?.versions?.length
    ? evaluations.versions[evaluations.versions.length - 1].version : -1;
  if (have >= version) return;
  try {
    evaluations = await getJSON("/fl/evaluations?limit=100");
    evaluationsStatus = "no evaluations yet";
  } catch (error) {
    // The chain's panels stay live; only the plot says what is missing.
    if (error.status === 404) evaluations = null;
    evaluationsStatus = error.status === 404
      ? "no evaluations yet (this validator does not serve them)"
      : `evaluations unavailable (${error.message})`;
  }
}

async function tick() {
  try {
    const state = await getJSON("/dashboard/state");
    renderChain(state);
    const l = state.learning;
    for (const panel of document.querySelectorAll("[data-learning]")) {
      panel.hidden = state.chain.app !== "fl";
    }
    if (l) {
      renderModel(state, l);
      renderRounds(state, l);
      renderTrainers(l);
      await refreshEvaluations(l.version);
      renderMetrics();
    }
    const live = $("live");
    live.className = "live up";
    live.textContent = `live · ${new Date(state.now_ms).toLocaleTimeString()}`;
  } catch (error) {
    const live = $("live");
    live.className = "live down";
    live.textContent = `not answering (${error.message}); retrying`;
  } finally {
    setTimeout(tick, POLL_MS);
  }
}

tick();
