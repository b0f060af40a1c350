// Two small SVG charts, no library: stacked bars (usage over time) and a line chart (loss curves).
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2f6fdb", "#e8833a", "#1f8a4c", "#c2362b", "#7b4fc9", "#1a9bb0", "#b5893a", "#d45d9c", "#5d6b7e"];

  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
    return 10 * power;
  }

  function fmt(value) {
    if (Math.abs(value) >= 1e6) return (value / 1e6).toFixed(1) + "M";
    if (Math.abs(value) >= 1e3) return (value / 1e3).toFixed(1) + "k";
    if (Number.isInteger(value)) return String(value);
    return Math.abs(value) >= 1 ? String(Number(value.toFixed(1))) : String(Number(value.toFixed(3)));
  }

  function legend(container, names) {
    const box = document.createElement("div");
    box.className = "legend";
    names.forEach((name, index) => {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = PALETTE[index % PALETTE.length];
      item.append(swatch, document.createTextNode(name));
      box.append(item);
    });
    container.append(box);
  }

  // buckets: ordered x labels; series: {name: {bucket: value}}
  function stackedBars(container, buckets, series, options = {}) {
    container.replaceChildren();
    const names = Object.keys(series);
    if (!buckets.length) {
      container.innerHTML = '<p class="empty">No usage in this range.</p>';
      return;
    }
    const width = options.width || 960, height = options.height || 260, left = 56, bottom = 34, top = 10;
    const totals = buckets.map((b) => names.reduce((sum, n) => sum + (series[n][b] || 0), 0));
    const max = niceMax(Math.max(...totals));
    const plotW = width - left - 40, plotH = height - top - bottom;
    const slot = plotW / buckets.length, barW = Math.max(2, Math.min(48, slot * 0.7));
    const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": options.label || "chart" });
    for (let i = 0; i <= 4; i++) {
      const y = top + plotH - (plotH * i) / 4;
      svg.append(el("line", { x1: left, x2: width - 10, y1: y, y2: y, stroke: "#eef0f3" }));
      svg.append(el("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, fmt((max * i) / 4)));
    }
    svg.append(el("line", { class: "axis", x1: left, x2: width - 10, y1: top + plotH, y2: top + plotH }));
    const labelEvery = Math.ceil(buckets.length / 12);
    buckets.forEach((bucket, index) => {
      const x = left + slot * index + (slot - barW) / 2;
      let y = top + plotH;
      names.forEach((name, n) => {
        const value = series[name][bucket] || 0;
        if (!value) return;
        const h = (plotH * value) / max;
        y -= h;
        const rect = el("rect", { x, y, width: barW, height: Math.max(h, 0.5), fill: PALETTE[n % PALETTE.length], class: "bar" });
        rect.append(el("title", {}, `${bucket} · ${name}: ${value}`));
        svg.append(rect);
      });
      if (index % labelEvery === 0) {
        svg.append(el("text", { x: x + barW / 2, y: height - 12, "text-anchor": "middle" }, options.shortLabel ? options.shortLabel(bucket) : bucket));
      }
    });
    container.append(svg);
    legend(container, names);
  }

  // series: {name: [[x, y], ...]}
  function lines(container, series, options = {}) {
    container.replaceChildren();
    const names = Object.keys(series).filter((n) => series[n].length);
    if (!names.length) {
      container.innerHTML = `<p class="empty">${options.empty || "No points yet."}</p>`;
      return;
    }
    const width = options.width || 720, height = options.height || 240, left = 56, bottom = 30, top = 10;
    const points = names.flatMap((n) => series[n]);
    const xMin = Math.min(...points.map((p) => p[0])), xMax = Math.max(...points.map((p) => p[0]), xMin + 1);
    const yMax = niceMax(Math.max(...points.map((p) => p[1])));
    const plotW = width - left - 10, plotH = height - top - bottom;
    const sx = (x) => left + ((x - xMin) / (xMax - xMin)) * plotW;
    const sy = (y) => top + plotH - (y / yMax) * plotH;
    const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": options.label || "chart" });
    for (let i = 0; i <= 4; i++) {
      const y = top + plotH - (plotH * i) / 4;
      svg.append(el("line", { x1: left, x2: width - 10, y1: y, y2: y, stroke: "#eef0f3" }));
      svg.append(el("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, fmt((yMax * i) / 4)));
    }
    svg.append(el("line", { class: "axis", x1: left, x2: width - 10, y1: top + plotH, y2: top + plotH }));
    svg.append(el("text", { x: left, y: height - 8 }, `${options.xLabel || "x"} ${fmt(xMin)}`));
    svg.append(el("text", { x: width - 10, y: height - 8, "text-anchor": "end" }, fmt(xMax)));
    names.forEach((name, n) => {
      const color = PALETTE[n % PALETTE.length];
      const path = series[name].map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
      svg.append(el("path", { d: path, fill: "none", stroke: color, "stroke-width": 2, class: "line" }));
      for (const p of series[name]) {
        const dot = el("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: color, class: "point" });
        dot.append(el("title", {}, `${name} ${fmt(p[0])}: ${p[1]}`));
        svg.append(dot);
      }
    });
    container.append(svg);
    legend(container, names);
  }

  return { stackedBars, lines };
})();
