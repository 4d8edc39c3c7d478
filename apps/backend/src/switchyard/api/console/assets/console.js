// The Switchyard console: renders each /console page from the REST API (/api/v1), signed in
// by the console's cookie session. Every change sends the session's CSRF token. Data reaches
// the page as text nodes only (never as HTML), so nothing a tenant stores can run here.

const STATES = ["queued", "scheduled", "started", "retrying", "succeeded", "failed", "dead_lettered", "cancelled"];
const UNFINISHED = new Set(["queued", "scheduled", "started", "retrying"]);
const LIVE_MS = 2000;
let session = null;

// ---- DOM and formatting

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const localTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const date = new Date(iso);
  return h("time", { datetime: date.toISOString(), title: `${date.toISOString()} (UTC)` }, localTime.format(date));
}

function badge(text) {
  return h("span", { class: `badge ${text}` }, text.replace("_", " "));
}

function json(value) {
  return h("pre", {}, JSON.stringify(value, null, 2));
}

function main() {
  return document.getElementById("main");
}

function show(...children) {
  main().replaceChildren(...children);
}

function say(message) {
  const status = document.getElementById("status");
  status.textContent = message;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { status.textContent = ""; }, 5000);
}

function stateBox(kind, text) {
  return h("p", { class: `state ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

function confirmAction(title, text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// ---- the API

class Problem extends Error {
  constructor(status, body) {
    const fields = (body.errors || []).map((e) => `${e.field}: ${e.message}`).join("; ");
    super([body.detail || body.title || `HTTP ${status}`, fields].filter(Boolean).join(" — "));
    this.status = status;
  }
}

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && session) headers["X-CSRF-Token"] = session.csrf_token;
  let payload;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const answer = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  if (answer.status === 401 && !path.startsWith("/console/session")) {
    location.assign(`/console/sign-in?next=${encodeURIComponent(location.pathname + location.search)}`);
    throw new Problem(401, { detail: "Signed out." });
  }
  const text = await answer.text();
  const data = text ? JSON.parse(text) : null;
  if (!answer.ok) throw new Problem(answer.status, data || {});
  return data;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value) search.set(key, value);
  const text = search.toString();
  return text ? `?${text}` : "";
}

// ---- the frame: navigation, tenant switcher, sign-out

const PAGES = [
  ["runs", "Runs"],
  ["dead-letters", "Dead letters"],
  ["definitions", "Definitions"],
  ["workflows", "Workflows"],
  ["documents", "Documents"],
  ["workers", "Workers & queues"],
  ["usage", "Usage"],
  ["health", "Health"],
];

function frame(current) {
  const pages = session.is_superuser ? [...PAGES, ["tenants", "Tenants"]] : PAGES;
  const links = pages.map(([page, label]) =>
    h("li", {}, h("a", { href: `/console/${page}`, "aria-current": page === current ? "page" : null }, label)));
  const who = h("div", { class: "who" });
  if (session.memberships.length > 1) {
    const picker = h("select", { id: "tenant-switch", "aria-label": "Tenant" },
      session.memberships.map((m) => h("option", { value: m.tenant.slug, selected: m.tenant.id === session.tenant.id }, m.tenant.name)));
    picker.addEventListener("change", async () => {
      try {
        session = await call("POST", "/console/session/tenant", { tenant: picker.value });
        location.assign("/console/runs");
      } catch (error) { say(error.message); }
    });
    who.append(picker);
  } else {
    who.append(h("span", {}, session.tenant.name));
  }
  who.append(h("span", { class: "muted" }, `${session.email} (${session.role || "user"})`));
  who.append(h("button", { type: "button", id: "sign-out", onclick: signOut }, "Sign out"));
  document.getElementById("top").replaceChildren(
    h("a", { class: "brand", href: "/console/runs" }, "Switchyard"),
    h("nav", { "aria-label": "Console" }, h("ul", {}, links)),
    who,
  );
}

async function signOut() {
  try { await call("DELETE", "/console/session"); } catch (error) { /* the session is gone either way */ }
  location.assign("/console/sign-in");
}

// ---- sign in

function signInPage() {
  document.getElementById("top").replaceChildren(h("span", { class: "brand" }, "Switchyard"));
  const error = h("div", { role: "alert" });
  const tenant = h("input", { id: "tenant", name: "tenant", autocomplete: "organization", maxlength: 63 });
  const form = h("form", { class: "card", novalidate: true },
    h("label", { for: "email" }, "Email", h("input", { id: "email", name: "email", type: "email", required: true, autocomplete: "username" })),
    h("label", { for: "password" }, "Password", h("input", { id: "password", name: "password", type: "password", required: true, autocomplete: "current-password" })),
    h("label", { for: "tenant" }, "Tenant (its slug; only if you belong to several)", tenant),
    error,
    h("button", { type: "submit", class: "primary" }, "Sign in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = new FormData(form);
    const body = { email: fields.get("email"), password: fields.get("password") };
    if (fields.get("tenant")) body.tenant = fields.get("tenant");
    try {
      session = await call("POST", "/console/session", body);
      const next = new URLSearchParams(location.search).get("next");
      location.assign(next && next.startsWith("/console/") ? next : "/console/runs");
    } catch (problem) {
      error.replaceChildren(stateBox("error", problem.message));
    }
  });
  show(h("section", { class: "signin" }, h("h1", {}, "Sign in to the console"), form,
    h("p", {}, h("a", { href: "/console/forgot-password" }, "Forgot your password?")),
    mailboxHint()));
}

// ---- the pages account emails link to (no session: the link's token is the credential)

function bare() {
  document.getElementById("top").replaceChildren(h("a", { class: "brand", href: "/console/sign-in" }, "Switchyard"));
}

// The link's token, taken out of the address bar (and so out of history) once read.
function linkToken() {
  const token = new URLSearchParams(location.search).get("token") || "";
  if (token) history.replaceState(null, "", location.pathname);
  return token;
}

function accountForm(title, intro, fields, label, submit) {
  const error = h("div", {});  // the message inside is the alert
  const button = h("button", { type: "submit", class: "primary" }, label);
  const form = h("form", { class: "card", novalidate: true }, ...fields, error, button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    try {
      const done = await submit(new FormData(form));
      form.replaceWith(h("div", { class: "card", role: "status", id: "done" }, ...done));
    } catch (problem) {
      error.replaceChildren(stateBox("error", problem.message));
      button.disabled = false;
    }
  });
  show(h("section", { class: "signin" }, h("h1", {}, title), intro ? h("p", {}, intro) : null, form));
}

function passwordFields(autocomplete) {
  return [
    h("label", { for: "password" }, "Password", h("input", { id: "password", name: "password", type: "password", required: true, autocomplete })),
    h("label", { for: "password-again" }, "The same password again", h("input", { id: "password-again", name: "again", type: "password", required: true, autocomplete })),
  ];
}

function samePassword(fields) {
  if (fields.get("password") !== fields.get("again")) throw new Problem(422, { detail: "The two passwords differ." });
  return fields.get("password");
}

const signInLink = () => h("a", { href: "/console/sign-in" }, "Sign in");
const missingToken = () => show(stateBox("error", "This link has no token: open the whole link from the email."));

function acceptInvitationPage() {
  bare();
  const token = linkToken();
  if (!token) { missingToken(); return; }
  const password = h("input", { id: "password", name: "password", type: "password", autocomplete: "new-password" });
  accountForm("Accept the invitation",
    "New to Switchyard? Choose a password for your account. Already have an account with this address? Leave it empty and join with the account you have.",
    [h("label", { for: "password" }, "Password (new accounts only)", password)],
    "Join", async (fields) => {
      const body = { token };
      if (fields.get("password")) body.password = fields.get("password");
      const joined = await call("POST", "/api/v1/invitations/accept", body);
      const tenant = joined.tenant ? joined.tenant.name : "the tenant";
      return [h("p", {}, `You joined ${tenant}${joined.role ? ` as ${joined.role}` : ""}.`), signInLink()];
    });
}

function resetPasswordPage() {
  bare();
  const token = linkToken();
  if (!token) { missingToken(); return; }
  accountForm("Choose a new password", "Every sign-in of the account ends when it changes.",
    passwordFields("new-password"), "Change the password", async (fields) => {
      await call("POST", "/api/v1/auth/password-reset/confirm", { token, password: samePassword(fields) });
      return [h("p", {}, "Your password is changed."), signInLink()];
    });
}

function verifyEmailPage() {
  bare();
  const token = linkToken();
  if (!token) { missingToken(); return; }
  // A button, not a request on load: mail scanners that open links must not spend the token.
  accountForm("Confirm your email address", null, [], "Confirm my address", async () => {
    await call("POST", "/api/v1/auth/verify-email", { token });
    return [h("p", {}, "Your address is confirmed."), signInLink()];
  });
}

function forgotPasswordPage() {
  bare();
  accountForm("Forgot your password?", "We email a link to choose a new one, if the address has an account.",
    [h("label", { for: "email" }, "Email", h("input", { id: "email", name: "email", type: "email", required: true, autocomplete: "username" }))],
    "Email me a link", async (fields) => {
      await call("POST", "/api/v1/auth/password-reset", { email: fields.get("email") });
      return [h("p", {}, "If the address has an account, an email is on its way."), mailboxHint()];
    });
}

// Development without SMTP: the email written instead of sent, for this machine's browser.
function mailboxHint() {
  const hint = h("p", { class: "muted", id: "mailbox-hint" });
  fetch("/api/v1/dev-mailbox", { credentials: "same-origin" }).then((answer) => {
    if (answer.ok) hint.replaceChildren("No email is sent here (no SMTP_HOST): ", h("a", { href: "/console/mailbox" }, "the development mailbox"), " shows it.");
  }).catch(() => {});
  return hint;
}

function linkedText(text) {
  // Links from the server's own emails become anchors (http and https only); the rest is text.
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(/https?:\/\/[^\s<>"']+/g)) {
    parts.push(text.slice(last, match.index), h("a", { href: match[0] }, match[0]));
    last = match.index + match[0].length;
  }
  parts.push(text.slice(last));
  return parts;
}

async function mailboxPage() {
  bare();
  show(stateBox("loading", "Loading…"));
  let messages;
  try {
    messages = (await call("GET", "/api/v1/dev-mailbox")).items;
  } catch (problem) {
    show(h("h1", {}, "Development mailbox"), stateBox("error", problem.message));
    return;
  }
  const list = messages.length
    ? h("ol", { class: "mailbox" }, messages.map((m) => h("li", { class: "card" },
      h("h2", {}, m.subject),
      h("p", { class: "muted" }, "To ", m.to, " · ", when(m.written_at)),
      h("pre", { class: "mail" }, linkedText(m.text)))))
    : stateBox("empty", "No email yet.");
  show(h("h1", {}, "Development mailbox"),
    h("p", { class: "muted" }, "Email written instead of sent (SMTP_HOST is unset), newest first; only browsers on this machine see it."),
    h("p", {}, h("button", { type: "button", onclick: mailboxPage }, "Refresh"), " ", signInLink()),
    list);
}

// ---- runs

function toUtc(local) {
  return local ? new Date(local).toISOString() : "";
}

function runRow(run) {
  return h("tr", {},
    h("td", {}, h("a", { href: `/console/runs/${run.task_id}` }, run.task)),
    h("td", {}, badge(run.state)),
    h("td", {}, when(run.submitted_at)),
    h("td", { class: "optional" }, when(run.started_at)),
    h("td", { class: "optional" }, when(run.finished_at)),
    h("td", { class: "num optional" }, run.attempts));
}

async function runsPage() {
  const params = new URLSearchParams(location.search);
  const filters = Object.fromEntries(["state", "task", "since", "until", "cursor"].map((k) => [k, params.get(k) || ""]));
  const form = h("form", { class: "filters card", method: "get", action: "/console/runs" },
    h("label", { for: "f-state" }, "State", h("select", { id: "f-state", name: "state" },
      h("option", { value: "" }, "any"), STATES.map((s) => h("option", { value: s, selected: s === filters.state }, s)))),
    h("label", { for: "f-task" }, "Task", h("input", { id: "f-task", name: "task", value: filters.task, placeholder: "e.g. system.echo", maxlength: 200 })),
    h("label", { for: "f-since" }, "Submitted from", h("input", { id: "f-since", name: "since", type: "datetime-local", value: filters.since })),
    h("label", { for: "f-until" }, "until", h("input", { id: "f-until", name: "until", type: "datetime-local", value: filters.until })),
    h("button", { type: "submit" }, "Filter"),
    h("a", { href: "/console/runs" }, "Clear"));
  const body = h("tbody", {});
  const table = h("div", { class: "table-wrap" }, h("table", { "aria-label": "Runs, newest first" },
    h("thead", {}, h("tr", {}, h("th", {}, "Task"), h("th", {}, "State"), h("th", {}, "Submitted"),
      h("th", { class: "optional" }, "Started"), h("th", { class: "optional" }, "Finished"), h("th", { class: "optional" }, "Attempts"))),
    body));
  const pager = h("div", { class: "pager" });
  const share = h("p", { class: "muted" });
  const list = h("div", {}, stateBox("loading", "Loading runs…"));
  show(h("h1", {}, "Runs"), form, share, list);
  const api = `/api/v1/tasks/${query({ state: filters.state, task: filters.task, since: toUtc(filters.since), until: toUtc(filters.until), cursor: filters.cursor })}`;

  async function refresh() {
    try {
      const page = await call("GET", api);
      share.textContent = `In flight: ${page.share.in_flight} of ${page.share.limit || "∞"}; waiting for capacity: ${page.share.waiting_for_capacity}.`;
      if (!page.items.length) {
        list.replaceChildren(stateBox("empty", filters.cursor ? "No more runs." : "No runs match. Submit one with POST /api/v1/tasks/run, or run a definition."));
        return;
      }
      body.replaceChildren(...page.items.map(runRow));
      pager.replaceChildren(
        filters.cursor ? h("a", { href: `/console/runs${query({ ...filters, cursor: "" })}` }, "Newest") : "",
        page.next_cursor ? h("a", { href: `/console/runs${query({ ...filters, cursor: page.next_cursor })}` }, "Older runs →") : "");
      if (list.firstChild !== table) list.replaceChildren(table, pager);
    } catch (error) {
      list.replaceChildren(stateBox("error", `The runs could not be read: ${error.message}`));
    }
  }
  await refresh();
  // The list follows state changes while it is shown.
  setInterval(() => { if (!document.hidden) refresh(); }, LIVE_MS);
}

// ---- one run

function timeline(run, seen) {
  const steps = [["submitted", run.submitted_at]];
  if (run.eta) steps.push([`scheduled for`, run.eta]);
  if (run.started_at) steps.push([run.attempts > 1 ? `started (attempt ${run.attempts})` : "started", run.started_at]);
  if (run.finished_at) steps.push([run.state, run.finished_at]);
  const items = steps.map(([label, at]) => h("li", {}, h("strong", {}, label), " ", when(at)));
  for (const event of seen) items.push(h("li", { class: "live" }, h("strong", {}, event.state), ` (attempt ${event.attempts}) — seen live `, when(event.at)));
  return h("ol", { class: "timeline", "aria-label": "Timeline" }, items);
}

async function runPage(id) {
  show(stateBox("loading", "Loading the run…"));
  const seen = [];
  let letter = null;

  async function render() {
    let run;
    try {
      run = await call("GET", `/api/v1/tasks/${id}`);
    } catch (error) {
      show(h("h1", {}, "Run"), stateBox("error", error.status === 404 ? "No such run in this tenant." : error.message));
      return null;
    }
    if ((run.state === "dead_lettered" || run.state === "failed") && !letter) {
      const letters = await call("GET", `/api/v1/tasks/dead-letters${query({ task_id: id })}`);
      letter = letters.find((l) => !l.replayed_task_id) || null;
    }
    const actions = h("div", { class: "actions" });
    if (UNFINISHED.has(run.state)) {
      actions.append(h("button", { type: "button", id: "cancel-run", onclick: async () => {
        if (!(await confirmAction("Cancel this run?", `${run.task} will not run (or stops at its next await).`))) return;
        try { await call("POST", `/api/v1/tasks/${id}/cancel`); say("Run cancelled."); render(); } catch (error) { say(error.message); }
      } }, "Cancel run"));
    }
    if (letter) {
      actions.append(h("button", { type: "button", id: "replay-run", onclick: () => replay(letter) }, "Replay"));
    }
    const fields = h("dl", { class: "fields" },
      h("dt", {}, "Task"), h("dd", {}, run.task),
      h("dt", {}, "State"), h("dd", { id: "run-state" }, badge(run.state)),
      h("dt", {}, "Queue"), h("dd", {}, run.queue),
      h("dt", {}, "Attempts"), h("dd", {}, run.attempts),
      h("dt", {}, "Definition"), h("dd", {}, run.definition_id ? h("a", { href: `/console/definitions#${run.definition_id}` }, "its definition") : "—"),
      h("dt", {}, "Request id"), h("dd", {}, run.request_id ? h("code", { title: "Search the gateway's logs for request_id" }, run.request_id) : "—"),
      h("dt", {}, "Submitted by"), h("dd", {}, run.submitted_by || "—"),
      h("dt", {}, "Replay of"), h("dd", {}, run.replay_of ? h("a", { href: `/console/runs/${run.replay_of}` }, run.replay_of) : "—"));
    show(
      h("p", {}, h("a", { href: "/console/runs" }, "← Runs")),
      h("h1", {}, `Run ${run.task}`),
      h("section", { class: "card" }, fields, actions),
      h("section", { class: "card" }, h("h2", {}, "Timeline"), timeline(run, seen)),
      h("section", { class: "card" }, h("h2", {}, "Payload"), json(run.payload)),
      run.error ? h("section", { class: "card" }, h("h2", {}, "Error"), h("p", {}, h("strong", {}, run.error.type), ": ", run.error.message)) : "",
      run.result !== null ? h("section", { class: "card" }, h("h2", {}, "Result"), json(run.result)) : "");
    return run;
  }

  const run = await render();
  if (run && UNFINISHED.has(run.state)) {
    const events = new EventSource(`/api/v1/tasks/${id}/events`);
    events.addEventListener("state", async (message) => {
      const event = JSON.parse(message.data);
      seen.push({ ...event, at: new Date().toISOString() });
      const now = await render();
      if (now && !UNFINISHED.has(now.state)) events.close();
    });
    events.onerror = () => { events.close(); };
  }
}

async function replay(letter) {
  if (!(await confirmAction("Replay this dead letter?", `${letter.task} runs again with its stored payload.`))) return;
  try {
    const accepted = await call("POST", `/api/v1/tasks/dead-letters/${letter.id}/replay`);
    say("Replayed.");
    location.assign(`/console/runs/${accepted.task_id}`);
  } catch (error) { say(error.message); }
}

// ---- workflows: recent runs, and one run's graph with live states

// Steps in columns by depth (a step sits one column right of its deepest parent), edges from
// each parent to its children; each node shows its state, and a mapped step its progress.
function graph(view) {
  const depth = {};
  const byName = Object.fromEntries(view.steps.map((s) => [s.name, s]));
  const depthOf = (name) => {
    if (depth[name] === undefined) {
      depth[name] = 0;  // guards a cycle, which registration refuses anyway
      depth[name] = Math.max(0, ...byName[name].needs.map((parent) => depthOf(parent) + 1));
    }
    return depth[name];
  };
  const columns = [];
  for (const step of view.steps) (columns[depthOf(step.name)] ||= []).push(step);
  const [W, H, GAP_X, GAP_Y] = [170, 52, 60, 22];
  const place = {};
  columns.forEach((column, x) => column.forEach((step, y) => {
    place[step.name] = { x: 10 + x * (W + GAP_X), y: 10 + y * (H + GAP_Y) };
  }));
  const width = 20 + columns.length * (W + GAP_X) - GAP_X;
  const height = 20 + Math.max(...columns.map((c) => c.length)) * (H + GAP_Y) - GAP_Y;
  const edges = view.steps.flatMap((step) => step.needs.map((parent) => {
    const from = place[parent], to = place[step.name];
    const [x1, y1, x2, y2] = [from.x + W, from.y + H / 2, to.x, to.y + H / 2];
    return svg("path", { class: "edge", d: `M${x1},${y1} C${x1 + GAP_X / 2},${y1} ${x2 - GAP_X / 2},${y2} ${x2},${y2}`, "data-from": parent, "data-to": step.name });
  }));
  const nodes = view.steps.map((step) => {
    const { x, y } = place[step.name];
    const progress = step.items !== null && step.items !== 1 ? ` ${step.items - (step.items_left ?? step.items)}/${step.items}` : "";
    return svg("g", { class: `node ${step.state}`, id: `step-${step.name}`, "data-state": step.state, transform: `translate(${x},${y})` },
      svg("title", {}, `${step.name}: ${step.task}, ${step.state}${step.error ? ` (${step.error})` : ""}`),
      svg("rect", { width: W, height: H, rx: 6 }),
      svg("text", { x: 10, y: 20, class: "name" }, step.name.length > 22 ? `${step.name.slice(0, 21)}…` : step.name),
      svg("text", { x: 10, y: 40, class: "detail" }, `${step.state}${progress}`));
  });
  return svg("svg", { class: "graph", role: "img", "aria-label": `The graph of workflow run ${view.id}`, viewBox: `0 0 ${width} ${height}`, width, height }, edges, nodes);
}

async function workflowsPage() {
  show(h("h1", {}, "Workflows"), stateBox("loading", "Loading workflow runs…"));
  let runs, workflows;
  try {
    [runs, workflows] = await Promise.all([call("GET", "/api/v1/workflows/runs?limit=50"), call("GET", "/api/v1/workflows?limit=200")]);
  } catch (error) {
    show(h("h1", {}, "Workflows"), stateBox("error", error.message));
    return;
  }
  const registered = workflows.items.length
    ? h("ul", {}, workflows.items.map((w) => h("li", {}, h("strong", {}, w.name), ` — version ${w.version}, ${w.steps.length} steps`, w.description ? ` — ${w.description}` : "")))
    : stateBox("empty", "No workflows yet: register one with POST /api/v1/workflows.");
  const list = runs.items.length
    ? h("div", { class: "table-wrap" }, h("table", { "aria-label": "Workflow runs, newest first" },
      h("thead", {}, h("tr", {}, h("th", {}, "Workflow"), h("th", {}, "State"), h("th", {}, "Started"), h("th", { class: "optional" }, "Finished"), h("th", { class: "optional" }, "Error"))),
      h("tbody", {}, runs.items.map((run) => h("tr", { id: `workflow-run-${run.id}` },
        h("td", {}, h("a", { href: `/console/workflows/${run.id}` }, `${run.workflow} v${run.version}`)),
        h("td", {}, badge(run.state)), h("td", {}, when(run.created_at)),
        h("td", { class: "optional" }, when(run.finished_at)), h("td", { class: "optional" }, run.error || "—"))))))
    : stateBox("empty", "No workflow runs yet: start one with POST /api/v1/workflows/{name}/runs.");
  show(h("h1", {}, "Workflows"), h("section", { class: "card" }, h("h2", {}, "Recent runs"), list),
    h("section", { class: "card" }, h("h2", {}, "Registered workflows"), registered));
}

async function workflowRunPage(id) {
  show(stateBox("loading", "Loading the workflow run…"));

  function render(view) {
    const actions = h("div", { class: "actions" });
    if (view.state === "running") {
      actions.append(h("button", { type: "button", id: "cancel-workflow", onclick: async () => {
        if (!(await confirmAction("Cancel this workflow run?", "Its steps not started are skipped; its runs are cancelled."))) return;
        try { render(await call("POST", `/api/v1/workflows/runs/${id}/cancel`)); say("Workflow run cancelled."); } catch (error) { say(error.message); }
      } }, "Cancel workflow run"));
    }
    const rows = view.steps.map((step) => h("tr", { id: `row-${step.name}` },
      h("td", {}, step.name), h("td", {}, step.task), h("td", {}, badge(step.state)),
      h("td", { class: "num" }, step.items === null ? "—" : `${step.items - (step.items_left ?? step.items)} / ${step.items}${step.failed_items ? `, ${step.failed_items} failed` : ""}`),
      h("td", { class: "optional" }, when(step.started_at)), h("td", { class: "optional" }, when(step.finished_at)),
      h("td", {}, step.error || "", step.runs.length ? h("div", {}, step.runs.slice(0, 5).map((run) => h("a", { href: `/console/runs/${run.id}`, class: "run-link" }, `run${run.item_index !== null && run.item_index >= 0 ? ` #${run.item_index}` : ""} `))) : "",
        view.state === "failed" && step.state === "failed" ? h("button", { type: "button", class: "replay-step", onclick: async () => {
          if (!(await confirmAction(`Replay from ${step.name}?`, "The steps that did not end well run again; those that succeeded keep their results."))) return;
          try { await call("POST", `/api/v1/workflows/runs/${id}/steps/${encodeURIComponent(step.name)}/replay`); say("Replaying."); workflowRunPage(id); } catch (error) { say(error.message); }
        } }, "Replay from here") : "")));
    show(h("p", {}, h("a", { href: "/console/workflows" }, "← Workflows")),
      h("h1", {}, `Workflow ${view.workflow} v${view.version}`),
      h("section", { class: "card" }, h("dl", { class: "fields" },
        h("dt", {}, "Run"), h("dd", {}, h("code", {}, view.id)),
        h("dt", {}, "State"), h("dd", { id: "workflow-state" }, badge(view.state)),
        h("dt", {}, "Started"), h("dd", {}, when(view.created_at)),
        h("dt", {}, "Finished"), h("dd", {}, when(view.finished_at)),
        h("dt", {}, "Error"), h("dd", {}, view.error || "—")), actions),
      h("section", { class: "card" }, h("h2", {}, "Graph"), h("div", { class: "table-wrap" }, graph(view))),
      h("section", { class: "card" }, h("h2", {}, "Steps"), h("div", { class: "table-wrap" }, h("table", { "aria-label": "Steps" },
        h("thead", {}, h("tr", {}, h("th", {}, "Step"), h("th", {}, "Task"), h("th", {}, "State"), h("th", {}, "Items"), h("th", { class: "optional" }, "Started"), h("th", { class: "optional" }, "Finished"), h("th", {}, "Runs and error"))),
        h("tbody", {}, rows)))),
      h("section", { class: "card" }, h("h2", {}, "Input"), json(view.input)));
  }

  let view;
  try {
    view = await call("GET", `/api/v1/workflows/runs/${id}`);
  } catch (error) {
    show(h("h1", {}, "Workflow run"), stateBox("error", error.status === 404 ? "No such workflow run in this tenant." : error.message));
    return;
  }
  render(view);
  if (view.state === "running") {
    const events = new EventSource(`/api/v1/workflows/runs/${id}/events`);
    events.addEventListener("state", (message) => {
      const now = JSON.parse(message.data);
      render(now);
      if (now.state !== "running") events.close();
    });
    events.onerror = () => { events.close(); };
  }
}

// ---- dead letters

async function deadLettersPage() {
  show(h("h1", {}, "Dead letters"), stateBox("loading", "Loading dead letters…"));
  let letters;
  try {
    letters = await call("GET", "/api/v1/tasks/dead-letters?limit=200");
  } catch (error) {
    show(h("h1", {}, "Dead letters"), stateBox("error", error.message));
    return;
  }
  if (!letters.length) {
    show(h("h1", {}, "Dead letters"), stateBox("empty", "No dead letters: every run that ended in failure was kept or retried."));
    return;
  }
  const rows = letters.map((letter) => h("tr", { id: `letter-${letter.id}` },
    h("td", {}, letter.task_id ? h("a", { href: `/console/runs/${letter.task_id}` }, letter.task) : letter.task),
    h("td", {}, letter.reason),
    h("td", { class: "optional" }, when(letter.dead_lettered_at)),
    h("td", {}, h("details", {}, h("summary", {}, "Inspect"),
      h("p", {}, letter.last_error || "no error recorded"), json(letter.payload ?? letter.raw_message))),
    h("td", {}, h("div", { class: "actions" },
      letter.replayed_task_id
        ? h("a", { href: `/console/runs/${letter.replayed_task_id}` }, "replayed")
        : h("button", { type: "button", disabled: letter.payload === null, "aria-label": `Replay the dead letter of ${letter.task}`, onclick: () => replay(letter) }, "Replay"),
      h("button", { type: "button", class: "danger", "aria-label": `Delete the dead letter of ${letter.task}`, onclick: async () => {
        if (!(await confirmAction("Delete this dead letter?", "It is removed from the archive for good."))) return;
        try { await call("DELETE", `/api/v1/tasks/dead-letters/${letter.id}`); say("Deleted."); deadLettersPage(); } catch (error) { say(error.message); }
      } }, "Delete")))));
  show(h("h1", {}, "Dead letters"), h("div", { class: "table-wrap" }, h("table", { "aria-label": "Dead letters, newest first" },
    h("thead", {}, h("tr", {}, h("th", {}, "Task"), h("th", {}, "Reason"), h("th", { class: "optional" }, "When"), h("th", {}, "Details"), h("th", {}, "Actions"))),
    h("tbody", {}, rows))));
}

// ---- definitions and schedules

function scheduleText(schedule) {
  if (!schedule) return "—";
  if (schedule.cron) return `cron ${schedule.cron} (${schedule.timezone || "UTC"})`;
  return `every ${schedule.every_seconds} s`;
}

async function definitionsPage() {
  show(h("h1", {}, "Definitions and schedules"), stateBox("loading", "Loading definitions…"));
  let registered;
  try {
    registered = await call("GET", "/api/v1/tasks/registered");
  } catch (error) {
    show(h("h1", {}, "Definitions and schedules"), stateBox("error", error.message));
    return;
  }
  const definitions = registered.definitions;
  if (!definitions.length) {
    show(h("h1", {}, "Definitions and schedules"), stateBox("empty", "No definitions yet: register one with POST /api/v1/tasks/register."));
    return;
  }
  const rows = definitions.map((d) => {
    const toggle = h("input", { type: "checkbox", id: `enabled-${d.name}`, checked: d.enabled, "aria-label": `Enabled: ${d.name}` });
    toggle.addEventListener("change", async () => {
      toggle.disabled = true;
      try {
        await call("PATCH", `/api/v1/tasks/definitions/${encodeURIComponent(d.name)}`, { enabled: toggle.checked });
        say(`${d.name} ${toggle.checked ? "enabled" : "disabled"}.`);
        definitionsPage();
      } catch (error) { toggle.checked = !toggle.checked; toggle.disabled = false; say(error.message); }
    });
    return h("tr", { id: d.id },
      h("td", {}, h("strong", {}, d.name), d.description ? h("div", { class: "muted" }, d.description) : ""),
      h("td", {}, d.task),
      h("td", { class: "optional" }, scheduleText(d.schedule)),
      h("td", {}, d.next_fire_at ? when(d.next_fire_at) : h("span", { class: "muted" }, d.schedule ? "paused" : "on demand")),
      h("td", {}, h("label", { for: `enabled-${d.name}`, class: "inline" }, toggle, "enabled")),
      h("td", {}, h("button", { type: "button", "aria-label": `Run ${d.name} now`, onclick: async () => {
        try {
          const accepted = await call("POST", "/api/v1/tasks/run", { definition: d.name });
          location.assign(`/console/runs/${accepted.task_id}`);
        } catch (error) { say(error.message); }
      } }, "Run now")));
  });
  show(h("h1", {}, "Definitions and schedules"), h("div", { class: "table-wrap" }, h("table", { "aria-label": "Definitions" },
    h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Task"), h("th", { class: "optional" }, "Schedule"), h("th", {}, "Next fire"), h("th", {}, "Enabled"), h("th", {}, "Run"))),
    h("tbody", {}, rows))));
}

// ---- documents

async function documentsPage() {
  const upload = h("form", { class: "card filters", id: "upload" },
    h("label", { for: "doc-file" }, "File (text, Markdown, HTML or PDF)", h("input", { id: "doc-file", name: "file", type: "file", required: true })),
    h("label", { for: "doc-title" }, "Title", h("input", { id: "doc-title", name: "title", maxlength: 500 })),
    h("button", { type: "submit", class: "primary" }, "Upload"));
  upload.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await call("POST", "/api/v1/documents", new FormData(upload));
      upload.reset();
      say("Uploaded: ingestion queued.");
      refresh();
    } catch (error) { say(error.message); }
  });
  const search = h("form", { class: "card filters", id: "search", role: "search" },
    h("label", { for: "search-query" }, "Search your documents", h("input", { id: "search-query", name: "query", required: true, maxlength: 2000, size: 40 })),
    h("button", { type: "submit" }, "Search"));
  const hits = h("div", { "aria-live": "polite" });
  search.addEventListener("submit", async (event) => {
    event.preventDefault();
    hits.replaceChildren(stateBox("loading", "Searching…"));
    try {
      const found = await call("POST", "/api/v1/search", { query: new FormData(search).get("query"), top_k: 5 });
      hits.replaceChildren(found.hits.length
        ? h("ol", { class: "hits" }, found.hits.map((hit) => h("li", {},
          h("blockquote", {}, hit.snippet),
          h("cite", {}, `${hit.title}, passage ${hit.chunk_index + 1}`), h("span", { class: "muted" }, ` — score ${hit.score.toFixed(3)}`))))
        : stateBox("empty", "Nothing found."));
    } catch (error) { hits.replaceChildren(stateBox("error", error.message)); }
  });
  const list = h("div", {}, stateBox("loading", "Loading documents…"));
  show(h("h1", {}, "Documents"), upload, search, hits, h("h2", {}, "Uploaded"), list);

  async function refresh() {
    try {
      const page = await call("GET", "/api/v1/documents?limit=100");
      if (!page.items.length) { list.replaceChildren(stateBox("empty", "No documents yet.")); return; }
      list.replaceChildren(h("div", { class: "table-wrap" }, h("table", { "aria-label": "Documents" },
        h("thead", {}, h("tr", {}, h("th", {}, "Title"), h("th", {}, "Status"), h("th", { class: "optional" }, "Passages"), h("th", { class: "optional" }, "Uploaded"))),
        h("tbody", {}, page.items.map((d) => h("tr", {},
          h("td", {}, d.title, d.error ? h("div", { class: "muted" }, d.error) : ""),
          h("td", {}, badge(d.status)),
          h("td", { class: "num optional" }, d.chunk_count),
          h("td", { class: "optional" }, when(d.created_at))))))));
      if (page.items.some((d) => d.status === "pending" || d.status === "processing")) setTimeout(refresh, LIVE_MS);
    } catch (error) { list.replaceChildren(stateBox("error", error.message)); }
  }
  await refresh();
}

// ---- workers and queues

async function workersPage() {
  show(h("h1", {}, "Workers and queues"), stateBox("loading", "Asking the workers…"));
  let report;
  try {
    report = await call("GET", "/api/v1/tasks/workers");
  } catch (error) {
    show(h("h1", {}, "Workers and queues"), stateBox("error", error.message));
    return;
  }
  const share = report.share;
  const shareRows = [["Runs in flight", share.in_flight], ["of which started", share.started],
    ["Waiting for capacity", share.waiting_for_capacity], ["Share (runs in flight at most)", share.limit ?? "no cap"]]
    .map(([label, value]) => h("tr", {}, h("th", { scope: "row" }, label), h("td", { class: "num" }, value)));
  const parts = [h("h1", {}, "Workers and queues"),
    h("section", { class: "card" }, h("h2", {}, `${session.tenant.name}'s runs`), h("table", { "aria-label": "This tenant's runs in flight" }, h("tbody", {}, shareRows)))];
  if (report.queues) {
    parts.push(h("section", { class: "card" }, h("h2", {}, "Queues"), h("table", { "aria-label": "Queue depths" },
      h("thead", {}, h("tr", {}, h("th", {}, "Queue"), h("th", {}, "Messages ready"))),
      h("tbody", {}, Object.entries(report.queues).map(([name, depth]) => h("tr", {}, h("td", {}, name), h("td", { class: "num" }, depth)))))));
  }
  if (report.workers) {
    parts.push(h("section", { class: "card" }, h("h2", {}, `Workers online: ${report.workers.length}`),
      report.workers.length
        ? h("div", { class: "table-wrap" }, h("table", { "aria-label": "Workers" },
          h("thead", {}, h("tr", {}, h("th", {}, "Worker"), h("th", {}, "Runs in flight"), h("th", {}, "Slots"), h("th", {}, "Loop lag"), h("th", { class: "optional" }, "Seen"))),
          h("tbody", {}, report.workers.map((w) => h("tr", {},
            h("td", {}, `${w.hostname} (pid ${w.pid})`), h("td", { class: "num" }, w.in_flight), h("td", { class: "num" }, w.concurrency),
            h("td", { class: "num" }, w.loop_lag_seconds === null ? "—" : `${(w.loop_lag_seconds * 1000).toFixed(1)} ms`),
            h("td", { class: "optional" }, when(w.seen_at)))))))
        : stateBox("empty", "No worker has reported in the last 15 seconds.")));
  }
  if (report.tenants) {
    parts.push(h("section", { class: "card" }, h("h2", {}, "Busiest tenants"),
      report.tenants.length
        ? h("div", { class: "table-wrap" }, h("table", { "aria-label": "Runs per tenant" },
          h("thead", {}, h("tr", {}, h("th", {}, "Tenant"), h("th", {}, "Runs in flight"), h("th", {}, "Waiting for capacity"))),
          h("tbody", {}, report.tenants.map((t) => h("tr", {},
            h("td", {}, `${t.name} (${t.slug})`), h("td", { class: "num" }, t.in_flight), h("td", { class: "num" }, t.waiting_for_capacity))))))
        : stateBox("empty", "No tenant has runs in flight.")));
  }
  if (!report.workers) {
    parts.push(h("p", { class: "muted" }, "Queue depths, workers and other tenants' load are shown to the platform's superusers."));
  }
  show(...parts);
}

// ---- health

async function healthPage() {
  show(h("h1", {}, "Health"), stateBox("loading", "Checking…"));
  const answer = await fetch("/health", { headers: { Accept: "application/json" } });
  const report = await answer.json();
  if (!report.checks) {
    show(h("h1", {}, "Health"), h("p", {}, "Overall: ", badge(report.status)), h("p", { class: "muted" }, "The checks are shown with the operator's token in production."));
    return;
  }
  show(h("h1", {}, "Health"), h("p", {}, "Overall: ", badge(report.status), ` — ${report.service_type} ${report.version}, checked `, when(report.timestamp)),
    h("div", { class: "table-wrap" }, h("table", { "aria-label": "Health checks" },
      h("thead", {}, h("tr", {}, h("th", {}, "Check"), h("th", {}, "Status"), h("th", {}, "Critical"), h("th", {}, "Latency"), h("th", {}, "Error"))),
      h("tbody", {}, Object.entries(report.checks).map(([name, check]) => h("tr", {},
        h("td", {}, name), h("td", {}, badge(check.status)), h("td", {}, check.critical ? "yes" : "no"),
        h("td", { class: "num" }, `${check.latency_ms.toFixed(1)} ms`), h("td", {}, check.error || "")))))));
}

// ---- tenants (superusers)

async function tenantsPage() {
  const search = new URLSearchParams(location.search).get("search") || "";
  const form = h("form", { class: "filters card", method: "get", action: "/console/tenants", role: "search" },
    h("label", { for: "tenant-search" }, "Find a tenant (name or slug)", h("input", { id: "tenant-search", name: "search", value: search, maxlength: 100 })),
    h("button", { type: "submit" }, "Find"));
  show(h("h1", {}, "Tenants"), form, stateBox("loading", "Loading tenants…"));
  let tenants;
  try {
    tenants = await call("GET", `/api/v1/tenants${query({ limit: "500", search })}`);
  } catch (error) {
    show(h("h1", {}, "Tenants"), form, stateBox("error", error.message));
    return;
  }
  if (!tenants.length) { show(h("h1", {}, "Tenants"), form, stateBox("empty", "No tenant matches.")); return; }
  show(h("h1", {}, "Tenants"), form, h("div", { class: "table-wrap" }, h("table", { "aria-label": "Tenants" },
    h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Slug"), h("th", {}, "Status"), h("th", {}, "Action"))),
    h("tbody", {}, tenants.map((t) => h("tr", {},
      h("td", {}, t.name), h("td", {}, t.slug), h("td", {}, badge(t.status)),
      h("td", {}, h("button", { type: "button", class: t.status === "active" ? "danger" : "", "aria-label": `${t.status === "active" ? "Suspend" : "Activate"} ${t.name}`, onclick: async () => {
        const verb = t.status === "active" ? "suspend" : "activate";
        if (!(await confirmAction(`${verb[0].toUpperCase()}${verb.slice(1)} ${t.name}?`, verb === "suspend" ? "Its members and keys are refused until it is activated." : "Its members may sign in again."))) return;
        try { await call("POST", `/api/v1/tenants/${t.id}/${verb}`); say(`${t.name}: ${verb}d.`); tenantsPage(); } catch (error) { say(error.message); }
      } }, t.status === "active" ? "Suspend" : "Activate"))))))));
}

// ---- usage

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  for (const child of children.flat()) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

// What the chart can show: its meters in the report, the plan's monthly quota of it, the unit.
const USAGE_METERS = [
  ["llm", "LLM tokens", ["llm.prompt_tokens", "llm.completion_tokens", "embedding.tokens"], "llm_tokens_per_month", 1],
  ["runs", "Runs accepted", ["run.accepted"], "runs_per_month", 1],
  ["seconds", "Run seconds", ["run.milliseconds"], "run_seconds_per_month", 1000],
  ["searches", "Searches", ["search.queries"], null, 1],
  ["texts", "Texts embedded", ["embedding.texts"], null, 1],
];
const number = new Intl.NumberFormat();

// Daily bars, the month's running total as a line, and the monthly quota as a dashed line: the
// running total crossing it is where the quota refuses work. Drawn as SVG, no library.
function usageChart(days, daily, limit, label) {
  const width = 760, height = 260, left = 64, right = 12, top = 14, bottom = 30;
  let total = 0;
  const running = days.map((day) => (total += daily[day]));
  const most = Math.max(1, limit || 0, ...running) * 1.05;
  const x = (i) => left + (i * (width - left - right)) / days.length;
  const y = (value) => top + (height - top - bottom) * (1 - value / most);
  const barWidth = Math.max(2, (width - left - right) / days.length - 2);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": `${label} by day` },
    svg("title", {}, `${label} by day, and this period's running total${limit ? ` against the quota of ${number.format(limit)}` : ""}`));
  for (const tick of [0, most / 2, most / 1.05]) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(tick), y2: y(tick), class: "grid" }),
      svg("text", { x: left - 6, y: y(tick) + 4, "text-anchor": "end", class: "axis" }, number.format(Math.round(tick))));
  }
  days.forEach((day, i) => {
    if (daily[day] > 0) {
      chart.append(svg("rect", { x: x(i) + 1, y: y(daily[day]), width: barWidth, height: y(0) - y(daily[day]), class: "bar" },
        svg("title", {}, `${day}: ${number.format(daily[day])}`)));
    }
    if (i % 7 === 0) chart.append(svg("text", { x: x(i) + barWidth / 2, y: height - 10, "text-anchor": "middle", class: "axis" }, day.slice(5)));
  });
  const points = running.map((value, i) => `${x(i) + barWidth / 2},${y(value)}`).join(" ");
  chart.append(svg("polyline", { points, class: "running" }));
  if (limit) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(limit), y2: y(limit), class: "quota" }),
      svg("text", { x: width - right, y: y(limit) - 5, "text-anchor": "end", class: "axis" }, `quota ${number.format(limit)}`));
  }
  return chart;
}

async function usagePage() {
  const params = new URLSearchParams(location.search);
  const month = params.get("month") || "";
  const meter = USAGE_METERS.find((m) => m[0] === params.get("meter")) || USAGE_METERS[0];
  const form = h("form", { class: "filters card", method: "get", action: "/console/usage" },
    h("label", { for: "usage-month" }, "Month", h("input", { id: "usage-month", name: "month", type: "month", value: month })),
    h("label", { for: "usage-meter" }, "Chart", h("select", { id: "usage-meter", name: "meter" },
      USAGE_METERS.map(([key, label]) => h("option", { value: key, selected: key === meter[0] }, label)))),
    h("button", { type: "submit" }, "Show"));
  show(h("h1", {}, "Usage"), form, stateBox("loading", "Loading usage…"));
  let report;
  try {
    report = await call("GET", `/api/v1/usage${query({ month })}`);
  } catch (error) {
    show(h("h1", {}, "Usage"), form, stateBox("error", error.status === 403 ? "Usage is shown to the tenant's owners and admins." : error.message));
    return;
  }
  const [, label, meters, quotaName, per] = meter;
  const days = [];
  for (let day = new Date(report.period_start); day < new Date(report.period_end); day = new Date(day.getTime() + 86400000)) {
    days.push(day.toISOString().slice(0, 10));
  }
  const daily = Object.fromEntries(days.map((day) => [day, 0]));
  for (const row of report.daily) if (meters.includes(row.meter) && row.day in daily) daily[row.day] += row.quantity / per;
  const quota = report.quotas.find((q) => q.quota === quotaName);
  const plan = h("p", {}, report.plan ? ["Plan ", h("strong", { id: "usage-plan" }, report.plan),
    report.soft_limit_percent ? ` — warned past ${report.soft_limit_percent} % of a quota` : ""] : "No plan: no quota.");
  const quotas = report.quotas.length ? h("div", { class: "table-wrap" }, h("table", { "aria-label": "Quotas" },
    h("thead", {}, h("tr", {}, h("th", {}, "Quota"), h("th", {}, "Used"), h("th", {}, "Limit"), h("th", {}, "Share"), h("th", {}, "Resets"))),
    h("tbody", {}, report.quotas.map((q) => h("tr", {},
      h("td", {}, q.quota), h("td", { class: "num" }, `${number.format(q.used)} ${q.unit}`), h("td", { class: "num" }, number.format(q.limit)),
      h("td", { class: "num" }, q.limit ? `${Math.round((100 * q.used) / q.limit)} %` : "—"), h("td", {}, when(q.resets_at))))))) : "";
  const stocks = h("dl", { class: "fields", "aria-label": "Held now" },
    h("dt", {}, "Documents"), h("dd", {}, number.format(report.stocks.documents)),
    h("dt", {}, "Stored bytes"), h("dd", {}, number.format(report.stocks["stored.bytes"])));
  const totals = report.totals.length ? h("div", { class: "table-wrap" }, h("table", { "aria-label": "Totals" },
    h("thead", {}, h("tr", {}, h("th", {}, "Meter"), h("th", {}, "Of"), h("th", {}, "Quantity"))),
    h("tbody", {}, report.totals.map((t) => h("tr", {}, h("td", {}, t.meter), h("td", {}, t.subject || "—"), h("td", { class: "num" }, number.format(t.quantity))))))) :
    stateBox("empty", "Nothing used in this period.");
  const sections = [h("h1", {}, "Usage"), form,
    h("section", { class: "card" }, plan, quotas, stocks),
    h("section", { class: "card" }, h("h2", {}, `${label}, ${report.period_start.slice(0, 7)}`), usageChart(days, daily, quota ? quota.limit : null, label)),
    h("section", { class: "card" }, h("h2", {}, "Totals"), totals)];
  if (session.is_superuser) sections.push(await topSpenders(month));
  show(...sections);
}

async function topSpenders(month) {
  let platform;
  try {
    platform = await call("GET", `/api/v1/usage/tenants${query({ month, limit: "20" })}`);
  } catch (error) {
    return h("section", { class: "card" }, h("h2", {}, "Top spenders"), stateBox("error", error.message));
  }
  const row = (name, plan, s) => h("tr", {}, h("td", {}, name), h("td", {}, plan || "—"),
    h("td", { class: "num" }, number.format(s.llm_tokens)), h("td", { class: "num" }, number.format(s.runs)),
    h("td", { class: "num" }, number.format(s.run_seconds)), h("td", { class: "num" }, number.format(s.searches)));
  return h("section", { class: "card" }, h("h2", {}, "Top spenders (all tenants)"), h("div", { class: "table-wrap" }, h("table", { "aria-label": "Top spenders" },
    h("thead", {}, h("tr", {}, h("th", {}, "Tenant"), h("th", {}, "Plan"), h("th", {}, "LLM tokens"), h("th", {}, "Runs"), h("th", {}, "Run seconds"), h("th", {}, "Searches"))),
    h("tbody", {}, platform.items.map((t) => row(`${t.name} (${t.slug})`, t.plan, t)), row("Every other tenant", null, platform.others)))));
}

// ---- routing

async function start() {
  const path = location.pathname.replace(/\/+$/, "");
  const [, , page = "runs", id] = path.split("/");
  const open = {
    "sign-in": signInPage,
    "forgot-password": forgotPasswordPage,
    "reset-password": resetPasswordPage,
    "accept-invitation": acceptInvitationPage,
    "verify-email": verifyEmailPage,
    mailbox: mailboxPage,
  };
  if (open[page]) { await open[page](); return; }
  try {
    session = await call("GET", "/console/session");
  } catch (error) {
    location.assign(`/console/sign-in?next=${encodeURIComponent(location.pathname + location.search)}`);
    return;
  }
  frame(page);
  const pages = {
    runs: () => (id ? runPage(id) : runsPage()),
    "dead-letters": deadLettersPage,
    definitions: definitionsPage,
    workflows: () => (id ? workflowRunPage(id) : workflowsPage()),
    documents: documentsPage,
    workers: workersPage,
    usage: usagePage,
    health: healthPage,
    tenants: tenantsPage,
  };
  const render = pages[page];
  if (!render) { show(h("h1", {}, "Not found"), stateBox("empty", "No such page."), h("a", { href: "/console/runs" }, "Runs")); return; }
  try { await render(); } catch (error) { show(stateBox("error", error.message)); }
}

start();
