// jobsvc dashboard: live updates (Server-Sent Events) and the bulk-selection checkboxes.
// Loaded as a file (the Content-Security-Policy allows no inline script). It writes text
// with textContent only, never innerHTML: job data is attacker-controlled.
"use strict";
(function () {
  const STATES = ["pending", "running", "retrying", "succeeded", "dead", "cancelled"];

  function all(selector, root) {
    return Array.prototype.slice.call((root || document).querySelectorAll(selector));
  }

  function setText(selector, text) {
    for (const node of all(selector)) node.textContent = text;
  }

  function when(iso) {
    return iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "Z") : "—";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.max(0, seconds);
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return s.toFixed(1) + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m " + String(Math.floor(s % 60)).padStart(2, "0") + "s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + "h " + String(m % 60).padStart(2, "0") + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }

  // -- bulk selection --------------------------------------------------------------------
  for (const form of all("form[data-bulk]")) {
    const boxes = all("input[name=id]", form);
    const counter = form.querySelector("[data-selected-count]");
    const max = Number(form.dataset.max || "100");
    const update = function () {
      const n = boxes.filter((b) => b.checked).length;
      if (counter) counter.textContent = n + " selected" + (n > max ? " (too many: at most " + max + ")" : "");
    };
    for (const box of boxes) box.addEventListener("change", update);
    for (const all_ of all("input[data-select-all]", form)) {
      all_.addEventListener("change", function () {
        for (const box of boxes) box.checked = all_.checked;
        update();
      });
    }
    update();
  }

  // -- live updates ----------------------------------------------------------------------
  const url = document.body.dataset.events;
  const status = document.querySelector("[data-live-status]");
  if (!url || !window.EventSource) return;

  const source = new EventSource(url);
  const say = function (text) { if (status) status.textContent = text; };
  source.addEventListener("open", function () { say("live"); });
  source.addEventListener("error", function () { say("live updates reconnecting…"); });
  source.addEventListener("unavailable", function () { say("the store cannot be reached right now"); });
  window.addEventListener("pagehide", function () { source.close(); });

  source.addEventListener("counts", function (event) {
    const data = JSON.parse(event.data);
    for (const state of STATES) setText('[data-count="' + state + '"]', String(data.jobs[state] || 0));
    for (const cell of all("[data-task-count]")) {
      const parts = cell.dataset.taskCount.split("|");
      const task = data.tasks[parts[0]] || {};
      cell.textContent = String(task[parts[1]] || 0);
    }
    setText("[data-oldest-due]", data.oldest_due_age === null ? "—" : duration(data.oldest_due_age));
    if (data.activity) {
      const a = data.activity;
      setText('[data-activity="submitted"]', String(a.totals.submitted));
      setText('[data-activity="succeeded"]', String(a.totals.succeeded));
      setText('[data-activity="dead"]', String(a.totals.dead));
      setText('[data-activity="failed_attempts"]', String(a.failed_attempts));
      setText('[data-activity="finished_per_minute"]', a.finished_per_minute.toFixed(2));
      setText('[data-activity="failure_rate"]', a.failure_rate === null ? "—" : (a.failure_rate * 100).toFixed(1) + "%");
    }
    say("live · updated " + new Date().toLocaleTimeString());
  });

  source.addEventListener("job", function (event) {
    const job = JSON.parse(event.data);
    for (const node of all('[data-job-field="state"]')) {
      node.textContent = job.state;
      node.className = "state state-" + job.state;
    }
    setText('[data-job-field="state-text"]', job.state);
    setText('[data-job-field="attempts"]', String(job.attempts));
    setText('[data-job-field="max_attempts"]', String(job.max_attempts));
    setText('[data-job-field="rescues"]', String(job.rescues));
    setText('[data-job-field="cancel_requested"]', job.cancel_requested ? "yes" : "no");
    setText('[data-job-field="run_at"]', when(job.run_at));
    setText('[data-job-field="updated_at"]', when(job.updated_at));
    setText('[data-job-field="finished_at"]', when(job.finished_at));
    setText('[data-job-field="result"]', job.result === null ? "—" : JSON.stringify(job.result, null, 2));
    for (const form of all("[data-show-when]")) {
      form.hidden = form.dataset.showWhen.split(" ").indexOf(job.state) < 0;
    }
    const body = document.querySelector("[data-job-errors]");
    if (body) {
      const rows = [];
      for (const error of job.errors) {
        const row = document.createElement("tr");
        const cells = [String(error.attempt), when(error.at), error.type];
        cells.forEach(function (text, i) {
          const td = document.createElement("td");
          td.textContent = text;
          td.className = ["num", "nowrap", "mono"][i];
          row.append(td);
        });
        const td = document.createElement("td");
        const pre = document.createElement("pre");
        pre.className = "message";
        pre.textContent = error.message;
        td.append(pre);
        row.append(td);
        rows.push(row);
      }
      if (rows.length) body.replaceChildren.apply(body, rows);
    }
    say("live · updated " + new Date().toLocaleTimeString());
  });

  source.addEventListener("gone", function () { say("this job no longer exists"); source.close(); });
})();
