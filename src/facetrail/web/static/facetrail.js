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

// Seconds as m:ss.s, as the server writes them.
function clock(s) {
  if (s === null || s === undefined) return "?";
  const m = Math.floor(s / 60);
  return `${m}:${(s - m * 60).toFixed(1).padStart(4, "0")}`;
}

// A job page follows its job: progress from a small JSON endpoint, then the results.
function followJob(section) {
  const url = section.dataset.job;
  if (!["queued", "running"].includes(section.dataset.status)) return;
  const status = section.querySelector("[data-job-status]");
  const bar = section.querySelector("[data-job-bar]");
  const files = section.querySelector("[data-job-files]");
  const videos = section.querySelector("[data-job-videos]");
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

// As the server writes them (web/pages.py): an estimated false match rate, a UTC time.
function formatFmr(value) {
  if (value === null || value === undefined) return "not calibrated";
  if (value === 0) return "< 1e-7";
  if (value >= 0.01) return value.toFixed(3);
  const [mantissa, exponent] = value.toExponential(1).split("e");
  const power = Math.abs(Number(exponent)).toString().padStart(2, "0");
  return `${mantissa}e${Number(exponent) < 0 ? "-" : "+"}${power}`;
}

function formatWhen(iso) {
  return `${iso.slice(0, 16).replace("T", " ")} UTC`;
}

// The operator's page: new alerts arrive as server-sent events and are put at the top, built
// from the page's own template (text only, never HTML from the stream); counters follow.
function followLive(section) {
  if (typeof EventSource === "undefined") return;
  const list = document.querySelector("[data-alerts]");
  const template = document.getElementById("alert-template");
  const status = document.querySelector("[data-live-status]");
  const source = new EventSource(section.dataset.liveEvents);
  source.addEventListener("alert", (event) => {
    const a = JSON.parse(event.data);
    if (document.getElementById(`alert-${a.id}`)) return;
    const node = template.content.firstElementChild.cloneNode(true);
    node.id = `alert-${a.id}`;
    const put = (name, text) => {
      const el = node.querySelector(`[data-a=${name}]`);
      if (el) el.textContent = text;
    };
    put("subject", a.subject);
    put("score", a.score.toFixed(3));
    put("fmr", formatFmr(a.fmr));
    put("at", formatWhen(a.at));
    put("time", clock(a.time));
    const image = node.querySelector("[data-a=image]");
    if (a.best_shot_sha256) image.src = a.best_shot; else image.remove();
    const form = node.querySelector("[data-a=form]");
    if (form) form.action = `/alerts/${a.id}/review`;
    list.prepend(node);
    const count = section.querySelector("[data-field=alerts]");
    if (count) count.textContent = Number(count.textContent) + 1;
    document.querySelector("[data-no-alerts]")?.remove();
    status.hidden = false;
    status.textContent = `New alert: ${a.subject}, score ${a.score.toFixed(3)}`;
  });
  source.addEventListener("deployment", (event) => {
    const d = JSON.parse(event.data);
    Object.entries(d).forEach(([name, value]) => {
      const el = section.querySelector(`[data-field=${name}]`);
      if (el) el.textContent = value;
    });
    if (["stopped", "ended", "interrupted"].includes(d.status)) source.close();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-dropzone]").forEach(enhanceUpload);
  document.querySelectorAll("[data-job]").forEach(followJob);
  document.querySelectorAll("[data-live-events]").forEach(followLive);
});
