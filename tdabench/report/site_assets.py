"""The site's inline style sheet and script (:mod:`tdabench.report.site`): plain CSS and vanilla JavaScript, no
library but plotly.js (loaded from the local file next to the page).

The script sorts a table by any column header (numeric cells by their ``data-sort`` key, missing values
last; a second click reverses; ties keep the leaderboard's order) and filters its rows by the
ground-truth and metric ``<select>``s of the same section.
"""
from __future__ import annotations

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2430; }
header { padding: 16px 28px 8px; background: #f4f6fa; border-bottom: 1px solid #dde3ec; }
h1 { margin: 0 0 6px; font-size: 22px; }
h2 { margin: 26px 0 6px; font-size: 19px; }
h4 { margin: 8px 0 2px; }
main { padding: 0 28px 40px; }
.legend, .source { margin: 4px 0; color: #4a5568; max-width: 1100px; }
nav a { margin: 0 4px; }
.filters { margin: 8px 0; }
.filters select { margin-right: 12px; }
.count { color: #4a5568; }
.ceilings ul { margin: 4px 0; columns: 2; }
.scroll { overflow-x: auto; max-height: 640px; overflow-y: auto; border: 1px solid #dde3ec; }
table.board { border-collapse: collapse; width: 100%; font-size: 13px; }
table.board th { position: sticky; top: 0; background: #e9eef5; cursor: pointer; user-select: none;
  text-align: left; padding: 5px 8px; white-space: nowrap; border-bottom: 1px solid #c8d1de; }
table.board th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 10px; }
table.board th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 10px; }
table.board td { padding: 3px 8px; border-bottom: 1px solid #eef1f5; vertical-align: top; }
table.board td:nth-child(3), table.board td:nth-child(4) { white-space: nowrap; }
table.board td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.board tr.best td:nth-child(4) { font-weight: 600; }
table.board tr.stale td { color: #8a94a6; font-style: italic; }
table.board tbody tr:hover { background: #f7f9fc; }
details summary { cursor: pointer; color: #2b6cb0; white-space: nowrap; }
.conf { min-width: 420px; max-width: 760px; font-size: 12px; }
.conf pre { background: #f4f6fa; padding: 6px; overflow-x: auto; max-height: 260px; }
.conf dl { display: grid; grid-template-columns: max-content 1fr; gap: 0 8px; margin: 2px 0 6px; }
.conf dt { color: #4a5568; }
.conf dd { margin: 0; word-break: break-word; }
.plots { display: grid; grid-template-columns: 1fr; gap: 12px; margin-top: 12px; }
.plot { border: 1px solid #dde3ec; min-height: 460px; }
"""

JS = r"""
(function () {
  "use strict";
  function value(row, col) {
    var td = row.cells[col];
    var raw = td.hasAttribute("data-sort") ? td.getAttribute("data-sort") : td.textContent.trim();
    if (raw === "") return null;
    return td.hasAttribute("data-sort") ? Number(raw) : raw;
  }
  function compare(a, b, sign) {
    if (a === null || b === null) return a === b ? 0 : (a === null ? 1 : -1);
    if (typeof a === "number" && typeof b === "number") return sign * (a - b);
    return sign * String(a).localeCompare(String(b), undefined, {numeric: true});
  }
  function sortBy(table, col) {
    var th = table.tHead.rows[0].cells[col];
    var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var sign = dir === "ascending" ? 1 : -1, body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      return compare(value(a, col), value(b, col), sign) || (a.dataset.order - b.dataset.order);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  function filter(section, table) {
    var want = {};
    section.querySelectorAll("select.filter").forEach(function (s) { want[s.dataset.key] = s.value; });
    var shown = 0, rows = table.tBodies[0].rows;
    Array.prototype.forEach.call(rows, function (r) {
      var ok = (!want.regime || r.dataset.regime === want.regime) && (!want.metric || r.dataset.metric === want.metric);
      r.hidden = !ok;
      shown += ok ? 1 : 0;
    });
    var count = section.querySelector(".count");
    if (count) count.textContent = shown + " of " + rows.length + " rows";
  }
  document.querySelectorAll("table.board").forEach(function (table) {
    var section = table.closest("section");
    Array.prototype.forEach.call(table.tBodies[0].rows, function (r, i) { r.dataset.order = i; });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.addEventListener("click", function () { sortBy(table, i); });
    });
    section.querySelectorAll("select.filter").forEach(function (s) {
      s.addEventListener("change", function () { filter(section, table); });
    });
    filter(section, table);
  });
})();
"""
