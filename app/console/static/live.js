// A run's page, live: the server sends the run's body (rendered HTML) each time it changes,
// over server-sent events; it is swapped in place, the page is never reloaded.
(function () {
  "use strict";
  var run = document.getElementById("run");
  if (!run || run.dataset.done === "yes" || !window.EventSource) return;
  var source = new EventSource(run.dataset.events);
  run.dataset.live = "connecting";
  source.addEventListener("open", function () { run.dataset.live = "open"; });
  source.addEventListener("update", function (e) {
    run.innerHTML = e.data;
    run.dataset.updates = String(Number(run.dataset.updates || "0") + 1);
  });
  source.addEventListener("done", function () {
    run.dataset.done = "yes";
    run.dataset.live = "closed";
    source.close();
  });
  source.addEventListener("error", function () {
    // The browser reconnects by itself; a closed stream after "done" is expected.
    if (run.dataset.done !== "yes") run.dataset.live = "reconnecting";
  });
})();
