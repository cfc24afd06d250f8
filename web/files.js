// Attachments: uploads with progress, images shown inline, downloads (with the device token).

import { el } from "./render.js";
import { $, state } from "./state.js";
import { queueSend } from "./compose.js";

$("attach").addEventListener("change", async () => {
  const files = [...$("attach").files];
  $("attach").value = "";
  if (!files.length || !state.open) return;
  const attachments = [];
  try {
    for (const file of files) {
      const uploaded = await upload(file);
      attachments.push({ file: uploaded.file, name: file.name.slice(0, 255) || "file" });
    }
  } catch (err) {
    $("conv-error").textContent = `Upload failed: ${err.message}`;
    return;
  } finally {
    $("upload").hidden = true;
  }
  const body = $("compose-text").value;
  $("compose-text").value = "";
  queueSend({ body, attachments });
});

/** `POST /files` with the device token, showing progress; resolves to {file, size, type, sha256}. */
export function upload(file) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/files");
    xhr.setRequestHeader("Authorization", `Bearer ${state.session.token}`);
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    $("upload").hidden = false;
    $("upload-label").textContent = `Uploading ${file.name}`;
    $("upload-progress").value = 0;
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) $("upload-progress").value = Math.round((100 * e.loaded) / e.total);
    };
    xhr.onload = () => {
      if (xhr.status === 201) {
        try {
          resolve(JSON.parse(xhr.responseText));
        } catch (_) {
          reject(new Error("unreadable answer"));
        }
      } else if (xhr.status === 413) reject(new Error("the file is too large"));
      else reject(new Error(`the server answered ${xhr.status}`));
    };
    xhr.onerror = () => reject(new Error("cannot reach the server"));
    xhr.send(file);
  });
}

/** A blob: URL for a file, fetched once with the device token. */
export async function fileUrl(file) {
  if (state.fileUrls.has(file)) return state.fileUrls.get(file);
  const response = await fetch(`/files/${encodeURIComponent(file)}`, {
    headers: { Authorization: `Bearer ${state.session.token}` },
  });
  if (!response.ok) throw new Error(`the server answered ${response.status}`);
  const url = URL.createObjectURL(await response.blob());
  state.fileUrls.set(file, url);
  return url;
}

export function showImage(img) {
  fileUrl(img.dataset.file).then((url) => {
    img.src = url;
    img.hidden = false;
  }, () => {});
}

export async function download(file, name) {
  try {
    const a = el("a", { href: await fileUrl(file), download: name || "file" });
    document.body.append(a);
    a.click();
    a.remove();
  } catch (err) {
    $("conv-error").textContent = `Download failed: ${err.message}`;
  }
}
