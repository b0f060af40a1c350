// The console: one page per hash (#usage, #keys, ...), everything read from and written to the JSON API with the
// key the user signed in with (kept in sessionStorage, for this tab only).
"use strict";

const KEY_STORAGE = "llm-server-console-key";
const state = { admin: false, group: null, job: null, jobTimer: null, chat: [] };

const $ = (id) => document.getElementById(id);

function key() {
  return sessionStorage.getItem(KEY_STORAGE);
}

class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${key()}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = text;
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : { message: `HTTP ${response.status}`, code: null };
    throw new ApiError(response.status, error.message, error.code);
  }
  return { data, headers: response.headers };
}

function flash(message, kind) {
  const box = $("flash");
  box.textContent = message;
  box.className = kind || "";
  box.hidden = !message;
}

function guarded(fn) {
  return async (event) => {
    if (event) event.preventDefault();
    flash("");
    try {
      await fn(event);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        signOut("The key was refused; sign in again.");
        return;
      }
      flash(error.message || String(error));
    }
  };
}

function time(seconds) {
  if (seconds === null || seconds === undefined) return "";
  return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19);
}

const loss = (value) => (typeof value === "number" ? value.toFixed(4) : "");

function cell(row, value) {
  const td = document.createElement("td");
  if (value instanceof Node) td.append(value);
  else td.textContent = value === null || value === undefined ? "" : String(value);
  row.append(td);
  return td;
}

function fillTable(id, items, render, empty) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren();
  if (!items.length) {
    const row = document.createElement("tr");
    const td = cell(row, empty || "Nothing yet.");
    td.className = "empty";
    td.colSpan = $(id).querySelectorAll("th").length;
    body.append(row);
    return;
  }
  for (const item of items) {
    const row = document.createElement("tr");
    render(row, item);
    body.append(row);
  }
}

function button(label, onClick, className) {
  const node = document.createElement("button");
  node.type = "button";
  node.textContent = label;
  node.className = `small ${className || ""}`;
  node.addEventListener("click", guarded(onClick));
  return node;
}

// ---- sign in and navigation -------------------------------------------------------------------------------------

async function signIn(candidate) {
  sessionStorage.setItem(KEY_STORAGE, candidate);
  try {
    await api("GET", "/v1/models");
  } catch (error) {
    sessionStorage.removeItem(KEY_STORAGE);
    throw error.status === 401 ? new Error("That key was refused.") : error;
  }
  await whoAmI();
}

async function whoAmI() {
  try {
    await api("GET", "/v1/keys");
    state.admin = true;
  } catch (error) {
    if (error.status !== 403) throw error;
    state.admin = false;
  }
  $("who-label").textContent = state.admin ? "admin key" : "key (own data)";
  $("nav-keys").hidden = !state.admin;
  $("nav").hidden = false;
  $("who").hidden = false;
  if (!location.hash || location.hash === "#signin") location.hash = "#usage";
  else show(location.hash.slice(1));
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  stopJobPolling();
  $("nav").hidden = true;
  $("who").hidden = true;
  location.hash = "#signin";
  show("signin");
  flash(message || "");
}

const PAGES = {
  usage: loadUsage,
  keys: loadKeys,
  memory: loadGroups,
  adapters: loadAdapters,
  jobs: loadJobs,
  guardrails: async () => {},
  chat: loadChatChoices,
};

function show(page) {
  if (!key()) page = "signin";
  if (page === "keys" && !state.admin) page = "usage";
  if (!(page in PAGES) && page !== "signin") page = "usage";
  for (const section of document.querySelectorAll(".page")) section.hidden = section.id !== `page-${page}`;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.page === page);
  if (page !== "jobs") stopJobPolling();
  if (page !== "signin") guarded(PAGES[page])();
}

// ---- usage ------------------------------------------------------------------------------------------------------

// Every UTC hour ('YYYY-MM-DDTHH:00') or day ('YYYY-MM-DD') from start to end, as /v1/usage names them.
function timeBuckets(bucket, start, end) {
  const step = bucket === "hour" ? 3600 : 86400;
  const names = [];
  for (let at = Math.floor(start / step) * step; at <= end; at += step) {
    const iso = new Date(at * 1000).toISOString();
    names.push(bucket === "hour" ? `${iso.slice(0, 13)}:00` : iso.slice(0, 10));
  }
  return names;
}

async function loadUsage() {
  const group = $("usage-group").value, bucket = $("usage-bucket").value, measure = $("usage-measure").value;
  const end = Date.now() / 1000, start = end - Number($("usage-range").value);
  const range = `start=${Math.floor(start)}&end=${Math.ceil(end) + 1}`;
  const [over, totals] = await Promise.all([
    api("GET", `/v1/usage?group_by=${bucket},${group}&${range}`),
    api("GET", `/v1/usage?group_by=${group}&${range}`),
  ]);
  const buckets = timeBuckets(bucket, start, end);
  for (const row of over.data.data) if (!buckets.includes(row[bucket])) buckets.push(row[bucket]);
  buckets.sort();
  const series = {};
  for (const row of over.data.data) {
    const name = row[group] === null ? "(none)" : String(row[group]);
    (series[name] = series[name] || {})[row[bucket]] = row[measure] || 0;
  }
  Charts.stackedBars($("usage-chart"), buckets, series, {
    label: `${measure} per ${bucket} by ${group}`,
    shortLabel: (b) => (bucket === "hour" ? b.slice(5).replace("T", " ") : b.slice(5)),
  });
  $("usage-group-head").textContent = $("usage-group").selectedOptions[0].textContent;
  fillTable("usage-table", totals.data.data, (row, item) => {
    cell(row, item[group] === null ? "(none)" : item[group]);
    cell(row, item.requests);
    cell(row, item.errors);
    cell(row, item.prompt_tokens);
    cell(row, item.completion_tokens);
    cell(row, item.mean_latency_ms);
  }, "No usage in this range.");
}

// ---- keys (admin) -----------------------------------------------------------------------------------------------

async function loadKeys() {
  const { data } = await api("GET", "/v1/keys");
  fillTable("keys-table", data.data, (row, item) => {
    cell(row, item.id);
    cell(row, item.name);
    cell(row, item.admin ? "yes" : "");
    cell(row, item.credits === null ? "unlimited" : item.credits);
    cell(row, item.requests_per_minute);
    cell(row, item.tokens_per_minute);
    cell(row, time(item.created_at));
    cell(row, time(item.revoked_at));
    cell(row, item.revoked_at ? "" : button("Revoke", async () => {
      await api("DELETE", `/v1/keys/${encodeURIComponent(item.id)}`);
      await loadKeys();
    }, "danger"));
  }, "No stored keys.");
}

async function createKey() {
  const numberOrNull = (id) => ($(id).value === "" ? null : Number($(id).value));
  const { data } = await api("POST", "/v1/keys", {
    name: $("key-name").value,
    admin: $("key-admin").checked,
    credits: numberOrNull("key-credits"),
    requests_per_minute: numberOrNull("key-rpm"),
    tokens_per_minute: numberOrNull("key-tpm"),
  });
  const secret = $("key-secret");
  secret.textContent = `New key ${data.id} (shown once): ${data.key}`;
  secret.hidden = false;
  $("key-form").reset();
  await loadKeys();
}

// ---- memory -----------------------------------------------------------------------------------------------------

async function loadGroups() {
  const { data } = await api("GET", "/v1/memory");
  const list = $("groups-list");
  list.replaceChildren();
  if (!data.data.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "No memory groups yet.";
    list.append(li);
  }
  for (const group of data.data) {
    const li = document.createElement("li");
    li.dataset.group = group.id;
    li.textContent = group.id;
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = group.memory_count;
    li.append(count);
    li.classList.toggle("selected", group.id === state.group);
    li.addEventListener("click", guarded(() => openGroup(group.id)));
    list.append(li);
  }
  if (state.group && data.data.some((g) => g.id === state.group)) await openGroup(state.group);
  else $("group-detail").hidden = true;
}

const groupPath = (name) => `/v1/memory/${encodeURIComponent(name)}`;

async function openGroup(name) {
  state.group = name;
  for (const li of $("groups-list").children) li.classList.toggle("selected", li.dataset.group === name);
  const [{ data: group }, { data: memories }, { data: audit }] = await Promise.all([
    api("GET", groupPath(name)),
    api("GET", `${groupPath(name)}/memories?limit=200`),
    api("GET", `${groupPath(name)}/audit?limit=50`),
  ]);
  $("group-detail").hidden = false;
  $("group-title").textContent = name;
  $("group-facts").textContent =
    `${group.memory_count} memories · ${group.call_count} calls · goal: ${group.user_goal || "(none)"}` +
    (group.curated_at ? ` · curated ${time(group.curated_at)}` : "");
  showMemories(memories.data.map((memory) => ({ memory, score: null })));
  fillTable("audit-table", audit.data, (row, entry) => {
    cell(row, time(entry.at));
    cell(row, entry.action);
    cell(row, JSON.stringify(entry.removed));
    cell(row, JSON.stringify(entry.added));
    cell(row, entry.reason);
  }, "No changes recorded.");
}

function showMemories(hits) {
  fillTable("memories-table", hits, (row, { memory, score }) => {
    row.dataset.memory = memory.id;
    cell(row, memory.id);
    cell(row, memory.kind);
    cell(row, memory.text).className = "memory-text";
    cell(row, score === null ? "" : score.toFixed(3));
    const actions = cell(row, button("Edit", async () => {
      const text = prompt("Memory text", memory.text);
      if (text === null || text === memory.text) return;
      await api("PATCH", `${groupPath(state.group)}/memories/${memory.id}`, { text });
      await openGroup(state.group);
    }));
    actions.append(" ", button("Delete", async () => {
      await api("DELETE", `${groupPath(state.group)}/memories/${memory.id}`);
      await loadGroups();
    }, "danger"));
  }, "No memories.");
}

async function searchMemories() {
  const query = $("memory-search").value.trim();
  if (!query) return openGroup(state.group);
  const { data } = await api("POST", `${groupPath(state.group)}/search`, { query, limit: 20 });
  showMemories(data.data.map((hit) => ({ memory: hit.memory, score: hit.score })));
}

async function addMemory(group, text) {
  await api("POST", `${groupPath(group)}/memories`, { text });
  state.group = group;
  await loadGroups();
}

async function curateGroup() {
  $("group-curate").disabled = true;
  try {
    const { data } = await api("POST", `${groupPath(state.group)}/curate`);
    flash(`Curation ${data.id}: ${data.examined} memories examined, ${data.changes.length} changes.`, "info");
    await loadGroups();
  } finally {
    $("group-curate").disabled = false;
  }
}

async function deleteGroup() {
  if (!confirm(`Delete the memory group ${state.group} and all its memories?`)) return;
  await api("DELETE", groupPath(state.group));
  state.group = null;
  await loadGroups();
}

// ---- adapters ---------------------------------------------------------------------------------------------------

async function loadAdapters() {
  const [{ data: adapters }, { data: jobs }] = await Promise.all([
    api("GET", "/v1/adapters"),
    api("GET", "/v1/fine_tuning/jobs?limit=100"),
  ]);
  fillTable("adapters-table", adapters.data, (row, item) => {
    cell(row, item.id);
    cell(row, `v${item.version}`);
    cell(row, item.base_model);
    cell(row, item.rank);
    cell(row, item.created);
    cell(row, item.source);
  }, "No adapters are served.");
  // Served adapters, and those fine-tuning made whose versions were kept unpromoted.
  const names = [...new Set([
    ...adapters.data.map((a) => a.id),
    ...jobs.data.filter((job) => job.metadata.adapter_version !== null).map((job) => job.metadata.lora_name),
  ])].sort();
  const versions = [];
  for (const name of names) {
    try {
      const { data } = await api("GET", `/v1/adapters/${encodeURIComponent(name)}/versions`);
      versions.push(...data.data.slice().reverse());
    } catch (error) {
      if (error.status !== 404) throw error; // removed meanwhile
    }
  }
  fillTable("versions-table", versions, (row, version) => {
    cell(row, version.adapter);
    cell(row, `v${version.version}`);
    cell(row, version.active ? "yes" : "");
    cell(row, version.created);
    cell(row, version.source);
    cell(row, loss(version.eval_loss));
    cell(row, loss(version.baseline_eval_loss));
  }, "No adapter versions.");
}

// ---- fine-tuning jobs -------------------------------------------------------------------------------------------

async function loadJobs() {
  const { data } = await api("GET", "/v1/fine_tuning/jobs?limit=100");
  fillTable("jobs-table", data.data, (row, job) => {
    row.dataset.job = job.id;
    row.classList.toggle("selected", job.id === state.job);
    cell(row, job.id);
    cell(row, job.metadata.lora_name);
    cell(row, job.training_file.replace(/^memory:/, ""));
    cell(row, job.status).className = "job-status";
    cell(row, job.metadata.adapter_version ? `v${job.metadata.adapter_version}` : "");
    cell(row, job.metadata.promoted === "true" ? "yes" : "");
    cell(row, time(job.created_at));
    row.addEventListener("click", guarded(() => openJob(job.id)));
  }, "No fine-tuning jobs yet.");
  if (state.job) await openJob(state.job);
}

async function allEvents(jobId) {
  const events = [];
  let after = null;
  for (let page = 0; page < 50; page++) {
    const query = after ? `&after=${after}` : "";
    const { data } = await api("GET", `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/events?limit=100${query}`);
    events.push(...data.data);
    if (!data.has_more || !data.data.length) break;
    after = data.data[data.data.length - 1].id;
  }
  return events.reverse(); // oldest first
}

async function openJob(jobId) {
  state.job = jobId;
  for (const row of $("jobs-table").querySelectorAll("tbody tr")) row.classList.toggle("selected", row.dataset.job === jobId);
  const [{ data: job }, events] = await Promise.all([
    api("GET", `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}`),
    allEvents(jobId),
  ]);
  $("job-detail").hidden = false;
  $("job-title").textContent = `${job.id} · ${job.metadata.lora_name}`;
  const r = job.result;
  const heldOut = r ? (r.general_loss ?? r.eval_loss) : null;
  const baseline = r ? (r.baseline_general_loss ?? r.baseline_eval_loss) : null;
  let result = r ? ` · held-out loss ${loss(heldOut)} (base model ${loss(baseline)})` : "";
  if (r && typeof r.recall === "number") result += ` · recall ${loss(r.recall)} (base model ${loss(r.baseline_recall)})`;
  $("job-status").textContent = `status: ${job.status}${result}`;
  const steps = events.filter((e) => e.type === "metrics" && e.data && e.data.step !== undefined);
  Charts.lines($("loss-chart"), { "training loss": steps.map((e) => [e.data.step, e.data.train_loss ?? e.data.loss]) }, {
    label: "training loss per step", xLabel: "step", empty: "No training steps yet.",
  });
  fillTable("events-table", events.slice().reverse(), (row, event) => {
    cell(row, time(event.created_at));
    cell(row, event.level);
    cell(row, event.message);
  }, "No events.");
  const live = job.status === "queued" || job.status === "running";
  $("job-cancel").hidden = !live;
  stopJobPolling();
  if (live) state.jobTimer = setTimeout(guarded(() => refreshJob(jobId)), 2000);
}

async function refreshJob(jobId) {
  if (state.job !== jobId || $("page-jobs").hidden) return;
  await loadJobs();
}

function stopJobPolling() {
  if (state.jobTimer) clearTimeout(state.jobTimer);
  state.jobTimer = null;
}

async function createJob() {
  const { data: models } = await api("GET", "/v1/models");
  const base = models.data.find((m) => !m.parent) || models.data[0];
  const { data: job } = await api("POST", "/v1/fine_tuning/jobs", {
    model: base.id,
    training_file: `memory:${$("job-group").value.trim()}`,
    lora_name: $("job-adapter").value.trim(),
  });
  state.job = job.id;
  $("job-form").reset();
  await loadJobs();
}

// ---- guardrail playground ---------------------------------------------------------------------------------------

async function checkGuardrail() {
  const body = { input: $("guard-text").value };
  if ($("guard-policy").value.trim()) body.policy = $("guard-policy").value;
  const { data } = await api("POST", "/v1/moderations", body);
  const result = data.results[0];
  const box = $("guard-result");
  box.hidden = false;
  box.className = `result ${result.flagged ? "flagged" : "passed"}`;
  box.replaceChildren();
  const verdict = document.createElement("strong");
  verdict.id = "guard-verdict";
  verdict.textContent = result.flagged ? "Violation" : "Allowed";
  const score = document.createElement("span");
  score.id = "guard-score";
  score.textContent = ` · score ${result.score.toFixed(4)} · checker ${data.model}`;
  const reason = document.createElement("p");
  reason.textContent = result.reason;
  box.append(verdict, score, reason);
}

// ---- chat playground --------------------------------------------------------------------------------------------

async function loadChatChoices() {
  const [{ data: models }, { data: adapters }] = await Promise.all([api("GET", "/v1/models"), api("GET", "/v1/adapters")]);
  const fill = (select, names, keepFirst) => {
    const current = select.value;
    while (select.options.length > keepFirst) select.remove(keepFirst);
    for (const name of names) select.add(new Option(name, name));
    if ([...select.options].some((o) => o.value === current)) select.value = current;
  };
  const adapterNames = adapters.data.map((a) => a.id);
  fill($("chat-model"), models.data.map((m) => m.id).filter((id) => !adapterNames.includes(id)), 0);
  fill($("chat-adapter"), adapterNames, 1);
  renderChat();
}

function renderChat() {
  const log = $("chat-log");
  log.replaceChildren();
  if (!state.chat.length) {
    log.innerHTML = '<p class="empty">Say something to start.</p>';
    return;
  }
  for (const message of state.chat) {
    const div = document.createElement("div");
    div.className = `msg ${message.role}${message.blocked ? " blocked" : ""}`;
    const who = document.createElement("b");
    who.textContent = message.role;
    div.append(who, document.createTextNode(message.content));
    if (message.meta) {
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = message.meta;
      div.append(meta);
    }
    log.append(div);
  }
  log.scrollTop = log.scrollHeight;
}

async function sendChat() {
  const text = $("chat-input").value.trim();
  if (!text) return;
  const body = {
    model: $("chat-model").value,
    messages: [
      ...state.chat.filter((m) => !m.blocked).map(({ role, content }) => ({ role, content })),
      { role: "user", content: text },
    ],
    max_tokens: Number($("chat-max").value) || 64,
  };
  if ($("chat-adapter").value) body.lora_name = $("chat-adapter").value;
  if ($("chat-nightly").checked) body.nightly = [$("chat-group").value.trim(), $("chat-goal").value.trim()];
  if ($("chat-policy").value.trim()) body.guardrail_policy = $("chat-policy").value.trim();
  $("chat-send").disabled = true;
  try {
    let reply;
    try {
      reply = await api("POST", "/v1/chat/completions", body);
    } catch (error) {
      if (error.code !== "guardrail_violation") throw error;
      // The answer broke the policy: nothing of it reaches the page; say so in the conversation.
      state.chat.push({ role: "user", content: text });
      state.chat.push({ role: "assistant", content: "(answer withheld)", meta: `guardrail: ${error.message}`, blocked: true });
      $("chat-input").value = "";
      renderChat();
      return;
    }
    const { data, headers } = reply;
    const choice = data.choices[0];
    const meta = [`${data.model}`, `${data.usage.prompt_tokens}+${data.usage.completion_tokens} tokens`, `finish: ${choice.finish_reason}`];
    const used = headers.get("x-nightly-memories-used");
    if (used !== null) meta.push(`memories used: ${used}`);
    state.chat.push({ role: "user", content: text });
    state.chat.push({ role: "assistant", content: choice.message.content || "", meta: meta.join(" · ") });
    $("chat-input").value = "";
    renderChat();
  } finally {
    $("chat-send").disabled = false;
  }
}

// ---- wiring -----------------------------------------------------------------------------------------------------

function wire() {
  $("signin-form").addEventListener("submit", guarded(() => signIn($("signin-key").value.trim())));
  $("signout").addEventListener("click", () => signOut());
  $("usage-form").addEventListener("submit", guarded(loadUsage));
  for (const id of ["usage-group", "usage-bucket", "usage-range", "usage-measure"]) $(id).addEventListener("change", guarded(loadUsage));
  $("key-form").addEventListener("submit", guarded(createKey));
  $("group-new-form").addEventListener("submit", guarded(async () => {
    await addMemory($("group-new-name").value.trim(), $("group-new-text").value);
    $("group-new-form").reset();
  }));
  $("memory-search-form").addEventListener("submit", guarded(searchMemories));
  $("memory-search-clear").addEventListener("click", guarded(() => {
    $("memory-search").value = "";
    return openGroup(state.group);
  }));
  $("memory-add-form").addEventListener("submit", guarded(async () => {
    await addMemory(state.group, $("memory-add-text").value);
    $("memory-add-form").reset();
  }));
  $("group-delete").addEventListener("click", guarded(deleteGroup));
  $("group-curate").addEventListener("click", guarded(curateGroup));
  $("job-form").addEventListener("submit", guarded(createJob));
  $("job-cancel").addEventListener("click", guarded(async () => {
    await api("POST", `/v1/fine_tuning/jobs/${encodeURIComponent(state.job)}/cancel`);
    await loadJobs();
  }));
  $("guard-form").addEventListener("submit", guarded(checkGuardrail));
  $("chat-form").addEventListener("submit", guarded(sendChat));
  $("chat-reset").addEventListener("click", () => {
    state.chat = [];
    renderChat();
  });
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
}

document.addEventListener("DOMContentLoaded", async () => {
  wire();
  if (key()) await guarded(whoAmI)();
  else show("signin");
});
