// Audit log: every release transition by a person, the timer or the analysis, and every
// configuration change. The chosen service, actor and kind are sent to the server, which
// searches back through the whole log: the analysis writes an entry every interval, so the
// newest 500 entries are mostly its verdicts, and a person's change an hour ago is found only
// if the server looks past them. The table is rebuilt only when an entry arrives or a filter
// changes, so an opened detail stays open while the page polls.

import { get, ApiError, ConnectionError } from './api.js';
import { h, fill, setText, table, timeEl } from './dom.js';

const POLL_MS = 5000;
const LIMIT = 500;
const PAGE = 100;
// The API's parameter for each filter; the entry's field is the key.
const PARAMS = { target: 'service', actor: 'actor', action: 'action' };

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
  more.addEventListener('click', () => { pageRows += PAGE; render(); });
  root.firstChild.appendChild(h('p', {}, more));

  // Every value seen since the page opened, per field, as options: the newest 500 entries soon
  // hold only analysis verdicts, so the releases' services and recent transitions are added
  // too, and a value that scrolled out of the newest entries stays selectable.
  const seen = { target: new Set(), actor: new Set(), action: new Set() };
  let releasesSeen = false;
  let rows = [];
  let rowsFilter = null; // the filter `rows` were searched with
  let dataKey = '';
  let renderedKey = '';
  let asked = 0; // requests started; answers to older ones than the latest applied are dropped
  let applied = 0;

  const chosen = () => Object.fromEntries(Object.entries(filters).map(([k, sel]) => [k, sel.value]));
  const filterKey = (f) => `${f.target}|${f.actor}|${f.action}`;

  /** One search with the chosen filters, plus what the options need: with any filter chosen,
   *  the unfiltered recent entries; the first time, the releases. */
  async function load() {
    const id = ++asked;
    const want = chosen();
    const query = Object.entries(PARAMS)
      .filter(([field]) => want[field] !== '')
      .map(([field, param]) => `&${param}=${encodeURIComponent(want[field])}`)
      .join('');
    const [answer, recent, releases] = await Promise.all([
      get(`/api/v1/audit?limit=${LIMIT}${query}`),
      query ? get(`/api/v1/audit?limit=${LIMIT}`) : null,
      releasesSeen ? null : get('/api/v1/releases'),
    ]);
    const list = (a, field) => (a && Array.isArray(a[field]) ? a[field] : []);
    for (const r of list(releases, 'releases')) {
      seen.target.add(String(r.service));
      for (const t of list(r, 'transitions')) {
        seen.actor.add(String(t.actor));
        seen.action.add(String(t.action));
      }
    }
    releasesSeen = true;
    // A filter changed (or a later search answered) while this one was on its way.
    if (id < applied || filterKey(want) !== filterKey(chosen())) return;
    applied = id;
    rows = list(answer, 'entries');
    rowsFilter = want;
    for (const e of [...rows, ...list(recent, 'entries')]) {
      for (const [field, values] of Object.entries(seen)) values.add(String(e[field]));
    }
    setText(status, `Environment ${answer.env}: ${query ? 'the entries that match, searched through the whole log' : 'the latest entries'}, newest first.`);
    const key = `${filterKey(want)}|${rows.length}:${rows[0]?.seq ?? ''}|${[...Object.values(seen)].map((s) => s.size)}`;
    if (key === dataKey) return;
    dataKey = key;
    for (const [field, sel] of Object.entries(filters)) options(sel, seen[field]);
    render();
  }

  function render() {
    const key = `${dataKey}|${pageRows}`;
    if (key === renderedKey) return;
    renderedKey = key;
    const page = rows.slice(0, pageRows);
    const filtered = rowsFilter && Object.values(rowsFilter).some((v) => v !== '');
    const what = `${filtered ? 'matching' : 'latest'} ${rows.length === 1 ? 'entry' : 'entries'}`;
    const limited = rows.length === LIMIT ? ` (the newest ${LIMIT}; ${filtered ? 'narrow the filters' : 'choose a filter'} to reach older ones)` : '';
    setText(shown, `${rows.length} ${what}${limited}${page.length < rows.length ? `; the newest ${page.length} are shown` : ''}.`);
    more.hidden = page.length >= rows.length;
    entries.el.removeAttribute('aria-busy');
    fill(entries.tbody, page.length ? page.map((e) => h('tr', { dataset: { seq: e.seq } },
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

  // Another filter is a new search, from the first page, at once rather than at the next poll.
  const refilter = async () => {
    pageRows = PAGE;
    dataKey = ''; // the answer is shown even if it is the one shown before the change
    entries.el.setAttribute('aria-busy', 'true');
    setText(shown, 'Searching the audit log…');
    try {
      await load();
    } catch (err) {
      if (err instanceof ApiError) setText(status, err.message);
      // Lost connection: the banner shows it and the next poll searches again.
      else if (!(err instanceof ConnectionError)) console.warn(err);
    }
  };
  for (const sel of Object.values(filters)) sel.addEventListener('change', refilter);
  form.addEventListener('reset', () => setTimeout(refilter)); // after the selects are reset
  form.addEventListener('submit', (e) => e.preventDefault());

  ctx.every(POLL_MS, async () => {
    try {
      await load();
    } catch (err) {
      if (err instanceof ApiError) setText(status, err.message);
      throw err;
    }
  });
}

/** The values as sorted options, "any" first, keeping the chosen one. */
function options(sel, values) {
  const keep = sel.value;
  const distinct = [...values].filter((v) => v !== '').sort();
  if (keep && !distinct.includes(keep)) distinct.push(keep);
  fill(sel, h('option', { value: '', text: 'any' }), distinct.map((v) => h('option', { value: v, text: v })));
  sel.value = keep;
}

function hasDetail(d) {
  return d !== null && d !== undefined && !(typeof d === 'object' && Object.keys(d).length === 0);
}
