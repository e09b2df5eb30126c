// Keyboard shortcuts of the triage pages. Each shortcut only clicks or focuses
// an element that is also reachable with Tab: a button or a link with a
// data-shortcut attribute, or a row of the queue table.
(function () {
  "use strict";

  function typing(event) {
    var target = event.target;
    return target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName);
  }

  function rows() {
    return Array.prototype.slice.call(document.querySelectorAll("table[data-queue] tbody tr"));
  }

  function moveCurrent(step) {
    var all = rows();
    if (!all.length) return;
    var index = all.findIndex(function (row) { return row.classList.contains("is-current"); });
    var next = Math.max(0, Math.min(all.length - 1, index + step));
    if (index >= 0) all[index].classList.remove("is-current");
    all[next].classList.add("is-current");
    var link = all[next].querySelector("a[href]");
    if (link) link.focus();
  }

  function openCurrent() {
    var row = document.querySelector("table[data-queue] tbody tr.is-current");
    if (row) window.location.href = row.getAttribute("data-case-url");
  }

  function activate(key) {
    var element = document.querySelector('[data-shortcut="' + key + '"]');
    if (!element) return false;
    if (element.tagName === "TEXTAREA" || element.tagName === "INPUT") {
      element.scrollIntoView({ block: "center" });
      element.focus();
    } else if (element.tagName === "SECTION" || element.tagName === "DIV") {
      element.scrollIntoView({ block: "start" });
      var field = element.querySelector("input:not([type=hidden]), select, textarea, button");
      if (field) field.focus();
    } else {
      element.click();
    }
    return true;
  }

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey || typing(event)) return;
    var key = event.key;
    var handled = true;
    if (key === "j") moveCurrent(1);
    else if (key === "k") moveCurrent(-1);
    else if (key === "o" && rows().length) openCurrent();
    else if (key === "/") {
      var search = document.getElementById("id_q");
      if (search) search.focus(); else handled = false;
    } else if (key === "?") {
      var help = document.getElementById("shortcuts");
      if (help) help.open = !help.open; else handled = false;
    } else handled = activate(key);
    if (handled) event.preventDefault();
  });
})();
