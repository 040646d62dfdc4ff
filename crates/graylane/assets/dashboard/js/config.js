// Configuration: the YAML in effect, every revision, the unified diff between any two, and
// (for admins) a revert that first shows what it would change (a dry run) and applies only
// after confirmation. The file stays the source of truth: a revert writes it, as the CLI does.

import { get, post, ApiError, ConnectionError, atLeast, onConnection, isConnected } from './api.js';
import { h, fill, setText, table, timeEl } from './dom.js';
import { confirmAction, renderDiff } from './confirm.js';

const POLL_MS = 5000;

export function mount(root, ctx) {
  const isAdmin = atLeast(ctx.me.role, 'admin');
  const status = h('p', { class: 'muted', role: 'status', text: 'Loading the configuration…' });
  const revisionTitle = h('h2', { id: 'current-title', text: 'Current configuration' });
  const yaml = h('pre', { class: 'yaml', id: 'config-yaml', tabindex: '0', 'aria-labelledby': 'current-title' });
  const result = h('div', { class: 'result', id: 'config-result', role: 'status', 'aria-live': 'polite' });
  const revisions = table('Revisions, newest first',
    ['Revision', 'When', 'Author', 'Source', 'Message', ...(isAdmin ? ['Action'] : [])], 'revisions');
  const from = h('select', { id: 'diff-from', name: 'from' });
  const to = h('select', { id: 'diff-to', name: 'to' });
  const diff = h('pre', { class: 'diff', id: 'config-diff', tabindex: '0', 'aria-label': 'Unified diff', hidden: true });
  const diffMessage = h('p', { class: 'message error', role: 'alert' });
  const diffForm = h('form', { class: 'diff-form' },
    h('label', { for: 'diff-from', text: 'From revision' }), from,
    h('label', { for: 'diff-to', text: 'to revision' }), to,
    h('button', { type: 'submit', text: 'Show diff' }));

  root.appendChild(h('section', { 'aria-labelledby': 'config-title' },
    h('h1', { id: 'config-title', text: 'Configuration' }),
    status,
    result,
    h('div', { class: 'columns' },
      h('section', { 'aria-labelledby': 'revisions-title' },
        h('h2', { id: 'revisions-title', text: 'Revisions' }),
        revisions.el,
        h('h2', { text: 'Compare two revisions' }),
        diffForm, diffMessage, diff),
      h('section', { 'aria-labelledby': 'current-title' }, revisionTitle, yaml))));

  diffForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    setText(diffMessage, '');
    try {
      const answer = await get(`/api/v1/config/diff?from=${encodeURIComponent(from.value)}&to=${encodeURIComponent(to.value)}`);
      renderDiff(diff, answer.diff);
      diff.hidden = false;
    } catch (err) {
      diff.hidden = true;
      setText(diffMessage, err instanceof ConnectionError ? 'The admin API does not answer; try again in a moment.' : err.message);
    }
  });

  let currentN = null;
  let listKey = '';
  async function refresh() {
    let text;
    let list;
    try {
      const current = await get('/api/v1/config', { withHeaders: true });
      text = current.data;
      currentN = Number(current.headers.get('x-graylane-revision'));
      list = await get('/api/v1/config/revisions');
    } catch (err) {
      if (err instanceof ApiError) setText(status, err.message);
      throw err;
    }
    setText(status, `Environment ${list.env}: revision ${list.current} is in effect.`);
    setText(revisionTitle, `Current configuration (revision ${currentN})`);
    setText(yaml, text);
    const revs = list.revisions || [];
    const key = `${list.current}:${revs.map((r) => r.n).join(',')}`;
    if (key === listKey) return;
    listKey = key;
    fill(revisions.tbody, revs.map((r) => h('tr', { dataset: { revision: r.n } },
      h('th', { scope: 'row' }, String(r.n), r.n === list.current ? h('span', { class: 'badge ok', text: 'current' }) : null),
      h('td', {}, timeEl(r.at || r.at_ms)),
      h('td', { text: r.author }),
      h('td', { text: r.reverted_from ? `${r.source} of ${r.reverted_from}` : r.source }),
      h('td', { text: r.message }),
      isAdmin ? h('td', {}, r.n === list.current ? null : h('button', {
        type: 'button',
        dataset: { revert: r.n },
        text: `Revert to ${r.n}…`,
        'aria-label': `Revert to revision ${r.n}`,
        onclick: () => revert(r.n),
      })) : null)));
    // The selects keep what a person chose; new revisions are added.
    const keep = [from.value, to.value];
    const options = (sel) => fill(sel, revs.map((r) => h('option', { value: String(r.n), text: `${r.n} · ${r.author} · ${r.message}` })));
    options(from);
    options(to);
    const ns = revs.map((r) => String(r.n));
    from.value = ns.includes(keep[0]) ? keep[0] : (ns[1] ?? ns[0] ?? '');
    to.value = ns.includes(keep[1]) ? keep[1] : (ns[0] ?? '');
  }

  // While the admin API does not answer, a revert could not be sent: its buttons wait.
  const lockReverts = (up) => {
    for (const b of revisions.tbody.querySelectorAll('button[data-revert]')) {
      b.disabled = !up;
      b.title = up ? '' : 'The admin API does not answer: reverting waits until it does.';
    }
  };
  ctx.onStop(onConnection(lockReverts));

  async function revert(n) {
    if (!isConnected()) return;
    fill(result);
    let preview;
    try {
      preview = await post(`/api/v1/config/revert/${n}?dry_run=true`);
    } catch (err) {
      showError(err);
      return;
    }
    const ok = await confirmAction({
      title: `Revert to revision ${n}?`,
      text: `Revision ${n}'s text is written to the configuration file, recorded as a new revision and applied at once. This is what changes against revision ${currentN} (a dry run; nothing is applied yet):`,
      preview: preview.diff,
      confirmLabel: `Revert to ${n}`,
      reason: false,
    });
    if (!ok) {
      fill(result, h('p', { class: 'message', text: `Not reverted: revision ${currentN} stays in effect.` }));
      return;
    }
    try {
      const done = await post(`/api/v1/config/revert/${n}`);
      fill(result, h('p', { class: 'message ok', text: done.revision
        ? `Reverted: revision ${done.revision.n} (the text of revision ${n}) is in effect.`
        : `Nothing to do: revision ${n}'s text is already in effect.` }));
      listKey = '';
      await refresh();
    } catch (err) {
      showError(err);
    }
  }

  function showError(err) {
    if (err instanceof ConnectionError) {
      fill(result, h('p', { class: 'message error', text: 'The admin API did not answer; the page shows the revisions again as soon as it answers.' }));
      return;
    }
    fill(result, h('p', { class: 'message error', text: err.message }),
      err.errors ? h('ul', { class: 'errors' }, err.errors.map((e) => h('li', { text: e }))) : null);
  }

  ctx.every(POLL_MS, refresh);
}
