// The task grid: sort by a column either way, filter by type, state, completion and name prefix, keyset pages, an
// active switch, a Run now and an edit button per row when the token may change the task. A one-off whose runs have
// all ended is marked completed; a task with a concurrency cap shows it beside its schedule. Each task shows its next
// run and the status of its latest one, kept current by the page's polls (in place: the rows, and focus, stay).

import { NOBODY, mayWriteType } from "./access.js";
import { api } from "./api.js";
import { $, badge, debounce, h, latestOnly, toast, when } from "./dom.js";

export function scheduleText(schedule) {
  switch (schedule.kind) {
    case "cron": return `cron ${schedule.cron}${schedule.timezone !== "UTC" ? ` (${schedule.timezone})` : ""}`;
    case "interval": return `every ${schedule.every_seconds} s`;
    case "once": return h("span", {}, "once at ", when(schedule.at));
    default: return "immediately";
  }
}

/** A capped task's limit, beside its schedule: "≤3 at once", the key it shares (if any) in its title. */
function capText(task) {
  const key = task.concurrency_key;
  const shared = key === null ? "" : `, counted with every task keyed ${JSON.stringify(key)}`;
  return h("span", { class: "muted cap", title: `At most ${task.max_concurrency} runs in flight at once${shared}` },
    `≤${task.max_concurrency} at once`);
}

/** The next run's time, or a dash. */
function nextRun(task) {
  return task.next_run_at ? when(task.next_run_at) : h("span", { class: "muted" }, "—");
}

/** The latest run's status and time, or a dash. */
function lastRun(task) {
  const run = task.last_run;
  if (!run) return h("span", { class: "muted" }, "—");
  return [badge(run.status), " ", h("span", { class: "muted" }, when(run.scheduled_time))];
}

export class TaskGrid {
  constructor({ onEdit, onShowRuns, onRan = () => {} }) {
    this.onEdit = onEdit;
    this.onShowRuns = onShowRuns;
    this.onRan = onRan;
    this.sort = "id";
    this.cursors = [null]; // the cursor of each page seen so far: Previous goes back one
    this.next = null;
    this.access = NOBODY; // what the token may do: no switch or edit button until GET /me says so
    this.items = []; // the tasks of the page shown, drawn again when the access changes
    this.loading = false; // a page is being loaded: polls leave the grid to it
    this.request = latestOnly(); // an older filter's reply must not overwrite a newer one's
    this.body = $("#task-grid tbody");
    this.status = $("#tasks-status");
    for (const th of document.querySelectorAll("#task-grid th[data-sort]")) {
      th.querySelector("button").addEventListener("click", () => this.sortBy(th.dataset.sort));
    }
    const refilter = () => { this.cursors = [null]; this.load(); };
    $("#filter-name").addEventListener("input", debounce(refilter, 300));
    $("#filter-type").addEventListener("change", refilter);
    $("#filter-active").addEventListener("change", refilter);
    $("#filter-completed").addEventListener("change", refilter);
    $("#task-filters").addEventListener("submit", (e) => { e.preventDefault(); refilter(); });
    $("#tasks-next").addEventListener("click", () => { this.cursors.push(this.next); this.load(); });
    $("#tasks-prev").addEventListener("click", () => { this.cursors.pop(); this.load(); });
  }

  setAccess(access) {
    this.access = access;
    this.body.replaceChildren(...this.items.map((task) => this.row(task)));
  }

  setTypes(types) {
    const select = $("#filter-type");
    select.replaceChildren(h("option", { value: "" }, "All types"), ...types.map((t) => h("option", { value: t.name }, t.name)));
  }

  sortBy(column) {
    this.setSort(this.sort === column ? `-${column}` : column);
    this.load();
  }

  setSort(sort) {
    this.sort = sort;
    for (const th of document.querySelectorAll("#task-grid th[data-sort]")) {
      const key = th.dataset.sort;
      th.setAttribute("aria-sort", sort === key ? "ascending" : sort === `-${key}` ? "descending" : "none");
    }
    this.cursors = [null];
  }

  /** Newest first, no filters, first page: where a task just created is. */
  showNewest(taskId) {
    $("#task-filters").reset();
    this.setSort("-id");
    this.load(taskId);
  }

  /** The query of the page shown. */
  query() {
    return {
      sort: this.sort,
      limit: 20,
      name_prefix: $("#filter-name").value,
      type: $("#filter-type").value,
      active: $("#filter-active").value,
      completed: $("#filter-completed").value,
      cursor: this.cursors[this.cursors.length - 1],
    };
  }

  /** Loads the current page; the row of `highlight` (a task id), if on it, is marked as just saved. */
  async load(highlight = null) {
    const query = this.query();
    this.status.textContent = "Loading tasks…";
    const current = this.request();
    this.loading = true;
    let page;
    try {
      page = await api("GET", "/tasks", { query });
    } catch (error) {
      if (!current()) return;
      this.loading = false;
      this.status.textContent = `Tasks could not be loaded: ${error.message}`;
      this.status.classList.add("error");
      return;
    }
    if (!current()) return;
    this.loading = false;
    this.show(page, query, highlight);
  }

  show(page, query, highlight = null) {
    this.status.classList.remove("error");
    this.next = page.next_cursor;
    this.items = page.items;
    this.body.replaceChildren(...page.items.map((task) => this.row(task, task.id === highlight)));
    const filtered = query.name_prefix || query.type || query.active || query.completed;
    this.status.textContent = page.items.length
      ? `${page.items.length} task${page.items.length === 1 ? "" : "s"} on this page`
      : filtered ? "No task matches these filters."
        : this.access.may_write ? "No tasks yet: create one with New task." : "No tasks yet.";
    $("#tasks-page").textContent = `Page ${this.cursors.length}`;
    $("#tasks-prev").disabled = this.cursors.length < 2;
    $("#tasks-next").disabled = !this.next;
  }

  /** Polled: the page shown, read again (not while a load is under way). The same tasks keep their rows, and focus:
   *  only their next and last runs are written again; a page whose tasks changed (one added or deleted elsewhere)
   *  is drawn anew. */
  async refresh() {
    if (this.loading) return;
    const query = this.query();
    const current = this.request();
    let page;
    try {
      page = await api("GET", "/tasks", { query });
    } catch {
      return; // the next poll tries again (a load says what went wrong)
    }
    if (!current()) return;
    const same = page.items.length === this.items.length && page.items.every((t, i) => t.id === this.items[i].id);
    if (!same) {
      this.show(page, query);
      return;
    }
    this.items = page.items;
    this.next = page.next_cursor;
    for (const task of page.items) {
      const row = this.body.querySelector(`tr[data-task-id="${task.id}"]`);
      row?.querySelector("td.next").replaceChildren(nextRun(task));
      row?.querySelector("td.last").replaceChildren(...[lastRun(task)].flat());
    }
  }

  row(task, fresh = false) {
    // Pausing and resuming need tasks:write; editing a command task needs tasks:command too.
    const state = task.active ? "active" : "inactive";
    const toggle = this.access.may_write ? h("input", {
      type: "checkbox", role: "switch", checked: task.active, "aria-label": `Active: ${task.name}`,
      on: { change: () => this.setActive(task, toggle) },
    }) : null;
    return h("tr", { "data-task-id": task.id, class: fresh ? "fresh" : null },
      h("td", { class: "num" }, task.id),
      h("th", { scope: "row", class: "name" }, task.name),
      h("td", {}, task.type, task.priority ? [" ", h("span", { class: "muted priority",
        title: `Priority ${task.priority} of 9: runs before the waiting runs of lower priorities` },
      `p${task.priority}`)] : null),
      h("td", { class: "schedule" }, scheduleText(task.schedule), task.max_concurrency ? [" ", capText(task)] : null),
      h("td", { class: "active" }, toggle
        ? h("label", { class: "switch" }, toggle, h("span", { "aria-hidden": "true" }, state))
        : state,
      task.completed ? [" ", h("span", { class: "badge completed" }, "completed")] : null),
      h("td", { class: "next" }, nextRun(task)),
      h("td", { class: "last" }, lastRun(task)),
      h("td", {}, when(task.created_at)),
      h("td", { class: "actions" },
        this.access.may_write
          ? h("button", { type: "button", class: "secondary small", "aria-label": `Run ${task.name} now`, on: { click: (e) => this.runNow(task, e.currentTarget) } }, "Run now")
          : null,
        mayWriteType(this.access, task.type)
          ? h("button", { type: "button", class: "secondary small", "aria-label": `Edit ${task.name}`, on: { click: () => this.onEdit(task.id) } }, "Edit")
          : null,
        h("button", { type: "button", class: "secondary small", "aria-label": `Runs of ${task.name}`, on: { click: () => this.onShowRuns(task) } }, "Runs")));
  }

  /** One run of the task now (POST /tasks/{id}/invoke). */
  async runNow(task, button) {
    button.disabled = true;
    try {
      const run = await api("POST", `/tasks/${task.id}/invoke`);
      toast(`Run #${run.id} of ${task.name} is due now.`);
      await this.onRan(run);
    } catch (error) {
      toast(`Could not run ${task.name}: ${error.message}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  async setActive(task, toggle) {
    const wanted = toggle.checked;
    toggle.disabled = true;
    try {
      // Pausing and resuming answer the definition alone: the runs shown stay until the next poll reads them again.
      const answer = await api("PUT", `/tasks/${task.id}/${wanted ? "active" : "inactive"}`);
      const shown = this.items.find((t) => t.id === task.id) || task;
      const updated = { ...answer, next_run_at: shown.next_run_at, last_run: shown.last_run };
      this.items = this.items.map((t) => (t.id === updated.id ? updated : t));
      const row = this.row(updated);
      this.body.querySelector(`tr[data-task-id="${updated.id}"]`)?.replaceWith(row);
      row.querySelector("input[role=switch]")?.focus();
      toast(`${updated.name} is ${updated.active ? "active" : "inactive"} now.`);
    } catch (error) {
      toggle.checked = !wanted;
      toggle.disabled = false;
      toast(`Could not change ${task.name}: ${error.message}`, "error");
    }
  }
}
