// A two-axis line chart drawn as SVG: a series per line, each on the left or the right axis.

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

/**
 * Draws into `svg` (cleared first): `times` (Date per point), `series` [{key, label, values, axis: "left" |
 * "right", integer}], axis titles in `axes` {left, right}, and `xTickMinutes` between time labels.
 */
export function drawChart(svg, { times, series, axes, xTickMinutes = 30, formatTime }) {
  for (const old of svg.querySelectorAll(":scope > g")) old.remove();
  const plotW = W - M.left - M.right;
  const plotH = H - M.top - M.bottom;
  const t0 = times.length ? times[0].getTime() : 0;
  const t1 = times.length > 1 ? times[times.length - 1].getTime() : t0 + 1;
  const x = (t) => M.left + ((t - t0) / (t1 - t0)) * plotW;
  const scales = {};
  for (const side of ["left", "right"]) {
    const onSide = series.filter((d) => d.axis === side);
    const max = Math.max(0, ...onSide.flatMap((d) => d.values));
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
    const points = d.values.map((v, i) => `${x(times[i].getTime()).toFixed(1)},${y(d.axis, v).toFixed(1)}`);
    lines.append(s("polyline", { class: `line ${d.key}`, "data-series": d.key, points: points.join(" ") },
      s("title", {}, d.label)));
  }
  svg.append(grid, axisLeft, axisRight, axisX, lines);
}
