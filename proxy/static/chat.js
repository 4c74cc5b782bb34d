// The chat page: streams /v1/chat/completions, keeps the job id in the URL and localStorage, and
// resumes a dropped or reloaded answer from its last event on /v1/jobs/{id}/events (never a new
// generation). The API key lives in sessionStorage only.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "switchyard.key", CHAT = "switchyard.chat", MODEL = "switchyard.model";
const TERMINAL = ["succeeded", "failed", "cancelled"];
const STALL_MS = 45000; // no byte for this long (keep-alives come every 15 s): reconnect

// The conversation and the answer in flight: {messages, job, lastId, text, usage}, saved on every event.
let chat = loadChat();
let active = null; // {job, controller, stopped}

function loadChat() {
  try {
    const saved = JSON.parse(localStorage.getItem(CHAT) || "null");
    if (saved && Array.isArray(saved.messages)) return saved;
  } catch (e) { /* a damaged entry: start afresh */ }
  return { messages: [], job: null, lastId: 0, text: "", usage: null };
}
const saveChat = () => localStorage.setItem(CHAT, JSON.stringify(chat));
const apiKey = () => sessionStorage.getItem(KEY) || "";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function api(path, options = {}) {
  const headers = Object.assign({ authorization: "Bearer " + apiKey() }, options.headers || {});
  return fetch(path, Object.assign({}, options, { headers }));
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (e) { /* not JSON */ }
  return { message: "HTTP " + response.status, code: null };
}

function setStatus(state, text) {
  const el = $("status");
  el.dataset.state = state;
  el.textContent = text || state;
}

function showUsage(usage) {
  $("usage").textContent = usage
    ? `prompt ${usage.prompt_tokens} · completion ${usage.completion_tokens} · total ${usage.total_tokens} tokens`
    : "";
}

// ---- rendering ---------------------------------------------------------------------------------
function messageEl(role, content, job) {
  const el = document.createElement("div");
  el.className = "message " + role;
  if (job) el.dataset.job = job;
  if (role === "assistant") el.innerHTML = window.renderMarkdown(content);
  else el.textContent = content;
  return el;
}

function render() {
  const box = $("messages");
  box.replaceChildren(...chat.messages.map((m) => messageEl(m.role, m.content, m.job)));
  if (chat.job) box.append(messageEl("assistant", chat.text, chat.job));
  showUsage(chat.usage);
}

function updateAnswer() {
  const box = $("messages");
  let el = box.lastElementChild;
  if (!el || el.dataset.job !== chat.job) { el = messageEl("assistant", "", chat.job); box.append(el); }
  el.innerHTML = window.renderMarkdown(chat.text);
  el.scrollIntoView({ block: "end" });
}

function setJobInUrl(job) {
  const url = new URL(location.href);
  if (job) url.searchParams.set("job", job); else url.searchParams.delete("job");
  history.replaceState(null, "", url);
}

// ---- server-sent events ------------------------------------------------------------------------
async function* events(response, controller) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", timer = null;
  const arm = () => { clearTimeout(timer); timer = setTimeout(() => controller.abort(), STALL_MS); };
  try {
    for (;;) {
      arm();
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = { id: null, name: null, data: [] };
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const i = line.indexOf(":");
          const field = i < 0 ? line : line.slice(0, i);
          const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
          if (field === "id") event.id = value;
          else if (field === "event") event.name = value;
          else if (field === "data") event.data.push(value);
        }
        if (event.id !== null || event.data.length) yield event;
      }
    }
  } finally {
    clearTimeout(timer);
    reader.releaseLock();
  }
}

// One event of the answer; returns the terminal status once the answer has ended.
function apply(event) {
  if (event.id !== null && /^\d+$/.test(event.id)) chat.lastId = Number(event.id);
  const data = event.data.join("\n");
  let ended = null;
  if (data === "[DONE]") ended = "succeeded";
  else if (event.name === "job.running") setStatus("streaming", `Streaming (job ${chat.job})`);
  else if (event.name === "job.restarted") { chat.text = ""; setStatus("streaming", "Restarted by the server"); }
  else if (event.name && event.name.startsWith("job.")) {
    const body = JSON.parse(data || "{}");
    ended = body.status || event.name.slice(4);
    if (body.usage) chat.usage = body.usage;
    if (body.error) chat.error = body.error.message;
  } else if (data) {
    const chunk = JSON.parse(data);
    if (chunk.error) { chat.error = chunk.error.message; ended = "failed"; }
    const choice = (chunk.choices || [])[0];
    if (choice) chat.text += (choice.delta && choice.delta.content) || choice.text || "";
    if (chunk.usage) chat.usage = chunk.usage;
  }
  saveChat();
  updateAnswer();
  showUsage(chat.usage);
  return ended;
}

// Reads the answer's stream to its end, resuming after the last event whenever the connection goes.
async function follow(first) {
  const run = active;
  let response = first, tries = 0;
  while (!run.stopped) {
    try {
      if (!response) {
        run.controller = new AbortController();
        response = await api(`/v1/jobs/${encodeURIComponent(run.job)}/events`,
                             { headers: { "last-event-id": String(chat.lastId) }, signal: run.controller.signal });
        if (!response.ok) {
          const error = await errorOf(response);
          if (response.status < 500 && response.status !== 429) return finish("failed", error.message);
          throw new Error(error.message);
        }
      }
      for await (const event of events(response, run.controller)) {
        if (run.stopped) return;
        tries = 0;
        const ended = apply(event);
        if (ended) return finish(ended, chat.error);
      }
    } catch (e) {
      if (run.stopped) return;
    }
    response = null;
    setStatus("reconnecting", "Connection lost; resuming…");
    await sleep(Math.min(500 * 2 ** tries++, 8000));
  }
}

function finish(status, error) {
  if (!chat.job) return;
  chat.messages.push({ role: "assistant", content: chat.text, job: chat.job, status });
  const job = chat.job;
  chat.job = null; chat.text = ""; chat.lastId = 0; chat.error = null;
  saveChat();
  active = null;
  setJobInUrl(null);
  render();
  setStatus(status, error ? `${status}: ${error}` : `${status[0].toUpperCase()}${status.slice(1)} (job ${job})`);
  $("stop").disabled = true;
  $("send").disabled = false;
}

function resume(job) {
  active = { job, controller: new AbortController(), stopped: false };
  $("stop").disabled = false;
  $("send").disabled = true;
  setStatus("streaming", `Resuming job ${job} after event ${chat.lastId}…`);
  follow(null);
}

// ---- actions -----------------------------------------------------------------------------------
async function send(text) {
  const model = $("model").value;
  chat.messages.push({ role: "user", content: text });
  chat.usage = null;
  saveChat();
  render();
  const messages = chat.messages.filter((m) => m.role !== "error").map((m) => ({ role: m.role, content: m.content }));
  active = { job: null, controller: new AbortController(), stopped: false };
  $("send").disabled = true;
  setStatus("starting", "Starting…");
  let response;
  try {
    response = await api("/v1/chat/completions", {
      method: "POST", signal: active.controller.signal,
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model, messages, stream: true, stream_options: { include_usage: true } }),
    });
  } catch (e) {
    active = null; $("send").disabled = false;
    return setStatus("failed", "The proxy could not be reached.");
  }
  if (!response.ok) {
    const error = await errorOf(response);
    chat.messages.push({ role: "error", content: error.message });
    saveChat(); render(); active = null; $("send").disabled = false;
    return setStatus("failed", `${response.status} ${error.code || ""}: ${error.message}`);
  }
  const job = response.headers.get("x-job-id");
  Object.assign(chat, { job, lastId: 0, text: "", error: null });
  active.job = job;
  saveChat();
  setJobInUrl(job);
  $("stop").disabled = false;
  setStatus("streaming", `Streaming (job ${job})`);
  updateAnswer();
  follow(response);
}

async function stop() {
  if (!active || !active.job) return;
  const run = active;
  run.stopped = true;
  $("stop").disabled = true;
  setStatus("cancelling", "Cancelling…");
  const response = await api(`/v1/jobs/${encodeURIComponent(run.job)}/cancel`, { method: "POST" });
  run.controller.abort();
  const view = response.ok ? await response.json() : null;
  finish(view && TERMINAL.includes(view.status) ? view.status : "cancelled");
}

async function loadModels() {
  const select = $("model");
  const response = await api("/v1/models");
  if (!response.ok) {
    const error = await errorOf(response);
    setStatus("failed", response.status === 401 ? "Enter a valid API key." : error.message);
    return false;
  }
  const { data } = await response.json();
  const wanted = localStorage.getItem(MODEL);
  select.replaceChildren(...data.map((m) => new Option(m.id, m.id, false, m.id === wanted)));
  return true;
}

async function loadJobs() {
  const body = $("jobs").tBodies[0];
  $("jobs-status").textContent = "Loading…";
  const response = await api("/v1/jobs?limit=50");
  if (!response.ok) { $("jobs-status").textContent = (await errorOf(response)).message; return; }
  const { data } = await response.json();
  body.replaceChildren(...data.map((job) => {
    const row = document.createElement("tr");
    row.dataset.job = job.id;
    for (const text of [job.id, job.model, job.status, new Date(job.created_at * 1000).toLocaleString()]) {
      row.insertCell().textContent = text;
    }
    const cell = row.insertCell();
    const open = document.createElement("button");
    open.textContent = "Open"; open.className = "open";
    open.onclick = () => openJob(job);
    cell.append(open);
    if (!TERMINAL.includes(job.status)) {
      const cancel = document.createElement("button");
      cancel.textContent = "Cancel"; cancel.className = "cancel";
      cancel.onclick = () => cancelJob(job.id);
      cell.append(cancel);
    }
    return row;
  }));
  $("jobs-status").textContent = `${data.length} recent jobs`;
}

async function cancelJob(id) {
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  await api(path + "/cancel", { method: "POST" });
  for (let i = 0; i < 20; i++) { // the cancel takes a moment to reach the workflow
    const response = await api(path);
    if (!response.ok || TERMINAL.includes((await response.json()).status)) break;
    await sleep(250);
  }
  loadJobs();
}

async function openJob(job) {
  if (job.endpoint === "/v1/chat/completions" || job.endpoint === "/v1/completions") {
    location.search = "?job=" + encodeURIComponent(job.id); // the page resumes it from its first event
    return;
  }
  const detail = $("job-detail");
  const response = await api(`/v1/jobs/${encodeURIComponent(job.id)}/result`);
  detail.textContent = response.ok ? await response.text() : (await errorOf(response)).message;
  detail.hidden = false;
}

function showView(jobs) {
  $("chat-view").hidden = jobs;
  $("jobs-view").hidden = !jobs;
  if (jobs) loadJobs();
}

// ---- start -------------------------------------------------------------------------------------
async function start() {
  $("key").value = apiKey();
  $("key-form").onsubmit = async (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("key").value.trim());
    if (await loadModels()) setStatus("idle", "Ready");
  };
  $("model").onchange = () => localStorage.setItem(MODEL, $("model").value);
  $("composer").onsubmit = (e) => {
    e.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || active) return;
    $("prompt").value = "";
    send(text);
  };
  $("prompt").onkeydown = (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
  };
  $("stop").onclick = stop;
  $("show-chat").onclick = () => showView(false);
  $("show-jobs").onclick = () => showView(true);
  $("refresh-jobs").onclick = loadJobs;
  $("new-chat").onclick = () => {
    if (active) return;
    chat = { messages: [], job: null, lastId: 0, text: "", usage: null };
    saveChat(); setJobInUrl(null); render(); setStatus("idle", "Ready");
  };

  const wanted = new URL(location.href).searchParams.get("job");
  if (wanted && wanted !== chat.job) {
    if (chat.job) chat.messages.push({ role: "assistant", content: chat.text, job: chat.job, status: "left" });
    Object.assign(chat, { job: wanted, lastId: 0, text: "", usage: null });
    saveChat();
  }
  render();
  if (!apiKey()) { setStatus("idle", "Enter an API key."); $("key").focus(); return; }
  if (!(await loadModels())) return;
  if (chat.job) { setJobInUrl(chat.job); resume(chat.job); } else setStatus("idle", "Ready");
}

start();
