// The upload form, enhanced: several files at once (chosen or dropped), one request per file with
// a progress bar, and each file's live status and result link. Without this script the form posts
// one file the plain way and the server answers with its result page. Big files go straight to the
// bucket on the s3 backend (direct_upload.js), else resumable (resumable.js: tus, in pieces, resuming
// after a dropped connection).
import { directUpload, usesDirectUpload } from "./direct_upload.js";
import { focusPicker } from "./focus.js";
import { STATUS_HINTS, watchTask } from "./live.js";
import { sendResumable, useResumable } from "./resumable.js";

const form = document.getElementById("upload-form");
const input = document.getElementById("file");
const list = document.getElementById("upload-list");
const section = document.getElementById("uploads");
// Files sent at once; the rest wait their turn (the browser's connections are few).
const PARALLEL_UPLOADS = 2;
const waiting = [];
let sending = 0;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// One line per file: its name, a progress bar, its state in words, and its result page link.
function addLine(file) {
  const line = element("li", "upload");
  const name = element("span", "upload-name", file.name);
  const progress = element("progress");
  progress.max = 100;
  progress.value = 0;
  progress.setAttribute("aria-label", `Upload progress of ${file.name}`);
  const state = element("span", "upload-state", "Waiting to upload…");
  const link = element("a", "upload-link", "Result page");
  link.hidden = true;
  line.append(name, progress, state, link);
  list.append(line);
  section.hidden = false;
  return { line, progress, state, link };
}

function showStatus(view, body) {
  view.state.textContent = "";
  const badge = element("span", `badge badge-${body.status}`, body.status);
  view.state.append(badge);
  const hint = body.status === "failed" ? body.error || "Processing failed." : STATUS_HINTS[body.status];
  if (hint) view.state.append(" ", element("span", body.status === "failed" ? "error" : "hint", hint));
  view.line.dataset.status = body.status;
}

function errorDetail(request) {
  try {
    const detail = JSON.parse(request.responseText).detail;
    if (typeof detail === "string") return detail;
  } catch (error) {
    // Not JSON (a proxy's error page, say): fall back to the status line.
  }
  return `the server answered ${request.status} ${request.statusText}`.trim();
}

function accepted(view, answer) {
  view.progress.value = 100;
  const taskId = Number(answer.task_id);
  view.link.href = `/result/${taskId}`;
  view.link.hidden = false;
  view.line.dataset.taskId = String(taskId);
  showStatus(view, { status: "pending" });
  watchTask(taskId, {
    onStatus: (body) => showStatus(view, body),
    onGone: (detail) => { view.state.textContent = detail; },
  });
}

function refused(view, message) {
  view.line.dataset.status = "refused";
  view.state.textContent = "";
  view.state.append(element("span", "error", message));
}

function sendInPieces(file, view, fields) {
  view.state.textContent = "Uploading (resumable)…";
  sendResumable(form, file, fields, {
    onProgress: (fraction) => { view.progress.value = Math.round(100 * fraction); },
    onRetry: (tries) => { view.state.textContent = `Connection lost; resuming (try ${tries})…`; },
  })
    .then((result) => (result.taskId ? accepted(view, { task_id: result.taskId }) : refused(view, `Refused: ${result.refused}`)))
    .finally(() => {
      sending -= 1;
      next();
    });
}

// Big files on the s3 backend go straight to the bucket (direct_upload.js).
function sendDirect(file, view, fields) {
  sending += 1;
  view.state.textContent = "Uploading…";
  directUpload(file, fields, (share) => { view.progress.value = Math.round(100 * share); })
    .then((answer) => accepted(view, answer))
    .catch((error) => refused(view, `Refused: ${error.message}`))
    .finally(() => {
      sending -= 1;
      next();
    });
}

function send(file, view, fields) {
  if (usesDirectUpload(form, file)) {
    sendDirect(file, view, fields);
    return;
  }
  sending += 1;
  if (useResumable(form, file)) {
    sendInPieces(file, view, fields);
    return;
  }
  // Every field of the form goes along (whatever it held when the file was given), with this one
  // file in `file`.
  const data = new FormData();
  for (const [name, value] of fields) data.append(name, value);
  data.append("file", file, file.name);
  const request = new XMLHttpRequest();
  request.open("POST", form.action);
  request.setRequestHeader("Accept", "application/json");
  request.responseType = "text";
  view.state.textContent = "Uploading…";
  request.upload.addEventListener("progress", (event) => {
    if (event.lengthComputable) view.progress.value = Math.round((100 * event.loaded) / event.total);
  });
  request.addEventListener("load", () => {
    if (request.status === 200) {
      accepted(view, JSON.parse(request.responseText));
    } else {
      refused(view, `Refused: ${errorDetail(request)}`);
    }
  });
  request.addEventListener("error", () => refused(view, "Upload failed: the server could not be reached."));
  request.addEventListener("loadend", () => {
    sending -= 1;
    next();
  });
  request.send(data);
}

function next() {
  while (sending < PARALLEL_UPLOADS && waiting.length) {
    const { file, view, fields } = waiting.shift();
    send(file, view, fields);
  }
}

function uploadAll(files) {
  // Taken now: a file waiting its turn is sent with the fields it was given with, even if the form
  // has been changed (or its focus point cleared) since.
  const fields = new FormData(form);
  fields.delete("file");
  for (const file of files) waiting.push({ file, view: addLine(file), fields });
  next();
}

if (form && input && list && typeof FormData === "function" && typeof XMLHttpRequest === "function") {
  input.multiple = true;
  input.required = false; // dropping files is the other way in
  document.getElementById("drop-hint").hidden = false;
  const focusField = document.getElementById("focus");
  const picker =
    focusField && typeof createImageBitmap === "function"
      ? focusPicker(
          input,
          focusField,
          document.getElementById("focus-picker"),
          document.getElementById("focus-preview"),
        )
      : null;

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!input.files.length) {
      input.focus();
      return;
    }
    uploadAll(Array.from(input.files));
    input.value = "";
    picker?.reset();
  });
  input.addEventListener("change", () => form.classList.toggle("has-files", input.files.length > 0));

  // A drop anywhere on the page lands in the form rather than replacing the page with the image.
  for (const type of ["dragover", "drop"]) {
    document.addEventListener(type, (event) => event.preventDefault());
  }
  form.addEventListener("dragover", () => form.classList.add("dragging"));
  form.addEventListener("dragleave", () => form.classList.remove("dragging"));
  form.addEventListener("drop", (event) => {
    form.classList.remove("dragging");
    const files = Array.from(event.dataTransfer?.files ?? []);
    if (files.length) uploadAll(files);
  });
}
