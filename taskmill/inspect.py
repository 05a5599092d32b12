"""`taskmill logs NAME` and `taskmill audit NAME`: a task's latest output and status history, over the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx


class InspectError(Exception):
    """Why the command could not answer (unreachable API, refused token, unknown task)."""


def _get(client: httpx.Client, path: str, **params: Any) -> Any:
    try:
        response = client.get(path, params=params)
    except httpx.HTTPError as exc:
        raise InspectError(f"cannot reach the API at {client.base_url}: {exc}") from None
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise InspectError(f"{path}: {response.status_code} {detail}")
    return response.json()


def _find_task(client: httpx.Client, name: str) -> dict[str, Any]:
    page = _get(client, "/tasks", name_prefix=name, limit=500)
    for task in page["items"]:
        if task["name"] == name:
            found: dict[str, Any] = task
            return found
    raise InspectError(f"no task named {name!r}")


def _when(value: str | None) -> str:
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def logs(client: httpx.Client, name: str, runs: int = 5) -> str:
    task = _find_task(client, name)
    out = []
    for run in _get(client, f"/tasks/{task['id']}/runs", limit=runs):
        detail = _get(client, f"/runs/{run['id']}")
        out.append(
            f"run {run['id']}  {run['status']}  scheduled {_when(run['scheduled_time'])}  worker {run['worker'] or '-'}"
        )
        for attempt in detail["attempts"]:
            result = attempt["result"] if isinstance(attempt["result"], dict) else {}
            out.append(
                f"  attempt {attempt['attempt']}: {attempt['status']}"
                + (f" ({attempt['error']})" if attempt["error"] else "")
                + (f" in {attempt['duration_ms']:.0f} ms" if attempt["duration_ms"] is not None else "")
            )
            for stream in ("stdout", "stderr", "body"):
                if result.get(stream):
                    out += [f"    {stream}| {line}" for line in str(result[stream]).rstrip("\n").splitlines()]
    return "\n".join(out) if out else f"task {name!r} has no runs yet"


def audit(client: httpx.Client, name: str, runs: int = 20) -> str:
    task = _find_task(client, name)
    rows = []
    for run in _get(client, f"/tasks/{task['id']}/runs", limit=runs):
        for t in _get(client, f"/runs/{run['id']}")["transitions"]:
            rows.append(
                [
                    _when(t["at"]),
                    str(run["id"]),
                    t["from_status"] or "-",
                    t["to_status"],
                    str(t["attempt"]),
                    t["worker"] or "-",
                ]
            )
    rows.sort(key=lambda r: (r[0], r[1]))
    return table(["at", "run", "from", "to", "attempt", "worker"], rows)
