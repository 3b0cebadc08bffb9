/* The live study dashboard (templates/aggregation/dashboard.html).
 *
 * Draws the figures the server rendered from the database, then keeps them, the round progress, the
 * governance panel and the event feed current from the study's event stream (docs/events.md):
 * ws[s]://<host>/ws/studies/<id>/?after=<last event id>. Never reloads. Plain JS, no build step.
 *
 * Every event is applied idempotently (a point is upserted by its x, a heatmap column is added once):
 * the page may already show data newer than the event id it embedded (aggregation/dashboard.py).
 * Hooks for browser tests: #dashboard[data-last-event-id], .chart[data-points], the heatmap's
 * [data-columns] and [data-rows], [data-testid=connection][data-state], the governance panel's rows
 * [data-site-id][data-eligible], the progress card's [data-submitted][data-eligible][data-status], and the note of
 * what the sites' chart cannot show, [data-testid=auc-gaps] (hidden while there is nothing to note).
 */
(function () {
  "use strict";

  const root = document.getElementById("dashboard");
  if (!root) return;
  const figures = JSON.parse(document.getElementById("dashboard-figures").textContent);
  const state = JSON.parse(document.getElementById("dashboard-state").textContent);
  const hasPlotly = typeof window.Plotly !== "undefined";
  const MAX_FEED = 100;
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 30000;
  const PING_EVERY_MS = 20000;
  const SILENT_LIMIT_MS = 50000; // no message (not even a pong) for this long: the socket is dead
  const STATUS_LABELS = {open: "Open", aggregating: "Aggregating", closed: "Closed", blocked: "Blocked by the gate",
    failed: "Failed"};
  // The global chart's lines: consortium/federated/metric_keys.py GLOBAL_METRICS (a test keeps them equal).
  const GLOBAL_METRICS = ["val_auc", "val_accuracy", "val_loss"];
  const CONNECTION_LABELS = {connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…",
    offline: "Offline"};

  let lastId = Number(root.dataset.lastEventId) || 0;
  const sites = new Map(state.sites.map((s) => [s.id, s]));
  /* Past a dozen sites the page summarises (aggregation/site_summary.py): live updates keep to the sites it
   * details (this page's heatmap and governance rows; the worst sites' lines). As rounds end and the gate
   * changes, the worst sites are ranked again as the server ranks them (refused now first, then the most
   * rounds missed) and the AUC chart's lines follow, and the spread band gains each new version's point from
   * every site's AUC in the event. Misses count only rounds that opened while the page was open; a reload
   * counts them all, and re-ranks the heatmap's rows. */
  const summary = state.summary || {summarised: false};
  const lineSites = new Set(summary.line_site_ids || []);
  const rowSites = new Set(summary.row_site_ids || []);
  const aucBySite = new Map(Object.entries(summary.auc || {}).map(([id, points]) => [Number(id), new Map(points)]));
  const misses = new Map(Object.entries(summary.misses || {}).map(([id, n]) => [Number(id), n]));
  let refusedNow = new Set(summary.refused_site_ids || []);
  const sentByRound = new Map(); // rounds opened while the page is open: the sites counted in so far
  const eligibleByRound = new Map(Object.entries(state.eligible_by_round).map(([k, v]) => [Number(k), new Set(v)]));

  // --- small DOM helpers ------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    children.forEach((c) => node.append(c));
    return node;
  }

  /* A moment as the server's pages write it (YYYY-MM-DD HH:MM:SS), in the browser's time zone. */
  function clock(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return "";
    const two = (n) => String(n).padStart(2, "0");
    return d.getFullYear() + "-" + two(d.getMonth() + 1) + "-" + two(d.getDate()) + " " + two(d.getHours()) + ":" +
      two(d.getMinutes()) + ":" + two(d.getSeconds());
  }

  function num(value, digits) {
    if (value === null || value === undefined) return "—";
    return Number.isInteger(value) ? String(value) : Number(value).toFixed(digits === undefined ? 3 : digits);
  }

  /* Text (a site's name, a reason) as plotly.js shows it literally: plotly reads <b>, <a href> and &...; in
   * labels as markup and %{...} in a hovertemplate as a placeholder, and decodes entities last. The same
   * helper as aggregation/dashboard.py's plotly_text, so live traces and the first render agree. */
  function plotlyText(value) {
    return String(value).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/%/g, "&#37;");
  }

  function siteName(id, fallback) {
    const site = sites.get(Number(id));
    return site ? site.name : (fallback || "Site " + id);
  }

  // --- charts -----------------------------------------------------------------------------------------

  const charts = {};
  if (hasPlotly) {
    Object.entries(figures).forEach(([name, fig]) => {
      const div = document.getElementById("chart-" + name);
      if (!div) return;
      charts[name] = div;
      window.Plotly.newPlot(div, fig.data, fig.layout, {responsive: true, displaylogo: false});
    });
  }

  function traceIndex(gd, meta) {
    return gd.data.findIndex((t) => t.meta === meta);
  }

  function distinctX(gd) {
    const xs = new Set();
    gd.data.forEach((t) => {
      if (!String(t.meta || "").startsWith("band:")) Array.from(t.x || []).forEach((x) => xs.add(x));
    });
    return xs.size;
  }

  function touched(name) {
    const gd = charts[name];
    if ((gd.layout.annotations || []).length) window.Plotly.relayout(gd, {annotations: []});
    gd.dataset.points = String(distinctX(gd));
  }

  /* Set y at x in the trace tagged `meta` (made by `makeTrace` if missing): a new last x extends the
   * trace in place, anything else restyles it. Returns whether anything changed. */
  function upsert(name, meta, x, y, makeTrace) {
    const gd = charts[name];
    if (!gd || y === null || y === undefined || x === null || x === undefined) return false;
    const i = traceIndex(gd, meta);
    if (i < 0) {
      window.Plotly.addTraces(gd, Object.assign(makeTrace(), {x: [x], y: [y], meta: meta}));
    } else {
      const xs = Array.from(gd.data[i].x || []);
      const ys = Array.from(gd.data[i].y || []);
      const at = xs.indexOf(x);
      if (at >= 0) {
        if (ys[at] === y) return false;
        ys[at] = y;
        window.Plotly.restyle(gd, {y: [ys]}, [i]);
      } else if (!xs.length || x > xs[xs.length - 1]) {
        window.Plotly.extendTraces(gd, {x: [[x]], y: [[y]]}, [i]);
      } else {
        const k = xs.findIndex((v) => v > x);
        xs.splice(k, 0, x);
        ys.splice(k, 0, y);
        window.Plotly.restyle(gd, {x: [xs], y: [ys]}, [i]);
      }
    }
    touched(name);
    return true;
  }

  function siteTrace(id, unit) {
    return function () {
      const site = sites.get(Number(id)) || ensureSite(Number(id));
      const label = plotlyText(site.name);
      return {type: "scatter", name: label, mode: "lines+markers", line: {color: site.color},
        hovertemplate: label + ": %{y:.3f}" + unit + "<extra>%{x}</extra>"};
    };
  }

  function upsertSite(name, siteId, x, y, unit) {
    if (summary.summarised && !lineSites.has(Number(siteId))) return false;
    return upsert(name, "site:" + siteId, x, y, siteTrace(siteId, unit));
  }

  function sd(values) {
    const mean = values.reduce((a, b) => a + b, 0) / values.length;
    return Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length);
  }

  /* The min–max band across the sites' lines, recomputed from the lines themselves. */
  function redrawBand() {
    const gd = charts.sites;
    // No band when the viewer sees only their own sites' lines (disclosure control: a minimum is one site's value),
    // nor live in a summary (the band covers sites without a line: the server's stands).
    if (!gd || summary.summarised || traceIndex(gd, "band:max") < 0) return;
    const byX = new Map();
    gd.data.forEach((t) => {
      if (!String(t.meta || "").startsWith("site:")) return;
      Array.from(t.x || []).forEach((x, j) => {
        if (t.y[j] === null || t.y[j] === undefined) return;
        if (!byX.has(x)) byX.set(x, []);
        byX.get(x).push(t.y[j]);
      });
    });
    const xs = Array.from(byX.keys()).sort((a, b) => a - b);
    const text = xs.map((x) => byX.get(x).length + " sites, SD " + sd(byX.get(x)).toFixed(3));
    const hi = xs.map((x) => Math.max(...byX.get(x)));
    const lo = xs.map((x) => Math.min(...byX.get(x)));
    window.Plotly.restyle(gd, {x: [xs, xs], y: [hi, lo], text: [text, text]},
      [traceIndex(gd, "band:max"), traceIndex(gd, "band:min")]);
  }

  /* In a summary, the band's point at version x from every site's AUC the event carries (the lines are few). */
  function bandPoint(x, values) {
    const gd = charts.sites;
    if (!gd || !values.length || traceIndex(gd, "band:max") < 0) return;
    const hi = traceIndex(gd, "band:max"), lo = traceIndex(gd, "band:min");
    const xs = Array.from(gd.data[hi].x || []), top = Array.from(gd.data[hi].y || []);
    const bottom = Array.from(gd.data[lo].y || []), text = Array.from(gd.data[lo].text || []);
    let at = xs.indexOf(x);
    if (at < 0) {
      at = xs.findIndex((v) => v > x);
      if (at < 0) at = xs.length;
      xs.splice(at, 0, x); top.splice(at, 0, null); bottom.splice(at, 0, null); text.splice(at, 0, "");
    }
    top[at] = Math.max(...values);
    bottom[at] = Math.min(...values);
    text[at] = values.length + " sites, SD " + sd(values).toFixed(3);
    window.Plotly.restyle(gd, {x: [xs, xs], y: [top, bottom], text: [text, text]}, [hi, lo]);
    touched("sites");
  }

  function worse(a, b) {
    const key = (id) => [refusedNow.has(id) ? 0 : 1, -(misses.get(id) || 0)];
    const [ka, kb] = [key(a), key(b)];
    if (ka[0] !== kb[0]) return ka[0] - kb[0];
    if (ka[1] !== kb[1]) return ka[1] - kb[1];
    const [na, nb] = [siteName(a).toLowerCase(), siteName(b).toLowerCase()];
    return na < nb ? -1 : na > nb ? 1 : a - b;
  }

  /* The worst sites again; lines leave the per-site charts with their site, and a site that enters the worst
   * gets its AUC line from the points the page holds (its other charts' lines start with the next round). */
  function rerank() {
    if (!summary.summarised) return;
    const worst = new Set(Array.from(sites.keys()).sort(worse).slice(0, summary.worst_lines));
    const left = Array.from(lineSites).filter((id) => !worst.has(id));
    const entered = Array.from(worst).filter((id) => !lineSites.has(id));
    if (!left.length && !entered.length) return;
    lineSites.clear();
    worst.forEach((id) => lineSites.add(id));
    ["sites", "elapsed", "norms"].forEach((name) => {
      const gd = charts[name];
      if (!gd) return;
      const gone = left.map((id) => traceIndex(gd, "site:" + id)).filter((i) => i >= 0).sort((a, b) => b - a);
      if (gone.length) window.Plotly.deleteTraces(gd, gone);
      if (gone.length) touched(name);
    });
    entered.forEach((id) => {
      const points = Array.from((aucBySite.get(id) || new Map()).entries()).sort((a, b) => a[0] - b[0]);
      points.forEach(([x, y]) => upsertSite("sites", id, x, y, ""));
    });
  }

  function summaryRoundMetrics(d) {
    const bySite = d.evaluated_by_site || {};
    const values = [];
    Object.keys(bySite).forEach((id) => {
      const auc = bySite[id].val_auc;
      if (auc === null || auc === undefined) return;
      values.push(auc);
      if (aucBySite.has(Number(id))) aucBySite.get(Number(id)).set(d.evaluated_version, auc);
    });
    bandPoint(d.evaluated_version, values);
  }

  function summaryRoundEnded(d) {
    const sent = sentByRound.get(d.round);
    if (!sent || d.status === "aggregating") return;
    sentByRound.delete(d.round);
    (eligibleByRound.get(d.round) || new Set()).forEach((id) => {
      if (!sent.has(id)) misses.set(id, (misses.get(id) || 0) + 1);
    });
    rerank();
  }

  function setParticipation(round, submitted, eligible) {
    const gd = charts.participation;
    if (!gd || !eligible) return;
    const i = traceIndex(gd, "rate");
    const t = gd.data[i];
    const xs = Array.from(t.x || []), ys = Array.from(t.y || []);
    const text = Array.from(t.text || []), custom = Array.from(t.customdata || []);
    let at = xs.indexOf(round);
    if (at < 0) {
      at = xs.findIndex((v) => v > round);
      if (at < 0) at = xs.length;
      xs.splice(at, 0, round); ys.splice(at, 0, 0); text.splice(at, 0, ""); custom.splice(at, 0, [0, 0]);
    }
    ys[at] = 100 * submitted / eligible;
    text[at] = submitted + "/" + eligible;
    custom[at] = [submitted, eligible];
    window.Plotly.restyle(gd, {x: [xs], y: [ys], text: [text], customdata: [custom]}, [i]);
    touched("participation");
  }

  function participationOf(round) {
    const gd = charts.participation;
    if (!gd) return null;
    const t = gd.data[traceIndex(gd, "rate")];
    const at = Array.from(t.x || []).indexOf(round);
    return at < 0 ? null : t.customdata[at];
  }

  // --- the participation heatmap (site x round) ---------------------------------------------------------

  const heat = (function () {
    const t = figures.heatmap.data[0];
    return {rounds: Array.from(t.x || []),
      siteIds: summary.summarised ? Array.from(summary.row_site_ids) : state.sites.map((s) => s.id),
      z: (t.z || []).map((row) => Array.from(row)), text: (t.text || []).map((row) => Array.from(row))};
  })();

  function missingWhy(round, siteId) {
    const eligible = eligibleByRound.get(round);
    return eligible && !eligible.has(siteId) ? "missing: not eligible" : "missing: no update";
  }

  function redrawHeatmap() {
    const gd = charts.heatmap;
    if (gd) {
      const names = heat.siteIds.map((id) => plotlyText(siteName(id)));
      window.Plotly.restyle(gd, {x: [heat.rounds.slice()], y: [names], z: [heat.z.map((r) => r.slice())],
        text: [heat.text.map((r) => r.slice())]}, [0]);
      window.Plotly.relayout(gd, {height: Math.max(200, 80 + 34 * heat.siteIds.length)});
      touched("heatmap");
    }
    const div = document.getElementById("chart-heatmap");
    if (div) {
      div.dataset.columns = String(heat.rounds.length);
      div.dataset.rows = String(heat.siteIds.length);
    }
  }

  function ensureSite(id, name) {
    if (sites.has(id)) return sites.get(id);
    const site = {id: id, name: name || "Site " + id, color: state.palette[sites.size % state.palette.length]};
    sites.set(id, site);
    if (summary.summarised) return site; // a new site is ranked (and shown) at the next load
    heat.siteIds.push(id);
    heat.z.push(heat.rounds.map(() => 0));
    heat.text.push(heat.rounds.map((r) => missingWhy(r, id)));
    redrawHeatmap();
    return site;
  }

  function addRound(round) {
    if (heat.rounds.includes(round)) return;
    let at = heat.rounds.findIndex((r) => r > round);
    if (at < 0) at = heat.rounds.length;
    heat.rounds.splice(at, 0, round);
    heat.siteIds.forEach((id, row) => {
      heat.z[row].splice(at, 0, 0);
      heat.text[row].splice(at, 0, missingWhy(round, id));
    });
    redrawHeatmap();
  }

  /* Mark a cell; returns the state it had before. */
  function setCell(round, siteId, cellState, why) {
    ensureSite(siteId);
    addRound(round);
    const row = heat.siteIds.indexOf(siteId);
    const col = heat.rounds.indexOf(round);
    if (row < 0) return "missing"; // not on this page of a summarised heatmap
    const before = state.cell_states[heat.z[row][col]];
    heat.z[row][col] = state.cell_states.indexOf(cellState);
    heat.text[row][col] = plotlyText(why ? cellState + ": " + why : cellState);
    redrawHeatmap();
    return before;
  }

  function cellState(round, siteId) {
    const row = heat.siteIds.indexOf(siteId);
    const col = heat.rounds.indexOf(round);
    return row < 0 || col < 0 ? "missing" : state.cell_states[heat.z[row][col]];
  }

  // --- what the sites' chart cannot show (aggregation/dashboard.py `auc_gaps`, worded the same way) ------

  const gaps = new Map(); // "site id|reason" -> {site_id, reason, versions: Set}
  (state.auc_gaps || []).forEach((g) => gaps.set(g.site_id + "|" + g.reason,
    {site_id: g.site_id, reason: g.reason, versions: new Set(g.versions)}));

  function gapText(site, versions, reason) {
    const spans = [];
    versions.slice().sort((a, b) => a - b).forEach((n) => {
      if (spans.length && n === spans[spans.length - 1][1] + 1) spans[spans.length - 1][1] = n;
      else spans.push([n, n]);
    });
    const listed = spans.map(([a, b]) => (a === b ? "v" + a : "v" + a + "–v" + b)).join(", ");
    return site + ": no AUC of its own for " + listed + " (" + reason + ").";
  }

  /* A version's evaluations arrived: note each site without an AUC of its own, and why. */
  function noteGaps(version, bySite) {
    Object.entries(bySite).forEach(([id, m]) => {
      const siteId = Number(id);
      gaps.forEach((g) => { if (g.site_id === siteId) g.versions.delete(version); });
      if ((m.val_auc === null || m.val_auc === undefined) && m.val_auc_note) {
        const key = siteId + "|" + m.val_auc_note;
        if (!gaps.has(key)) gaps.set(key, {site_id: siteId, reason: m.val_auc_note, versions: new Set()});
        gaps.get(key).versions.add(version);
      }
    });
    const box = document.querySelector('[data-testid="auc-gaps"]');
    if (!box) return;
    const rows = Array.from(gaps.values()).filter((g) => g.versions.size)
      .map((g) => ({g: g, name: siteName(g.site_id)}))
      .sort((a, b) => a.name.localeCompare(b.name) || a.g.reason.localeCompare(b.g.reason));
    box.querySelector('[data-role="auc-gaps"]').replaceChildren(...rows.map((r) =>
      el("li", {"data-site-id": String(r.g.site_id)}, gapText(r.name, Array.from(r.g.versions), r.g.reason))));
    box.hidden = !rows.length;
  }

  // --- round progress -----------------------------------------------------------------------------------

  const progress = document.querySelector('[data-testid="progress"]');

  function part(role) {
    return progress.querySelector('[data-role="' + role + '"]');
  }

  function setProgress(fields) {
    Object.entries(fields).forEach(([k, v]) => { progress.dataset[k] = v === null || v === undefined ? "" : v; });
    const d = progress.dataset;
    const status = d.status || "none";
    part("round").textContent = d.round || "—";
    part("kind").textContent = {statistics: "(federated statistics)", evaluation: "(final evaluation)"}[d.kind] || "";
    part("status").textContent = STATUS_LABELS[status] || status;
    part("status").className = "badge round-" + status;
    part("bar").max = Math.max(Number(d.eligible) || 0, 1);
    part("bar").value = Number(d.submitted) || 0;
    part("count").textContent = (d.submitted || 0) + " of " + (d.eligible || 0);
    if ("reason" in fields) part("reason").textContent = fields.reason || "";
    tick();
  }

  function isCurrent(round) {
    return String(round) === progress.dataset.round;
  }

  function tick() {
    const deadline = progress.dataset.deadline ? new Date(progress.dataset.deadline) : null;
    const out = part("countdown");
    if (!deadline || progress.dataset.status !== "open") {
      out.textContent = "";
      return;
    }
    const left = Math.round((deadline - Date.now()) / 1000);
    if (left <= 0) {
      out.textContent = "Deadline passed: the coordinator aggregates or blocks the round at its next check.";
      return;
    }
    const h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
    out.textContent = "Closes in " + (h ? h + " h " : "") + (h || m ? m + " min " : "") + s + " s (" +
      clock(progress.dataset.deadline).slice(11, 16) + ").";
  }

  // --- governance panel ---------------------------------------------------------------------------------

  const panel = document.querySelector('[data-testid="governance-panel"]');

  function checkItem(check) {
    const expires = check.expires_at ? new Date(check.expires_at) : null;
    const soon = check.passed && expires && expires - Date.now() <= state.expiry_days * 86400000;
    const li = el("li", {class: "check-" + (check.passed ? (soon ? "warn" : "pass") : "fail"),
      "data-check": check.name, "data-passed": String(Boolean(check.passed))},
    el("span", {class: check.passed ? "pass" : "fail"}, check.passed ? "✓" : "✗"), " ",
    el("strong", {}, state.check_labels[check.name] || check.name), ": " + (check.reason || ""));
    if (check.passed && expires) {
      li.append(" ", el("span", {class: "expires"}, "Lapses ", el("time", {datetime: check.expires_at},
        clock(check.expires_at)), "."));
    }
    return li;
  }

  function siteRow(siteId, name, checks) {
    const eligible = checks.every((c) => c.passed);
    return el("tr", {"data-site-id": String(siteId), "data-eligible": String(eligible),
      class: eligible ? "site-eligible" : "site-ineligible"},
    el("td", {}, name), el("td", {}, el("ul", {class: "checks"}, ...checks.map(checkItem))),
    el("td", {class: eligible ? "pass" : "fail", "data-role": "eligible"}, eligible ? "Yes" : "No"));
  }

  function renderGate(gate) {
    if (!panel || !gate) return;
    panel.dataset.allowed = String(Boolean(gate.allowed));
    const moment = el("time", {"data-role": "moment", datetime: gate.moment || ""}, clock(gate.moment));
    panel.querySelector('[data-role="verdict"]').replaceChildren(
      el("span", {class: gate.allowed ? "pass" : "fail"}, gate.allowed ? "✓ Rounds may run" : "✗ Rounds may not run"),
      " ", el("span", {class: "help"}, "as of ", moment));
    const checks = gate.checks || [];
    panel.querySelector('[data-role="study-checks"]').replaceChildren(
      ...checks.filter((c) => c.site_id === null || c.site_id === undefined).map(checkItem));
    const bySite = new Map();
    checks.filter((c) => c.site_id !== null && c.site_id !== undefined).forEach((c) => {
      if (!bySite.has(c.site_id)) bySite.set(c.site_id, {name: c.site, checks: []});
      bySite.get(c.site_id).checks.push(c);
    });
    const shown = Array.from(bySite.entries()).filter(([id]) => !summary.summarised || rowSites.has(Number(id)));
    if (summary.summarised) {
      const order = summary.row_site_ids;
      shown.sort((a, b) => order.indexOf(Number(a[0])) - order.indexOf(Number(b[0])));
    }
    const rows = shown.map(([id, s]) => siteRow(id, s.name, s.checks));
    if (!rows.length) rows.push(el("tr", {"data-role": "empty"}, el("td", {colspan: "3", class: "muted"}, "No site is invited yet.")));
    panel.querySelector('[data-role="site-rows"]').replaceChildren(...rows);
  }

  // --- event feed ---------------------------------------------------------------------------------------

  const feed = document.querySelector('[data-testid="event-feed"]');

  function addToFeed(event) {
    if (!feed) return;
    const tone = event.tone || "info";
    const empty = feed.querySelector('[data-role="empty"]');
    if (empty) empty.remove();
    feed.prepend(el("li", {class: "feed-" + tone, "data-event-id": String(event.id), "data-kind": event.kind},
      el("time", {datetime: event.at}, clock(event.at)), " " + (event.text || event.kind)));
    while (feed.children.length > MAX_FEED) feed.lastElementChild.remove();
  }

  // --- what each event does -----------------------------------------------------------------------------

  function progressCount(d) {
    if (isCurrent(d.round)) setProgress({submitted: d.submitted, eligible: d.eligible});
  }

  const handlers = {
    "round.opened": (d) => {
      (d.eligible_sites || []).forEach((s) => ensureSite(s.site_id, s.site));
      eligibleByRound.set(d.round, new Set((d.eligible_sites || []).map((s) => s.site_id)));
      if (!sentByRound.has(d.round)) sentByRound.set(d.round, new Set());
      addRound(d.round);
      setParticipation(d.round, 0, d.eligible);
      setProgress({round: d.round, kind: d.kind, status: "open", submitted: 0, eligible: d.eligible,
        deadline: d.deadline, reason: ""});
    },
    "update.received": (d) => {
      ensureSite(d.site_id, d.site);
      counted(d, true);
      // Another site's counts and times are withheld from a site admin (`studies.disclosure`): the state only.
      setCell(d.round, d.site_id, "submitted",
        d.num_examples === null || d.num_examples === undefined ? "" : d.num_examples + " examples, " + clock(d.received_at));
      setParticipation(d.round, d.submitted, d.eligible);
      progressCount(d);
      upsertSite("elapsed", d.site_id, d.round, d.elapsed_seconds, " s");
      upsertSite("norms", d.site_id, d.round, d.weight_norm, "");
    },
    "statistics.received": (d, event) => {
      ensureSite(d.site_id, d.site);
      counted(d, true);
      setCell(d.round, d.site_id, "submitted", "statistics received " + clock(event.at));
      setParticipation(d.round, d.submitted, d.eligible);
      progressCount(d);
    },
    "evaluation.received": (d, event) => {
      ensureSite(d.site_id, d.site);
      counted(d, true);
      setCell(d.round, d.site_id, "submitted", "final model evaluated " + clock(d.received_at || event.at));
      setParticipation(d.round, d.submitted, d.eligible);
      progressCount(d);
    },
    "update.refused": (d) => {
      if (d.round === null || d.round === undefined || d.site_id === null || d.site_id === undefined) return;
      ensureSite(d.site_id, d.site);
      if (cellState(d.round, d.site_id) === "missing") setCell(d.round, d.site_id, "refused", d.reason);
    },
    "update.excluded": (d) => {
      ensureSite(d.site_id, d.site);
      counted(d, false);
      // Counted as submitted by an eligible site until now; the gate at aggregation no longer allows it.
      if (setCell(d.round, d.site_id, "excluded", d.reason) === "submitted") {
        const was = participationOf(d.round);
        if (was) setParticipation(d.round, Math.max(was[0] - 1, 0), Math.max(was[1] - 1, 0));
      }
    },
    "gate.evaluated": (d) => {
      renderGate(d.gate);
      if (summary.summarised && d.gate && d.gate.eligible_site_ids) {
        const eligible = new Set(d.gate.eligible_site_ids);
        refusedNow = new Set(Array.from(sites.keys()).filter((id) => !eligible.has(id)));
        rerank();
      }
    },
    "aggregation.started": (d) => { if (isCurrent(d.round)) setProgress({status: "aggregating", reason: d.reason}); },
    "round.closed": roundMoved,
    "round.blocked": roundMoved,
    "round.failed": roundMoved,
    "round.metrics": (d) => {
      const g = d.global || {};
      if (GLOBAL_METRICS.some((k) => g[k] !== null && g[k] !== undefined)) {
        GLOBAL_METRICS.forEach((k) => upsert("global", k, d.evaluated_version, g[k], () => ({})));
      }
      const bySite = d.evaluated_by_site || {};
      Object.keys(bySite).forEach((id) => {
        ensureSite(Number(id), (d.sites || {})[id] && d.sites[id].site);
        upsertSite("sites", Number(id), d.evaluated_version, bySite[id].val_auc, "");
      });
      if (charts.sites && Object.keys(bySite).length) redrawBand();
      if (summary.summarised) summaryRoundMetrics(d);
      noteGaps(d.evaluated_version, bySite);
      Object.keys(d.sites || {}).forEach((id) => upsertSite("norms", Number(id), d.round, d.sites[id].weight_norm, ""));
      upsert("norms", "global", d.round, d.global_weight_norm, () => ({name: "Global model"}));
    },
    "study.changed": (d) => {
      const badge = document.querySelector('[data-testid="study-status"]');
      if (badge && d.after) {
        badge.textContent = d.after.charAt(0).toUpperCase() + d.after.slice(1);
        badge.className = "badge " + d.after;
      }
    },
  };

  function roundMoved(d) {
    if (isCurrent(d.round)) setProgress({status: d.status, reason: d.reason, deadline: ""});
    if (summary.summarised) summaryRoundEnded(d);
  }

  /* A site counted in a round opened while the page is open (or, excluded, no longer): for the misses. */
  function counted(d, yes) {
    const sent = sentByRound.get(d.round);
    if (sent) yes ? sent.add(Number(d.site_id)) : sent.delete(Number(d.site_id));
  }

  function apply(event) {
    if (event.id <= lastId) return; // already applied (a reconnect's catch-up may overlap)
    try {
      const handler = handlers[event.kind];
      if (handler) handler(event.data || {}, event); // chart steps skip themselves without plotly
    } catch (err) {
      // One event that cannot be drawn must not stop the stream; the next page load redraws from the database.
      console.error("dashboard: could not apply event", event.id, event.kind, err);
    }
    lastId = event.id;
    root.dataset.lastEventId = String(lastId);
    addToFeed(event);
  }

  // --- the connection -----------------------------------------------------------------------------------

  const indicator = document.querySelector('[data-testid="connection"]');
  let socket = null;
  let attempt = 0;
  let retryTimer = null;
  let stopped = false;
  let lastHeard = 0;

  function setConnection(name, text) {
    indicator.dataset.state = name;
    indicator.textContent = text || CONNECTION_LABELS[name];
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    if (stopped || socket) return;
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const url = scheme + "//" + window.location.host + root.dataset.wsPath + "?after=" + lastId;
    if (indicator.dataset.state !== "reconnecting") setConnection("connecting");
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      scheduleReconnect();
      return;
    }
    socket = ws;
    lastHeard = Date.now();
    ws.onmessage = (message) => {
      if (ws !== socket) return;
      lastHeard = Date.now();
      receive(JSON.parse(message.data));
    };
    ws.onclose = (event) => {
      if (ws !== socket) return;
      socket = null;
      closed(event.code);
    };
  }

  function receive(message) {
    if (message.type === "hello") {
      attempt = 0;
      // The log is behind what we saw (it was reset): follow the server from where it starts.
      if (typeof message.after === "number" && message.after < lastId) lastId = message.after;
      setConnection("live");
    } else if (message.type === "event") {
      apply(message);
    }
  }

  function closed(code) {
    if (code === 4403) {
      stopped = true;
      indicator.dataset.reason = "forbidden";
      setConnection("offline", "Not allowed: you may no longer watch this study");
      return;
    }
    if (code === 4400) {
      stopped = true;
      indicator.dataset.reason = "bad-request";
      setConnection("offline", "Offline: the server refused the request; reload the page");
      return;
    }
    scheduleReconnect();
  }

  /* 1 s, doubling up to 30 s, each ±20 % so that many pages do not come back in step after a restart. */
  function scheduleReconnect() {
    if (stopped || retryTimer) return;
    if (navigator.onLine === false) {
      setConnection("offline", "Offline: waiting for the network");
      return; // the browser's "online" event reconnects
    }
    const base = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** attempt);
    const delay = Math.min(RETRY_MAX_MS, base * (0.8 + 0.4 * Math.random()));
    attempt += 1;
    setConnection("reconnecting", "Reconnecting in " + Math.ceil(delay / 1000) + " s…");
    retryTimer = setTimeout(connect, delay);
  }

  function keepAlive() {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    if (Date.now() - lastHeard > SILENT_LIMIT_MS) {
      const dead = socket;
      socket = null; // its late events are ignored; a new socket catches up from lastId
      dead.close();
      scheduleReconnect();
      return;
    }
    socket.send(JSON.stringify({type: "ping"}));
  }

  window.addEventListener("online", () => {
    if (stopped) return;
    if (socket && socket.readyState === WebSocket.OPEN) {
      setConnection("live");
      return;
    }
    attempt = 0;
    connect();
  });
  window.addEventListener("offline", () => { if (!stopped) setConnection("offline", "Offline: waiting for the network"); });

  // The server wrote its times in its own zone; new events arrive in the browser's: show all in the browser's.
  document.querySelectorAll("#dashboard time[datetime]").forEach((t) => {
    if (clock(t.getAttribute("datetime"))) t.textContent = clock(t.getAttribute("datetime"));
  });
  setInterval(tick, 1000);
  setInterval(keepAlive, PING_EVERY_MS);
  tick();
  connect();
})();
