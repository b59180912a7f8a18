// The result page's Reprocess form: POST /tasks/{id}/reprocess with the chosen preset as JSON
// (what that endpoint takes), then a reload, which shows the task waiting and follows it live.
// A refusal's reason is shown as text.
const form = document.getElementById("reprocess-form");

async function reprocess(event) {
  event.preventDefault();
  const message = document.getElementById("reprocess-message");
  const button = form.querySelector("button[type=submit]");
  message.hidden = true;
  button.disabled = true;
  try {
    const id = encodeURIComponent(form.dataset.taskId);
    const answer = await fetch(`/tasks/${id}/reprocess`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ preset: form.elements.preset.value }),
      credentials: "same-origin",
    });
    if (answer.ok) {
      window.location.reload();
      return;
    }
    let detail = `The server answered ${answer.status}.`;
    try {
      const body = await answer.json();
      if (body && typeof body.detail === "string") detail = body.detail;
    } catch {
      // not JSON: keep the status line
    }
    message.textContent = detail;
  } catch {
    message.textContent = "Reprocess failed: the server could not be reached.";
  }
  message.hidden = false;
  button.disabled = false;
}

if (form) form.addEventListener("submit", reprocess);
