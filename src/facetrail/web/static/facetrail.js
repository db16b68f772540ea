// facetrail web workspace: small progressive enhancements; every page works without them.
"use strict";

// Drag and drop onto an upload form: dropped files join the form's own file input.
function enhanceUpload(zone) {
  const input = zone.querySelector("input[type=file]");
  const list = zone.querySelector("[data-chosen]");
  if (!input || typeof DataTransfer === "undefined") return;
  const show = () => {
    if (!list) return;
    list.replaceChildren(...Array.from(input.files).map((f) => {
      const li = document.createElement("li");
      li.textContent = `${f.name} (${Math.max(1, Math.round(f.size / 1024))} KiB)`;
      return li;
    }));
  };
  input.addEventListener("change", show);
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (event) => {
    event.preventDefault();
    zone.classList.add("over");
  }));
  ["dragleave", "dragend"].forEach((type) => zone.addEventListener(type, () => {
    zone.classList.remove("over");
  }));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const all = new DataTransfer();
    Array.from(input.files).forEach((f) => all.items.add(f));
    Array.from(event.dataTransfer.files).forEach((f) => all.items.add(f));
    input.files = all.files;
    show();
  });
}

// A job page follows its job: progress from a small JSON endpoint, then the results.
function followJob(section) {
  const url = section.dataset.job;
  if (!["queued", "running"].includes(section.dataset.status)) return;
  const status = section.querySelector("[data-job-status]");
  const bar = section.querySelector("[data-job-bar]");
  const files = section.querySelector("[data-job-files]");
  const videos = section.querySelector("[data-job-videos]");
  const clock = (s) => {
    if (s === null || s === undefined) return "?";
    const m = Math.floor(s / 60);
    return `${m}:${(s - m * 60).toFixed(1).padStart(4, "0")}`;
  };
  const tick = async () => {
    let job;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
      if (!response.ok) { window.location.reload(); return; }
      job = await response.json();
    } catch (error) {
      window.setTimeout(tick, 2000);
      return;
    }
    status.textContent = job.status;
    bar.value = job.fraction;
    bar.textContent = `${Math.round(job.fraction * 100)}%`;
    files.textContent = `${job.files_done} of ${job.files} file(s) done`;
    videos.replaceChildren(...Object.entries(job.videos).map(([name, v]) => {
      const li = document.createElement("li");
      const speed = v.speed ? ` (${v.speed}× real time)` : "";
      li.textContent = `${name}: ${clock(v.seconds)} of ${clock(v.duration)}${speed}`;
      return li;
    }));
    if (job.status === "done" && job.result_url) {
      window.location.assign(job.result_url);
    } else if (job.status === "done" || job.status === "failed") {
      window.location.reload();
    } else {
      window.setTimeout(tick, 700);
    }
  };
  window.setTimeout(tick, 300);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-dropzone]").forEach(enhanceUpload);
  document.querySelectorAll("[data-job]").forEach(followJob);
});
