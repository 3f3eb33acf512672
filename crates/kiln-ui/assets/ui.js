// kiln ui: draws the page's charts with uPlot (drag to zoom, double-click to reset) and
// follows a running run by polling its progress (new epochs, stage statuses) without a
// reload; when the run ends the page reloads once to show its results.
"use strict";

window.kilnLoadedAt = String(Date.now()) + "-" + Math.random();
const COLORS = ["#2f5fd0", "#c4312b", "#1a7f37", "#b7791f", "#7b3fb8", "#0f8b8d"];
const charts = {};

function chartOptions(spec, width) {
  const series = [{ label: spec.xlabel }];
  spec.series.forEach((s, i) => {
    series.push({
      label: s.label,
      stroke: COLORS[i % COLORS.length],
      width: 2,
      spanGaps: true,
      dash: /\btrain\b/.test(s.label) ? [6, 4] : undefined,
      points: { show: spec.x.length < 40 },
    });
  });
  const best = spec.best;
  return {
    title: spec.title,
    width: width,
    height: 280,
    scales: { x: { time: false } },
    // epochs are whole numbers: ticks at 1, 2, 5, 10, … never between them
    axes: [{ label: spec.xlabel, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, {}],
    series: series,
    cursor: { drag: { x: true, y: false } },
    hooks: {
      draw: [
        (u) => {
          if (best == null) return;
          const x = u.valToPos(best, "x", true);
          const ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = "#1a7f37";
          ctx.lineWidth = 1.5;
          ctx.setLineDash([4, 4]);
          ctx.beginPath();
          ctx.moveTo(x, u.bbox.top);
          ctx.lineTo(x, u.bbox.top + u.bbox.height);
          ctx.stroke();
          ctx.restore();
        },
      ],
    },
  };
}

function draw(el, spec) {
  if (!spec || typeof uPlot === "undefined") return;
  const data = [spec.x, ...spec.series.map((s) => s.values)];
  const old = charts[el.id];
  if (old && old.spec.series.length === spec.series.length && old.spec.xlabel === spec.xlabel) {
    // same lines, more points: keep the plot (and the user's zoom)
    old.plot.setData(data, false);
    old.plot.redraw();
    old.spec = spec;
    return;
  }
  if (old) old.plot.destroy();
  el.innerHTML = "";
  const width = Math.max(320, Math.min(600, (window.innerWidth - 90) / 2));
  charts[el.id] = { plot: new uPlot(chartOptions(spec, width), data, el), spec: spec };
}

function drawAll() {
  document.querySelectorAll("div.chart[data-chart]").forEach((el) => {
    try {
      const data = document.getElementById(el.dataset.chart);
      if (data) draw(el, JSON.parse(data.textContent));
    } catch (e) {
      el.textContent = "this chart could not be drawn: " + e;
    }
  });
}

// Epochs in order of completion; when they do not increase (a sweep's trials each count
// from 1) the x axis is the completion order instead.
function liveChart(epochs) {
  const increasing = epochs.every((e, i) => i === 0 || e.epoch > epochs[i - 1].epoch);
  return {
    title: "loss and validation metric so far",
    xlabel: increasing ? "epoch" : "epochs completed (all trials)",
    x: epochs.map((e, i) => (increasing ? e.epoch : i + 1)),
    best: null,
    series: [
      { label: "train loss", values: epochs.map((e) => e.train_loss) },
      { label: "valid loss", values: epochs.map((e) => e.valid_loss) },
      { label: "valid metric", values: epochs.map((e) => e.valid_metric) },
    ],
  };
}

function fmt(v) {
  return Number.isFinite(v) ? v.toFixed(4) : String(v);
}

function update(p) {
  const phase = document.getElementById("live-phase");
  if (phase) {
    const pr = p.progress;
    phase.textContent = pr.stage
      ? pr.stage + ": " + pr.phase + (pr.total ? " (" + pr.done + "/" + pr.total + ")" : "")
      : "between stages";
  }
  p.stages.forEach((s) => {
    const node = document.querySelector('.graph .node[data-stage="' + CSS.escape(s.id) + '"]');
    if (!node) return;
    node.className = "node status-" + s.status;
    const st = node.querySelector(".st");
    if (st) st.textContent = s.status;
  });
  const body = document.querySelector("#live-epochs tbody");
  if (!body) return;
  const epochs = p.progress.epochs;
  // a new stage starts its own list: start the table again
  if (body.dataset.stage !== p.progress.stage || epochs.length < body.rows.length) {
    body.innerHTML = "";
    body.dataset.stage = p.progress.stage;
  }
  const before = body.rows.length;
  epochs.slice(before).forEach((e) => {
    const tr = document.createElement("tr");
    tr.dataset.epoch = String(e.epoch);
    [e.epoch + "/" + e.of, fmt(e.train_loss), fmt(e.valid_loss), fmt(e.valid_metric)].forEach((v, i) => {
      const td = document.createElement("td");
      td.textContent = v;
      if (i > 0) td.className = "n";
      tr.appendChild(td);
    });
    body.appendChild(tr);
  });
  const el = document.getElementById("live-curves");
  if (el && body.rows.length !== before) draw(el, liveChart(epochs));
}

async function poll(url) {
  try {
    const r = await fetch(url, { cache: "no-store" });
    if (r.ok) {
      const p = await r.json();
      update(p);
      if (p.state !== "running") {
        setTimeout(() => location.reload(), 500);
        return;
      }
    }
  } catch (e) {
    // the server restarted or the network blipped: try again
  }
  setTimeout(() => poll(url), 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.body.dataset.live;
  if (live) setTimeout(() => poll(live), 1000);
  drawAll();
});
