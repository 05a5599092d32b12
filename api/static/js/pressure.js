// The queue-pressure panel (GET /pressure), polled with the rest of the page: runs due and not handed out, how long
// the oldest has waited, each queue's depth, and the live processors beside those the forecast needs now.

import { api } from "./api.js";
import { $, clockTime, h, ms } from "./dom.js";

/** "+1.2 s", "−300 ms": an error with its sign. */
export function signedMs(value) {
  if (value === null || value === undefined) return "—";
  return `${value < 0 ? "−" : "+"}${ms(Math.abs(value))}`;
}

/** "+12.5 %", or "n/a" when there is nothing to divide by. */
export function percentText(value) {
  if (value === null || value === undefined) return "n/a";
  return `${value < 0 ? "−" : "+"}${Math.abs(value).toFixed(1)} %`;
}

/** "45 s", "12 min 5 s", "3 h 20 min". */
export function age(seconds) {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

const plural = (n, word) => `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`;

export async function refreshPressure() {
  const error = $("#pressure-error");
  let p;
  try {
    p = await api("GET", "/pressure");
  } catch (err) {
    error.textContent = `The queue pressure could not be loaded: ${err.message}`;
    error.hidden = false;
    return;
  }
  error.hidden = true;
  const backlog = $("#pressure-backlog");
  backlog.textContent = p.due_backlog_runs ? `${plural(p.due_backlog_runs, "run")} due` : "Nothing due";
  backlog.classList.toggle("bad", p.due_backlog_runs > 0);
  $("#pressure-oldest").textContent = p.due_backlog_runs ? `waiting ${age(p.oldest_due_s)}` : "—";
  const short = p.processors_live < p.processors_required;
  const processors = $("#pressure-processors");
  processors.replaceChildren(`${p.processors_live} live / ${p.processors_required} required now`,
    h("span", { class: "muted" }, ` (${ms(p.required_ms)} of compute in this ${p.bucket_seconds} s)`));
  processors.classList.toggle("bad", short);
  processors.title = short ? "Fewer processors are alive than the forecast needs for the bucket under way." : "";
  const queues = $("#pressure-queues");
  if (p.queues_unknown) {
    queues.replaceChildren(h("span", { class: "bad" }, `Unknown: ${p.queues_unknown}`));
  } else if (!p.queues.length) {
    queues.replaceChildren(h("span", { class: "muted" }, "No queue declared yet"));
  } else {
    queues.replaceChildren(h("ul", { class: "queues" }, p.queues.map((q) => h("li", { "data-queue": q.queue },
      h("code", {}, q.queue), `: ${q.ready.toLocaleString()} ${q.queue === "dead" ? "held" : "ready"}`))));
  }
  $("#pressure-updated").textContent = `${p.transport === "postgres" ? "PostgreSQL" : "RabbitMQ"} transport · updated ${clockTime(new Date())}`;
}
