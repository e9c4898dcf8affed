"use strict";
// The eval-report page: a before/after table and a bar chart of an `embedrag eval` JSON.
(() => {
  const {call, showError, setupKeyBox, element} = embedrag;
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const PREFERRED = ["ndcg@10", "recall@10", "mrr@10", "hit@1", "hit@5", "hit@10", "recall@100"];

  function svg(tag, attributes = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function metricsOf(report) {
    const all = Object.keys(report.models[0].metrics || {});
    const chosen = PREFERRED.filter((m) => all.includes(m));
    return chosen.length ? chosen : all.slice(0, 8);
  }

  // Grouped bars: one group per metric, one bar per model.
  function chart(report, metrics) {
    const width = 760, height = 260, left = 40, bottom = 40, top = 10;
    const group = (width - left) / metrics.length;
    const bar = Math.min(40, (group - 12) / report.models.length);
    const root = svg("svg", {viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart",
                             "aria-label": "metrics per model"});
    const plot = height - bottom - top;
    for (let tick = 0; tick <= 1.0001; tick += 0.25) {
      const y = top + plot * (1 - tick);
      root.append(svg("line", {x1: left, x2: width, y1: y, y2: y, class: "grid"}));
      root.append(svg("text", {x: left - 6, y: y + 4, "text-anchor": "end", class: "tick"}, tick.toFixed(2)));
    }
    metrics.forEach((metric, i) => {
      const x0 = left + i * group + (group - bar * report.models.length) / 2;
      report.models.forEach((model, j) => {
        const value = model.metrics[metric] ?? 0;
        const h = plot * Math.max(0, Math.min(1, value));
        const rect = svg("rect", {x: x0 + j * bar, y: top + plot - h, width: bar - 2, height: h,
                                  class: "bar bar-" + (j % 6)});
        rect.append(svg("title", {}, `${model.name} ${metric} ${value.toFixed(4)}`));
        root.append(rect);
      });
      root.append(svg("text", {x: left + i * group + group / 2, y: height - bottom + 18, "text-anchor": "middle",
                               class: "label"}, metric));
    });
    const legend = element("div", {class: "legend"});
    report.models.forEach((model, j) => legend.append(
      element("span", {class: "swatch bar-" + (j % 6)}), " " + model.name + " "));
    return [root, legend];
  }

  function table(report, metrics) {
    const baseline = report.baseline;
    const head = element("tr", {}, element("th", {}, "model"), ...metrics.map((m) => element("th", {}, m)));
    const rows = report.models.map((model) => {
      const cells = metrics.map((metric) => {
        const value = model.metrics[metric];
        const cell = element("td", {}, value === undefined ? "–" : value.toFixed(4));
        const test = (model.significance_vs_baseline || {})[metric];
        if (model.name !== baseline && test) {
          const sign = test.gain > 0 ? "+" : "";
          cell.append(element("div", {class: test.gain > 0 ? "gain up" : test.gain < 0 ? "gain down" : "gain"},
            `${sign}${test.gain.toFixed(4)} p=${test.p_permutation.toFixed(3)}`),
            element("div", {class: "wtl"}, `W/T/L ${test.wins}/${test.ties}/${test.losses}`));
        }
        return cell;
      });
      return element("tr", {}, element("th", {}, model.name + (model.name === baseline ? " (baseline)" : "")),
                     ...cells);
    });
    $("metrics").tHead.replaceChildren(head);
    $("metrics").tBodies[0].replaceChildren(...rows);
  }

  function show(report) {
    if (!report || !Array.isArray(report.models) || !report.models.length) {
      showError("not an embedrag eval report (no models)");
      return;
    }
    showError("");
    const metrics = metricsOf(report);
    const test = report.test_set || {};
    $("report-title").textContent = `${test.name || "test set"}: ${report.models.map((m) => m.name).join(" vs ")}`;
    $("report-meta").textContent = `${test.queries ?? "?"} queries, ${test.corpus ?? "?"} passages, ` +
      `embedrag ${report.embedrag_version || ""}`;
    $("chart").replaceChildren(...chart(report, metrics));
    table(report, metrics);
    $("report").hidden = false;
  }

  async function fromServer() {
    try {
      show(await (await call("/v1/report")).json());
    } catch (error) {
      if (!/without --report/.test(error.message)) showError(error.message);
    }
  }

  $("report-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    try { show(JSON.parse(await file.text())); } catch (error) { showError("cannot read " + file.name + ": " + error.message); }
  });
  setupKeyBox(fromServer);
  fromServer();
})();
