// Experiments: each experiment release's variants, exposures and per-variant metrics with
// their intervals against the control (GET /api/v1/experiments/{service}/results), and the
// sample-ratio-mismatch check. Without a service in the address, the first experiment is
// shown and the others are linked.

import { get, seg, ApiError } from './api.js';
import { h, fill, setText, table, badge, checkBadge, trim, pct, ratePct, ms } from './dom.js';
import { measure, effect } from './release.js';

const POLL_MS = 3000;

export function mount(root, ctx, service) {
  const status = h('p', { class: 'muted', role: 'status', text: 'Loading experiments…' });
  const picker = h('nav', { class: 'tabs', 'aria-label': 'Experiments' });
  const body = h('div', { id: 'experiment' });
  // Outside the polled part, so keyboard focus on it survives a refresh.
  const link = h('a', { href: '#/releases', text: 'Release page' });
  const footer = h('p', { hidden: true }, link, ' (live charts, and picking the winner).');
  const title = h('h1', { id: 'experiments-title', text: service ? `Experiment ${service}` : 'Experiments' });
  root.appendChild(h('section', { 'aria-labelledby': 'experiments-title' }, title, status, picker, body, footer));

  let names = '';
  ctx.every(POLL_MS, async () => {
    let list;
    try {
      list = await get('/api/v1/releases');
    } catch (err) {
      if (err instanceof ApiError) setText(status, err.message);
      throw err;
    }
    const experiments = (list.releases || []).filter((r) => r.strategy === 'experiment').map((r) => r.service);
    const shown = service || experiments[0];
    if (experiments.join('\u0000') !== names) {
      names = experiments.join('\u0000');
      fill(picker, experiments.map((s) => h('a', {
        href: `#/experiments/${encodeURIComponent(s)}`,
        'aria-current': s === shown ? 'page' : null,
        text: s,
      })));
    }
    footer.hidden = !shown;
    if (!shown) {
      setText(status, 'No release is an experiment.');
      fill(body);
      return;
    }
    link.setAttribute('href', `#/releases/${encodeURIComponent(shown)}`);
    setText(link, `Release page of ${shown}`);
    try {
      const results = await get(`/api/v1/experiments/${seg(shown)}/results`);
      setText(status, '');
      render(body, results);
    } catch (err) {
      if (err instanceof ApiError) setText(status, err.message);
      throw err;
    }
  });
}

function render(body, x) {
  const srm = x.srm || {};
  const variants = x.variants || [];
  const overview = table(`Variants of ${x.service} (control: ${x.control})`,
    ['Variant', 'Version', 'Weight', 'Exposures', 'Requests', 'Errors', 'Error rate', 'p50', 'p99', 'Events']);
  for (const v of variants) {
    const events = Object.entries(v.events || {})
      .map(([name, e]) => `${name}: ${e.count}${e.mean !== null && e.mean !== undefined ? ` (mean ${trim(e.mean, 3)})` : ''}`)
      .join('; ');
    overview.tbody.appendChild(h('tr', { dataset: { variant: v.name } },
      h('th', { scope: 'row' }, v.name, v.name === x.control && v.name !== 'control' ? h('span', { class: 'muted', text: ' (control)' }) : null),
      h('td', { text: v.version }),
      h('td', { text: pct(v.weight, 3) }),
      h('td', { class: 'exposures', text: v.exposures }),
      h('td', { text: v.requests }),
      h('td', { text: v.errors }),
      h('td', { text: ratePct(v.error_rate, 3) }),
      h('td', { text: ms(v.latency_p50_ms) }),
      h('td', { text: ms(v.latency_p99_ms) }),
      h('td', { text: events || '–' })));
  }
  const comparisons = table('Each variant against the control', ['Variant', 'Check', 'Verdict', 'Variant figures', 'Control figures', 'Effect', 'Reason']);
  let any = false;
  for (const v of variants) {
    for (const c of v.comparisons || []) {
      any = true;
      const f = c.figures || {};
      comparisons.tbody.appendChild(h('tr', {},
        h('th', { scope: 'row', text: v.name }),
        h('td', { text: c.check }),
        h('td', {}, checkBadge(c.verdict, c.enough_data)),
        h('td', { text: measure(c.check, f.candidate) }),
        h('td', { text: measure(c.check, f.baseline) }),
        h('td', { text: effect(c.check, f.effect) }),
        h('td', { class: 'reason', text: c.reason })));
    }
  }
  fill(body,
    h('section', { class: 'srm', id: 'srm', 'aria-labelledby': 'srm-title' },
      h('h2', { id: 'srm-title', text: 'Sample ratio' }),
      h('p', {},
        srm.flagged ? badge('SRM alert', 'bad') : badge('SRM ok', 'ok'), ' ',
        h('span', { text: String(srm.reason ?? '') })),
      srm.flagged ? h('p', { class: 'message error', text: 'The exposures do not match the weights: the split itself is suspect, so the comparisons below may be biased.' }) : null),
    h('h2', { text: 'Variants' }), overview.el,
    h('h2', { text: 'Comparisons' }),
    any ? comparisons.el : h('p', { class: 'muted', text: 'No comparison yet.' }));
}
