// Big files from the upload form go through the tus endpoint (/files/) in pieces, so a dropped
// connection costs one piece, not the whole file: after a network error or a 5xx the upload asks
// the server where it stands (HEAD) and carries on from there, with a growing pause between tries.
// The final PATCH's answer names the task (Imagequeue-Task-Id). upload.js decides which files come
// here (`useResumable`); the rest go as one form post.

// Files from this size up go resumable; the form may say otherwise (data-resumable-from).
const DEFAULT_FROM_BYTES = 4 * 1024 * 1024;
// Bytes per PATCH: what a dropped connection can cost at most; the form may say otherwise.
const DEFAULT_PIECE_BYTES = 2 * 1024 * 1024;
// Tries in a row without progress before giving up, and the pause before each (ms, doubled each time).
const MAX_TRIES = 8;
const FIRST_PAUSE_MS = 500;
const MAX_PAUSE_MS = 10_000;
const TUS = { "Tus-Resumable": "1.0.0" };

export function useResumable(form, file) {
  const from = Number(form.dataset.resumableFrom || DEFAULT_FROM_BYTES);
  return Boolean(form.dataset.resumable) && file.size >= from && typeof Blob.prototype.slice === "function";
}

function base64Text(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

// Upload-Metadata: the file's name and every other field of the form, each `key base64(value)`.
function metadata(file, fields) {
  const pairs = [`filename ${base64Text(file.name)}`];
  for (const [name, value] of fields) {
    if (typeof value === "string" && value !== "" && /^[!-+\--~]+$/.test(name)) {
      pairs.push(`${name} ${base64Text(value)}`);
    }
  }
  return pairs.join(",");
}

// One request as a promise of {status, header(name), detail}; a network failure resolves status 0.
function request(method, url, { headers = {}, body = null, onProgress } = {}) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    for (const [name, value] of Object.entries({ ...TUS, ...headers })) xhr.setRequestHeader(name, value);
    if (onProgress) xhr.upload.addEventListener("progress", (event) => onProgress(event.loaded));
    const answer = () => {
      let detail = "";
      try {
        detail = JSON.parse(xhr.responseText).detail || "";
      } catch (error) {
        // An empty tus answer, or not JSON: the status says enough.
      }
      resolve({ status: xhr.status, header: (name) => xhr.getResponseHeader(name), detail });
    };
    xhr.addEventListener("load", answer);
    xhr.addEventListener("error", () => resolve({ status: 0, header: () => null, detail: "" }));
    xhr.addEventListener("abort", () => resolve({ status: 0, header: () => null, detail: "" }));
    xhr.send(body);
  });
}

const pause = (ms) => new Promise((done) => setTimeout(done, ms));
const passing = (status) => status === 0 || status >= 500 || status === 409 || status === 423;

// Sends `file`; calls onProgress(fraction), onRetry(tries) while it waits to try again, and ends with
// {taskId} or {refused: message}.
export async function sendResumable(form, file, fields, { onProgress, onRetry }) {
  const pieceBytes = Number(form.dataset.resumablePiece || DEFAULT_PIECE_BYTES);
  const endpoint = form.dataset.resumable;
  let created = null;
  for (let tries = 0; !created; tries += 1) {
    const answer = await request("POST", endpoint, {
      headers: { "Upload-Length": String(file.size), "Upload-Metadata": metadata(file, fields) },
    });
    if (answer.status === 201) created = answer;
    else if (!passing(answer.status)) return { refused: answer.detail || `the server answered ${answer.status}` };
    else if (tries + 1 >= MAX_TRIES) return { refused: "the server could not be reached" };
    else {
      onRetry(tries + 1);
      await pause(Math.min(FIRST_PAUSE_MS * 2 ** tries, MAX_PAUSE_MS));
    }
  }
  const location = created.header("Location");
  let offset = 0;
  let tries = 0;
  while (true) {
    const end = Math.min(offset + pieceBytes, file.size);
    const answer = await request("PATCH", location, {
      headers: { "Content-Type": "application/offset+octet-stream", "Upload-Offset": String(offset) },
      body: file.slice(offset, end),
      onProgress: (loaded) => onProgress((offset + loaded) / file.size),
    });
    if (answer.status === 204) {
      offset = Number(answer.header("Upload-Offset"));
      tries = 0;
      onProgress(offset / file.size);
      const taskId = answer.header("Imagequeue-Task-Id");
      if (taskId) return { taskId: Number(taskId) };
      continue;
    }
    if (!passing(answer.status)) return { refused: answer.detail || `the server answered ${answer.status}` };
    tries += 1;
    if (tries >= MAX_TRIES) return { refused: "the connection kept dropping; please try again later" };
    onRetry(tries);
    await pause(Math.min(FIRST_PAUSE_MS * 2 ** (tries - 1), MAX_PAUSE_MS));
    // Where does the server stand? What arrived before the drop is kept there.
    const head = await request("HEAD", location);
    if (head.status === 200) {
      const taskId = head.header("Imagequeue-Task-Id");
      if (taskId) return { taskId: Number(taskId) };
      offset = Number(head.header("Upload-Offset"));
    } else if (!passing(head.status)) {
      return { refused: head.detail || `the upload is gone (${head.status})` };
    }
  }
}
