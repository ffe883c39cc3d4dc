// onecard console: the counter's card reader (onecard reader-agent, loopback SSE) and printing.
// Same-origin script only (CSP); the agent answers only this console's origin.
"use strict";
(function () {
  const box = document.getElementById("reader");
  const status = document.getElementById("reader-status");
  const print = document.getElementById("print");
  if (print) print.addEventListener("click", () => window.print());
  const job = document.getElementById("roster-job");
  if (job && job.dataset.finished !== "1") {
    const bar = document.getElementById("roster-progress");
    const count = document.getElementById("roster-count");
    const poll = () => fetch(job.dataset.url, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
      .then((s) => {
        bar.value = s.percent;
        count.textContent = s.done + (s.total ? "/" + s.total : "");
        if (s.finished) window.location.reload(); else setTimeout(poll, 300);
      })
      .catch(() => setTimeout(poll, 1000));
    poll();
  }
  const live = document.getElementById("live");
  if (live) {
    const fmt = (v, unit) => (v === null || v === undefined ? "—" : Math.round(v) + (unit || ""));
    const set = (id, text) => { const el = document.getElementById(id); if (el) el.textContent = text; };
    const poll = () => fetch(live.dataset.url, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
      .then((m) => {
        set("live-reachable", m.reachable);
        set("live-rate", fmt(m.taps_per_min));
        set("live-approved", fmt(m.approved));
        set("live-p99", m.p99_ms === null ? "—" : m.p99_ms.toFixed(1) + " ms");
        set("live-version", fmt(m.denylist_version));
        set("live-online", fmt(m.terminals_online));
        set("live-lag", fmt(m.max_lag) + " (" + fmt(m.lagging) + " 台 terminals)");
        const body = document.getElementById("live-declines");
        body.replaceChildren(...Object.keys(m.declines).sort().map((code) => {
          const tr = document.createElement("tr");
          const a = document.createElement("td"); a.textContent = code;
          const b = document.createElement("td"); b.className = "num"; b.textContent = fmt(m.declines[code]);
          tr.append(a, b);
          return tr;
        }));
      })
      .catch(() => set("live-reachable", "?"));
    setInterval(poll, 2000);
  }
  if (!box || !status || !window.EventSource) return;
  const shown = box.dataset.uid || "";
  const say = (cls, zh, en) => {
    box.className = "reader no-print " + cls;
    status.textContent = zh + " ";
    const span = document.createElement("span");
    span.className = "en";
    span.textContent = en;
    status.appendChild(span);
  };
  const events = new EventSource(box.dataset.agent + "/events");
  events.addEventListener("card", (e) => {
    let d;
    try { d = JSON.parse(e.data); } catch (_) { return; }
    if (d.state === "inserted" && d.uid) {
      const written = d.written !== undefined && d.written !== null
        ? "；卡类型已写入 " + d.written : "";
      say("present", "读卡器上有卡" + written, "card on the reader" + (written ? "; card type written" : ""));
      if (d.uid !== shown) {
        document.getElementById("reader-uid").value = d.uid;
        document.getElementById("reader-form").submit();
      }
    } else if (d.state === "inserted") {
      say("down", "读卡器上的卡无法识别：" + (d.error || ""), "card on the reader not readable");
    } else if (d.state === "removed") {
      say("", "卡片已从读卡器移开", "card removed from the reader");
    } else if (d.state === "empty") {
      say("", "读卡器就绪，请放卡", "reader ready: put a card on it");
    }
  });
  events.onerror = () => say("down", "读卡器代理未连接（onecard reader-agent）", "reader agent not connected");
})();
