// The page of `nst serve`: plain JavaScript, relative URLs only (works under any sub-path),
// nothing from a CDN. Text from the server is always set as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const TERMINAL = ["finished", "failed", "cancelled", "interrupted"];
const FIELDS = ["size", "iterations", "maxfun", "content_weight", "tv_weight"];
const state = { options: null, content: null, styles: [], job: null, source: null, view: null };

async function api(path, init = {}) {
  const reply = await fetch(path, { credentials: "same-origin", ...init });
  if (reply.status === 401 && path !== "api/login") { showLogin(); throw new Error("log in first"); }
  const body = reply.headers.get("content-type")?.includes("json") ? await reply.json() : null;
  if (!reply.ok) throw new Error(body?.detail || `${reply.status} ${reply.statusText}`);
  return body;
}

function showLogin() { $("login").hidden = false; $("app").hidden = true; }

// ---------------------------------------------------------------- the form

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function fillForm(config, preset = "") {
  $("preset").value = preset;
  for (const name of FIELDS) if (config[name] !== undefined && config[name] !== null) $(name).value = config[name];
  if (config.style_weights) $("style_weights").value = config.style_weights.join(",");
  if (config.init) $("init").value = ["noise", "content", "style"].includes(config.init) ? config.init : "noise";
}

function setContent(file) {
  state.content = file;
  const preview = $("content-preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
}

function addStyles(files, weights = []) {
  [...files].forEach((file, k) => state.styles.push({ file, weight: weights[k] ?? 1 }));
  renderStyles();
}

function renderStyles() {
  const list = $("styles");
  list.replaceChildren(...state.styles.map((style, k) => {
    const weight = el("input", { type: "number", min: "0", step: "any", value: style.weight,
                                 title: "blend weight", className: "style-weight" });
    weight.addEventListener("input", () => { style.weight = Number(weight.value); });
    const remove = el("button", { type: "button", className: "secondary", textContent: "remove" });
    remove.addEventListener("click", () => { state.styles.splice(k, 1); renderStyles(); });
    return el("li", {}, el("img", { src: URL.createObjectURL(style.file), alt: style.file.name }),
              el("span", { textContent: "weight" }), weight, remove);
  }));
}

function dropZone(zone, input, onFiles) {
  input.addEventListener("change", () => { if (input.files.length) onFiles(input.files); input.value = ""; });
  for (const kind of ["dragenter", "dragover"]) zone.addEventListener(kind, (e) => {
    e.preventDefault(); zone.classList.add("over");
  });
  for (const kind of ["dragleave", "drop"]) zone.addEventListener(kind, () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer.files.length) onFiles(e.dataTransfer.files);
  });
}

function params() {
  const out = {};
  if ($("preset").value) out.preset = $("preset").value;
  for (const name of FIELDS) if ($(name).value !== "") out[name] = Number($(name).value);
  const weights = $("style_weights").value.split(",").map((w) => w.trim()).filter(Boolean).map(Number);
  if (weights.length) out.style_weights = weights;
  out.init = $("init").value;
  if (state.styles.length > 1) out.style_blend = state.styles.map((s) => s.weight);
  return out;
}

async function start() {
  $("form-error").textContent = "";
  if (!state.content) { $("form-error").textContent = "Pick a photo first."; return; }
  if (!state.styles.length) { $("form-error").textContent = "Pick at least one painting."; return; }
  const form = new FormData();
  form.append("content", state.content, state.content.name || "content.png");
  for (const s of state.styles) form.append("style", s.file, s.file.name || "style.png");
  form.append("params", JSON.stringify(params()));
  $("start").disabled = true;
  try {
    const job = await api("api/jobs", { method: "POST", body: form });
    openJob(job.id);
    refreshHistory();
  } catch (err) {
    $("form-error").textContent = err.message;
  } finally {
    $("start").disabled = false;
  }
}

// ---------------------------------------------------------------- one job, live

function openJob(id) {
  if (state.source) state.source.close();
  const view = { id, status: "queued", snapshots: [], losses: [], total: 0, prepared: null, iterations: 0,
                 iteration: 0, last: null };
  state.view = view;
  $("run").hidden = false;
  $("run-id").textContent = id;
  $("scrubber").max = 0; $("scrubber").disabled = true;
  $("live-image").removeAttribute("src");
  $("download").hidden = $("record").hidden = true;
  $("image-caption").textContent = "";
  drawCurve(view);
  const source = new EventSource(`api/jobs/${id}/events`);
  state.source = source;
  const on = (kind, handler) => source.addEventListener(kind, (e) => {
    if (state.view !== view) return;
    handler(JSON.parse(e.data)); render(view);
  });
  on("queued", (d) => { view.status = "queued"; view.position = d.position; });
  on("started", (d) => {
    view.status = "running"; view.resumedFrom = d.resumed_from;
    if (!d.resumed_from) { view.snapshots = []; view.losses = []; }
  });
  on("prepared", (d) => { view.prepared = d; view.size = `${d.width}x${d.height}`; });
  on("evaluated", (d) => {
    view.losses.push(d.loss); view.total = d.total_evaluations; view.evaluation = d.evaluation;
    view.evaluatedAt = d.time;
  });
  on("iteration", (d) => {
    view.iteration = d.iteration; view.iterations = d.iterations; view.loss = d.loss;
    if (d.snapshot) {
      view.snapshots.push({ n: d.iteration, url: d.snapshot });
      showSnapshot(view, view.snapshots.length - 1);
    }
  });
  for (const kind of TERMINAL) on(kind, (d) => {
    view.status = kind; view.error = d.error;
    if (d.result) { view.result = d.result; showResult(view); }
    // Replayed history may go on (a job resumed after it was cancelled): close once the job says it ended.
    setTimeout(async () => {
      const job = await api(`api/jobs/${id}`).catch(() => null);
      if (!job || TERMINAL.includes(job.status)) { source.close(); refreshHistory(); }
    }, 300);
  });
}

function showSnapshot(view, k) {
  const shot = view.snapshots[k];
  $("scrubber").max = view.snapshots.length - 1 + (view.result ? 1 : 0);
  $("scrubber").value = k; $("scrubber").disabled = false;
  setPicture(shot.url, `after iteration ${shot.n}`);
}

function showResult(view) {
  $("scrubber").max = view.snapshots.length; $("scrubber").value = view.snapshots.length;
  $("scrubber").disabled = false;
  setPicture(view.result, "the result");
  $("record").href = `api/jobs/${view.id}/record`; $("record").hidden = false;
}

function setPicture(url, caption) {
  $("live-image").src = `${url}?v=${Date.now()}`;
  $("image-caption").textContent = caption;
  $("download").href = `${url}?download=1`;
  $("download").hidden = false;
}

function scrub() {
  const view = state.view; const k = Number($("scrubber").value);
  if (k < view.snapshots.length) setPicture(view.snapshots[k].url, `after iteration ${view.snapshots[k].n}`);
  else if (view.result) setPicture(view.result, "the result");
}

function render(view) {
  const parts = [view.status];
  if (view.status === "queued" && view.position !== undefined) parts.push(`position ${view.position + 1} in the queue`);
  if (view.size) parts.push(view.size + " px");
  if (view.iterations) parts.push(`iteration ${view.iteration} of ${view.iterations}`);
  if (view.loss !== undefined) parts.push(`loss ${view.loss.toExponential(3)}`);
  if (view.status === "running" && view.prepared && view.evaluation) {
    const done = Math.min(1, view.evaluation / view.total);
    const elapsed = view.evaluatedAt - view.prepared.time;
    if (done > 0 && elapsed > 0) parts.push(`about ${Math.ceil(elapsed / done * (1 - done))} s left`);
  }
  if (view.error) parts.push(view.error);
  $("status").textContent = parts.join(" · ");
  $("status").className = `status-${view.status}`;
  $("progress").value = view.total ? Math.min(1, (view.evaluation || 0) / view.total) : 0;
  if (view.status === "finished") $("progress").value = 1;
  $("cancel").hidden = !["queued", "running"].includes(view.status);
  $("resume").hidden = !["interrupted", "cancelled", "failed"].includes(view.status);
  drawCurve(view);
}

function drawCurve(view) {
  const canvas = $("loss-curve"); const g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 28;
  g.clearRect(0, 0, w, h);
  g.fillStyle = "#6b7280"; g.font = "11px system-ui";
  g.fillText("loss per evaluation (log scale)", pad, 14);
  const ys = view.losses.filter((l) => l > 0).map(Math.log10);
  if (ys.length < 2) return;
  const lo = Math.min(...ys), hi = Math.max(...ys), span = hi - lo || 1;
  g.strokeStyle = "#2f5fd0"; g.lineWidth = 1.5; g.beginPath();
  ys.forEach((y, k) => {
    const px = pad + (w - 2 * pad) * k / Math.max(1, Math.max(view.total, ys.length) - 1);
    const py = h - pad - (h - 2 * pad - 10) * (y - lo) / span;
    k ? g.lineTo(px, py) : g.moveTo(px, py);
  });
  g.stroke();
  g.fillText(`1e${hi.toFixed(1)}`, 2, pad + 6); g.fillText(`1e${lo.toFixed(1)}`, 2, h - pad);
}

// ---------------------------------------------------------------- history

async function refreshHistory() {
  const { jobs } = await api("api/jobs");
  $("history").replaceChildren(...jobs.map(card));
}

function card(job) {
  const picture = job.result || job.snapshot_urls.at(-1) || job.inputs[0];
  const img = el("img", { src: picture, alt: `job ${job.id}`, loading: "lazy" });
  img.addEventListener("click", () => openJob(job.id));
  const buttons = el("div", { className: "buttons" });
  const button = (label, action, cls = "secondary") => {
    const b = el("button", { type: "button", className: cls, textContent: label });
    b.addEventListener("click", action); buttons.append(b);
  };
  button("Open", () => openJob(job.id));
  button("Run again", () => runAgain(job));
  if (job.resumable) button("Resume", () => resume(job.id));
  if (!["queued", "running"].includes(job.status)) button("Delete", () => remove(job.id));
  const when = new Date(job.created * 1000).toLocaleString();
  const iterations = `${job.iteration}/${job.iterations} iterations`;
  const node = el("div", { className: "card" }, img,
                  el("span", { className: `status-${job.status}`, textContent: `${job.status} · ${iterations}` }),
                  el("span", { className: "muted", textContent: when }), buttons);
  node.dataset.id = job.id;
  return node;
}

async function runAgain(job) {
  const blobs = await Promise.all(job.inputs.map((url) => fetch(url).then((r) => r.blob())));
  const files = blobs.map((b, k) => new File([b], k ? `style-${k}.png` : "content.png", { type: "image/png" }));
  const [content, ...styles] = files;
  setContent(content);
  state.styles = [];
  addStyles(styles, job.params.style_blend || []);
  const preset = job.params.preset || "";
  fillForm({ ...(preset ? state.options.presets[preset] : state.options.defaults), ...job.params }, preset);
  $("new-job").scrollIntoView({ behavior: "smooth" });
}

async function resume(id) { await api(`api/jobs/${id}/resume`, { method: "POST" }); openJob(id); refreshHistory(); }

async function remove(id) {
  await api(`api/jobs/${id}`, { method: "DELETE" });
  if (state.view?.id === id) { $("run").hidden = true; state.source?.close(); }
  refreshHistory();
}

// ---------------------------------------------------------------- start

async function main() {
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await api("api/login", { method: "POST", headers: { "Content-Type": "application/json" },
                               body: JSON.stringify({ token: $("token").value }) });
      location.reload();
    } catch (err) { $("login-error").textContent = err.message; }
  });
  try { state.options = await api("api/options"); } catch { return; }
  $("app").hidden = false;
  for (const name of Object.keys(state.options.presets)) {
    $("preset").append(el("option", { value: name, textContent: name }));
  }
  fillForm(state.options.defaults);
  $("preset").addEventListener("change", () => {
    const name = $("preset").value;
    fillForm({ ...(name ? state.options.presets[name] : state.options.defaults), size: $("size").value }, name);
  });
  dropZone($("content-drop"), $("content-input"), (files) => setContent(files[0]));
  dropZone($("style-drop"), $("style-input"), (files) => addStyles(files));
  $("start").addEventListener("click", start);
  $("cancel").addEventListener("click", () => api(`api/jobs/${state.view.id}/cancel`, { method: "POST" })
    .catch((err) => { $("status").textContent = err.message; }));
  $("resume").addEventListener("click", () => resume(state.view.id));
  $("scrubber").addEventListener("input", scrub);
  const limits = state.options.limits;
  const megapixels = (limits.max_pixels / 1e6).toFixed(0);
  $("server-state").textContent = `up to ${limits.max_upload_mb} MB and ${megapixels} megapixels per image`;
  refreshHistory();
}

main();
