// Building DOM nodes. Text from data only ever becomes text nodes (never HTML): a task named "<script>" shows as
// those characters.

const PROPS = new Set(["type", "value", "checked", "disabled", "hidden", "title", "id", "name"]);

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** h("td", {class: "num", on: {click}, "aria-label": "..."}, "text", node, [more]) */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "on") for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
    else if (PROPS.has(key)) el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  append(el, children);
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** A run's (or a workflow run's) status, coloured by style.css. */
export function badge(status) {
  return h("span", { class: `badge ${status}` }, status);
}

const dateTime = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
});
const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

/** A <time> in the browser's zone, the UTC instant in its title. */
export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return h("time", { datetime: iso, title: date.toISOString() }, dateTime.format(date));
}

export function clockTime(date) {
  return clock.format(date);
}

export function ms(value) {
  if (value === null || value === undefined) return "—";
  if (value >= 10_000) return `${(value / 1000).toFixed(1)} s`;
  return `${value >= 100 ? Math.round(value) : Number(value.toFixed(1))} ms`;
}

export function tookMs(started, finished) {
  if (!started || !finished) return null;
  return new Date(finished) - new Date(started);
}

/** For requests whose replies may come back out of order: each call to the returned function starts a request
 *  and gives back a check that stays true only until the next call. */
export function latestOnly() {
  let last = 0;
  return () => {
    const mine = ++last;
    return () => mine === last;
  };
}

export function debounce(fn, delay) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), delay);
  };
}

const toastEl = () => document.getElementById("toast");
let toastTimer;

/** A short message in the page's status region (read out by screen readers). */
export function toast(message, kind = "info") {
  const el = toastEl();
  el.textContent = message;
  el.dataset.kind = kind;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, kind === "error" ? 8000 : 4000);
}
