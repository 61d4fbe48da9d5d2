// flowlink console: the live parts. Pages work without this file; it only adds live updates.
"use strict";

function setText(el, value) { if (el) { el.textContent = value; } }

// Mark the page once a live stream is connected (tests and the curious can wait for it).
function opened(source) {
  source.addEventListener("open", () => { document.documentElement.dataset.live = "open"; });
  return source;
}

function setBadge(el, status) {
  if (!el) { return; }
  el.textContent = status;
  el.className = "badge " + status;
}

// Execution page: follow log lines and status until the execution ends.
function followExecution(root) {
  const log = document.getElementById("log");
  const state = document.getElementById("follow-state");
  let follow = true;
  const atBottom = () => log.scrollHeight - log.scrollTop - log.clientHeight < 24;
  log.scrollTop = log.scrollHeight;
  log.addEventListener("scroll", () => {
    follow = atBottom();
    setText(state, follow ? "following" : "paused (scroll to the bottom to follow)");
  });
  document.querySelector("a[href='#log-bottom']").addEventListener("click", (ev) => {
    ev.preventDefault(); log.scrollTop = log.scrollHeight; follow = true; setText(state, "following");
  });
  document.getElementById("log-top").addEventListener("click", (ev) => {
    ev.preventDefault(); log.scrollTop = 0; follow = false;
    setText(state, "paused (scroll to the bottom to follow)");
  });
  if (root.dataset.ended === "yes") { return; }
  setText(state, "following");
  const url = "/w/" + encodeURIComponent(root.dataset.ws) + "/executions/" +
    encodeURIComponent(root.dataset.id) + "/live?after=" + encodeURIComponent(root.dataset.after);
  const source = opened(new EventSource(url));
  source.addEventListener("logs", (ev) => {
    const lines = JSON.parse(ev.data);
    const part = document.createDocumentFragment();
    for (const item of lines) {
      const span = document.createElement("span");
      span.className = "line";
      span.dataset.id = item.id;
      span.textContent = item.line;
      part.appendChild(span);
      part.appendChild(document.createTextNode("\n"));
    }
    log.appendChild(part);
    if (follow) { log.scrollTop = log.scrollHeight; }
  });
  source.addEventListener("status", (ev) => {
    const s = JSON.parse(ev.data);
    setBadge(document.getElementById("status"), s.status);
    setText(document.getElementById("message"), s.message || "");
    setText(document.getElementById("started"), s.started_at || "–");
    setText(document.getElementById("ended"), s.ended_at || "–");
    if (s.duration !== null && s.duration !== undefined) {
      setText(document.getElementById("duration"), s.duration.toFixed(3) + " s");
    }
    setText(document.getElementById("outputs"), JSON.stringify(s.output_value, null, 2));
  });
  source.addEventListener("end", () => {
    source.close();
    setText(state, "ended");
    const cancel = document.getElementById("cancel");
    if (cancel) { cancel.closest("form").remove(); }
  });
}

function statusRowUpdate(table, ev) {
  const data = JSON.parse(ev.data);
  const p = data.payload || {};
  const row = table.querySelector("[data-execution='" + CSS.escape(p.id || "") + "']");
  if (!row) { return null; }
  const status = ev.type === "executions.started" ? "running" : p.status;
  if (status) { setBadge(row.querySelector("[data-status]"), status); }
  if (typeof p.duration === "number") {
    setText(row.querySelector("[data-duration]"), p.duration.toFixed(2) + " s");
  }
  return row;
}

// Executions list: rows change status live; new runs appear on the first page.
function executionEvents(box) {
  const source = opened(new EventSource("/api/v1/workspaces/" +
    encodeURIComponent(box.dataset.ws) + "/events/stream?types=" +
    encodeURIComponent("executions.*")));
  const onChange = (ev) => { statusRowUpdate(box, ev); };
  source.addEventListener("executions.started", onChange);
  source.addEventListener("executions.ended", onChange);
  return source;
}

function followExecutions(box) {
  const table = box.querySelector("table");
  const ws = box.dataset.ws;
  const source = executionEvents(box);
  source.addEventListener("executions.created", (ev) => {
    if (box.dataset.prepend !== "yes") { return; }
    const p = JSON.parse(ev.data).payload || {};
    if (box.dataset.flow && box.dataset.flow !== p.flow) { return; }
    if (box.dataset.status && box.dataset.status !== "queued") { return; }
    const empty = table.querySelector("tr.empty");
    if (empty) { empty.remove(); }
    const row = document.createElement("tr");
    row.dataset.execution = p.id;
    const cells = [];
    for (let i = 0; i < 6; i++) { cells.push(document.createElement("td")); row.appendChild(cells[i]); }
    const link = document.createElement("a");
    link.href = "/w/" + encodeURIComponent(ws) + "/executions/" + encodeURIComponent(p.id);
    const code = document.createElement("code");
    code.textContent = String(p.id).slice(0, 8);
    link.appendChild(code);
    cells[0].appendChild(link);
    cells[1].textContent = p.flow;
    const badge = document.createElement("span");
    badge.dataset.status = "";
    setBadge(badge, "queued");
    cells[2].appendChild(badge);
    cells[3].textContent = JSON.parse(ev.data).created_at || "";
    cells[4].dataset.duration = "";
    table.tBodies[0].insertBefore(row, table.tBodies[0].firstChild);
  });
}

// Activity view: new events matching the filters appear on top of the list.
function followActivity(box) {
  const list = box.querySelector("tbody");
  const source = opened(new EventSource(box.dataset.stream));
  const add = (ev) => {
    const e = JSON.parse(ev.data);
    const empty = list.querySelector("tr.empty");
    if (empty) { empty.remove(); }
    const row = document.createElement("tr");
    row.dataset.event = e.id;
    const values = [e.created_at, e.type, (e.source || {}).correlationId || "",
      JSON.stringify(e.payload)];
    values.forEach((value, i) => {
      const cell = document.createElement("td");
      if (i === 2 && value) {
        const link = document.createElement("a");
        link.href = box.dataset.chain + encodeURIComponent(value);
        link.textContent = value;
        cell.appendChild(link);
      } else if (i === 3) {
        const code = document.createElement("code");
        code.textContent = value;
        cell.appendChild(code);
      } else {
        cell.textContent = value;
      }
      row.appendChild(cell);
    });
    list.insertBefore(row, list.firstChild);
    setText(document.getElementById("tail-state"), "live: " + e.type + " arrived");
  };
  // The console's activity stream sends every event unnamed, so "message" gets them all.
  source.addEventListener("message", add);
}

document.addEventListener("DOMContentLoaded", () => {
  const execution = document.getElementById("execution");
  if (execution) { followExecution(execution); }
  const list = document.getElementById("live-executions");
  if (list && window.EventSource) { followExecutions(list); }
  const children = document.getElementById("children");
  if (children && window.EventSource &&
      children.querySelector(".badge.queued, .badge.running, .badge.waiting")) {
    executionEvents(children);
  }
  const activity = document.getElementById("live-activity");
  if (activity && window.EventSource && activity.dataset.off !== "yes") { followActivity(activity); }
});
