// Draw the dashboard's KPI charts from the JSON in #kpi-data, again after
// each HTMX swap of the results. Loaded as a file for the Content Security Policy.
(function () {
  var units = { percent: "%", hours: "hours", days: "days" };
  function number(value) { return value === null ? null : Number(value); }
  function draw() {
    var node = document.getElementById("kpi-data");
    if (!node) return;
    var data = JSON.parse(node.textContent);
    var layout = function (title) {
      return {
        margin: { t: 10, r: 10, b: 55, l: 55 }, xaxis: { type: "date" },
        yaxis: { title: { text: title }, rangemode: "tozero" },
        legend: { orientation: "h" }, showlegend: true
      };
    };
    var pilot = data.filters.pilot;
    data.kpis.forEach(function (kpi) {
      var traces = kpi.series.map(function (series) {
        return {
          type: "scatter", mode: "lines+markers", connectgaps: false, name: series.segment,
          x: series.points.map(function (p) { return p.bucket; }),
          y: series.points.map(function (p) { return number(p.value); })
        };
      });
      var chartLayout = layout(units[kpi.unit] || "");
      if (pilot) {
        chartLayout.shapes = [{ type: "line", x0: pilot, x1: pilot, yref: "paper", y0: 0, y1: 1, line: { dash: "dot", color: "#c0392b" } }];
      }
      Plotly.newPlot("chart-" + kpi.key, traces, chartLayout, { displaylogo: false, displayModeBar: false, responsive: true });
    });
    var traces = [];
    data.revenue.series.forEach(function (series) {
      ["expected", "invoiced"].forEach(function (measure) {
        traces.push({
          type: "bar", name: series.segment + " " + series.currency + " " + measure,
          x: series[measure].map(function (p) { return p.bucket; }),
          y: series[measure].map(function (p) { return Number(p.value); })
        });
      });
    });
    Plotly.newPlot("chart-revenue", traces, Object.assign(layout("amount"), { barmode: "group" }), { displaylogo: false, displayModeBar: false, responsive: true });
  }
  draw();
  document.addEventListener("htmx:afterSettle", function (event) {
    if (event.target.id === "kpi-results") draw();
  });
})();
