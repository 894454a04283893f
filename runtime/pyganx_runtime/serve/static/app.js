// The pyganx serve page: pick a model (and a target domain), drop an image, see both.
// Plain JS, no dependencies; every API error is shown to the person.
"use strict";
const $ = (id) => document.getElementById(id);
let models = [];
let file = null;
let outputUrl = null;
let inputUrl = null;
let pending = 0;

function headers(extra) {
  const h = Object.assign({}, extra);
  const token = $("token").value.trim();
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error + " (HTTP " + response.status + ")";
  } catch (e) { /* not JSON */ }
  return "HTTP " + response.status + " " + response.statusText;
}

async function loadModels() {
  let response;
  try {
    response = await fetch("v1/models", { headers: headers() });
  } catch (e) {
    $("status").textContent = "the service does not answer";
    showError("cannot reach the service: " + e.message);
    return;
  }
  if (response.status === 401) {
    $("token-row").hidden = false;
    $("status").textContent = "this service needs a token";
    showError("enter the service's token above");
    return;
  }
  if (!response.ok) { showError(await errorText(response)); return; }
  models = (await response.json()).models;
  const select = $("model");
  select.innerHTML = "";
  for (const m of models) {
    const option = new Option(m.translates ? m.name : m.name + " (noise model)", m.name);
    option.disabled = !m.translates;
    select.add(option);
  }
  const first = models.find((m) => m.translates);
  if (first) select.value = first.name;
  select.disabled = !first;
  $("status").textContent = models.length + " model" + (models.length === 1 ? "" : "s");
  showError(first ? "" : "none of the served models translates images");
  modelChanged();
}

function current() { return models.find((m) => m.name === $("model").value); }

function modelChanged() {
  const m = current();
  const domains = m ? m.domains : [];
  const select = $("domain");
  select.innerHTML = "";
  for (const d of domains) select.add(new Option(d, d));
  $("domain-row").hidden = domains.length === 0;
  translate();
}

function setImage(img, url, label) {
  img.src = url;
  img.onload = () => { label.textContent = img.naturalWidth + " × " + img.naturalHeight; };
}

async function translate() {
  const m = current();
  if (!file || !m) return;
  const form = new FormData();
  form.append("image", file, file.name);
  let url = "v1/translate/" + encodeURIComponent(m.name);
  if (m.domains.length) url += "?domain=" + encodeURIComponent($("domain").value);
  const ticket = ++pending;
  $("output-img").classList.add("busy");
  showError("");
  try {
    const response = await fetch(url, { method: "POST", body: form, headers: headers({ Accept: "image/png" }) });
    if (ticket !== pending) return;            // a newer request has been sent
    if (!response.ok) {
      if (response.status === 401) $("token-row").hidden = false;
      showError(await errorText(response));
      return;
    }
    const blob = await response.blob();
    if (outputUrl) URL.revokeObjectURL(outputUrl);
    outputUrl = URL.createObjectURL(blob);
    setImage($("output-img"), outputUrl, $("output-size"));
    const link = $("download");
    const stem = file.name.replace(/\.[^.]*$/, "") || "image";
    link.href = outputUrl;
    link.download = stem + "-" + m.name + (m.domains.length ? "-" + $("domain").value : "") + ".png";
    link.hidden = false;
  } catch (e) {
    if (ticket === pending) showError("the request failed: " + e.message);
  } finally {
    if (ticket === pending) $("output-img").classList.remove("busy");
  }
}

function useFile(f) {
  if (!f) return;
  file = f;
  if (inputUrl) URL.revokeObjectURL(inputUrl);
  inputUrl = URL.createObjectURL(f);
  setImage($("input-img"), inputUrl, $("input-size"));
  translate();
}

$("model").addEventListener("change", modelChanged);
$("domain").addEventListener("change", translate);
$("token").addEventListener("change", loadModels);
$("file").addEventListener("change", (e) => useFile(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  useFile(e.dataTransfer.files[0]);
});
loadModels();
