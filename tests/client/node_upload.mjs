// Node's own fetch and FormData (undici) against the API: node_upload.mjs BASE_URL IMAGE_PATH.
// Prints one JSON line per case: {"case", "status", "body"}; tests/client/test_http_clients.py judges.
import { readFileSync } from "node:fs";

const [base, imagePath] = process.argv.slice(2);
const image = readFileSync(imagePath);

async function send(name, body, headers = {}) {
  const response = await fetch(`${base}/upload`, { method: "POST", body, headers });
  console.log(JSON.stringify({ case: name, status: response.status, body: await response.text() }));
}

// A browser-like form: a CSRF token first, the file with a non-ASCII name, a named submit button.
const form = new FormData();
form.append("csrf_token", "0123abcd");
form.append("file", new Blob([image], { type: "image/jpeg" }), "naïve café.jpg");
form.append("submit", "Upload");
await send("formdata", form);

// A misspelt field next to the file.
const misspelt = new FormData();
misspelt.append("file", new Blob([image], { type: "image/jpeg" }), "photo.jpg");
misspelt.append("presets", "web");
await send("misspelt", misspelt);

// By hand: a preamble, transport padding after each delimiter, and filename* beside filename.
const boundary = "nodeboundary";
const raw = Buffer.concat([
  Buffer.from(
    `This preamble is ignored.\r\n--${boundary} \t\r\n` +
      `Content-Disposition: form-data; name="file"; filename="plain.jpg"; filename*=UTF-8''na%C3%AFve.jpg\r\n` +
      "Content-Type: image/jpeg\r\n\r\n",
  ),
  image,
  Buffer.from(`\r\n--${boundary}--  \r\n`),
]);
await send("raw", raw, { "Content-Type": `multipart/form-data; boundary=${boundary}` });
