// The runtara dashboard: every view drawn from the JSON API (/api/v1), refreshed by polling.
//
// No build step, no dependency. Text reaches the page only through textContent and
// attribute values set by el() below (never innerHTML), so an instance id, input, output
// or error holding markup shows as text.
"use strict";

const REFRESH_MS = 2000;
const STATUSES = ["pending", "running", "suspended", "completed", "failed", "cancelled"];
const TERMINAL = new Set(["completed", "failed", "cancelled"]);

// -- DOM ---------------------------------------------------------------------------------

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function replace(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((child) => child !== null && child !== false));
}

// -- the API -----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    credentials: "same-origin",
    cache: "no-store",
  });
  if (response.status === 401) {
    window.location.reload(); // the server shows its sign-in page
    throw new ApiError(401, "unauthorized", "signed out");
  }
  let document_ = null;
  try {
    document_ = await response.json();
  } catch (error) {
    throw new ApiError(response.status, "bad_response", `HTTP ${response.status}`);
  }
  if (!response.ok) {
    const problem = document_.error || {};
    throw new ApiError(response.status, problem.code, problem.message || `HTTP ${response.status}`);
  }
  return document_;
}

function query(parameters) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(parameters)) {
    if (value !== null && value !== undefined && value !== "") search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

const instancePath = (id) => `/api/v1/instances/${encodeURIComponent(id)}`;
const instanceHash = (id) => `#/instances/${encodeURIComponent(id)}`;

// -- values ------------------------------------------------------------------------------

function two(number) {
  return String(number).padStart(2, "0");
}

function when(ms) {
  if (ms === null || ms === undefined) return "–";
  const date = new Date(ms);
  return (
    `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())} ` +
    `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`
  );
}

function span(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function ago(ms) {
  if (ms === null || ms === undefined) return "";
  const seconds = (Date.now() - ms) / 1000;
  return seconds >= 0 ? `${span(seconds)} ago` : `in ${span(-seconds)}`;
}

function time(ms) {
  if (ms === null || ms === undefined) return el("span", { className: "muted" }, "–");
  return el("time", { datetime: new Date(ms).toISOString(), title: ago(ms) }, when(ms));
}

// Bytes travel as text, or {"base64": ...} when they are not UTF-8.
function bytesText(value) {
  if (value === null || value === undefined) return null;
  if (typeof value === "string") {
    try {
      return JSON.stringify(JSON.parse(value), null, 2);
    } catch (error) {
      return value;
    }
  }
  return `base64: ${value.base64}`;
}

function preview(value, limit = 80) {
  const text = bytesText(value);
  if (text === null || text === "") return "";
  const flat = text.replace(/\s+/g, " ");
  return flat.length > limit ? `${flat.slice(0, limit - 1)}…` : flat;
}

function badge(status) {
  return el("span", { className: `badge status-${status}` }, status);
}

function block(label, value, className = "") {
  const text = bytesText(value);
  return el(
    "section",
    { className: `panel ${className}` },
    el("h3", {}, label),
    text === null || text === ""
      ? el("p", { className: "muted" }, "none")
      : el("pre", { className: "value" }, text),
  );
}

function notice(kind, text) {
  return el("p", { className: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

// -- views -------------------------------------------------------------------------------

// A view builds its fixed part once (forms keep what is typed) and redraws its live part
// on every refresh; refresh() resolves when drawn, and failures show in the view.
class View {
  constructor(root) {
    this.root = root;
    this.live = el("div", { className: "live" });
    this.status = el("p", { className: "refreshed muted", "aria-live": "polite" });
  }

  async refresh() {
    try {
      await this.load();
      this.status.textContent = `updated ${when(Date.now()).slice(11)}`;
      this.status.classList.remove("stale");
    } catch (error) {
      if (error.status === 401) return;
      this.failed(error);
    }
  }

  failed(error) {
    this.status.textContent = `could not refresh: ${error.message}`;
    this.status.classList.add("stale");
  }
}

class InstancesView extends View {
  constructor(root, parameters) {
    super(root);
    this.filters = {
      status: parameters.get("status") || "",
      tenant: parameters.get("tenant") || "",
    };
    this.cursors = [null];
    this.counts = el("div", { className: "counts", role: "group", "aria-label": "status" });
    const tenant = el("input", {
      type: "search",
      id: "filter-tenant",
      name: "tenant",
      placeholder: "any tenant",
      value: this.filters.tenant,
    });
    const form = el(
      "form",
      {
        className: "filters",
        onsubmit: (event) => {
          event.preventDefault();
          this.navigate({ ...this.filters, tenant: tenant.value.trim() });
        },
      },
      el("label", { for: "filter-tenant" }, "Tenant"),
      tenant,
      el("button", { type: "submit" }, "Filter"),
    );
    this.pager = el("div", { className: "pager" });
    replace(
      root,
      el("div", { className: "title" }, el("h1", {}, "Instances"), this.status),
      el("div", { className: "toolbar" }, this.counts, form),
      this.live,
      this.pager,
    );
  }

  navigate(filters) {
    window.location.hash = `#/${query(filters)}`;
  }

  async load() {
    const cursor = this.cursors[this.cursors.length - 1];
    const page = await api(`/api/v1/instances${query({ ...this.filters, cursor, limit: 25 })}`);
    this.draw(page);
  }

  draw(page) {
    const total = STATUSES.reduce((sum, status) => sum + page.counts[status], 0);
    const chip = (status, label, count) =>
      el(
        "a",
        {
          className: `chip${this.filters.status === status ? " selected" : ""}`,
          href: `#/${query({ ...this.filters, status })}`,
          "data-status": status || "all",
        },
        label,
        el("span", { className: "count" }, String(count)),
      );
    replace(
      this.counts,
      chip("", "all", total),
      STATUSES.map((status) => chip(status, status, page.counts[status])),
    );
    if (page.instances.length === 0) {
      replace(this.live, el("p", { className: "empty" }, "No instance matches."));
    } else {
      replace(this.live, this.table(page.instances));
    }
    const newer = this.cursors.length > 1;
    const older = page.next_cursor !== null;
    replace(
      this.pager,
      el("span", { className: "muted" }, `${page.total} instance${page.total === 1 ? "" : "s"}`),
      el(
        "button",
        {
          type: "button",
          disabled: !newer,
          onclick: () => {
            this.cursors.pop();
            this.refresh();
          },
        },
        "← Newer",
      ),
      el(
        "button",
        {
          type: "button",
          disabled: !older,
          onclick: () => {
            this.cursors.push(page.next_cursor);
            this.refresh();
          },
        },
        "Older →",
      ),
    );
  }

  table(instances) {
    const headers = ["Instance", "Tenant", "Status", "Checkpoint", "Created", "Finished"];
    return el(
      "table",
      { className: "instances" },
      el("thead", {}, el("tr", {}, headers.map((header) => el("th", {}, header)))),
      el(
        "tbody",
        {},
        instances.map((instance) =>
          el(
            "tr",
            { "data-instance": instance.instance_id },
            el("td", {}, el("a", { href: instanceHash(instance.instance_id) }, instance.instance_id)),
            el("td", {}, instance.tenant_id),
            el("td", {}, badge(instance.status)),
            el("td", { className: "mono" }, instance.checkpoint_id || "–"),
            el("td", {}, time(instance.created_at_ms)),
            el("td", {}, time(instance.finished_at_ms)),
          ),
        ),
      ),
    );
  }
}

class InstanceView extends View {
  constructor(root, id) {
    super(root);
    this.id = id;
    this.states = new Map(); // checkpoint id -> its state as text, once read
    this.opened = new Set(); // checkpoints whose state the timeline shows
    this.flash = el("div", { className: "flash" });
    this.buttons = {
      cancel: this.signalButton("cancel", "Cancel", "danger"),
      pause: this.signalButton("pause", "Pause"),
      resume: this.signalButton("resume", "Resume"),
    };
    this.heading = el("div", { className: "heading" });
    const checkpoint = el("input", {
      id: "signal-checkpoint",
      name: "checkpoint_id",
      required: true,
      placeholder: "the checkpoint the workflow waits at",
    });
    const payload = el("textarea", {
      id: "signal-payload",
      name: "payload",
      rows: 3,
      placeholder: "text or JSON the workflow receives",
    });
    const form = el(
      "form",
      {
        className: "panel custom-signal",
        onsubmit: async (event) => {
          event.preventDefault();
          const sent = await this.send(
            { checkpoint_id: checkpoint.value, payload: payload.value },
            `Custom signal sent for checkpoint ${checkpoint.value}.`,
          );
          if (sent) payload.value = "";
        },
      },
      el("h3", {}, "Send a custom signal"),
      el("label", { for: "signal-checkpoint" }, "Checkpoint"),
      checkpoint,
      el("label", { for: "signal-payload" }, "Payload"),
      payload,
      el("button", { type: "submit" }, "Send signal"),
    );
    replace(
      root,
      el("p", { className: "crumbs" }, el("a", { href: "#/" }, "← Instances")),
      el("div", { className: "title" }, this.heading, this.status),
      el(
        "div",
        { className: "actions" },
        Object.values(this.buttons),
        el("span", { className: "muted hint" }, "The workflow sees a signal at its next call."),
      ),
      this.flash,
      this.live,
      form,
    );
  }

  signalButton(type, label, className = "") {
    return el(
      "button",
      {
        type: "button",
        className,
        id: `signal-${type}`,
        onclick: () => this.send({ type }, `${label} sent.`),
      },
      label,
    );
  }

  async send(body, done) {
    try {
      await api(`${instancePath(this.id)}/signals`, { method: "POST", body });
      replace(this.flash, notice("ok", done));
      await this.refresh();
      return true;
    } catch (error) {
      if (error.status !== 401) replace(this.flash, notice("error", error.message));
      return false;
    }
  }

  async load() {
    const base = instancePath(this.id);
    const [instance, events, checkpoints] = await Promise.all([
      api(base),
      api(`${base}/events?limit=200`),
      api(`${base}/checkpoints?limit=200`),
    ]);
    this.draw(instance, events, checkpoints);
  }

  failed(error) {
    if (error.status === 404 || error.status === 400) {
      replace(this.heading, el("h1", { className: "mono" }, this.id));
      replace(this.live, notice("error", error.message));
      for (const button of Object.values(this.buttons)) button.disabled = true;
      return;
    }
    super.failed(error);
  }

  draw(instance, events, checkpoints) {
    const status = instance.status;
    replace(
      this.heading,
      el("h1", { className: "mono" }, instance.instance_id),
      badge(status),
      el("span", { className: "muted" }, `tenant ${instance.tenant_id}`),
    );
    this.buttons.cancel.disabled = TERMINAL.has(status);
    this.buttons.pause.disabled = !(status === "running" || status === "pending");
    this.buttons.resume.disabled = status !== "suspended";
    const facts = [
      ["Created", time(instance.created_at_ms)],
      ["Started", time(instance.started_at_ms)],
      ["Finished", time(instance.finished_at_ms)],
      ["Current checkpoint", instance.checkpoint_id || "–"],
      ["Checkpoints", String(instance.checkpoint_count)],
      ["Events", String(instance.event_count)],
    ];
    if (instance.sleep_until_ms !== null) {
      facts.push(["Sleeps until", el("span", {}, time(instance.sleep_until_ms), ` (wakes ${ago(instance.sleep_until_ms)})`)]);
    }
    if (instance.pending_signal) {
      const signal = instance.pending_signal;
      const payload = preview(signal.payload);
      facts.push(["Pending signal", `${signal.signal_type}${payload ? ` (${payload})` : ""}`]);
    }
    replace(
      this.live,
      el(
        "dl",
        { className: "facts" },
        facts.map(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]),
      ),
      status === "failed" ? block("Error", instance.error, "error") : null,
      status === "completed" ? block("Output", instance.output, "output") : null,
      this.timeline(events.events, checkpoints.checkpoints),
    );
  }

  timeline(events, checkpoints) {
    const rows = [
      ...events.map((event) => ({
        at: event.created_at_ms,
        order: event.event_id,
        kind: event.event_type,
        checkpoint: event.checkpoint_id,
        detail: [event.subtype, preview(event.payload)].filter(Boolean).join(" · "),
      })),
      ...checkpoints.map((checkpoint) => ({
        at: checkpoint.created_at_ms,
        order: -1,
        kind: "checkpoint",
        checkpoint: checkpoint.checkpoint_id,
        detail: this.stateToggle(checkpoint),
      })),
    ].sort((a, b) => a.at - b.at || a.order - b.order);
    return el(
      "section",
      { className: "panel timeline" },
      el("h3", {}, "Timeline"),
      rows.length === 0
        ? el("p", { className: "muted" }, "Nothing happened yet.")
        : el(
            "ol",
            {},
            rows.map((row) =>
              el(
                "li",
                { className: `kind-${row.kind}` },
                el("span", { className: "at" }, time(row.at)),
                el("span", { className: "kind" }, row.kind),
                el("span", { className: "mono" }, row.checkpoint || ""),
                el("span", { className: "detail" }, row.detail),
                row.kind === "checkpoint" && this.opened.has(row.checkpoint)
                  ? el("pre", { className: "value state" }, this.states.get(row.checkpoint) ?? "reading…")
                  : null,
              ),
            ),
          ),
    );
  }

  stateToggle(checkpoint) {
    const id = checkpoint.checkpoint_id;
    const open = this.opened.has(id);
    return el(
      "span",
      {},
      `${checkpoint.size_bytes} bytes saved `,
      el(
        "button",
        {
          type: "button",
          className: "link",
          "aria-expanded": String(open),
          onclick: () => this.toggleState(id),
        },
        open ? "hide state" : "show state",
      ),
    );
  }

  async toggleState(id) {
    if (this.opened.delete(id)) {
      await this.refresh();
      return;
    }
    this.opened.add(id);
    await this.refresh();
    if (this.states.has(id)) return;
    try {
      const found = await api(`${instancePath(this.id)}/checkpoints/${encodeURIComponent(id)}`);
      this.states.set(id, bytesText(found.state));
    } catch (error) {
      if (error.status === 401) return;
      this.states.set(id, `could not read the state: ${error.message}`);
    }
    await this.refresh();
  }
}

// -- routing -----------------------------------------------------------------------------

let current = null;
let timer = null;

function route() {
  const hash = window.location.hash.replace(/^#/, "") || "/";
  const [path, search] = hash.split("?");
  const root = document.getElementById("view");
  if (path.startsWith("/instances/")) {
    current = new InstanceView(root, decodeURIComponent(path.slice("/instances/".length)));
  } else {
    current = new InstancesView(root, new URLSearchParams(search || ""));
  }
  for (const link of document.querySelectorAll("header nav a")) {
    link.classList.toggle("active", link.getAttribute("href") === `#${path}`);
  }
  refreshLoop();
}

async function refreshLoop() {
  clearTimeout(timer);
  const view = current;
  await view.refresh();
  if (view === current) timer = setTimeout(refreshLoop, REFRESH_MS);
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);
