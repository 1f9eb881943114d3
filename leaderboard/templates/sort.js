// Sortable leaderboard tables: click a column header; missing values always sort last.
// A hash "#sort=<table id>:<column key>:<asc|desc>" applies a sort on load (used by the tests).
(function () {
  "use strict";
  function cellValue(row, index, type) {
    var raw = row.cells[index].getAttribute("data-value");
    if (raw === null || raw === "") return null;
    return type === "num" ? parseFloat(raw) : raw.toLowerCase();
  }
  function sortTable(table, key, direction) {
    var header = table.querySelector('thead tr.columns th[data-key="' + key + '"]');
    if (!header) return false;
    var index = Array.prototype.indexOf.call(header.parentNode.cells, header);
    var type = header.getAttribute("data-type");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var sign = direction === "asc" ? 1 : -1;
    rows.sort(function (a, b) {
      var va = cellValue(a, index, type), vb = cellValue(b, index, type);
      if (va === null && vb === null) return 0;
      if (va === null) return 1;
      if (vb === null) return -1;
      if (va < vb) return -sign;
      if (va > vb) return sign;
      return 0;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(header.parentNode.cells, function (th) { th.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", direction === "asc" ? "ascending" : "descending");
    table.setAttribute("data-sorted-by", key + ":" + direction);
    return true;
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.querySelectorAll("thead tr.columns th[data-key]"), function (th) {
      th.addEventListener("click", function () {
        var current = th.getAttribute("aria-sort");
        var first = th.getAttribute("data-first") || "desc";
        var direction = current ? (current === "descending" ? "asc" : "desc") : first;
        sortTable(table, th.getAttribute("data-key"), direction);
      });
    });
  });
  var match = /^#sort=([^:]+):([^:]+):(asc|desc)$/.exec(decodeURIComponent(window.location.hash));
  if (match) {
    var target = document.getElementById(match[1]);
    if (target) sortTable(target, match[2], match[3]);
  }
  document.documentElement.setAttribute("data-sortable", "ready");
})();
