// onecard console: the counter's card reader (onecard reader-agent, loopback SSE) and printing.
// Same-origin script only (CSP); the agent answers only this console's origin.
"use strict";
(function () {
  const box = document.getElementById("reader");
  const status = document.getElementById("reader-status");
  const print = document.getElementById("print");
  if (print) print.addEventListener("click", () => window.print());
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
