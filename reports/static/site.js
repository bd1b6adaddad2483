// attnbench leaderboard: sortable tables, family/text filters, and the ranked overview
// (rank-by menu, expandable backends). No dependencies.
(function () {
  "use strict";
  var each = function (xs, f) { Array.prototype.forEach.call(xs, f); };

  function key(td) {
    if (!td || !td.hasAttribute("data-sort")) return null; // status and empty cells sort last
    var v = td.getAttribute("data-sort");
    return td.hasAttribute("data-num") ? parseFloat(v) : v.toLowerCase();
  }

  // A ranked table sorts its groups (one <tbody> per method, by its first row); others sort rows.
  function units(table) {
    if (table.classList.contains("ranked")) return { parent: table, items: Array.prototype.slice.call(table.tBodies) };
    return { parent: table.tBodies[0], items: Array.prototype.slice.call(table.tBodies[0].rows) };
  }

  function firstRow(u) { return u.tagName === "TBODY" ? u.rows[0] : u; }

  function sortBy(table, col, dir) {
    var u = units(table);
    u.items.sort(function (a, b) {
      var x = key(firstRow(a).cells[col]), y = key(firstRow(b).cells[col]);
      if (x === null || y === null) return x === y ? 0 : (x === null ? 1 : -1);
      return x < y ? -dir : x > y ? dir : 0;
    });
    u.items.forEach(function (r) { u.parent.appendChild(r); });
    return u.items;
  }

  each(document.querySelectorAll("table.sortable"), function (table) {
    var heads = table.querySelectorAll("thead th");
    each(heads, function (th, i) {
      th.tabIndex = 0;
      function go() {
        var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        each(heads, function (o) { o.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
        sortBy(table, i, dir);
      }
      th.addEventListener("click", go);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") go(); });
    });
  });

  // ranked overview: re-rank by the chosen metric (its own direction), numbering 1..n
  each(document.querySelectorAll("select.rankby"), function (sel) {
    var table = document.getElementById(sel.closest(".filters").getAttribute("data-table"));
    if (!table) return;
    sel.addEventListener("change", function () {
      var opt = sel.options[sel.selectedIndex], col = parseInt(opt.value, 10);
      var groups = sortBy(table, col, parseInt(opt.getAttribute("data-dir"), 10) > 0 ? -1 : 1);
      each(table.querySelectorAll("thead th"), function (o) { o.removeAttribute("aria-sort"); });
      groups.forEach(function (g, i) {
        var td = g.rows[0].cells[0];
        td.setAttribute("data-sort", String(i + 1));
        td.querySelector(".rk").textContent = String(i + 1);
      });
      table.setAttribute("data-rank-by", opt.textContent);
    });
  });

  each(document.querySelectorAll("table.ranked button.expand"), function (btn) {
    btn.addEventListener("click", function () {
      var open = btn.getAttribute("aria-expanded") !== "true";
      btn.setAttribute("aria-expanded", open ? "true" : "false");
      btn.textContent = (open ? "▾ " : "▸ ") + btn.textContent.slice(2);
      each(btn.closest("tbody").querySelectorAll("tr.alt"), function (r) { r.hidden = !open; });
    });
  });

  each(document.querySelectorAll(".filters"), function (bar) {
    var table = document.getElementById(bar.getAttribute("data-table"));
    if (!table || !table.tBodies || !table.tBodies.length) return;
    var ranked = table.classList.contains("ranked");
    var family = bar.querySelector("select.family"), text = bar.querySelector("input"),
        count = bar.querySelector(".count");
    function apply() {
      var fam = family ? family.value : "", q = text ? text.value.trim().toLowerCase() : "";
      var items = ranked ? table.tBodies : table.tBodies[0].rows, shown = 0;
      each(items, function (r) {
        var ok = (!fam || r.getAttribute("data-family") === fam) &&
                 (!q || r.textContent.toLowerCase().indexOf(q) >= 0);
        r.hidden = !ok;
        if (ok) shown += 1;
      });
      if (count) count.textContent = shown + " of " + items.length + (ranked ? " methods" : " rows");
    }
    if (family) family.addEventListener("change", apply);
    if (text) text.addEventListener("input", apply);
    apply();
  });
})();
