"""report.html: one self-contained file that works offline. Totals and the chart are
rendered in Python, readable with scripts off; the cluster, review and unreadable lists
are JSON data that a small plain-JS pager renders a page at a time. User data reaches the
DOM only through `textContent` or `html.escape`; a Content-Security-Policy forbids any
network access.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from typing import Any

from imgdedup.scan.report import GB

#: The totals the page template shows by name, each with its raw value for the browser test.
_PAGE_TOTALS = (
    "images", "bytes", "duplicates", "duplicate_share", "clusters", "reclaimable_gb", "reclaimable_bytes",
    "reclaimable_share", "exact_duplicates", "near_duplicates", "review_groups", "review_images", "review_bytes",
    "unreadable", "skipped", "files",
)

#: Per member in the page data: [key, size, width, height, format, role, distance,
#: match, thumb index (-1: none), reclaimable, modified, same_file_as/cluster, uri]
ROLE_CODES = {"keeper": "k", "duplicate": "d", "review": "r", "anchor": "a"}


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_total(name: str, totals: Mapping[str, Any]) -> str:
    """How a total is shown on the page (the browser test compares these with the JSON)."""
    value = totals[name]
    currency = totals["currency"]
    if name in ("bytes", "reclaimable_bytes", "review_bytes"):
        return human_bytes(value)
    if name == "reclaimable_gb":
        return f"{value:,.2f} GB"
    if name in ("duplicate_share", "reclaimable_share"):
        return f"{100 * value:.1f}%"
    if name in ("monthly_saving_min", "monthly_saving_max"):
        return f"{currency}{value:,.2f}"
    if name in ("price_per_gb_month_min", "price_per_gb_month_max"):
        return f"{currency}{value:g}"
    return f"{value:,}"


def _total(name: str, totals: Mapping[str, Any]) -> str:
    raw = json.dumps(totals[name])
    return (
        f'<span class="value" data-total="{name}" data-value="{html.escape(raw)}">'
        f"{html.escape(format_total(name, totals))}</span>"
    )


def _range(name: str, totals: Mapping[str, Any], dash: str, *, single: bool) -> str:
    """`name`_min to `name`_max, or the minimum alone when `single`."""
    low = _total(f"{name}_min", totals)
    return low if single else f"{low}{dash}{_total(f'{name}_max', totals)}"


def _member(m: Mapping[str, Any], thumb: int, uri_prefix: str) -> list[Any]:
    extra = m.get("same_file_as") if m["role"] != "review" else m.get("cluster")
    uri = "" if m["uri"] == uri_prefix + m["key"] else m["uri"]  # "": the prefix + the key
    return [
        m["key"], m["size_bytes"], m["width"], m["height"], m["format"], ROLE_CODES[m["role"]],
        m["distance"], {"exact": "e", "near": "n"}.get(m["match"] or "", ""), thumb, m["reclaimable_bytes"],
        (m["modified"] or "")[:10], extra, uri,
    ]


def _uri_prefix(report: Mapping[str, Any]) -> str:
    for cluster in report["clusters"]:
        m = cluster["members"][0]
        if m["uri"].endswith(m["key"]):
            return m["uri"][: len(m["uri"]) - len(m["key"])]
    return ""


def page_data(report: Mapping[str, Any], thumbs: Mapping[str, bytes], *, max_rows: int = 100_000) -> dict[str, Any]:
    """The JSON the page renders from (compact arrays; thumbnails deduplicated by SHA)."""
    thumb_index: dict[str, int] = {}
    thumb_list: list[str] = []
    prefix = _uri_prefix(report)

    def thumb(m: Mapping[str, Any]) -> int:
        sha = m["sha256"]
        if sha not in thumbs or thumbs[sha] is None:
            return -1
        if sha not in thumb_index:
            thumb_index[sha] = len(thumb_list)
            thumb_list.append(base64.b64encode(thumbs[sha]).decode("ascii"))
        return thumb_index[sha]

    clusters = [
        [c["id"], c["reclaimable_bytes"], c["bytes"], [_member(m, thumb(m), prefix) for m in c["members"]]]
        for c in report["clusters"]
    ]
    review = [
        [g["id"], g["bytes"], _member(g["anchor_image"], thumb(g["anchor_image"]), prefix),
         [_member(m, thumb(m), prefix) for m in g["members"]], g["anchor_cluster"]]
        for g in report["review"]
    ]
    unreadable = [[u["key"], u["error"], u["detail"]] for u in report["unreadable"][:max_rows]]
    skipped = [[s["key"], s["reason"]] for s in report["skipped"][:max_rows]]
    return {
        "clusters": clusters,
        "review": review,
        "unreadable": unreadable,
        "unreadable_total": len(report["unreadable"]),
        "skipped": skipped,
        "skipped_total": len(report["skipped"]),
        "thumbs": thumb_list,
        "uri_prefix": prefix,
        "tiles": report["settings"].get("thumbs_per_cluster", 8),
    }


def size_chart(histogram: list[dict[str, Any]]) -> str:
    """Bar chart of cluster sizes, as inline SVG."""
    width, height, left, bottom, top = 560, 220, 44, 34, 16
    n = len(histogram)
    peak = max((b["clusters"] for b in histogram), default=0) or 1
    slot = (width - left - 8) / n
    bar = slot * 0.7
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        'aria-label="Number of duplicate clusters by cluster size">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 4}" y2="{height - bottom}" class="axis"/>',
    ]
    for value in sorted({0, peak // 2, peak} if peak >= 4 else {0, peak}):
        y = height - bottom - value / peak * (height - bottom - top)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 4}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{value:,}</text>')
    for i, b in enumerate(histogram):
        x = left + i * slot + (slot - bar) / 2
        h = (height - bottom - top) * b["clusters"] / peak
        y = height - bottom - h
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" class="bar">'
            f'<title>{b["clusters"]:,} clusters of {b["size"]} images</title></rect>'
        )
        if b["clusters"]:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{y - 4:.1f}" class="count" text-anchor="middle">'
                         f'{b["clusters"]:,}</text>')
        parts.append(f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 16}" class="tick" text-anchor="middle">'
                     f'{b["size"]}</text>')
    parts.append(f'<text x="{(width + left) / 2:.0f}" y="{height - 3}" class="label" text-anchor="middle">'
                 "images per cluster</text></svg>")
    return "".join(parts)


def _script_json(data: Any) -> str:
    # Safe inside <script>: no "</script>" or "<!--" can appear once '<' is escaped.
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")


def render(report: Mapping[str, Any], thumbs: Mapping[str, bytes], *, page_size: int = 25) -> str:
    t = report["totals"]
    s = report["settings"]
    e = html.escape
    data = page_data(report, thumbs)
    one_price = t["price_per_gb_month_min"] == t["price_per_gb_month_max"]
    register = report.get("register")
    register_html = ""
    if register:
        register_html = (
            f'<p class="note">Loaded into the service index ({e(register["backend"])}, namespace '
            f'<code>{e(register["namespace"])}</code>): {register["registered"]:,} images, '
            + ", ".join(f"{v:,} {e(k)}" for k, v in register["verdicts"].items())
            + f', {register["replayed"]:,} already known, {len(register["errors"]):,} errors.</p>'
        )
    return _PAGE.format(
        title=e(f"Duplicate audit: {report['source']}"),
        source=e(report["source"]),
        generated=e(report["generated_at"] or ""),
        settings=e(
            f"duplicate radius {s['duplicate_radius']}, review radius {s['review_radius']}, "
            f"hash {s['hash_algorithm']}, keeper: {s['keeper']}"
        ),
        **{name: _total(name, t) for name in _PAGE_TOTALS},
        saving=_range("monthly_saving", t, " &ndash; ", single=one_price),
        price=_range("price_per_gb_month", t, "&ndash;", single=one_price),
        chart=size_chart(report["cluster_sizes"]),
        register=register_html,
        gb=GB,
        n_clusters=f"{len(report['clusters']):,}",
        n_review=f"{len(report['review']):,}",
        n_unreadable=f"{len(report['unreadable']):,}",
        n_skipped=f"{len(report['skipped']):,}",
        page_size=int(page_size),
        data=_script_json(data),
        style=_STYLE,
        script=_SCRIPT,
    )


_STYLE = """
:root{--fg:#1d2330;--muted:#5c6577;--line:#dde1e8;--bg:#f6f7f9;--card:#fff;--keep:#16803c;--dup:#b4460f;
--exact:#9b1c1c;--rev:#7a5b00;--accent:#2456b3}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);
background:var(--bg)}
header{background:#1f2a44;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:20px;font-weight:600;word-break:break-all}
header .meta{color:#c5cce0;font-size:12.5px}
main{padding:20px 28px;max-width:1400px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:12px;margin-bottom:16px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.card .label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .value{display:inline-block;font-size:21px;font-weight:600;margin-top:2px;white-space:nowrap}
.card.range .saving{margin-top:2px}.card.range .saving .value{font-size:18px}
.card .sub{color:var(--muted);font-size:12.5px}
.card .sub .value{font-size:12.5px;font-weight:500;margin:0}
.card.hero{border-color:#9cc3a8;background:#f1faf3}
.row{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
.chart{max-width:100%;height:auto}
.chart .bar{fill:var(--accent)}.chart .axis{stroke:#8a93a5}.chart .grid{stroke:#eceef2}
.chart text{font-size:11px;fill:var(--muted)}.chart .count{fill:var(--fg);font-weight:600}
.chart .label{font-size:12px}
.note{color:var(--muted);font-size:13px}
.note .value{font-size:inherit;font-weight:600;color:var(--fg)}
nav.tabs{display:flex;gap:4px;border-bottom:1px solid var(--line);margin:18px 0 10px}
nav.tabs button{border:1px solid transparent;border-bottom:none;background:none;padding:8px 14px;font:inherit;
cursor:pointer;border-radius:6px 6px 0 0;color:var(--muted)}
nav.tabs button[aria-selected=true]{background:var(--card);border-color:var(--line);color:var(--fg);font-weight:600;
margin-bottom:-1px}
.pager{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin:8px 0}
.pager button,.pager select,.pager input{font:inherit;padding:4px 9px;border:1px solid var(--line);border-radius:5px;
background:#fff}
.pager input{min-width:240px}
.cluster{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px;margin:10px 0}
.cluster h3{margin:0 0 8px;font-size:14px;font-weight:600}
.cluster h3 .muted{font-weight:400}
.muted{color:var(--muted)}
.tiles{display:flex;flex-wrap:wrap;gap:10px}
.tile{width:132px;border:1px solid var(--line);border-radius:6px;padding:6px;background:#fff;position:relative}
.tile.keeper{border:2px solid var(--keep);padding:5px}
.tile .thumb{width:118px;height:96px;display:flex;align-items:center;justify-content:center;background:#eef0f4;
border-radius:4px;overflow:hidden}
.tile .thumb img{max-width:118px;max-height:96px;display:block}
.tile .thumb .none{color:#98a0b0;font-size:11px;text-align:center}
.badge{display:inline-block;font-size:11px;font-weight:600;border-radius:3px;padding:1px 5px;color:#fff;margin-top:5px}
.badge.keep{background:var(--keep)}.badge.near{background:var(--dup)}.badge.exact{background:var(--exact)}
.badge.review{background:var(--rev)}.badge.anchor{background:#49536a}
.tile .name{font-size:12px;word-break:break-all;margin-top:3px;max-height:3.1em;overflow:hidden}
.tile .info{font-size:11px;color:var(--muted)}
details.more{margin-top:8px}
table{border-collapse:collapse;width:100%;background:var(--card)}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid var(--line);font-size:12.5px;vertical-align:top}
td.key{word-break:break-all}
th{background:#f0f2f6;font-weight:600}
footer{color:var(--muted);font-size:12px;padding:12px 28px 28px}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("scan-data").textContent);
  var PAGE = Number(document.body.getAttribute("data-page-size")) || 25;
  var state = {tab: "clusters", page: 1, size: PAGE, filter: ""};
  var list = document.getElementById("list");
  var pagerInfo = document.getElementById("pager-info");
  var filterBox = document.getElementById("filter");

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function bytes(n) {
    var units = ["B", "KB", "MB", "GB", "TB"], i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i === 0 ? n.toFixed(0) + " B" : n.toFixed(1) + " " + units[i];
  }
  function baseName(key) {
    var parts = String(key).split("/");
    return parts[parts.length - 1] || key;
  }
  function image(index) {
    var img = new Image();
    img.alt = "";
    img.decoding = "async";
    img.onload = function () { img.setAttribute("data-loaded", "1"); };
    img.onerror = function () { img.setAttribute("data-loaded", "error"); };
    img.src = "data:image/jpeg;base64," + DATA.thumbs[index];
    return img;
  }
  // member: [key, size, w, h, format, role, distance, match, thumb, reclaim, modified, extra, uri]
  function tile(m) {
    var role = m[5], t = el("div", "tile" + (role === "k" ? " keeper" : ""));
    t.title = m[12] || DATA.uri_prefix + m[0];
    var box = el("div", "thumb");
    if (m[8] >= 0) box.appendChild(image(m[8])); else box.appendChild(el("span", "none", "no preview"));
    t.appendChild(box);
    var badge;
    if (role === "k") badge = el("span", "badge keep", "KEEP");
    else if (role === "a") badge = el("span", "badge anchor", "kept");
    else if (role === "r") badge = el("span", "badge review", "review \u00b7 d=" + m[6]);
    else if (m[7] === "e") badge = el("span", "badge exact", "exact copy");
    else badge = el("span", "badge near", "near \u00b7 d=" + m[6]);
    t.appendChild(badge);
    t.appendChild(el("div", "name", baseName(m[0])));
    t.appendChild(el("div", "info", m[2] + "\u00d7" + m[3] + " \u00b7 " + m[4] + " \u00b7 " + bytes(m[1])));
    if (m[10]) t.appendChild(el("div", "info", "modified " + m[10]));
    if (role === "d" && m[11]) t.appendChild(el("div", "info", "same file as " + baseName(m[11])));
    if (role === "r" && m[11]) t.appendChild(el("div", "info", "keeper of cluster #" + m[11]));
    return t;
  }
  function moreTable(members) {
    var details = el("details", "more");
    details.appendChild(el("summary", null, "+ " + members.length + " more"));
    details.addEventListener("toggle", function () {
      if (!details.open || details.querySelector("table")) return;
      var table = el("table"), head = el("tr");
      ["path", "size", "dimensions", "distance", "reclaimable"].forEach(function (h) { head.appendChild(el("th", null, h)); });
      table.appendChild(head);
      members.forEach(function (m) {
        var tr = el("tr");
        tr.appendChild(el("td", "key", m[0]));
        tr.appendChild(el("td", null, bytes(m[1])));
        tr.appendChild(el("td", null, m[2] + "\u00d7" + m[3]));
        tr.appendChild(el("td", null, m[7] === "e" ? "exact" : m[6]));
        tr.appendChild(el("td", null, bytes(m[9])));
        table.appendChild(tr);
      });
      details.appendChild(table);
    });
    return details;
  }
  function tiles(members) {
    var wrap = el("div"), row = el("div", "tiles"), n = Math.max(2, DATA.tiles);
    members.slice(0, n).forEach(function (m) { row.appendChild(tile(m)); });
    wrap.appendChild(row);
    if (members.length > n) wrap.appendChild(moreTable(members.slice(n)));
    return wrap;
  }
  function clusterCard(c) {
    // c: [id, reclaimable, bytes, members]
    var card = el("section", "cluster");
    card.setAttribute("data-cluster", c[0]);
    var h = el("h3", null, "#" + c[0] + " \u00b7 " + c[3].length + " images \u00b7 reclaim " + bytes(c[1]));
    h.appendChild(el("span", "muted", "  keeper: " + c[3][0][0]));
    card.appendChild(h);
    card.appendChild(tiles(c[3]));
    return card;
  }
  function reviewCard(g) {
    // g: [id, bytes, anchor, members, anchor_cluster]
    var card = el("section", "cluster");
    card.setAttribute("data-review", g[0]);
    var h = el("h3", null, "R" + g[0] + " \u00b7 " + g[3].length + " in the review band \u00b7 " + bytes(g[1]));
    h.appendChild(el("span", "muted", "  near " + g[2][0] + (g[4] ? " (keeper of cluster #" + g[4] + ")" : "")));
    card.appendChild(h);
    card.appendChild(tiles([g[2]].concat(g[3])));
    return card;
  }
  function tableOf(rows, headers, total) {
    var wrap = el("div"), table = el("table"), head = el("tr");
    headers.forEach(function (x) { head.appendChild(el("th", null, x)); });
    table.appendChild(head);
    rows.forEach(function (r) {
      var tr = el("tr");
      r.forEach(function (v, i) { tr.appendChild(el("td", i === 0 ? "key" : null, v)); });
      table.appendChild(tr);
    });
    wrap.appendChild(table);
    return wrap;
  }
  var TABS = {
    clusters: {rows: DATA.clusters, text: function (c) { return c[3].map(function (m) { return m[0]; }).join("\n"); },
               render: function (rows) { rows.forEach(function (c) { list.appendChild(clusterCard(c)); }); }},
    review: {rows: DATA.review, text: function (g) { return [g[2][0]].concat(g[3].map(function (m) { return m[0]; })).join("\n"); },
             render: function (rows) { rows.forEach(function (g) { list.appendChild(reviewCard(g)); }); }},
    unreadable: {rows: DATA.unreadable, text: function (r) { return r.join("\n"); },
                 render: function (rows) { list.appendChild(tableOf(rows, ["path", "error", "detail"])); }},
    skipped: {rows: DATA.skipped, text: function (r) { return r.join("\n"); },
              render: function (rows) { list.appendChild(tableOf(rows, ["path", "reason"])); }}
  };
  function filtered() {
    var tab = TABS[state.tab], needle = state.filter.toLowerCase();
    if (!needle) return tab.rows;
    return tab.rows.filter(function (r) { return tab.text(r).toLowerCase().indexOf(needle) >= 0; });
  }
  function render() {
    var rows = filtered(), pages = Math.max(1, Math.ceil(rows.length / state.size));
    state.page = Math.min(Math.max(1, state.page), pages);
    var start = (state.page - 1) * state.size, visible = rows.slice(start, start + state.size);
    while (list.firstChild) list.removeChild(list.firstChild);
    if (!rows.length) list.appendChild(el("p", "note", state.filter ? "Nothing matches the filter." : "Nothing here."));
    else TABS[state.tab].render(visible);
    pagerInfo.textContent = rows.length ? ("page " + state.page + " of " + pages + " \u00b7 " +
      (start + 1) + "\u2013" + (start + visible.length) + " of " + rows.length.toLocaleString("en-US")) : "";
    document.getElementById("prev").disabled = state.page <= 1;
    document.getElementById("next").disabled = state.page >= pages;
    Array.prototype.forEach.call(document.querySelectorAll("nav.tabs button"), function (b) {
      b.setAttribute("aria-selected", String(b.getAttribute("data-tab") === state.tab));
    });
    var hash = "#" + state.tab + "/" + state.page;
    if (location.hash !== hash) history.replaceState(null, "", hash);
    document.body.setAttribute("data-rendered", state.tab + ":" + state.page + ":" + visible.length);
  }
  function fromHash() {
    var m = /^#(clusters|review|unreadable|skipped)(?:\/(\d+))?$/.exec(location.hash);
    if (m) { state.tab = m[1]; state.page = Number(m[2] || 1); }
  }
  document.getElementById("prev").onclick = function () { state.page--; render(); window.scrollTo(0, list.offsetTop - 80); };
  document.getElementById("next").onclick = function () { state.page++; render(); window.scrollTo(0, list.offsetTop - 80); };
  var sizeBox = document.getElementById("size");
  if (!Array.prototype.some.call(sizeBox.options, function (o) { return Number(o.value) === state.size; })) {
    var option = el("option", null, state.size + " per page");
    option.value = String(state.size);
    sizeBox.insertBefore(option, sizeBox.firstChild);
  }
  sizeBox.value = String(state.size);
  document.getElementById("size").onchange = function (ev) { state.size = Number(ev.target.value); state.page = 1; render(); };
  var timer = null;
  filterBox.oninput = function () {
    clearTimeout(timer);
    timer = setTimeout(function () { state.filter = filterBox.value.trim(); state.page = 1; render(); }, 200);
  };
  Array.prototype.forEach.call(document.querySelectorAll("nav.tabs button"), function (b) {
    b.onclick = function () { state.tab = b.getAttribute("data-tab"); state.page = 1; render(); };
  });
  window.addEventListener("hashchange", function () { fromHash(); render(); });
  document.getElementById("loaded-clusters").textContent = DATA.clusters.length.toLocaleString("en-US");
  fromHash();
  render();
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{title}</title>
<style>{style}</style>
</head>
<body data-page-size="{page_size}">
<header>
<h1>Duplicate audit: {source}</h1>
<div class="meta">generated {generated} by imgdedup scan &middot; {settings}</div>
</header>
<main>
<section class="grid" id="totals">
<div class="card hero"><div class="label">Reclaimable</div>{reclaimable_gb}
<div class="sub">{reclaimable_bytes} &middot; {reclaimable_share} of the stored bytes</div></div>
<div class="card hero range"><div class="label">Monthly saving</div><div class="saving">{saving}</div>
<div class="sub">at {price} per GB-month</div></div>
<div class="card"><div class="label">Images</div>{images}<div class="sub">{bytes} stored</div></div>
<div class="card"><div class="label">Duplicates</div>{duplicates}
<div class="sub">{duplicate_share} of the images &middot; {exact_duplicates} exact, {near_duplicates} near</div></div>
<div class="card"><div class="label">Clusters</div>{clusters}<div class="sub">a keeper and its duplicates each</div></div>
<div class="card"><div class="label">Review band</div>{review_images}
<div class="sub">in {review_groups} groups &middot; {review_bytes}, not counted</div></div>
<div class="card"><div class="label">Unreadable</div>{unreadable}<div class="sub">of {files} files tried; {skipped} skipped</div></div>
</section>
<div class="row">
<div class="card"><div class="label">Cluster sizes</div>{chart}</div>
<div class="card" style="max-width:520px"><div class="label">How to read this</div>
<p class="note">A <b>cluster</b> is a kept image (<b>KEEP</b>) and the images the imgdedup service judges to be
its duplicates: exact byte copies, or near copies within the duplicate radius (distance <i>d</i> in bits of the
perceptual hash). Deleting the duplicates frees the reclaimable bytes. The <b>review band</b> lists images close
to a kept image but beyond the duplicate radius: they need a human look and are not counted as reclaimable.</p>
<p class="note">The same data is in <code>clusters.json</code> and <code>clusters.csv</code> (rows with
role <code>duplicate</code> are the deletable ones).</p>
{register}
</div>
</div>
<nav class="tabs">
<button data-tab="clusters" aria-selected="true">Clusters ({n_clusters})</button>
<button data-tab="review">Review band ({n_review})</button>
<button data-tab="unreadable">Unreadable ({n_unreadable})</button>
<button data-tab="skipped">Skipped ({n_skipped})</button>
</nav>
<div class="pager">
<button id="prev" type="button">&larr; previous</button>
<button id="next" type="button">next &rarr;</button>
<span id="pager-info" class="muted"></span>
<select id="size" aria-label="per page"><option value="10">10 per page</option><option value="25">25 per page</option>
<option value="50">50 per page</option><option value="100">100 per page</option></select>
<input id="filter" type="search" placeholder="filter by path or error" aria-label="filter">
</div>
<div id="list"><p class="note">The lists need JavaScript.</p></div>
</main>
<footer>clusters in the report data: <span id="loaded-clusters">?</span> &middot; sizes: 1 GB = {gb:,} bytes (2<sup>30</sup>,
as storage is billed) &middot; source: {source}</footer>
<script type="application/json" id="scan-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""
