// Watching a task's status: the server's event stream (/tasks/{id}/events) while the browser has
// EventSource and the stream works, polling GET /status every 2 s otherwise. Shared by the upload
// page (one watch per file) and the result page. Data is only ever put on a page as text.

export const FINAL = ["done", "failed", "cancelled"];
const POLL_MS = 2000;
// A browser opens at most 6 connections to one server over HTTP/1.1, and every open stream keeps
// one: past this many open streams, further watches poll, leaving room for uploads and images.
const MAX_STREAMS = 3;
let openStreams = 0;

// Calls onStatus(body) with each /status body until the task is final, and onGone(detail) if it
// is deleted or was never there; onPlaceholder(placeholder), if given, as soon as the stream says
// the worker recorded the task's placeholder (a polled body carries it as `placeholder`).
// Returns a function that stops watching.
export function watchTask(taskId, { onStatus, onGone, onPlaceholder }) {
  const id = encodeURIComponent(String(taskId));
  let stopped = false;
  let timer = null;
  let source = null;

  function closeSource() {
    if (source) {
      source.close();
      source = null;
      openStreams -= 1;
    }
  }

  function stop() {
    stopped = true;
    closeSource();
    clearTimeout(timer);
  }

  function handle(body) {
    if (stopped) return;
    onStatus(body);
    if (FINAL.includes(body.status)) stop();
  }

  async function poll() {
    if (stopped) return;
    try {
      const response = await fetch(`/status/${id}`, { headers: { Accept: "application/json" } });
      if (response.status === 404) {
        stop();
        onGone("This task no longer exists.");
        return;
      }
      // Anything else but 200 (a passing 503, say) is simply asked again next time.
      if (response.ok) handle(await response.json());
    } catch (error) {
      // The network or the server is away for a moment; try again next time.
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }

  function startPolling() {
    closeSource();
    if (!stopped) poll();
  }

  if (typeof window.EventSource !== "function" || openStreams >= MAX_STREAMS) {
    startPolling();
    return stop;
  }
  source = new EventSource(`/tasks/${id}/events`);
  openStreams += 1;
  source.addEventListener("status", (event) => handle(JSON.parse(event.data)));
  source.addEventListener("placeholder", (event) => {
    if (!stopped && onPlaceholder) onPlaceholder(JSON.parse(event.data));
  });
  source.addEventListener("deleted", (event) => {
    stop();
    onGone(JSON.parse(event.data).detail);
  });
  source.addEventListener("error", () => {
    // CONNECTING: the browser reconnects by itself (the server ends each stream after a while).
    // CLOSED: it gave up (an answer other than 200, such as 404 or 503): poll instead.
    if (source && source.readyState === EventSource.CLOSED) startPolling();
  });
  return stop;
}

// A file size for people, as the pages write it (binary units); mirrors byte_size in pages.py.
export function byteSize(size) {
  if (size < 1024) return `${size} bytes`;
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(1)} KiB`;
  return `${(size / (1024 * 1024)).toFixed(1)} MiB`;
}

// "640×480 px · 51.2 KiB" for the first of `outputs`, when /status lists them; null otherwise.
export function outputFacts(body) {
  const first = Array.isArray(body.outputs) ? body.outputs[0] : null;
  if (!first || typeof first !== "object") return null;
  const { width, height, size_bytes: size } = first;
  if (![width, height, size].every(Number.isInteger)) return null;
  return `${width}×${height} px · ${byteSize(size)}`;
}

export const STATUS_HINTS = {
  pending: "Waiting for a worker…",
  processing: "Being processed…",
  done: "",
  failed: "",
  cancelled: "Cancelled; it will not be processed.",
};
