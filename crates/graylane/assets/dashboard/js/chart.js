// Small time-series line charts on <canvas>: one line per version, the last 15 minutes.
//
// Drawn by hand rather than with a library: four charts of a few thousand points each need
// only lines, two axes and a legend, and this way the page has nothing to vendor or update.
// The legend (and the canvas's label) carry the latest value of each line as text, so what
// the chart shows is also readable without seeing it.

import { h, fill, setText, seriesColor } from './dom.js';

export const WINDOW_MS = 15 * 60 * 1000;

export class LineChart {
  /**
   * title: heading; format(v): a value as text; minMax: the y axis's smallest top (so a flat
   * zero line is not stretched over the whole height); maxTop: its largest (a rate's 100%).
   */
  constructor({ title, format, minMax = 1, maxTop = Infinity, id }) {
    this.title = title;
    this.format = format;
    this.minMax = minMax;
    this.maxTop = maxTop;
    this.canvas = h('canvas', { role: 'img', 'aria-label': `${title}: no data yet`, class: 'chart-canvas' });
    this.legend = h('ul', { class: 'legend' });
    this.el = h('figure', { class: 'chart', id, dataset: { points: '0' } },
      h('figcaption', { text: title }),
      h('div', { class: 'chart-box' }, this.canvas),
      this.legend);
    this.lines = [];
    this.end = Date.now();
    // Redraw at the new size (phone rotated, window resized); CSS sets the box, we the pixels.
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(this.canvas);
  }

  /** lines: [{name, color index, points: [[t_ms, value|null], ...]}]; end: the window's end. */
  update(lines, end) {
    this.lines = lines;
    this.end = end;
    this.renderLegend();
    this.draw();
  }

  destroy() { this.resize.disconnect(); }

  renderLegend() {
    const items = [];
    const spoken = [];
    for (const line of this.lines) {
      const last = [...line.points].reverse().find((p) => p[1] !== null && p[1] !== undefined);
      const value = last ? this.format(last[1]) : 'no requests';
      spoken.push(`${line.name} ${value}`);
      items.push(h('li', {},
        h('span', { class: `swatch series-${line.color % 6}`, 'aria-hidden': 'true' }),
        h('span', { class: 'version-name', text: line.name }), ' ',
        h('strong', { text: value })));
    }
    fill(this.legend, items);
    this.canvas.setAttribute('aria-label',
      `${this.title}, last 15 minutes; latest: ${spoken.join(', ') || 'no data yet'}`);
  }

  draw() {
    const canvas = this.canvas;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const css = getComputedStyle(document.documentElement);
    const ink = css.getPropertyValue('--muted').trim() || '#666';
    const grid = css.getPropertyValue('--grid').trim() || '#ddd';
    const font = `12px ${css.getPropertyValue('--font').trim() || 'sans-serif'}`;

    const start = this.end - WINDOW_MS;
    let max = 0;
    let drawn = 0;
    for (const line of this.lines) {
      for (const [t, v] of line.points) {
        if (t >= start && v !== null && v !== undefined && v > max) max = v;
      }
    }
    // Headroom above the highest point, but a rate's axis never goes past 100%.
    const top = Math.min(niceCeil(Math.max(max * 1.1, this.minMax)), this.maxTop);
    this.el.dataset.top = String(top);
    ctx.font = font;
    const labelWidth = Math.max(...[0, top / 2, top].map((v) => ctx.measureText(this.format(v)).width), 24);
    const pad = { left: labelWidth + 10, right: 8, top: 8, bottom: 20 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    if (plotW <= 10 || plotH <= 10) return;
    const x = (t) => pad.left + ((t - start) / WINDOW_MS) * plotW;
    const y = (v) => pad.top + plotH - (v / top) * plotH;

    // Grid and y labels: 0, half, top.
    ctx.strokeStyle = grid;
    ctx.fillStyle = ink;
    ctx.lineWidth = 1;
    ctx.textBaseline = 'middle';
    ctx.textAlign = 'right';
    for (const v of [0, top / 2, top]) {
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.left, yy);
      ctx.lineTo(width - pad.right, yy);
      ctx.stroke();
      ctx.fillText(this.format(v), pad.left - 6, yy);
    }
    // x labels every 5 minutes, on the clock's minutes.
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    const step = 5 * 60 * 1000;
    for (let t = Math.ceil(start / step) * step; t <= this.end; t += step) {
      const label = new Date(t).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
      // A label near an edge is kept inside the canvas.
      const half = ctx.measureText(label).width / 2;
      const at = Math.min(Math.max(x(t), half), width - half);
      ctx.fillText(label, at, pad.top + plotH + 5);
    }

    // One line per version; a second without a value (no requests) breaks the line.
    ctx.lineWidth = 2;
    ctx.lineJoin = 'round';
    for (const line of this.lines) {
      ctx.strokeStyle = seriesColor(line.color);
      ctx.fillStyle = ctx.strokeStyle;
      ctx.beginPath();
      let open = false;
      let single = null;
      for (const [t, v] of line.points) {
        if (t < start || v === null || v === undefined) {
          open = false;
          continue;
        }
        drawn += 1;
        if (open) {
          ctx.lineTo(x(t), y(v));
          single = null;
        } else {
          ctx.moveTo(x(t), y(v));
          single = [x(t), y(v)];
          open = true;
        }
      }
      ctx.stroke();
      // A lone point (first second of data) would be invisible as a line: draw a dot.
      if (single) {
        ctx.beginPath();
        ctx.arc(single[0], single[1], 2.5, 0, Math.PI * 2);
        ctx.fill();
      }
    }
    // For tests and tools: how many points the chart has drawn.
    this.el.dataset.points = String(drawn);
  }
}

/** The smallest 1, 2 or 5 × 10^k not below v. */
function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/**
 * The live series of one release, kept for the last 15 minutes and grown by polling
 * `GET /api/v1/releases/{service}/series?since_ms=T` with the newest point seen.
 */
export class SeriesBuffer {
  constructor() {
    this.versions = new Map(); // name → [{t_ms, rps, error_rate, p50_ms, p99_ms}]
    this.lastMs = null;
    this.endMs = null;
  }

  /** The `since_ms` for the next poll (null: the whole window). */
  since() { return this.lastMs; }

  add(answer) {
    const versions = (answer && answer.versions) || {};
    for (const [name, points] of Object.entries(versions)) {
      if (!Array.isArray(points)) continue;
      const list = this.versions.get(name) || [];
      for (const p of points) {
        const t = Number(p.t_ms);
        if (!Number.isFinite(t)) continue;
        // Only new seconds: an overlapping answer must not draw a second twice.
        if (list.length && t <= list[list.length - 1].t_ms) continue;
        list.push(p);
        if (this.lastMs === null || t > this.lastMs) this.lastMs = t;
      }
      this.versions.set(name, list);
    }
    // The window ends at the server's newest second (its clock, not this browser's).
    this.endMs = this.lastMs ?? Date.now();
    const start = this.endMs - WINDOW_MS;
    for (const [name, list] of this.versions) {
      const keep = list.findIndex((p) => p.t_ms >= start);
      this.versions.set(name, keep < 0 ? [] : list.slice(keep));
    }
  }

  /** Lines of one metric for a chart; `order` gives each version its colour. */
  lines(metric, order) {
    const names = [...new Set([...order, ...this.versions.keys()])].filter((n) => this.versions.has(n));
    return names.map((name) => ({
      name,
      color: Math.max(0, order.indexOf(name)) + (order.includes(name) ? 0 : order.length),
      points: this.versions.get(name).map((p) => [p.t_ms, p[metric] ?? null]),
    }));
  }

  /** How many points all versions hold. */
  size() {
    let n = 0;
    for (const list of this.versions.values()) n += list.length;
    return n;
  }
}

/** The four charts of a release page, updated together. */
export function releaseCharts() {
  const charts = {
    rps: new LineChart({ title: 'Requests per second', id: 'chart-rps', format: (v) => fmtNum(v, '/s'), minMax: 1 }),
    error_rate: new LineChart({ title: 'Error rate', id: 'chart-errors', format: (v) => `${fmtNum(v * 100)}%`, minMax: 0.01, maxTop: 1 }),
    p50_ms: new LineChart({ title: 'Latency p50', id: 'chart-p50', format: (v) => fmtNum(v, ' ms'), minMax: 1 }),
    p99_ms: new LineChart({ title: 'Latency p99', id: 'chart-p99', format: (v) => fmtNum(v, ' ms'), minMax: 1 }),
  };
  const status = h('p', { class: 'muted chart-status', role: 'status' });
  const el = h('div', { class: 'charts' }, Object.values(charts).map((c) => c.el));
  return {
    el: h('div', {}, status, el),
    update(buffer, order) {
      for (const [metric, chart] of Object.entries(charts)) chart.update(buffer.lines(metric, order), buffer.endMs ?? Date.now());
      setText(status, buffer.size() ? '' : 'Waiting for traffic: no requests in the last 15 minutes yet.');
    },
    message(text) { setText(status, text); },
    destroy() { for (const c of Object.values(charts)) c.destroy(); },
  };
}

function fmtNum(v, unit = '') {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  const a = Math.abs(v);
  const digits = a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3;
  return `${Number(v.toFixed(digits))}${unit}`;
}
