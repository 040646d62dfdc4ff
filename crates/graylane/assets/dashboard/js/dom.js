// Building the DOM without ever parsing markup.
//
// Everything the server sends (service names, reasons, YAML, error sentences) reaches the page
// as text nodes or attribute values through `h`, never through innerHTML, so no server string
// can become markup or script.

/**
 * `h('button', {class: 'primary', onclick: fn}, 'Promote')`.
 * props: `class`, `text`, `on<event>` (listeners), `dataset`, `style` (object), booleans
 * (`hidden`, `disabled`...), anything else as an attribute. Children: nodes, strings (text
 * nodes), numbers, arrays, and null/false (skipped).
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = String(value);
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'style') Object.assign(el.style, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, '');
    else if (key === 'value') el.value = String(value);
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Sets text only when it changed (keeps screen readers and selections calm while polling). */
export function setText(el, text) {
  const value = String(text);
  if (el.textContent !== value) el.textContent = value;
}

/** A table whose body is filled later; `columns` are header strings. */
export function table(caption, columns, className = '') {
  const tbody = h('tbody');
  const el = h('div', { class: `table-wrap ${className}` },
    h('table', {},
      caption ? h('caption', { text: caption }) : null,
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', text: c })))),
      tbody));
  return { el, tbody };
}

// ----- formatting -----

export const pct = (v, digits = 1) => (v === null || v === undefined || Number.isNaN(v)) ? '–' : `${trim(v, digits)}%`;
export const ratePct = (v, digits = 2) => (v === null || v === undefined) ? '–' : `${trim(v * 100, digits)}%`;
export const ms = (v) => (v === null || v === undefined) ? '–' : `${trim(v, v < 10 ? 2 : 1)} ms`;

/** A number with at most `digits` decimals and no trailing zeros. */
export function trim(v, digits = 2) {
  if (v === null || v === undefined || Number.isNaN(Number(v))) return '–';
  return String(Number(Number(v).toFixed(digits)));
}

/** `241.5` → `4m 01s`. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return '–';
  const s = Math.max(0, Math.round(seconds));
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = s % 60;
  if (hh) return `${hh}h ${String(mm).padStart(2, '0')}m`;
  if (mm) return `${mm}m ${String(ss).padStart(2, '0')}s`;
  return `${ss}s`;
}

/** Unix ms or RFC 3339 → local date and time, seconds included. */
export function when(value) {
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return String(value ?? '');
  return d.toLocaleString(undefined, {
    year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
}

/** A `<time>` element with the exact instant as its title. */
export function timeEl(value) {
  const d = new Date(value);
  const iso = Number.isNaN(d.getTime()) ? '' : d.toISOString();
  return h('time', { datetime: iso || null, title: iso || null, text: when(value) });
}

/** A short status word as a coloured badge; `kind`: ok, bad, warn, info, muted. */
export function badge(text, kind = 'muted', title = null) {
  return h('span', { class: `badge ${kind}`, title, text });
}

/** The release's `state` as a badge. */
export function stateBadge(state) {
  const kind = {
    progressing: 'info', paused: 'warn', completed: 'ok', aborted: 'bad', rolled_back: 'bad',
  }[state] || 'muted';
  return badge(String(state).replace('_', ' '), kind);
}

/**
 * The latest analysis decision as pass / continue / fail / not enough data (the release's
 * `analysis`), or null when the release has none. The summary is the badge's title.
 */
export function verdictBadge(analysis) {
  if (!analysis) return null;
  const d = String(analysis.decision);
  const [text, kind] = {
    promote: ['pass', 'ok'],
    // Passing or inconclusive checks, not yet enough passes in a row to move on.
    continue: ['continue', 'info'],
    fail: ['fail', 'bad'],
    hold: ['not enough data', 'warn'],
    pause: ['paused: not enough data', 'warn'],
  }[d] || [d, 'muted'];
  return badge(text, kind, String(analysis.summary ?? ''));
}

/** A check's verdict (pass / fail / inconclusive). */
export function checkBadge(verdict, enoughData = true) {
  const v = String(verdict);
  if (v === 'pass') return badge('pass', 'ok');
  if (v === 'fail') return badge('fail', 'bad');
  return badge(enoughData ? 'inconclusive' : 'not enough data', 'warn');
}

/**
 * A version's colour, stable across the page: the baseline/stable version first, the
 * candidate second, then the others in name order. Index into the --series-N CSS colours.
 */
export function versionOrder(release) {
  const names = Object.keys(release.weights || {});
  const first = [release.baseline, release.stable, release.candidate].filter((n) => n && names.includes(n));
  const ordered = [...new Set([...first, ...names.sort()])];
  return ordered;
}

/** The colour of series `i` from the stylesheet (works for light and dark). */
export function seriesColor(i) {
  const css = getComputedStyle(document.documentElement);
  return css.getPropertyValue(`--series-${i % 6}`).trim() || '#888';
}

/** A stacked bar of the weights per version, with the figures as text beside it. */
export function weightBar(release) {
  const order = versionOrder(release);
  const bar = h('div', { class: 'weight-bar', 'aria-hidden': 'true' });
  const labels = h('ul', { class: 'weight-labels' });
  order.forEach((version, i) => {
    const w = Number(release.weights[version] ?? 0);
    if (w > 0) {
      bar.appendChild(h('span', {
        class: `seg series-${i % 6}`,
        style: { width: `${Math.min(100, Math.max(0, w))}%` },
        title: `${version}: ${trim(w, 3)}%`,
      }));
    }
    labels.appendChild(h('li', {},
      h('span', { class: `swatch series-${i % 6}`, 'aria-hidden': 'true' }),
      h('span', { class: 'version-name', text: version }), ' ',
      h('strong', { text: pct(w, 3) })));
  });
  return h('div', { class: 'weights' }, bar, labels);
}
