// Calls to the taskmill API with the pasted bearer token; errors become ApiError with the problem+json body.

const TOKEN_KEY = "taskmill.token";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
    // 422s list each field and its reason: {"schedule.cron": "invalid cron expression: ..."}
    this.fields = {};
    for (const e of this.problem.errors || []) {
      this.fields[e.field] = this.fields[e.field] ? `${this.fields[e.field]}; ${e.reason}` : e.reason;
    }
  }
}

let unauthorized = () => {};

/** `handler(reason)` runs when the API refuses the token (or there is none): the page asks for one again. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  const clean = value.trim().replace(/^bearer\s+/i, "");
  localStorage.setItem(TOKEN_KEY, clean);
}

export async function api(method, path, { body, query } = {}) {
  const bearer = token();
  if (!bearer) {
    unauthorized("");
    throw new ApiError(401, { detail: "no API token yet" });
  }
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, String(value));
  }
  const headers = { Authorization: `Bearer ${bearer}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, { detail: "the API cannot be reached" });
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text.slice(0, 200) };
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401) unauthorized(`The API refused the token: ${error.message}`);
    throw error;
  }
  return data;
}
