// A two-axis line chart drawn as SVG: a series per line, each on the left or the right axis, each over the shared
// times or its own; a value of null leaves a gap. A dashed line may mark now, and notes may label spans of time.

import { s } from "./dom.js";

const W = 800;
const H = 280;
const M = { top: 16, right: 64, bottom: 44, left: 70 };

/** 0 and a round top above `max`, with its tick step: niceScale(23) -> {top: 25, step: 5}. */
export function niceScale(max, { integer = false, ticks = 4 } = {}) {
  if (!(max > 0)) return { top: integer ? ticks : 1, step: integer ? 1 : 0.25 };
  const raw = max / ticks;
  const power = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((m) => m >= raw);
  if (integer) step = Math.max(1, Math.ceil(step));
  return { top: step * Math.ceil(max / step), step };
}

function tickLabel(value) {
  if (value >= 1_000_000) return `${value / 1_000_000}M`;
  if (value >= 10_000) return `${value / 1000}k`;
  return String(Number(value.toFixed(2)));
}

/** Runs of consecutive points whose value is not null: a line is drawn along each, a gap left between them. */
function segments(points) {
  const runs = [];
  let current = [];
  for (const point of points) {
    if (point === null) {
      if (current.length) runs.push(current);
      current = [];
    } else {
      current.push(point);
    }
  }
  if (current.length) runs.push(current);
  return runs;
}

/**
 * Draws into `svg` (cleared first): `times` (Date per point), `series` [{key, label, values, axis: "left" |
 * "right", integer, times}] (a series' own `times` in place of the shared ones; a null value is a gap), axis titles
 * in `axes` {left, right}, `xTickMinutes` between time labels, a dashed line at `now` (a Date), and `notes`
 * [{key, at: Date, text}] written at the top of the plot from `at` on.
 */
export function drawChart(svg, { times, series, axes, xTickMinutes = 30, formatTime, now = null, notes = [] }) {
  for (const old of svg.querySelectorAll(":scope > g")) old.remove();
  const plotW = W - M.left - M.right;
  const plotH = H - M.top - M.bottom;
  const instants = [...times, ...series.flatMap((d) => d.times || [])].map((d) => d.getTime());
  const t0 = instants.length ? Math.min(...instants) : 0;
  const last = instants.length ? Math.max(...instants) : 0;
  const t1 = last > t0 ? last : t0 + 1;
  const x = (t) => M.left + ((t - t0) / (t1 - t0)) * plotW;
  const scales = {};
  for (const side of ["left", "right"]) {
    const onSide = series.filter((d) => d.axis === side);
    const max = Math.max(0, ...onSide.flatMap((d) => d.values.filter((v) => v !== null)));
    scales[side] = niceScale(max, { integer: onSide.some((d) => d.integer) });
  }
  const y = (side, v) => M.top + plotH - (v / scales[side].top) * plotH;

  const grid = s("g", { class: "grid-lines" });
  const axisLeft = s("g", { class: "axis left" });
  const axisRight = s("g", { class: "axis right" });
  for (let v = 0; v <= scales.left.top + 1e-9; v += scales.left.step) {
    const yy = y("left", v);
    grid.append(s("line", { x1: M.left, x2: M.left + plotW, y1: yy, y2: yy }));
    axisLeft.append(s("text", { x: M.left - 8, y: yy + 4, "text-anchor": "end" }, tickLabel(v)));
  }
  for (let v = 0; v <= scales.right.top + 1e-9; v += scales.right.step) {
    axisRight.append(s("text", { x: M.left + plotW + 8, y: y("right", v) + 4 }, tickLabel(v)));
  }
  axisLeft.append(s("text", {
    class: "axis-title", transform: `translate(16 ${M.top + plotH / 2}) rotate(-90)`, "text-anchor": "middle",
  }, axes.left));
  axisRight.append(s("text", {
    class: "axis-title", transform: `translate(${W - 10} ${M.top + plotH / 2}) rotate(90)`, "text-anchor": "middle",
  }, axes.right));

  const axisX = s("g", { class: "axis bottom" });
  axisX.append(s("line", { x1: M.left, x2: M.left + plotW, y1: M.top + plotH, y2: M.top + plotH }));
  const stepMs = xTickMinutes * 60_000;
  for (let t = Math.ceil(t0 / stepMs) * stepMs; t <= t1; t += stepMs) {
    const xx = x(t);
    axisX.append(s("line", { x1: xx, x2: xx, y1: M.top + plotH, y2: M.top + plotH + 5 }));
    axisX.append(s("text", { x: xx, y: M.top + plotH + 20, "text-anchor": "middle" }, formatTime(new Date(t))));
  }
  axisX.append(s("text", { class: "axis-title", x: M.left + plotW / 2, y: H - 4, "text-anchor": "middle" },
    "Time (your clock)"));

  const lines = s("g", { class: "series" });
  for (const d of series) {
    const at = d.times || times;
    const points = d.values.map((v, i) => (v === null ? null
      : `${x(at[i].getTime()).toFixed(1)},${y(d.axis, v).toFixed(1)}`));
    if (points.every((p) => p !== null)) {
      lines.append(s("polyline", { class: `line ${d.key}`, "data-series": d.key, points: points.join(" ") },
        s("title", {}, d.label)));
    } else {
      // Gaps: one path of as many pieces as there are runs of values.
      const path = segments(points).map((run) => `M${run.join(" L")}`).join(" ");
      lines.append(s("path", { class: `line ${d.key}`, "data-series": d.key, d: path || "M0,0" },
        s("title", {}, d.label)));
    }
  }
  const marks = s("g", { class: "marks" });
  if (now) {
    const xx = x(now.getTime()).toFixed(1);
    marks.append(s("line", { class: "now", x1: xx, x2: xx, y1: M.top, y2: M.top + plotH }),
      s("text", { class: "now", x: xx, y: M.top - 4, "text-anchor": "middle" }, "now"));
  }
  for (const note of notes) {
    marks.append(s("text", { class: `note ${note.key}`, "data-note": note.key, x: x(note.at.getTime()) + 6, y: M.top + 12 },
      note.text));
  }
  svg.append(grid, axisLeft, axisRight, axisX, lines, marks);
}
