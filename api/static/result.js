// The result page, kept current without a reload: status, the processed image once done, the
// reason once failed. The server-rendered page is already right; this only follows changes.
import { FINAL, STATUS_HINTS, outputFacts, watchTask } from "./live.js";

const root = document.getElementById("task");

function show(element, visible) {
  element.hidden = !visible;
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
    placeholder.textContent = failed ? "No processed image." : "Not processed yet.";
  }
  const facts = outputFacts(body);
  if (facts) document.getElementById("output-facts").textContent = ` · ${facts}`;
}

// A finished task's page is already complete as served.
if (root && !FINAL.includes(root.dataset.status)) {
  watchTask(root.dataset.taskId, {
    onStatus: render,
    onGone: (detail) => {
      const badge = document.getElementById("status");
      badge.textContent = "deleted";
      badge.className = "badge badge-failed";
      document.getElementById("status-hint").textContent = detail;
    },
  });
}
