// The result page, kept current without a reload: status, the processed image once done, the
// reason once failed, the controls (Cancel, Retry, Reprocess) the status allows. The server-rendered page is already right; this only follows changes.
import { FINAL, STATUS_HINTS, outputFacts, watchTask } from "./live.js";
import { drawThumbHash } from "./thumbhash.js";
// The Reprocess form's script: loaded with this one, so the page keeps a single script tag.
import "./reprocess.js";

const root = document.getElementById("task");

function show(element, visible) {
  element.hidden = !visible;
}

const COLOUR = /^#[0-9a-f]{6}$/;

// The task's placeholder (from /status, its events, or the served page) in the waiting box: the
// dominant colour as background, the ThumbHash drawn over it, the box in the picture's proportions.
function showPlaceholder(placeholder) {
  const box = document.getElementById("processed-placeholder");
  if (!box || !placeholder || typeof placeholder !== "object" || box.dataset.shown === "yes") return;
  const { thumbhash, dominant_color: colour, width, height } = placeholder;
  if (typeof colour === "string" && COLOUR.test(colour)) box.style.backgroundColor = colour;
  if (Number.isInteger(width) && Number.isInteger(height) && width > 0 && height > 0) {
    box.style.aspectRatio = `${width} / ${height}`;
  }
  const canvas = document.getElementById("placeholder-preview");
  if (typeof thumbhash === "string" && drawThumbHash(canvas, thumbhash)) canvas.hidden = false;
  box.dataset.shown = "yes";
}

function render(body) {
  const badge = document.getElementById("status");
  badge.textContent = body.status;
  badge.className = `badge badge-${body.status}`;
  document.getElementById("status-hint").textContent = STATUS_HINTS[body.status] ?? "";
  document.title = `${body.filename} · ${body.status} · imagequeue`;

  const failed = body.status === "failed";
  document.getElementById("error-text").textContent = body.error || "no reason was recorded.";
  show(document.getElementById("error"), failed);
  // The controls the status allows (the server refuses the others with 409 anyway).
  show(document.getElementById("cancel-form"), body.status === "pending" || body.status === "processing");
  show(document.getElementById("retry-form"), failed);
  const retryFailed = document.getElementById("retry-failed-form");
  if (retryFailed) show(retryFailed, failed);
  show(document.getElementById("reprocess-form"), FINAL.includes(body.status));

  const processed = document.getElementById("processed");
  const placeholder = document.getElementById("processed-placeholder");
  if (body.processed_url) {
    let image = document.getElementById("processed-image");
    if (!image) {
      image = document.createElement("img");
      image.id = "processed-image";
      image.alt = `Processed: ${body.filename}`;
      processed.insertBefore(image, processed.firstChild);
    }
    if (image.getAttribute("src") !== body.processed_url) image.src = body.processed_url;
    if (placeholder) placeholder.remove();
    const download = document.getElementById("download");
    download.href = body.processed_url;
    show(download, true);
  } else if (placeholder) {
    document.getElementById("placeholder-text").textContent = failed
      ? "No processed image."
      : body.status === "cancelled"
        ? "Cancelled: not processed."
        : "Not processed yet.";
    if (!failed) showPlaceholder(body.placeholder);
  }
  const facts = outputFacts(body);
  if (facts) document.getElementById("output-facts").textContent = ` · ${facts}`;
}

// A placeholder known when the page was served.
const served = document.getElementById("processed-placeholder");
if (served && served.dataset.thumbhash) {
  showPlaceholder({
    thumbhash: served.dataset.thumbhash,
    dominant_color: served.dataset.dominantColor,
    width: Number(served.dataset.width),
    height: Number(served.dataset.height),
  });
}

// A finished task's page is already complete as served.
if (root && !FINAL.includes(root.dataset.status)) {
  watchTask(root.dataset.taskId, {
    onStatus: render,
    onPlaceholder: showPlaceholder,
    onGone: (detail) => {
      const badge = document.getElementById("status");
      badge.textContent = "deleted";
      badge.className = "badge badge-failed";
      document.getElementById("status-hint").textContent = detail;
    },
  });
}
