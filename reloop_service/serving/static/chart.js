// Small inline-SVG line charts of the cycle history: candidate vs production holdout metric per
// cycle date, with rejected runs circled and failed runs shaded. No library, no build step.

const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function finite(x) {
  return typeof x === "number" && Number.isFinite(x);
}

/** The start of a period named by its start: 2024-05-01 (a day), 2024-05-01T13 (an hour), …T13:30. */
export function periodStart(name) {
  const [day, time] = String(name).split("T");
  const [hh, mm] = (time || "00:00").split(":");
  return new Date(`${day}T${hh.padStart(2, "0")}:${(mm || "00").padStart(2, "0")}:00Z`);
}

/** Points of one metric: [{date: Date, label, cand, prod, rejected, failed}] sorted by period start. */
export function chartPoints(runs, metric) {
  return runs
    .map((run) => {
      const gate = (run.details && run.details.gate) || {};
      const cand = gate.candidate ? gate.candidate[metric] : undefined;
      const prod = gate.production ? gate.production[metric] : undefined;
      return {
        date: periodStart(run.period || run.cycle_date),
        label: run.period || run.cycle_date,
        cand: finite(cand) ? cand : null,
        prod: finite(prod) ? prod : null,
        rejected: run.details && run.details.decision === "rejected",
        failed: run.status === "failed",
      };
    })
    .sort((a, b) => a.date - b.date);
}

/** A round tick step (1, 2 or 5 times a power of ten) giving about ``count`` intervals. */
export function niceStep(span, count = 4) {
  const raw = span / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = raw / power;
  return (unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 5 ? 5 : 10) * power;
}

/** Axis domain widened to round ticks: [lo, hi, step], ticks at lo, lo + step, ... hi. */
export function niceAxis(values, include = []) {
  let lo = Math.min(...values, ...include);
  let hi = Math.max(...values, ...include);
  if (!Number.isFinite(lo)) return [0, 1, 0.25];
  if (hi - lo < 1e-6) {
    lo -= 0.01;
    hi += 0.01;
  }
  const step = niceStep(hi - lo);
  return [Math.floor(lo / step) * step, Math.ceil(hi / step) * step, step];
}

function tickText(v, step) {
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return v.toFixed(decimals);
}

function path(points, key, x, y) {
  let d = "";
  let pen = false;
  for (const p of points) {
    if (p[key] === null) {
      pen = false; // a gap where the run produced no number (failed, cold start)
      continue;
    }
    d += `${pen ? "L" : "M"}${x(p).toFixed(1)},${y(p[key]).toFixed(1)} `;
    pen = true;
  }
  return d.trim();
}

/** One SVG chart of ``metric`` ("auc" or "logloss") from the cycle runs. */
export function metricChart(runs, metric, title) {
  const W = 560;
  const H = 230;
  const m = { l: 52, r: 24, t: 12, b: 38 };
  const points = chartPoints(runs, metric);
  const id = `chart-${metric}`;
  const svg = el("svg", {
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-labelledby": `${id}-title ${id}-desc`,
    id,
  });
  svg.appendChild(el("title", { id: `${id}-title` }, title));
  const rejected = points.filter((p) => p.rejected).map((p) => p.label);
  const failed = points.filter((p) => p.failed).map((p) => p.label);
  svg.appendChild(
    el(
      "desc",
      { id: `${id}-desc` },
      `${points.length} cycle runs. Rejected: ${rejected.join(", ") || "none"}. ` +
        `Failed: ${failed.join(", ") || "none"}.`,
    ),
  );
  if (points.length === 0) {
    svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "lbl" }, "no cycle runs yet"));
    return svg;
  }
  const values = points.flatMap((p) => [p.cand, p.prod]).filter((v) => v !== null);
  // AUC axes always show 0.5, the no-skill line: a model near it ranks no better than chance
  const [lo, hi, tick] = niceAxis(values, metric === "auc" ? [0.5] : []);
  const t0 = points[0].date.getTime();
  const t1 = points[points.length - 1].date.getTime();
  const span = t1 - t0 || 1;
  const iw = W - m.l - m.r;
  const ih = H - m.t - m.b;
  const xt = (t) => (points.length === 1 ? m.l + iw / 2 : m.l + ((t - t0) / span) * iw);
  const x = (p) => xt(p.date.getTime());
  const y = (v) => m.t + (1 - (v - lo) / (hi - lo)) * ih;
  const step = points.length > 1 ? iw / (points.length - 1) : iw / 2;
  const band = Math.max(8, Math.min(step * 0.6, 40));

  // failed runs: a shaded band with a label, drawn first so lines stay on top
  for (const p of points.filter((q) => q.failed)) {
    const g = el("g", { class: "failed-mark" });
    g.appendChild(el("rect", { x: x(p) - band / 2, y: m.t, width: band, height: ih, class: "failed-band" }));
    g.appendChild(el("text", { x: x(p), y: m.t + 12, "text-anchor": "middle", class: "failed-lbl" }, "failed"));
    g.appendChild(el("title", {}, `${p.label}: run failed`));
    svg.appendChild(g);
  }
  // grid and y axis
  const grid = el("g", { class: "grid" });
  const axis = el("g", { class: "axis" });
  const ticks = Math.round((hi - lo) / tick);
  for (let i = 0; i <= ticks; i++) {
    const v = lo + tick * i;
    grid.appendChild(el("line", { x1: m.l, x2: W - m.r, y1: y(v), y2: y(v) }));
    axis.appendChild(el("text", { x: m.l - 6, y: y(v) + 4, "text-anchor": "end", class: "ytick" }, tickText(v, tick)));
  }
  // x labels: at most ~7, always the first and the last
  const every = Math.max(1, Math.ceil(points.length / 7));
  points.forEach((p, i) => {
    if (i % every === 0 || i === points.length - 1) {
      axis.appendChild(el("text", { x: x(p), y: H - m.b + 16, "text-anchor": "middle" }, p.label.slice(5)));
    }
  });
  axis.appendChild(el("text", { x: m.l, y: H - 6, class: "lbl" }, points[0].label.slice(0, 4)));
  svg.appendChild(grid);
  svg.appendChild(axis);
  if (metric === "auc") {
    const g = el("g", {});
    g.appendChild(el("line", { x1: m.l, x2: W - m.r, y1: y(0.5), y2: y(0.5), class: "no-skill" }));
    g.appendChild(el("text", { x: W - m.r, y: y(0.5) - 4, "text-anchor": "end", class: "no-skill-lbl" }, "no skill (0.5)"));
    svg.appendChild(g);
  }
  // lines and dots
  svg.appendChild(el("path", { d: path(points, "prod", x, y), class: "prod" }));
  svg.appendChild(el("path", { d: path(points, "cand", x, y), class: "cand" }));
  for (const p of points) {
    for (const key of ["prod", "cand"]) {
      if (p[key] === null) continue;
      const dot = el("circle", { cx: x(p), cy: y(p[key]), r: 3.2, class: `dot-${key}` });
      dot.appendChild(
        el("title", {}, `${p.label} ${key === "cand" ? "candidate" : "production"} ${metric} ${p[key].toFixed(4)}`),
      );
      svg.appendChild(dot);
    }
    if (p.rejected && p.cand !== null) {
      const ring = el("circle", { cx: x(p), cy: y(p.cand), r: 8, class: "rejected" });
      ring.appendChild(el("title", {}, `${p.label}: candidate rejected by the gate`));
      svg.appendChild(ring);
    }
  }
  return svg;
}
