// Switchyard's queue dashboard: polls the snapshot JSON and draws plain SVG charts.
// No library, nothing fetched from outside the platform.
(function () {
  "use strict";
  const root = document.getElementById("dashboard");
  const url = root.dataset.url;
  const refresh = Math.max(1, Number(root.dataset.refresh || 5)) * 1000;
  const windowSelect = document.getElementById("window");
  const statusEl = document.getElementById("status");
  const COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7ea4", "#57606a"];
  const HISTORY = 120;  // points kept for the charts drawn from successive refreshes
  const history = {};   // series name -> [[time, value], ...]
  const SVG = "http://www.w3.org/2000/svg";

  function fmt(value, seconds) {
    if (value === null || value === undefined) return "–";
    if (!seconds) return String(value);
    if (value < 1) return (value * 1000).toFixed(0) + " ms";
    if (value < 120) return value.toFixed(1) + " s";
    return (value / 60).toFixed(1) + " min";
  }

  function remember(name, t, v) {
    const points = history[name] || (history[name] = []);
    points.push([t, v]);
    if (points.length > HISTORY) points.shift();
  }

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  function lineChart(svg, series) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const W = 520, H = 220, L = 44, R = 8, T = 8, B = 22;
    let xs = [], ys = [0];
    series.forEach(s => s.points.forEach(([x, y]) => { xs.push(x); ys.push(y); }));
    if (!xs.length) { el("text", {x: L, y: H / 2}, svg).textContent = "no data yet"; return; }
    const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y1 = Math.max(...ys) * 1.1 || 1;
    const px = x => L + (x - x0) / (x1 - x0) * (W - L - R);
    const py = y => H - B - y / y1 * (H - T - B);
    for (let i = 0; i <= 4; i++) {
      const v = y1 * i / 4;
      el("line", {x1: L, x2: W - R, y1: py(v), y2: py(v), stroke: "#e5e8ee"}, svg);
      el("text", {x: 2, y: py(v) + 3}, svg).textContent = v >= 10 ? v.toFixed(0) : v.toFixed(2);
    }
    el("text", {x: L, y: H - 6}, svg).textContent = new Date(x0).toLocaleTimeString();
    el("text", {x: W - R - 60, y: H - 6}, svg).textContent = new Date(x1).toLocaleTimeString();
    series.forEach(s => {
      if (!s.points.length) return;
      const d = s.points.map(([x, y], i) => (i ? "L" : "M") + px(x).toFixed(1) + "," + py(y).toFixed(1)).join(" ");
      el("path", {d: d, fill: "none", stroke: s.color, "stroke-width": 2, "data-series": s.name}, svg);
    });
  }

  function renderTenants(lanes) {
    const body = document.querySelector("#tenants tbody");
    const rows = [];
    lanes.forEach(lane => (lane.tenants || []).forEach(t => {
      const tr = document.createElement("tr");
      tr.dataset.lane = lane.lane;
      tr.dataset.tenant = t.tenant;
      [lane.lane, t.tenant, t.tier, t.weight === null ? "–" : t.weight,
       (t.share * 100).toFixed(1) + " %", t.started, t.waiting, t.held].forEach(v => {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      });
      rows.push(tr);
    }));
    if (!rows.length) {
      const tr = document.createElement("tr");
      tr.innerHTML = '<td colspan="8">no runs started in the window</td>';
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  function renderWorkflows(w) {
    if (!w) return;
    const done = w.finished_last_hour || {};
    document.getElementById("workflow-counts").textContent =
      `${w.running} running, ${w.stuck} stuck, oldest running ${fmt(w.oldest_running_seconds)} s; ` +
      `last hour: ${done.succeeded || 0} succeeded, ${done.failed || 0} failed, ` +
      `${done.cancelled || 0} cancelled`;
    const rows = (w.stuck_oldest || []).map(s => {
      const tr = document.createElement("tr");
      tr.dataset.workflow = s.id;
      [s.id, s.kind, s.tenant, s.open_steps, s.age_seconds].forEach(v => {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      });
      return tr;
    });
    if (!rows.length) {
      const tr = document.createElement("tr");
      tr.innerHTML = '<td colspan="5">none</td>';
      rows.push(tr);
    }
    document.querySelector("#stuck-workflows tbody").replaceChildren(...rows);
  }

  function render(data) {
    const now = Date.parse(data.generated_at);
    renderTenants(data.lanes);
    renderWorkflows(data.workflows);
    const names = [];
    data.lanes.forEach(lane => {
      ["ready", "unacked", "consumers", "dead_letters"].forEach(f => {
        const cell = document.querySelector(`#row-${lane.lane}-${lane.tiers[0].tier} [data-lane-field="${f}"]`);
        if (cell) cell.textContent = fmt(lane[f]);
      });
      if (lane.ready !== null) remember(`${lane.lane} ready`, now, lane.ready);
      lane.tiers.forEach(t => {
        const row = document.getElementById(`row-${lane.lane}-${t.tier}`);
        if (!row) return;
        row.querySelectorAll("[data-field]").forEach(cell => {
          const f = cell.dataset.field;
          cell.textContent = fmt(t[f], f.startsWith("wait_") || f === "oldest_waiting_seconds");
        });
        const key = `${lane.lane}/${t.tier}`;
        names.push(key);
        remember(`${key} waiting`, now, t.waiting);
        remember(`${key} oldest`, now, t.oldest_waiting_seconds);
        ["wait_p50", "wait_p95", "wait_p99"].forEach(p => {
          if (t[p] !== null) remember(`${key} ${p.slice(5)}`, now, t[p]);
        });
      });
    });
    const color = {};
    names.forEach((n, i) => { color[n] = COLORS[i % COLORS.length]; });
    const minutes = data.series_minutes.map(Date.parse);
    lineChart(document.getElementById("chart-throughput"), data.lanes.flatMap(lane => lane.tiers.map(t => ({
      name: `${lane.lane}/${t.tier}`, color: color[`${lane.lane}/${t.tier}`],
      points: t.series.map((v, i) => [minutes[i], v]),
    }))));
    const fromHistory = (suffix, dashed) => names.map(n => ({
      name: `${n} ${suffix}`, color: color[n], points: history[`${n} ${suffix}`] || []}));
    lineChart(document.getElementById("chart-wait"), [
      ...fromHistory("p50"), ...fromHistory("p95"), ...fromHistory("p99")]);
    lineChart(document.getElementById("chart-backlog"), [
      ...fromHistory("waiting"),
      ...data.lanes.map((lane, i) => ({name: `${lane.lane} ready`, color: COLORS[(names.length + i) % COLORS.length],
                                       points: history[`${lane.lane} ready`] || []}))]);
    lineChart(document.getElementById("chart-oldest"), fromHistory("oldest"));
    document.getElementById("legend").innerHTML = names.map(n =>
      `<span><i style="background:${color[n]}"></i>${n}</span>`).join("") +
      " <span>(wait chart: one line each for p50, p95, p99)</span>";
    statusEl.textContent = "updated " + new Date(now).toLocaleTimeString() +
      (data.broker_available ? "" : " · broker API unavailable");
    statusEl.className = data.broker_available ? "" : "error";
  }

  async function poll() {
    try {
      const resp = await fetch(`${url}?window=${windowSelect.value}`, {credentials: "same-origin"});
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      render(await resp.json());
    } catch (err) {
      statusEl.textContent = "refresh failed: " + err.message;
      statusEl.className = "error";
    }
  }

  windowSelect.addEventListener("change", poll);
  poll();
  setInterval(poll, refresh);
})();
