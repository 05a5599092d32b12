// Create and edit a task in a dialog. A cron, interval or one-off schedule is previewed as the user types
// (POST /schedule-preview); the server's 422s are shown beside the field they name. Only the types the token may
// write are offered: `command` needs tasks:command. A field shown for some schedule kinds only names them in its
// data-kind ("cron interval"); the catch-up window is shown for misfire "all" only (data-misfire), the concurrency
// key once a cap is set (or while it still holds a key).

import { COMMAND_TYPE, NOBODY, mayWriteType } from "./access.js";
import { ApiError, api } from "./api.js";
import { $, debounce, h, latestOnly, toast } from "./dom.js";

const FIELDS = ["name", "type", "payload", "schedule", "at", "cron", "timezone", "every_seconds", "window_seconds",
  "misfire", "misfire_grace_seconds", "catchup_window_seconds", "overlap", "max_concurrency", "concurrency_key",
  "max_retries", "timeout_seconds", "priority"];
// Where a field the API names is shown: "schedule.cron" beside the cron input, "payload.url" beside the payload.
function fieldOf(name) {
  const parts = name.split(".");
  const key = parts[0] === "schedule" && parts.length > 1 ? parts[1] : parts[0];
  return FIELDS.includes(key) ? key : null;
}

// A check across fields fails on the whole body ("(body)") and names its field first in the reason:
// "window_seconds: at most the interval (60 s), ...".
const NAMED = /^([a-z_.]+): (.+)$/s;

// What each misfire policy does with the runs that could not start within the grace of their time.
const MISFIRE = {
  skip: "Every missed run is recorded as skipped.",
  once: "Only the latest missed run runs; the ones before it are recorded as skipped.",
  all: "Every missed run within the catch-up window runs, oldest first; older ones are recorded as skipped.",
};
// What each overlap policy does with a run that falls due while the task's previous run is still in flight.
const OVERLAP = {
  allow: "It runs beside the previous run.",
  skip: "It is recorded as skipped.",
  queue_one: "The latest such run waits until the previous run ends; older ones are recorded as skipped.",
  cancel_previous: "The previous run is cancelled (its processor stops it) and the new one runs.",
};
// The schedule kinds a run may be spread over a window in, and whose runs may overlap.
const SPREAD = ["cron", "interval"];

function pad(n) { return String(n).padStart(2, "0"); }

const EMPTY = { integer: 0, number: 0, string: "", boolean: false, array: [], object: {} };
// The input each simple JSON schema type gets in the payload's fields.
const INPUTS = { integer: "number", number: "number", string: "text", boolean: "checkbox" };

/** A payload to start from: each required property of a JSON schema (and each with a default), at its default or
 *  the empty value of its type. Built-in and handler types alike. */
export function skeleton(schema) {
  const out = {};
  const required = new Set(schema?.required || []);
  for (const [name, prop] of Object.entries(schema?.properties || {})) {
    if (!required.has(name) && !("default" in prop)) continue;
    out[name] = "default" in prop ? prop.default : (EMPTY[prop.type] ?? null);
  }
  return out;
}

/** An ISO instant as the value of a datetime-local input, in the browser's zone. */
function localInput(iso) {
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export class TaskForm {
  constructor({ onSaved }) {
    this.onSaved = onSaved;
    this.dialog = $("#task-dialog");
    this.form = $("#task-form");
    this.types = [];
    this.access = NOBODY;
    this.editing = null; // the task being edited, or null for a new one
    this.skeleton = "{}"; // the payload the form wrote for the chosen type (replaced while the user keeps it)
    this.previewRequest = latestOnly(); // the user types on: only the newest preview is shown
    $("#local-zone").textContent = `your time, ${Intl.DateTimeFormat().resolvedOptions().timeZone}`;
    const zones = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
    $("#zones").replaceChildren(...["UTC", ...zones].map((z) => h("option", { value: z })));
    for (const radio of this.form.elements.kind) radio.addEventListener("change", () => this.kindChanged());
    const preview = debounce(() => this.preview(), 250);
    for (const id of ["#f-cron", "#f-timezone", "#f-every", "#f-at"]) $(id).addEventListener("input", preview);
    $("#f-type").addEventListener("change", () => this.typeChanged());
    $("#f-misfire").addEventListener("change", () => this.misfireChanged());
    $("#f-overlap").addEventListener("change", () => this.overlapChanged());
    $("#f-cap").addEventListener("input", () => this.capChanged());
    $("#task-cancel").addEventListener("click", () => this.dialog.close());
    this.form.addEventListener("submit", (e) => { e.preventDefault(); this.submit(); });
  }

  setTypes(types) {
    this.types = types;
    this.offerTypes();
  }

  /** The type list: the types the token may write, the one chosen kept when it still is. */
  offerTypes() {
    const select = $("#f-type");
    const chosen = select.value;
    const offered = this.types.filter((t) => mayWriteType(this.access, t.name));
    select.replaceChildren(...offered.map((t) => h("option", { value: t.name }, t.name)));
    if (offered.some((t) => t.name === chosen)) select.value = chosen;
  }

  /** What the token may do. An open form (a token was refused while it was being filled in) stays as it is until
   *  the API has answered for the next token; if that one may not save it, it closes, saying why. */
  setAccess(access) {
    if (this.dialog.open && access === NOBODY) return;
    this.access = access;
    if (!this.dialog.open) {
      this.offerTypes();
      return;
    }
    // Editing into or out of a command task needs tasks:command: the type it had and the type chosen both count.
    const types = [$("#f-type").value, ...(this.editing ? [this.editing.type] : [])];
    if (!types.every((type) => mayWriteType(access, type))) {
      this.dialog.close();
      toast(`This token (${access.subject}) may not ${this.editing ? `edit ${this.editing.name}` : "create this task"}.`, "error");
      return;
    }
    this.offerTypes();
    this.typeChanged();
  }

  kind() { return this.form.elements.kind.value; }

  kindChanged() {
    for (const el of this.form.querySelectorAll("[data-kind]")) el.hidden = !el.dataset.kind.split(" ").includes(this.kind());
    this.preview();
  }

  misfireChanged() {
    const misfire = $("#f-misfire").value;
    for (const el of this.form.querySelectorAll("[data-misfire]")) el.hidden = el.dataset.misfire !== misfire;
    $("#h-misfire").textContent = MISFIRE[misfire] || "";
  }

  overlapChanged() {
    $("#h-overlap").textContent = OVERLAP[$("#f-overlap").value] || "";
  }

  /** The key counts only with a cap: shown once one is set, and kept in view while it holds a key (what was typed
   *  is not dropped unseen; the server says a key needs a cap). Emptying the key does not hide it under the cursor. */
  capChanged() {
    $("#key-field").hidden = $("#f-cap").value === "" && $("#f-key").value === "";
  }

  typeChanged() {
    const type = this.types.find((t) => t.name === $("#f-type").value);
    $("#h-type").textContent = type ? type.description : "";
    const props = Object.keys(type?.payload_schema?.properties || {});
    const required = new Set(type?.payload_schema?.required || []);
    $("#h-payload").textContent = props.length
      ? `Fields: ${props.map((p) => (required.has(p) ? `${p} (required)` : p)).join(", ")}`
      : "Any JSON object.";
    // A new task's payload starts as the type's required fields (and those with defaults), from its JSON schema,
    // as long as the user has not written one of their own.
    const payload = $("#f-payload");
    if (!this.editing && [this.skeleton, "", "{}"].includes(payload.value.trim())) {
      this.skeleton = JSON.stringify(skeleton(type?.payload_schema), null, 2);
      payload.value = this.skeleton;
    }
    this.payloadFields(type?.payload_schema);
  }

  /** An input for each top-level text, number or yes/no property of the schema, kept in step with the JSON above
   *  (which stays the whole payload: nested values are written there). */
  payloadFields(schema) {
    const box = $("#payload-fields");
    const simple = Object.entries(schema?.properties || {}).filter(([, p]) => INPUTS[p.type] || p.enum);
    const required = new Set(schema?.required || []);
    box.replaceChildren(h("legend", {}, "Payload fields"), ...simple.map(([name, prop]) => {
      const id = `pf-${name}`;
      const input = prop.enum
        ? h("select", { id }, ...prop.enum.map((v) => h("option", { value: JSON.stringify(v) }, String(v))))
        : h("input", { id, type: INPUTS[prop.type], step: prop.type === "number" ? "any" : null });
      const current = this.payloadValue()?.[name];
      if (current !== undefined) {
        if (input.type === "checkbox") input.checked = Boolean(current);
        else input.value = prop.enum ? JSON.stringify(current) : String(current);
      }
      input.addEventListener("input", () => this.setPayloadField(name, prop, input));
      input.addEventListener("change", () => this.setPayloadField(name, prop, input));
      const text = `${name}${required.has(name) ? " (required)" : ""}${prop.description ? `: ${prop.description}` : ""}`;
      return h("label", { for: id }, text, input);
    }));
    box.hidden = !simple.length;
  }

  payloadValue() {
    try {
      const value = JSON.parse($("#f-payload").value || "{}");
      return value && typeof value === "object" && !Array.isArray(value) ? value : null;
    } catch {
      return null; // being typed: the fields leave it alone
    }
  }

  setPayloadField(name, prop, input) {
    const payload = this.payloadValue();
    if (payload === null) return;
    if (input.type === "checkbox") payload[name] = input.checked;
    else if (prop.enum) payload[name] = JSON.parse(input.value);
    else if (input.value === "") delete payload[name];
    else payload[name] = prop.type === "integer" || prop.type === "number" ? Number(input.value) : input.value;
    $("#f-payload").value = JSON.stringify(payload, null, 2);
    this.skeleton = null; // written by the user now: a change of type keeps it
  }

  openNew() {
    if (!this.access.may_write) return; // (the button is hidden then)
    this.editing = null;
    this.form.reset();
    $("#f-payload").value = "{}";
    $("#f-timezone").value = "UTC";
    $("#task-form-title").textContent = "New task";
    $("#task-submit").textContent = "Create task";
    $("#f-secrets").hidden = true;
    this.open();
  }

  async openEdit(taskId) {
    let task;
    try {
      task = await api("GET", `/tasks/${taskId}`);
    } catch (error) {
      toast(`Task ${taskId} could not be loaded: ${error.message}`, "error");
      return;
    }
    if (!mayWriteType(this.access, task.type)) {
      const scope = task.type === COMMAND_TYPE ? "tasks:command" : "tasks:write";
      toast(`Editing ${task.name} needs the scope '${scope}', which this token lacks.`, "error");
      return;
    }
    this.editing = task;
    this.form.reset();
    $("#task-form-title").textContent = `Edit ${task.name}`;
    $("#task-submit").textContent = "Save changes";
    $("#f-name").value = task.name;
    $("#f-type").value = task.type;
    $("#f-payload").value = JSON.stringify(task.payload, null, 2);
    this.form.elements.kind.value = task.schedule.kind;
    $("#f-cron").value = task.schedule.cron || "";
    $("#f-timezone").value = task.schedule.timezone || "UTC";
    $("#f-every").value = task.schedule.every_seconds ?? "";
    $("#f-at").value = task.schedule.at ? localInput(task.schedule.at) : "";
    $("#f-window").value = task.window_seconds;
    $("#f-misfire").value = task.misfire;
    $("#f-grace").value = task.misfire_grace_seconds;
    $("#f-catchup").value = task.catchup_window_seconds;
    $("#f-overlap").value = task.overlap;
    $("#f-cap").value = task.max_concurrency ?? "";
    $("#f-key").value = task.concurrency_key ?? "";
    $("#f-retries").value = task.max_retries;
    $("#f-timeout").value = task.timeout_seconds;
    $("#f-priority").value = task.priority;
    const secrets = $("#f-secrets");
    secrets.hidden = !task.secrets.length;
    secrets.textContent = `Secrets ${task.secrets.join(", ")} are kept as they are.`;
    this.open();
  }

  open() {
    this.clearErrors();
    this.typeChanged();
    this.kindChanged();
    this.misfireChanged();
    this.overlapChanged();
    this.capChanged();
    this.dialog.showModal();
    $("#f-name").focus();
  }

  clearErrors() {
    $("#form-error").hidden = true;
    for (const key of FIELDS) this.fieldError(key, "");
  }

  fieldError(key, message) {
    const el = $(`#e-${key}`);
    el.textContent = message;
    const input = document.querySelector(`[aria-describedby~="e-${key}"]`);
    if (input) {
      if (message) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
    }
  }

  schedule() {
    const kind = this.kind();
    const schedule = { kind };
    if (kind === "cron") Object.assign(schedule, { cron: $("#f-cron").value.trim(), timezone: $("#f-timezone").value.trim() || "UTC" });
    if (kind === "interval") schedule.every_seconds = $("#f-every").value === "" ? null : Number($("#f-every").value);
    if (kind === "once") schedule.at = $("#f-at").value ? new Date($("#f-at").value).toISOString() : null;
    return schedule;
  }

  async preview() {
    const box = $("#preview");
    const current = this.previewRequest(); // also makes any preview still on its way stale
    const schedule = this.schedule();
    for (const key of ["schedule", "at", "cron", "timezone", "every_seconds"]) this.fieldError(key, "");
    const incomplete = (schedule.kind === "cron" && !schedule.cron) || (schedule.kind === "interval" && !schedule.every_seconds)
      || (schedule.kind === "once" && !schedule.at);
    if (schedule.kind === "immediate" || incomplete) {
      box.hidden = true;
      return;
    }
    try {
      const result = await api("POST", "/schedule-preview", { body: schedule, query: { count: 5 } });
      if (!current()) return;
      const zone = schedule.kind === "cron" ? schedule.timezone : undefined;
      const inZone = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium", timeZone: zone });
      $("#preview-description").textContent = result.description;
      $("#preview-runs").replaceChildren(...result.next_runs.map((iso) =>
        h("li", {}, h("time", { datetime: iso }, inZone.format(new Date(iso))), zone ? ` ${zone}` : "",
          h("span", { class: "muted" }, ` · ${iso}`))));
      box.hidden = false;
      box.classList.remove("invalid");
    } catch (error) {
      if (!current()) return;
      box.hidden = true;
      if (error instanceof ApiError && error.status === 422) this.showErrors(error, "schedule.");
    }
  }

  showErrors(error, prefix = "") {
    const loose = [];
    for (const [field, reason] of Object.entries(error.fields)) {
      const named = field === "(body)" && !prefix ? NAMED.exec(reason) : null;
      const key = named ? fieldOf(named[1]) : fieldOf(field === "(body)" ? prefix.replace(/\.$/, "") : prefix + field);
      if (key) this.fieldError(key, named ? named[2] : reason);
      else loose.push(`${field}: ${reason}`);
    }
    if (!Object.keys(error.fields).length || loose.length) {
      const box = $("#form-error");
      box.textContent = loose.length ? loose.join("; ") : error.message;
      box.hidden = false;
    }
  }

  async submit() {
    this.clearErrors();
    let payload;
    try {
      payload = JSON.parse($("#f-payload").value || "{}");
      if (payload === null || typeof payload !== "object" || Array.isArray(payload)) throw new Error("not an object");
    } catch {
      this.fieldError("payload", "is not a JSON object, e.g. {\"ms\": 100}");
      $("#f-payload").focus();
      return;
    }
    const number = (id) => ($(id).value === "" ? undefined : Number($(id).value));
    const schedule = this.schedule();
    const misfire = $("#f-misfire").value;
    const body = {
      name: $("#f-name").value,
      type: $("#f-type").value,
      payload,
      schedule,
      misfire,
      misfire_grace_seconds: number("#f-grace"),
      max_concurrency: number("#f-cap") ?? null,
      concurrency_key: !$("#key-field").hidden && $("#f-key").value !== "" ? $("#f-key").value : null,
      max_retries: number("#f-retries"),
      timeout_seconds: number("#f-timeout"),
      priority: number("#f-priority"),
    };
    // Only a cron or interval schedule is spread (the API refuses a window for the others) or overlaps (a one-off
    // keeps the default); the catch-up window counts for misfire "all" only.
    if (SPREAD.includes(schedule.kind)) {
      Object.assign(body, { window_seconds: number("#f-window"), overlap: $("#f-overlap").value });
    }
    if (misfire === "all") body.catchup_window_seconds = number("#f-catchup");
    if (this.editing) {
      // PUT replaces the definition: what this form does not show keeps its value (secrets are kept when absent).
      const t = this.editing;
      Object.assign(body, { active: t.active, retry_delay_seconds: t.retry_delay_seconds, backoff: t.backoff,
        estimated_ms: t.estimated_ms });
      if (misfire !== "all") body.catchup_window_seconds = t.catchup_window_seconds;
      if (!SPREAD.includes(schedule.kind)) body.overlap = t.overlap;
    }
    const submit = $("#task-submit");
    submit.disabled = true;
    try {
      const saved = this.editing
        ? await api("PUT", `/tasks/${this.editing.id}`, { body })
        : await api("POST", "/tasks", { body });
      this.dialog.close();
      toast(`${saved.name} ${this.editing ? "saved" : "created"}.`);
      this.onSaved(saved, { created: !this.editing });
    } catch (error) {
      if (error.status === 409) this.fieldError("name", error.message);
      else if (error.status === 422) this.showErrors(error);
      else {
        // A 403 (a scope the token lacks, e.g. tasks:command) shows the API's reason, like any other refusal.
        $("#form-error").textContent = error.status === 401 ? "The token was refused: paste a new one, then save again." : error.message;
        $("#form-error").hidden = false;
      }
      const first = this.form.querySelector("[aria-invalid=true]");
      if (first) first.focus();
    } finally {
      submit.disabled = false;
    }
  }
}
