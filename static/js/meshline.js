// Show every <time class="local-time"> in the viewer's time zone. The
// server renders UTC, so the page still reads correctly without scripts.
(function () {
  var options = {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", timeZoneName: "short"
  };
  var minutes = new Intl.DateTimeFormat(undefined, options);
  var seconds = new Intl.DateTimeFormat(undefined, Object.assign({ second: "2-digit" }, options));
  function localise(root) {
    root.querySelectorAll("time.local-time[datetime]").forEach(function (node) {
      var at = new Date(node.getAttribute("datetime"));
      if (!isNaN(at)) {
        var format = node.hasAttribute("data-seconds") ? seconds : minutes;
        node.title = node.textContent.trim();
        node.textContent = format.format(at);
      }
    });
  }
  localise(document);
  document.addEventListener("htmx:afterSettle", function (event) {
    localise(event.target);
  });
  // Leave empty filters out of the request, so the pushed address stays short.
  document.addEventListener("htmx:configRequest", function (event) {
    if (!event.detail.elt.matches("form.filters")) return;
    var parameters = event.detail.parameters;
    Array.from(parameters.keys()).forEach(function (name) {
      if (parameters.getAll(name).every(function (value) { return value === ""; })) {
        parameters.delete(name);
      }
    });
  });
})();
