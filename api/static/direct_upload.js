// Direct uploads (s3 backend): the file goes straight to the bucket, not through the API.
// POST /uploads declares it and answers a presigned form; the file is POSTed to the bucket with
// that form (its fields first, the file last); POST complete_url then makes the task and answers
// as /upload does. The page says when the backend is S3 (data-storage="s3" on the form).

// Smaller files take the classic form post: one request instead of three.
export const DIRECT_MIN_BYTES = 8 * 1024 * 1024;

export function usesDirectUpload(form, file) {
  return form.dataset.storage === "s3" && file.size >= DIRECT_MIN_BYTES;
}

async function detailOf(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
  } catch (error) {
    // Not JSON: the status line says what there is to say.
  }
  return `the server answered ${response.status} ${response.statusText}`.trim();
}

// S3 answers an error as XML: <Error><Code>EntityTooLarge</Code><Message>…</Message></Error>.
function bucketError(request) {
  const found = /<Message>([^<]*)<\/Message>/.exec(request.responseText || "");
  return `the file store refused the file (${request.status}${found ? `: ${found[1]}` : ""})`;
}

// The form's fields as POST /uploads takes them (empty ones left out, as the form means them).
function declaration(file, fields) {
  const body = { filename: file.name, size: file.size, content_type: file.type || "application/octet-stream" };
  for (const [name, value] of fields) {
    if (typeof value === "string" && value !== "") body[name] = value;
  }
  return body;
}

function sendToBucket(declared, file, onProgress) {
  return new Promise((resolve, reject) => {
    const data = new FormData();
    for (const [name, value] of Object.entries(declared.fields)) data.append(name, value);
    data.append("file", file, file.name); // last: S3 ignores every field after the file
    const request = new XMLHttpRequest();
    request.open("POST", declared.url);
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    request.addEventListener("load", () => {
      if (request.status >= 200 && request.status < 300) resolve();
      else reject(new Error(bucketError(request)));
    });
    request.addEventListener("error", () => reject(new Error("the file store could not be reached")));
    request.send(data);
  });
}

// Resolves with /upload's answer ({task_id, …}); rejects with an Error whose message is the reason.
export async function directUpload(file, fields, onProgress) {
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  const declared = await fetch("/uploads", {
    method: "POST",
    headers,
    body: JSON.stringify(declaration(file, fields)),
  });
  if (declared.status !== 201) throw new Error(await detailOf(declared));
  const plan = await declared.json();
  await sendToBucket(plan, file, onProgress);
  const completed = await fetch(plan.complete_url, { method: "POST", headers: { Accept: "application/json" } });
  if (completed.status !== 200) throw new Error(await detailOf(completed));
  return completed.json();
}
