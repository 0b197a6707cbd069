// The upload page: choose, drop or paste an image, POST it to v1/predict, draw the top 5 as bars;
// "Explain" POSTs it to v1/explain for the occlusion heatmap PNG and shows it with its text alternative.
// Plain browser JavaScript, no build step and no external resources. URLs are relative so the page
// also works behind a reverse proxy that mounts the service under a path prefix.
"use strict";

const PREDICT_URL = "v1/predict";
const EXPLAIN_URL = "v1/explain";
// The overlay PNG's text alternative, percent-encoded by the server (app/routes/explain.py).
const EXPLANATION_TEXT_HEADER = "X-Explanation-Text";
const HEALTH_URL = "health";
const CUDA_PROVIDER = "CUDAExecutionProvider";
const FILE_FIELD = "file";

const page = {
  form: document.getElementById("upload-form"),
  fileInput: document.getElementById("file-input"),
  dropZone: document.getElementById("drop-zone"),
  previewFigure: document.getElementById("preview-figure"),
  preview: document.getElementById("preview"),
  previewCaption: document.getElementById("preview-caption"),
  apiKeyDetails: document.getElementById("api-key-details"),
  apiKey: document.getElementById("api-key"),
  classify: document.getElementById("classify"),
  explain: document.getElementById("explain"),
  explanation: document.getElementById("explanation"),
  explanationOverlay: document.getElementById("explanation-overlay"),
  explanationText: document.getElementById("explanation-text"),
  resultsPanel: document.getElementById("results-panel"),
  results: document.getElementById("results"),
  status: document.getElementById("status"),
  error: document.getElementById("error"),
  bars: document.getElementById("bars"),
  timing: document.getElementById("timing"),
  bannerUntrained: document.getElementById("banner-untrained"),
  bannerUntrainedText: document.getElementById("banner-untrained-text"),
  bannerCpu: document.getElementById("banner-cpu"),
  bannerCpuText: document.getElementById("banner-cpu-text"),
  bannerStarting: document.getElementById("banner-starting"),
};

let currentFile = null;
let previewUrl = null;
let inFlight = null;
let explaining = null;
let overlayUrl = null;

/** A probability in [0, 1] as the page shows it, e.g. 0.41725 -> "41.72%". */
function formatPercent(probability) {
  return `${(probability * 100).toFixed(2)}%`;
}

function formatMs(milliseconds) {
  return `${milliseconds.toFixed(1)} ms`;
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

function showUntrained(model) {
  const untrained = Boolean(model) && model.trained === false;
  page.bannerUntrained.hidden = !untrained;
  if (untrained) {
    page.bannerUntrainedText.textContent =
      `The ${model.name} weights are "${model.weights}", not trained: its predictions are noise. ` +
      "Export trained weights with alexnet-export to get real answers.";
  }
}

function showProviders(providers) {
  const onCpu = !providers.includes(CUDA_PROVIDER);
  page.bannerCpu.hidden = !onCpu;
  if (onCpu) {
    page.bannerCpuText.textContent =
      `CUDA is not active (providers: ${providers.join(", ") || "none"}), so predictions are slower.`;
  }
}

async function checkHealth() {
  try {
    const response = await fetch(HEALTH_URL, { headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const health = await response.json();
    showUntrained(health.model);
    showProviders(health.providers || []);
    page.bannerStarting.hidden = health.status === "ready";
  } catch (error) {
    // The banners are hints; a failed health check shows up as an error on the first prediction.
    console.warn("health check failed", error);
  }
}

function clearError() {
  page.error.hidden = true;
  page.error.replaceChildren();
}

function showError(title, detail, requestId) {
  const heading = document.createElement("strong");
  heading.textContent = title;
  const message = document.createElement("p");
  message.textContent = detail;
  page.error.replaceChildren(heading, message);
  if (requestId) {
    const reference = document.createElement("p");
    reference.className = "hint";
    reference.textContent = `Request ID: ${requestId}`;
    page.error.append(reference);
  }
  page.error.hidden = false;
}

/** A readable title for an API error, and what to do next where there is something to do. */
function describeFailure(status, code) {
  if (status === 401) return "The API key is missing or wrong.";
  if (status === 413) return "The image is too large.";
  if (status === 415) return "That file is not an image the server can read.";
  if (status === 400) return "The image could not be decoded.";
  if (status === 503) return "The server is busy or still loading the model. Try again in a moment.";
  if (status === 504) return "The prediction took too long. Try again.";
  return `The server could not classify the image (${code || `HTTP ${status}`}).`;
}

async function readErrorBody(response) {
  try {
    const body = await response.json();
    if (body && body.error && typeof body.error.message === "string") return body.error;
  } catch (error) {
    console.warn("error response was not JSON", error);
  }
  return { code: `http_${response.status}`, message: response.statusText || "no details" };
}

function renderBars(top5) {
  const items = top5.map((score, rank) => {
    const item = document.createElement("li");
    item.className = "bar";
    const head = document.createElement("div");
    head.className = "bar-head";
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = score.label;
    label.title = `class ${score.index}, ${score.wnid}`;
    const percent = document.createElement("span");
    percent.className = "bar-percent";
    percent.textContent = formatPercent(score.probability);
    head.append(label, percent);
    const track = document.createElement("div");
    track.className = "bar-track";
    track.setAttribute("aria-hidden", "true");
    const fill = document.createElement("div");
    fill.className = rank === 0 ? "bar-fill bar-fill-top" : "bar-fill";
    fill.style.width = `${Math.min(100, score.probability * 100)}%`;
    track.append(fill);
    item.append(head, track);
    return item;
  });
  page.bars.replaceChildren(...items);
  page.bars.hidden = false;
}

function renderTiming(timing, roundTripMs) {
  page.timing.textContent =
    `Server time ${formatMs(timing.total)} (decode ${formatMs(timing.decode)}, ` +
    `preprocess ${formatMs(timing.preprocess)}, queue ${formatMs(timing.queue)}, ` +
    `inference ${formatMs(timing.inference)}; batch of ${timing.batch_size}) · ` +
    `round trip ${formatMs(roundTripMs)}`;
  page.timing.hidden = false;
}

function resetResults(statusText) {
  page.bars.hidden = true;
  page.bars.replaceChildren();
  page.timing.hidden = true;
  page.status.textContent = statusText;
}

async function classify() {
  if (!currentFile) return;
  if (inFlight) inFlight.abort();
  const controller = new AbortController();
  inFlight = controller;

  clearError();
  resetResults("Classifying…");
  page.results.setAttribute("aria-busy", "true");
  page.classify.disabled = true;

  const body = new FormData();
  body.append(FILE_FIELD, currentFile, currentFile.name || "pasted-image");
  const headers = { Accept: "application/json" };
  const apiKey = page.apiKey.value.trim();
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;

  const started = performance.now();
  try {
    const response = await fetch(PREDICT_URL, { method: "POST", body, headers, signal: controller.signal });
    const roundTripMs = performance.now() - started;
    if (!response.ok) {
      const failure = await readErrorBody(response);
      resetResults("No result.");
      showError(describeFailure(response.status, failure.code), failure.message, response.headers.get("x-request-id"));
      if (response.status === 401) {
        page.apiKeyDetails.open = true;
        page.apiKey.focus();
      }
      return;
    }
    const prediction = await response.json();
    showUntrained(prediction.model);
    renderBars(prediction.top5);
    renderTiming(prediction.timing_ms, roundTripMs);
    const top = prediction.top1;
    page.status.textContent = `Most likely: ${top.label} (${formatPercent(top.probability)}).`;
    // On a phone the results sit below the image: bring them into view.
    page.resultsPanel.scrollIntoView({ block: "nearest" });
  } catch (error) {
    if (error.name === "AbortError") return;
    resetResults("No result.");
    showError("Could not reach the server.", String(error.message || error), null);
  } finally {
    if (inFlight === controller) {
      inFlight = null;
      page.results.setAttribute("aria-busy", "false");
      page.classify.disabled = !currentFile;
    }
  }
}

function hideExplanation() {
  if (explaining) explaining.abort();
  if (overlayUrl) URL.revokeObjectURL(overlayUrl);
  overlayUrl = null;
  page.explanation.hidden = true;
  page.explanationOverlay.removeAttribute("src");
  page.explanationOverlay.alt = "";
  page.explanationText.textContent = "";
}

function explanationTextFrom(response) {
  const encoded = response.headers.get(EXPLANATION_TEXT_HEADER);
  if (!encoded) return "The server gave no description of the heatmap.";
  try {
    return decodeURIComponent(encoded);
  } catch (error) {
    console.warn("undecodable explanation text", error);
    return encoded;
  }
}

async function explain() {
  if (!currentFile) return;
  hideExplanation();
  const controller = new AbortController();
  explaining = controller;
  clearError();
  page.explain.disabled = true;
  page.explanation.hidden = false;
  page.explanation.setAttribute("aria-busy", "true");
  page.explanationText.textContent = "Explaining… (one model run per grid cell)";

  const body = new FormData();
  body.append(FILE_FIELD, currentFile, currentFile.name || "pasted-image");
  const headers = { Accept: "image/png" };
  const apiKey = page.apiKey.value.trim();
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  try {
    const response = await fetch(EXPLAIN_URL, { method: "POST", body, headers, signal: controller.signal });
    if (!response.ok) {
      const failure = await readErrorBody(response);
      hideExplanation();
      showError(describeFailure(response.status, failure.code), failure.message, response.headers.get("x-request-id"));
      return;
    }
    const text = explanationTextFrom(response);
    overlayUrl = URL.createObjectURL(await response.blob());
    // The image carries the heatmap; its alternative says in words what the heatmap shows.
    page.explanationOverlay.alt = `Heatmap over the image as the model saw it. ${text}`;
    page.explanationOverlay.src = overlayUrl;
    page.explanationText.textContent = text;
  } catch (error) {
    if (error.name === "AbortError") return;
    hideExplanation();
    showError("Could not reach the server.", String(error.message || error), null);
  } finally {
    if (explaining === controller) {
      explaining = null;
      page.explanation.setAttribute("aria-busy", "false");
      page.explain.disabled = !currentFile;
    }
  }
}

function showPreview(file) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  const name = file.name || "pasted image";
  page.preview.alt = `Preview of ${name}`;
  page.preview.hidden = false;
  page.previewCaption.textContent = `${name} · ${formatBytes(file.size)}`;
  page.preview.onload = () => {
    page.previewCaption.textContent =
      `${name} · ${page.preview.naturalWidth}×${page.preview.naturalHeight} · ${formatBytes(file.size)}`;
  };
  // Some formats the server reads (TIFF) or a broken file cannot be shown here; the server still gets to judge.
  page.preview.onerror = () => {
    page.preview.hidden = true;
    page.previewCaption.textContent = `${name} · ${formatBytes(file.size)} · this browser cannot preview it`;
  };
  page.preview.src = previewUrl;
  page.previewFigure.hidden = false;
}

function useFile(file) {
  if (!file) return;
  // An empty type means the browser could not tell; let the server decide.
  if (file.type && !file.type.startsWith("image/")) {
    showError("That is not an image.", `"${file.name}" is ${file.type}. Choose a JPEG, PNG or other image.`, null);
    return;
  }
  currentFile = file;
  hideExplanation();
  page.explain.disabled = false;
  showPreview(file);
  classify();
}

function firstImage(items) {
  for (const item of items) {
    if (item.kind === "file" && item.type.startsWith("image/")) return item.getAsFile();
  }
  return null;
}

page.fileInput.addEventListener("change", () => {
  useFile(page.fileInput.files[0]);
});

page.explain.addEventListener("click", () => {
  explain();
});

page.form.addEventListener("submit", (event) => {
  event.preventDefault();
  classify();
});

// Drops are accepted anywhere on the page, so a near miss never makes the browser open the file instead.
let dragDepth = 0;
window.addEventListener("dragenter", (event) => {
  event.preventDefault();
  dragDepth += 1;
  page.dropZone.classList.add("drop-zone-active");
});
window.addEventListener("dragover", (event) => {
  event.preventDefault();
  if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
});
window.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) page.dropZone.classList.remove("drop-zone-active");
});
window.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  page.dropZone.classList.remove("drop-zone-active");
  const files = event.dataTransfer ? event.dataTransfer.files : [];
  if (files.length > 0) useFile(files[0]);
});

document.addEventListener("paste", (event) => {
  const image = event.clipboardData ? firstImage(event.clipboardData.items) : null;
  if (!image) return;
  event.preventDefault();
  useFile(image);
});

checkHealth();
