// Audit log: the last 500 entries (every release transition by a person, the timer or the
// analysis, and every configuration change), filtered here in the browser by service, actor
// and kind of action. The table is rebuilt only when an entry arrives or a filter changes, so
// an opened detail stays open while the page polls.

import { get, ApiError } from './api.js';
import { h, fill, setText, table, timeEl } from './dom.js';

const POLL_MS = 5000;
const LIMIT = 500;
const PAGE = 100;

export function mount(root, ctx) {
  const status = h('p', { class: 'muted', role: 'status', text: 'Loading the audit log…' });
  const filters = {
    target: h('select', { id: 'filter-service' }),
    actor: h('select', { id: 'filter-actor' }),
    action: h('select', { id: 'filter-kind' }),
  };
  const form = h('form', { class: 'filters', 'aria-label': 'Filter the audit log' },
    h('label', { for: 'filter-service', text: 'Service' }), filters.target,
    h('label', { for: 'filter-actor', text: 'Actor' }), filters.actor,
    h('label', { for: 'filter-kind', text: 'Kind' }), filters.action,
    h('button', { type: 'reset', class: 'quiet', text: 'Show all' }));
  const entries = table(null, ['When', 'Actor', 'Action', 'Service', 'Reason', 'Detail'], 'audit');
  const shown = h('p', { class: 'muted', id: 'audit-count', role: 'status' });
  root.appendChild(h('section', { 'aria-labelledby': 'audit-title' },
    h('h1', { id: 'audit-title', text: 'Audit log' }), status, form, shown, entries.el));

  // The analysis judges every interval, so 500 entries are many: they are shown a page at a time.
  let pageRows = PAGE;
  const more = h('button', { type: 'button', hidden: true, text: `Show ${PAGE} more` });
  more.addEventListener('click', () => { pageRows += PAGE; renderedKey = ''; render(); });
  root.firstChild.appendChild(h('p', {}, more));

  let all = [];
  let dataKey = '';
  let renderedKey = '';
  // Another filter starts again from the first page.
  const refilter = () => { pageRows = PAGE; render(); };
  for (const sel of Object.values(filters)) sel.addEventListener('change', refilter);
  form.addEventListener('reset', () => setTimeout(refilter)); // after the selects are reset
  form.addEventListener('submit', (e) => e.preventDefault());

  function render() {
    const chosen = Object.fromEntries(Object.entries(filters).map(([k, sel]) => [k, sel.value]));
    const key = `${dataKey}|${chosen.target}|${chosen.actor}|${chosen.action}`;
    if (key === renderedKey) return;
    renderedKey = key;
    const matching = all.filter((e) => Object.entries(chosen).every(([k, v]) => v === '' || String(e[k]) === v));
    const rows = matching.slice(0, pageRows);
    setText(shown, `${matching.length} of ${all.length} entries match${rows.length < matching.length ? `; the newest ${rows.length} are shown` : ''}.`);
    more.hidden = rows.length >= matching.length;
    fill(entries.tbody, rows.length ? rows.map((e) => h('tr', { dataset: { seq: e.seq } },
      h('td', {}, timeEl(e.at || e.at_ms)),
      h('td', { class: 'actor', text: e.actor }),
      h('td', { class: 'action', text: e.action }),
      h('td', { class: 'target', text: e.target }),
      h('td', { class: 'reason', text: e.reason }),
      h('td', {}, hasDetail(e.detail) ? h('details', {},
        h('summary', { text: 'detail' }),
        h('pre', { class: 'json', text: JSON.stringify(e.detail, null, 2) })) : null)))
      : h('tr', {}, h('td', { colspan: '6', class: 'muted', text: 'No entry matches the filters.' })));
  }

  ctx.every(POLL_MS, async () => {
    let answer;
    try {
      answer = await get(`/api/v1/audit?limit=${LIMIT}`);
    } catch (err) {
      if (err instanceof ApiError) setText(status, err.message);
      throw err;
    }
    all = Array.isArray(answer.entries) ? answer.entries : [];
    setText(status, `Environment ${answer.env}: the latest ${all.length} entries, newest first.`);
    const key = `${all.length}:${all[0]?.seq ?? ''}`;
    if (key === dataKey) return;
    dataKey = key;
    for (const [field, sel] of Object.entries(filters)) options(sel, all.map((e) => String(e[field])));
    render();
  });
}

/** The distinct values as options, "any" first, keeping the chosen one. */
function options(sel, values) {
  const keep = sel.value;
  const distinct = [...new Set(values)].filter((v) => v !== '').sort();
  if (keep && !distinct.includes(keep)) distinct.push(keep);
  fill(sel, h('option', { value: '', text: 'any' }), distinct.map((v) => h('option', { value: v, text: v })));
  sel.value = keep;
}

function hasDetail(d) {
  return d !== null && d !== undefined && !(typeof d === 'object' && Object.keys(d).length === 0);
}
