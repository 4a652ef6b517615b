// reloop-service operator dashboard. Reads only /v1/model and /v1/admin/*; the admin token lives
// in sessionStorage for this browser tab session, is sent only as a bearer header, never put in a
// URL and never logged. All server text goes in as text nodes, never parsed as HTML.

import { metricChart } from "./chart.js";

const TOKEN_KEY = "reloop.adminToken";
const REFRESH_MS = 30000;
const $ = (sel) => document.querySelector(sel);

const state = {
  model: null, // GET /v1/model (or null when nothing is loaded)
  versions: null, // GET /v1/admin/versions
  events: null,
  runs: null,
  sort: { key: "version", dir: -1 },
  adminError: null,
};

// ------------------------------------------------------------------------------------ helpers
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function parseTime(iso) {
  if (!iso) return null;
  const s = /[zZ]|[+-]\d\d:?\d\d$/.test(iso) || iso.length <= 10 ? iso : iso + "Z";
  const d = new Date(s);
  return Number.isNaN(d.getTime()) ? null : d;
}

function fmtTime(iso) {
  const d = parseTime(iso);
  return d ? d.toISOString().slice(0, 16).replace("T", " ") + " UTC" : "—";
}

function fmtAge(ms) {
  if (ms === null || !Number.isFinite(ms)) return "—";
  const s = Math.max(0, ms / 1000);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} days`;
}

function ago(iso) {
  const d = parseTime(iso);
  return d ? `${fmtAge(Date.now() - d.getTime())} ago` : "—";
}

function fmtDuration(seconds) {
  if (seconds === null || !Number.isFinite(seconds)) return "—";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const m = Math.floor(seconds / 60);
  return `${m} min ${Math.round(seconds - m * 60)} s`;
}

function num(x, digits = 4) {
  return typeof x === "number" && Number.isFinite(x) ? x.toFixed(digits) : "—";
}

function badge(text, cls = text) {
  return h("span", { class: `badge s-${cls}` }, text);
}

/** Prior coverage as a fraction: the cycle records {rows, archived, recomputed, missing}. */
function coverageOf(metrics) {
  const c = metrics && metrics.prior_coverage;
  if (typeof c === "number") return c;
  if (c && typeof c === "object" && c.rows > 0) return ((c.archived || 0) + (c.recomputed || 0)) / c.rows;
  return null;
}

function pct(x) {
  return x === null || !Number.isFinite(x) ? "—" : `${(x * 100).toFixed(1)} %`;
}

// ---------------------------------------------------------------------------------------- API
class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

/** Who acts, sent as X-Reloop-Actor and stored in the audit row (``admin-api:<name>``). */
function actorName() {
  const typed = ($("#actor-input")?.value || "").trim().replace(/[^A-Za-z0-9._@+:-]/g, "").slice(0, 64);
  return typed || "dashboard";
}

function detailText(body, status) {
  // RFC 9457 problem details: ``detail`` is one line; ``errors`` (422) names each field
  if (body && Array.isArray(body.errors) && body.errors.length) {
    return body.errors.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
  }
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
  }
  return `HTTP ${status}`;
}

async function api(path, { method = "GET", body, admin = true } = {}) {
  const headers = { Accept: "application/json" };
  if (admin) {
    const t = token();
    if (!t) throw new ApiError(0, "no admin token entered");
    headers.Authorization = `Bearer ${t}`;
    headers["X-Reloop-Actor"] = actorName();
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
  } catch (err) {
    throw new ApiError(-1, "the service did not answer (is it running?)");
  }
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = null;
  }
  if (!resp.ok) throw new ApiError(resp.status, detailText(data, resp.status));
  return data;
}

function adminProblem(err) {
  if (err.status === 0) return "Enter the admin token (top right) to see versions, cycle history and the audit trail and to act.";
  if (err.status === 401) return "The admin token was refused (401): it is missing or wrong. Enter the correct token; nothing was changed.";
  if (err.status === 403) return "The admin API is disabled on this server (no RELOOP_ADMIN_TOKEN configured).";
  if (err.status === -1) return "The service did not answer: check that it is running.";
  return `The admin API answered ${err.status}: ${err.message}`;
}

// ------------------------------------------------------------------------------------- banner
function showBanner(text, kind = "error") {
  const b = $("#banner");
  b.textContent = text;
  b.className = kind === "info" ? "banner info" : "banner";
  b.setAttribute("role", kind === "info" ? "status" : "alert");
  b.hidden = false;
}

function hideBanner() {
  $("#banner").hidden = true;
}

function setTokenState(text, cls) {
  const s = $("#token-state");
  s.textContent = text;
  s.className = `token-state ${cls || ""}`;
}

// ------------------------------------------------------------------------------------ loading
async function refresh() {
  try {
    state.model = await api("/v1/model", { admin: false });
  } catch (err) {
    state.model = null;
  }
  state.adminError = null;
  if (!token()) {
    state.versions = state.events = state.runs = null;
    state.adminError = new ApiError(0, "no token");
  } else {
    try {
      const [versions, events, runs] = await Promise.all([
        api("/v1/admin/versions?limit=1000"),
        api("/v1/admin/events?limit=500"),
        api("/v1/admin/cycles?limit=1000"),
      ]);
      state.versions = versions;
      state.events = events.events;
      state.runs = runs.runs;
    } catch (err) {
      state.versions = state.events = state.runs = null;
      state.adminError = err;
    }
  }
  if (state.adminError) {
    showBanner(adminProblem(state.adminError), state.adminError.status === 0 ? "info" : "error");
    setTokenState(state.adminError.status === 401 ? "token refused" : token() ? "token set" : "no token",
      state.adminError.status === 401 ? "bad" : "");
  } else {
    hideBanner();
    setTokenState("token accepted", "ok");
  }
  render();
  document.body.dataset.loaded = String(Date.now());
}

function render() {
  renderProduction();
  renderChart();
  renderRuns();
  renderVersions();
  renderTimeline();
  renderActionChoices();
  const name = state.model ? state.model.model_name : state.versions?.production?.model_name;
  if (name) $("#model-name").textContent = `model “${name}” · operator dashboard`;
}

function placeholder(tbody, cols, text) {
  tbody.replaceChildren(h("tr", {}, h("td", { colspan: cols, class: "muted" }, text)));
}

// --------------------------------------------------------------------------------- production
function productionEvent(version) {
  return (state.events || []).find(
    (e) => (e.kind === "promoted" || e.kind === "rolled_back") && e.to_version === version,
  );
}

const COMPARISON = { "<=": ["≤", ">"], ">=": ["≥", "<"], ">": [">", "≤"] };

function verdictNode(verdict) {
  if (!verdict) return h("span", { class: "muted" }, "no verdict recorded");
  const passed = verdict.passed === true;
  // Each rule says how it passes (GateRule.comparison); a failed rule shows the opposite relation.
  const rules = (verdict.rules || []).map((r) => {
    const [pass, fail] = COMPARISON[r.comparison] || COMPARISON["<="];
    return `${r.name} ${num(r.value)} ${r.passed ? pass : fail} ${num(r.threshold)} ${r.passed ? "✓" : "✗"}`;
  });
  return h(
    "span",
    {},
    badge(passed ? "passed" : "rejected", passed ? "passed" : "rejected"),
    rules.length ? h("span", { class: "verdict-rules" }, " " + rules.join("; ")) : null,
  );
}

function renderProduction() {
  const body = $("#prod-body");
  const alias = state.versions ? state.versions.production : null;
  const model = state.model;
  if (!alias && !model) {
    body.replaceChildren(
      h("p", { id: "prod-none" }, state.versions ? "No version is in production yet." : "No model is loaded by this replica."),
    );
    return;
  }
  const v = alias ? alias.version : null;
  const number = alias ? v.version : model.model_version;
  const metrics = v ? v.metrics : model.metrics;
  const event = alias ? productionEvent(number) : null;
  const created = v ? parseTime(v.created_at) : null;
  const lastDay = v ? v.data_last_day : model.data_last_day;
  const facts = h("dl", { class: "facts" });
  const fact = (k, ...val) => facts.append(h("dt", {}, k), h("dd", {}, ...val));
  if (alias) {
    fact("Promoted", `${fmtTime(alias.updated_at)} (${ago(alias.updated_at)}) by `, h("strong", { id: "prod-actor" }, alias.updated_by));
    if (event) fact("Reason", h("span", { id: "prod-reason" }, `${event.kind === "rolled_back" ? "rollback: " : ""}${event.reason}`));
    fact("Model age", h("span", { id: "prod-age" }, created ? fmtAge(Date.now() - created.getTime()) : "—"),
      created ? ` (registered ${fmtTime(v.created_at)})` : "");
    fact("Gate verdict", verdictNode(v.gate_verdict));
    fact("Parent", v.parent_version ? versionLink(v.parent_version) : "none (cold start)");
  }
  const dataAge = lastDay ? fmtAge(Date.now() - parseTime(lastDay).getTime()) : "—";
  fact("Data window", `${(v ? v.data_first_day : model.data_first_day) || "?"} → ${lastDay || "?"} (newest day ${dataAge} old)`);
  if (model) {
    const same = model.model_version === number;
    fact("This replica", `serves v${model.model_version}, loaded ${ago(model.loaded_at)}`,
      same ? "" : h("strong", { class: "s-failed" }, " (not yet swapped to production)"));
  }
  const cards = h("div", { class: "metrics" },
    metricCard("AUC", num(metrics?.auc)),
    metricCard("Logloss", num(metrics?.logloss)),
    metricCard("Calibration", num(metrics?.calibration, 3)),
    metricCard("Prior coverage", pct(coverageOf(metrics))),
  );
  body.replaceChildren(
    h("div", { class: "prod-head" },
      h("span", { class: "prod-version", id: "prod-version", "data-version": number }, `v${number}`),
      badge("production"),
      v && (v.period || v.cycle_date) ? h("span", { class: "muted" }, `cycle ${v.period || v.cycle_date}`) : null,
      v ? h("a", { href: `#version=${number}` }, "details") : null),
    cards,
    facts,
  );
}

function metricCard(k, v) {
  return h("div", { class: "metric" }, h("span", { class: "k" }, k), h("span", { class: "v" }, v));
}

function versionLink(n) {
  return h("a", { href: `#version=${n}`, "aria-label": `version ${n} details` }, `v${n}`);
}

// ------------------------------------------------------------------------------------- cycles
function runDuration(run) {
  const d = run.details || {};
  const start = parseTime(d.started_at) || parseTime(run.started_at);
  const end = parseTime(d.finished_at) || parseTime(run.finished_at);
  if (!start) return null;
  if (!end) return run.status === "running" ? (Date.now() - start.getTime()) / 1000 : null;
  return (end.getTime() - start.getTime()) / 1000;
}

function renderChart() {
  const box = $("#chart");
  if (!state.runs) {
    box.replaceChildren(h("p", { class: "muted" }, "Cycle history needs the admin token."));
    return;
  }
  const figure = (metric, title) =>
    h("figure", {}, h("figcaption", {}, title), metricChart(state.runs, metric, title));
  const legend = h("div", { class: "legend" },
    h("span", {}, h("span", { class: "sw sw-cand" }), "candidate (holdout)"),
    h("span", {}, h("span", { class: "sw sw-prod" }), "production on the same holdout"),
    h("span", {}, h("span", { class: "sw sw-rej" }), "rejected by the gate"),
    h("span", {}, h("span", { class: "sw sw-fail" }), "failed run"));
  box.replaceChildren(figure("auc", "Holdout AUC per cycle date (higher is better)"),
    figure("logloss", "Holdout logloss per cycle date (lower is better)"), legend);
}

function renderRuns() {
  const tbody = $("#runs-table tbody");
  if (!state.runs) return placeholder(tbody, 10, "Needs the admin token.");
  if (!state.runs.length) return placeholder(tbody, 10, "No cycle has run yet.");
  tbody.replaceChildren(...state.runs.map((run) => {
    const d = run.details || {};
    const gate = d.gate || {};
    const pair = (m) => (m ? `${num(m.auc)} / ${num(m.logloss)}` : "—");
    // a period is named by its start: 2024-05-01 (daily), 2024-05-01T13 (hourly)
    return h("tr", { "data-cycle": run.period || run.cycle_date },
      h("td", {}, run.period || run.cycle_date),
      h("td", {}, badge(run.status)),
      h("td", {}, d.decision ? badge(d.decision) : "—"),
      h("td", { class: "num" }, run.attempt),
      h("td", { class: "num" }, fmtDuration(runDuration(run))),
      h("td", {}, run.produced_version ? versionLink(run.produced_version) : "—"),
      h("td", {}, pair(gate.candidate)),
      h("td", {}, pair(gate.production)),
      h("td", {}, d.actor || "—"),
      h("td", { class: "err" }, run.error || ""));
  }));
}

// ----------------------------------------------------------------------------------- versions
function sortValue(v, key) {
  switch (key) {
    case "auc":
    case "logloss":
    case "calibration":
      return v.metrics ? v.metrics[key] : null;
    case "coverage":
      return coverageOf(v.metrics);
    default:
      return v[key];
  }
}

function renderVersions() {
  const tbody = $("#versions-table tbody");
  const count = $("#versions-count");
  if (!state.versions) {
    count.textContent = "";
    return placeholder(tbody, 10, "Needs the admin token.");
  }
  const filter = $("#status-filter").value;
  const { key, dir } = state.sort;
  const rows = state.versions.versions.filter((v) => !filter || v.status === filter);
  rows.sort((a, b) => {
    const x = sortValue(a, key);
    const y = sortValue(b, key);
    if (x === y) return b.version - a.version;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * dir;
  });
  for (const th of document.querySelectorAll("#versions-table th[data-key]")) {
    if (th.dataset.key === key) th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
    else th.removeAttribute("aria-sort");
  }
  count.textContent = `${rows.length} of ${state.versions.versions.length} versions`;
  if (!rows.length) return placeholder(tbody, 10, "No version matches this filter.");
  tbody.replaceChildren(...rows.map((v) =>
    h("tr", { "data-version": v.version, "data-status": v.status, class: v.status === "production" ? "is-prod" : "" },
      h("td", {}, versionLink(v.version)),
      h("td", {}, badge(v.status)),
      h("td", {}, v.parent_version ? versionLink(v.parent_version) : "—"),
      h("td", {}, `${v.data_first_day || "?"} → ${v.data_last_day || "?"}`),
      h("td", { class: "num" }, num(v.metrics?.auc)),
      h("td", { class: "num" }, num(v.metrics?.logloss)),
      h("td", { class: "num" }, num(v.metrics?.calibration, 3)),
      h("td", { class: "num" }, pct(coverageOf(v.metrics))),
      h("td", {}, verdictNode(v.gate_verdict)),
      h("td", {}, fmtTime(v.created_at)))));
}

async function renderDetail() {
  const box = $("#version-detail");
  const match = /^#version=(\d+)$/.exec(location.hash);
  if (!match) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  const n = Number(match[1]);
  box.hidden = false;
  box.replaceChildren(h("p", { class: "muted" }, `Loading version ${n}…`));
  let data;
  try {
    data = await api(`/v1/admin/versions/${n}`);
  } catch (err) {
    box.replaceChildren(h("p", { class: "s-failed" }, err.status === 404 ? `No version ${n}.` : adminProblem(err)),
      closeButton());
    return;
  }
  const v = data.version;
  const chain = h("ol", { class: "lineage", "aria-label": "lineage, newest first" },
    h("li", {}, h("strong", {}, `v${v.version}`), " ", badge(v.status)),
    ...data.lineage.map((p) => h("li", {}, versionLink(p.version), " ", badge(p.status))));
  const config = JSON.stringify(v.train_config, null, 2);
  const extra = JSON.stringify({ metrics: v.metrics, gate_verdict: v.gate_verdict, artifact: v.artifact,
    feature_spec_hash: v.feature_spec_hash }, null, 2);
  box.replaceChildren(
    h("h3", { id: "detail-title" }, `Version ${v.version}`, data.is_production ? " (production)" : ""),
    h("dl", { class: "facts" },
      h("dt", {}, "Status"), h("dd", {}, badge(v.status), ` since ${fmtTime(v.status_changed_at)}`),
      h("dt", {}, "Registered"), h("dd", {}, fmtTime(v.created_at)),
      h("dt", {}, "Cycle period"), h("dd", {}, v.period || v.cycle_date || "—"),
      h("dt", {}, "Data window"), h("dd", {}, `${v.data_first_day || "?"} → ${v.data_last_day || "?"}`),
      h("dt", {}, "Gate verdict"), h("dd", {}, verdictNode(v.gate_verdict))),
    h("h4", {}, "Lineage chain"), chain,
    h("h4", {}, "Training config"), h("pre", { class: "config", id: "detail-config" }, config),
    h("details", {}, h("summary", {}, "Metrics, verdict and artifact (JSON)"), h("pre", { class: "config" }, extra)),
    closeButton());
  box.focus();
}

function closeButton() {
  const b = h("button", { type: "button", class: "secondary" }, "Close details");
  b.addEventListener("click", () => {
    history.replaceState(null, "", location.pathname);
    renderDetail();
    $("#versions-title").scrollIntoView();
  });
  return b;
}

// ------------------------------------------------------------------------------------- audit
const KIND_TEXT = {
  promoted: (e) => `v${e.to_version} promoted${e.from_version ? ` (was v${e.from_version})` : ""}`,
  rolled_back: (e) => `rolled back v${e.from_version} → v${e.to_version}`,
  rejected: (e) => `v${e.version} rejected`,
  failed: (e) => `v${e.version} marked failed`,
  cycle_failed: (e) => `cycle ${e.cycle_date} failed`,
  cycle_skipped: (e) => `cycle ${e.cycle_date} skipped`,
  registered: (e) => `v${e.version} registered`,
};

function renderTimeline() {
  const list = $("#timeline");
  if (!state.events) {
    list.replaceChildren(h("li", { class: "muted" }, "Needs the admin token."));
    return;
  }
  const all = $("#show-registered").checked;
  const cycles = (state.runs || [])
    .filter((r) => r.status !== "succeeded" && r.status !== "running")
    .map((r) => ({
      id: `run-${r.id}`,
      kind: `cycle_${r.status}`,
      created_at: r.finished_at || r.heartbeat_at || r.started_at,
      version: r.produced_version,
      actor: (r.details && r.details.actor) || "—",
      reason: r.error || (r.details && r.details.reason) || "",
      cycle_date: r.period || r.cycle_date,
    }));
  const shown = state.events
    .filter((e) => all || e.kind !== "registered")
    .concat(cycles)
    .sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
  if (!shown.length) {
    list.replaceChildren(h("li", { class: "muted" }, "Nothing happened yet."));
    return;
  }
  list.replaceChildren(...shown.map((e) =>
    h("li", { class: `k-${e.kind}`, "data-kind": e.kind, "data-event": e.id },
      h("span", { class: "when" }, fmtTime(e.created_at)),
      badge(e.kind.replace("_", " "), e.kind), " ",
      h("strong", {}, (KIND_TEXT[e.kind] || ((x) => x.kind))(e)),
      " by ", h("span", { class: "actor" }, e.actor),
      h("span", { class: "reason" }, e.reason ? `“${e.reason}”` : ""))));
}

// ------------------------------------------------------------------------------------ actions
function renderActionChoices() {
  const versions = state.versions ? state.versions.versions : [];
  const prod = state.versions ? state.versions.production_version : null;
  for (const id of ["#promote-version", "#rollback-version"]) {
    const select = $(id);
    const keep = select.value;
    const options = versions
      .filter((v) => v.version !== prod)
      .map((v) => h("option", { value: v.version }, `v${v.version} · ${v.status} · AUC ${num(v.metrics?.auc)}`));
    select.replaceChildren(...(options.length ? options : [h("option", { value: "" }, "no other version")]));
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  }
}

let confirmResolve = null;

function confirmAction(title, lines) {
  const dialog = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-body").replaceChildren(...lines.map((l) => h("p", {}, l)));
  dialog.showModal();
  $("#confirm-cancel").focus();
  return new Promise((resolve) => {
    confirmResolve = resolve;
  });
}

function closeConfirm(ok) {
  const dialog = $("#confirm");
  if (dialog.open) dialog.close();
  if (confirmResolve) {
    const r = confirmResolve;
    confirmResolve = null;
    r(ok);
  }
}

function result(text, ok) {
  const r = $("#action-result");
  r.textContent = text;
  r.className = `result ${ok ? "ok" : "bad"}`;
}

function actionError(err) {
  if (err.status === 0) return "No admin token: enter it at the top right first. Nothing was changed.";
  if (err.status === 401) return "Refused: the admin token is missing or wrong (401). Nothing was changed.";
  if (err.status === 403) return "Refused: the admin API is disabled on this server (403). Nothing was changed.";
  if (err.status === -1) return "The service did not answer. Nothing is known to have changed; reload to check.";
  return `Refused (${err.status}): ${err.message}`;
}

/** True when a token is entered; otherwise says so and sends the operator to the token field. */
function haveToken() {
  if (token()) return true;
  result(actionError(new ApiError(0, "")), false);
  $("#token-input").focus();
  return false;
}

async function runAction(form, { title, lines, call, done }) {
  const reason = form.elements.reason.value.trim();
  if (!reason) {
    result("A reason is required.", false);
    form.elements.reason.focus();
    return;
  }
  if (!(await confirmAction(title, [...lines, `Reason: “${reason}”`]))) {
    result("Cancelled: nothing was changed.", false);
    return;
  }
  const buttons = form.querySelectorAll("button");
  buttons.forEach((b) => (b.disabled = true));
  try {
    const answer = await call(reason);
    result(done(answer), true);
    form.elements.reason.value = "";
  } catch (err) {
    result(actionError(err), false);
    if (err.status === 401) setTokenState("token refused", "bad");
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
  await refresh();
}

function wireActions() {
  $("#promote-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!haveToken()) return;
    const form = ev.currentTarget;
    const version = Number(form.elements.version.value);
    if (!version) return result("Choose a version to promote.", false);
    const current = state.versions ? state.versions.production_version : null;
    runAction(form, {
      title: `Promote v${version} to production?`,
      lines: [`Production moves from ${current ? `v${current}` : "nothing"} to v${version}.`],
      call: (reason) => api("/v1/admin/promote", {
        method: "POST",
        body: { version, reason, ...(current ? { expected_current: current } : {}) },
      }),
      done: (p) => `Promoted: production is now v${p.version.version}.`,
    });
  });
  $("#rollback-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!haveToken()) return;
    const form = ev.currentTarget;
    const chosen = form.elements.target.value === "chosen";
    const to = chosen ? Number(form.elements.version.value) : null;
    if (chosen && !to) return result("Choose the version to roll back to.", false);
    const force = form.elements.force.checked;
    const current = state.versions ? state.versions.production_version : null;
    runAction(form, {
      title: chosen ? `Roll back to v${to}?` : "Roll back to the previous production version?",
      lines: [`Production is ${current ? `v${current}` : "unknown"} now.`, force ? "Forced: lifecycle checks are overridden." : ""].filter(Boolean),
      call: (reason) => api("/v1/admin/rollback", {
        method: "POST",
        body: { reason, force, ...(to ? { to } : {}) },
      }),
      done: (p) => `Rolled back: production is now v${p.version.version}.`,
    });
  });
  $("#cycle-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!haveToken()) return;
    const form = ev.currentTarget;
    const date = form.elements.date.value;
    if (!date) return result("Choose a cycle date.", false);
    const force = form.elements.force.checked;
    runAction(form, {
      title: `Run the cycle for ${date}?`,
      lines: [force ? "Forced: the date runs again even if it already succeeded." : "Runs only if the date has not succeeded yet."],
      call: (reason) => api("/v1/admin/cycles", { method: "POST", body: { date, force, reason } }),
      done: (r) => `Cycle started: run ${r.run_id}. Its result appears in the history when it finishes.`,
    });
  });
  $("#rollback-version").addEventListener("change", () => ($("#rollback-chosen").checked = true));
  $("#confirm-ok").addEventListener("click", () => closeConfirm(true));
  $("#confirm-cancel").addEventListener("click", () => closeConfirm(false));
  $("#confirm").addEventListener("cancel", (ev) => {
    ev.preventDefault();
    closeConfirm(false);
  });
}

// ------------------------------------------------------------------------------------- wiring
function wire() {
  $("#token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("#token-input");
    const value = input.value.trim();
    input.value = ""; // the token lives in sessionStorage only, never in the DOM
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    setTokenState(value ? "checking…" : "no token", "");
    refresh();
  });
  $("#token-clear").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    refresh();
  });
  $("#status-filter").addEventListener("change", renderVersions);
  $("#show-registered").addEventListener("change", renderTimeline);
  for (const th of document.querySelectorAll("#versions-table th[data-key]")) {
    th.querySelector("button").addEventListener("click", () => {
      const key = th.dataset.key;
      state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : -1 };
      renderVersions();
    });
  }
  window.addEventListener("hashchange", renderDetail);
  wireActions();
  const today = new Date();
  $("#cycle-date").value = new Date(today.getTime() - 86400000).toISOString().slice(0, 10);
  setInterval(() => {
    if (document.visibilityState === "visible" && !$("#confirm").open) refresh();
  }, REFRESH_MS);
}

wire();
refresh().then(renderDetail);
