// A workflow run drawn as SVG: a column per dependency level, a node per step coloured by its status, an arrow
// from each dependency to its dependent.

import { s } from "./dom.js";

const NODE_W = 160;
const NODE_H = 46;
const GAP_X = 64; // room for the arrows between two columns
const GAP_Y = 18;
const MARGIN = 12;
const NAME_CHARS = 20; // what fits in a node at 12 px; the full name is in the node's <title>

/** Each step's level by name: 0 without dependencies, else one more than its deepest dependency. */
export function levels(steps) {
  const byName = new Map(steps.map((step) => [step.task, step]));
  const level = new Map();
  const visiting = new Set(); // the API refuses cycles; this only keeps a bad answer from recursing for ever
  const of = (name) => {
    if (level.has(name)) return level.get(name);
    const step = byName.get(name);
    if (!step || visiting.has(name)) return -1;
    visiting.add(name);
    const deepest = Math.max(-1, ...step.depends_on.map(of));
    visiting.delete(name);
    level.set(name, deepest + 1);
    return deepest + 1;
  };
  for (const step of steps) of(step.task);
  return level;
}

function clipped(name) {
  return name.length > NAME_CHARS ? `${name.slice(0, NAME_CHARS - 1)}…` : name;
}

/** Draws the `steps` of a workflow run ({task, status, depends_on}, in step order) into `svg`, keeping its
 *  <title>, <desc> and <defs>; returns the levels. */
export function drawGraph(svg, steps) {
  for (const old of svg.querySelectorAll(":scope > g")) old.remove();
  const level = levels(steps);
  const columns = [];
  for (const step of steps) (columns[level.get(step.task)] ||= []).push(step);
  const tallest = Math.max(1, ...columns.map((c) => c.length));
  const width = MARGIN * 2 + columns.length * NODE_W + Math.max(0, columns.length - 1) * GAP_X;
  const height = MARGIN * 2 + tallest * NODE_H + (tallest - 1) * GAP_Y;
  // Drawn at its own size (a three-step run is not blown up to the panel's width), shrunk when it is wider.
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);

  const at = new Map();
  columns.forEach((column, col) => {
    const top = MARGIN + ((tallest - column.length) * (NODE_H + GAP_Y)) / 2; // each column centred
    column.forEach((step, row) => {
      at.set(step.task, { x: MARGIN + col * (NODE_W + GAP_X), y: top + row * (NODE_H + GAP_Y) });
    });
  });

  const edges = s("g", { class: "edges" });
  for (const step of steps) {
    const to = at.get(step.task);
    for (const dep of step.depends_on) {
      const from = at.get(dep);
      if (!from) continue;
      const x1 = from.x + NODE_W;
      const y1 = from.y + NODE_H / 2;
      const x2 = to.x - 2; // the arrow's tip on the node's edge, not under it
      const y2 = to.y + NODE_H / 2;
      const bend = (x2 - x1) / 2;
      edges.append(s("path", {
        class: "edge", "data-from": dep, "data-to": step.task, "marker-end": "url(#workflow-arrow)",
        d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`,
      }));
    }
  }

  const nodes = s("g", { class: "nodes" });
  for (const step of steps) {
    const { x, y } = at.get(step.task);
    nodes.append(s("g", {
      class: `node ${step.status}`, "data-step": step.task, "data-status": step.status, transform: `translate(${x} ${y})`,
    },
    s("title", {}, `${step.task}: ${step.status}`),
    s("rect", { width: NODE_W, height: NODE_H, rx: 6 }),
    s("text", { class: "step", x: 10, y: 19 }, clipped(step.task)),
    s("text", { class: "state", x: 10, y: 36 }, step.status)));
  }
  svg.append(edges, nodes);
  return level;
}
