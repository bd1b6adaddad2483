// attnbench leaderboard: sortable tables and family/text filters. No dependencies.
(function () {
  "use strict";

  function key(td) {
    if (!td || !td.hasAttribute("data-sort")) return null; // status and empty cells sort last
    var v = td.getAttribute("data-sort");
    return td.hasAttribute("data-num") ? parseFloat(v) : v.toLowerCase();
  }

  function sortBy(table, col, dir) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x === null || y === null) return x === y ? 0 : (x === null ? 1 : -1);
      return x < y ? -dir : x > y ? dir : 0;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var heads = table.querySelectorAll("thead th");
    Array.prototype.forEach.call(heads, function (th, i) {
      th.tabIndex = 0;
      function go() {
        var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        Array.prototype.forEach.call(heads, function (o) { o.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
        sortBy(table, i, dir);
      }
      th.addEventListener("click", go);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") go(); });
    });
  });

  Array.prototype.forEach.call(document.querySelectorAll(".filters"), function (bar) {
    var table = document.getElementById(bar.getAttribute("data-table"));
    if (!table || !table.tBodies || !table.tBodies.length) return;
    var family = bar.querySelector("select"), text = bar.querySelector("input"), count = bar.querySelector(".count");
    function apply() {
      var fam = family ? family.value : "", q = text ? text.value.trim().toLowerCase() : "";
      var rows = table.tBodies[0].rows, shown = 0;
      Array.prototype.forEach.call(rows, function (r) {
        var ok = (!fam || r.getAttribute("data-family") === fam) &&
                 (!q || r.textContent.toLowerCase().indexOf(q) >= 0);
        r.hidden = !ok;
        if (ok) shown += 1;
      });
      if (count) count.textContent = shown + " of " + rows.length + " rows";
    }
    if (family) family.addEventListener("change", apply);
    if (text) text.addEventListener("input", apply);
    apply();
  });
})();
