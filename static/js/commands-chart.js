(function () {
  var chart = JSON.parse(document.getElementById("commands-chart-data").textContent);
  // Colours follow the state badges: green done, red failed, amber waiting.
  var colours = {
    succeeded: "#2e8b57", failed: "#c0392b", retry_scheduled: "#d4a017",
    pending: "#5b8dd6", sent: "#1f4e8c", superseded: "#9aa3b2", compensated: "#6c5b7b"
  };
  var traces = chart.series.map(function (series) {
    return {
      type: "bar", name: series.label, x: chart.days, y: series.values,
      marker: { color: colours[series.state] }
    };
  });
  Plotly.newPlot("commands-chart", traces, {
    barmode: "stack",
    margin: { t: 10, r: 10, b: 40, l: 50 },
    xaxis: { type: "date" },
    yaxis: { title: { text: "Commands" }, rangemode: "tozero" },
    legend: { orientation: "h" }
  }, { displaylogo: false, displayModeBar: false, responsive: true });
})();
