// The upload form's focus point picker: a preview of the chosen picture on a canvas; a click on it
// writes the point into the form's own `focus` text field (x,y fractions from the top left), which
// is what is sent. Typing in the field moves the mark. The canvas is drawn from the file itself
// (createImageBitmap), so the page's CSP needs no blob: images. A picture this browser cannot
// decode (HEIC, TIFF) gets no preview: the field is still there to type in.
const PREVIEW_WIDTH = 320;

function parsePoint(text) {
  const parts = text.split(",").map((part) => Number(part.trim()));
  if (parts.length !== 2 || parts.some((value) => !Number.isFinite(value) || value < 0 || value > 1)) {
    return null;
  }
  return parts;
}

function rounded(value) {
  return String(Math.round(value * 1000) / 1000);
}

export function focusPicker(fileInput, field, picker, canvas) {
  let bitmap = null;
  let chosen = 0; // which file the preview belongs to, so a late decode of an older one is dropped

  function draw() {
    if (!bitmap) return;
    const context = canvas.getContext("2d");
    context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    const point = parsePoint(field.value);
    if (!point) return;
    const [x, y] = [point[0] * canvas.width, point[1] * canvas.height];
    // White under dark blue, so the mark shows on any picture.
    for (const [colour, width] of [["#fff", 5], ["#0b57d0", 2]]) {
      context.strokeStyle = colour;
      context.lineWidth = width;
      context.beginPath();
      context.arc(x, y, 9, 0, 2 * Math.PI);
      context.moveTo(x - 15, y);
      context.lineTo(x + 15, y);
      context.moveTo(x, y - 15);
      context.lineTo(x, y + 15);
      context.stroke();
    }
  }

  function clear() {
    chosen += 1;
    bitmap?.close();
    bitmap = null;
    picker.hidden = true;
  }

  async function show(file) {
    clear();
    const mine = chosen;
    let decoded;
    try {
      // As displayed: EXIF orientation applied, like the point the server reads.
      decoded = await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch (error) {
      return; // not a picture this browser draws: typing the point still works
    }
    if (mine !== chosen) {
      decoded.close();
      return;
    }
    bitmap = decoded;
    const scale = Math.min(1, PREVIEW_WIDTH / bitmap.width);
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    canvas.setAttribute("aria-label", `Preview of ${file.name}`);
    picker.hidden = false;
    draw();
  }

  fileInput.addEventListener("change", () => {
    // One picture, one point: with several files chosen the typed point applies to each.
    if (fileInput.files.length === 1) show(fileInput.files[0]);
    else clear();
  });
  field.addEventListener("input", draw);
  canvas.addEventListener("click", (event) => {
    // offsetX/Y and clientWidth/Height both leave the border out.
    const x = Math.min(1, Math.max(0, event.offsetX / canvas.clientWidth));
    const y = Math.min(1, Math.max(0, event.offsetY / canvas.clientHeight));
    field.value = `${rounded(x)},${rounded(y)}`;
    draw();
  });

  // After the files are sent: the point belonged to them.
  return {
    reset() {
      clear();
      field.value = "";
    },
  };
}
