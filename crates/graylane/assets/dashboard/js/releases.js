// Releases overview: one card per service with a release — strategy, state, step, a weight
// bar per version, the latest analysis verdict, the SRM alert of an experiment, and the time
// until the next step; on a fleet node, the fleet under them (fleet.js). Polled every 2 s;
// cards are updated in place so keyboard focus on a card's link survives the refresh.

import { get, ApiError } from './api.js';
import { h, fill, setText, badge, stateBadge, verdictBadge, weightBar, duration } from './dom.js';
import { renderFleet } from './fleet.js';

const POLL_MS = 2000;

export function mount(root, ctx) {
  const status = h('p', { class: 'muted', role: 'status', text: 'Loading releases…' });
  const list = h('div', { class: 'cards', id: 'release-list' });
  const fleet = h('section', { id: 'fleet', 'aria-labelledby': 'fleet-title', hidden: true });
  root.appendChild(h('section', { 'aria-labelledby': 'releases-title' },
    h('h1', { id: 'releases-title', text: 'Releases' }),
    status,
    list));
  root.appendChild(fleet);
  ctx.every(POLL_MS, async () => renderFleet(fleet, await get('/api/v1/cluster')));

  const cards = new Map(); // service → {el, parts, deadline}
  ctx.every(POLL_MS, async () => {
    let answer;
    try {
      answer = await get('/api/v1/releases');
    } catch (err) {
      if (err instanceof ApiError) setText(status, err.message);
      throw err;
    }
    const rels = Array.isArray(answer.releases) ? answer.releases : [];
    setText(status, rels.length
      ? `Environment ${answer.env}: ${rels.length} release${rels.length === 1 ? '' : 's'}.`
      : `Environment ${answer.env}: no service has a release.`);
    const seen = new Set();
    for (const r of rels) {
      seen.add(r.service);
      let card = cards.get(r.service);
      if (!card) {
        card = newCard(r.service);
        cards.set(r.service, card);
      }
      list.appendChild(card.el); // keeps the server's order (by service)
      updateCard(card, r);
    }
    for (const [service, card] of cards) {
      if (!seen.has(service)) {
        card.el.remove();
        cards.delete(service);
      }
    }
  });

  // The countdowns move every second between polls.
  ctx.every(1000, async () => {
    for (const card of cards.values()) tickCountdown(card);
  });
}

function newCard(service) {
  const parts = {
    meta: h('p', { class: 'meta' }),
    weights: h('div'),
    badges: h('p', { class: 'badges' }),
    next: h('p', { class: 'next' }),
  };
  const el = h('article', { class: 'card release-card', dataset: { service } },
    h('h2', {}, h('a', { href: `#/releases/${encodeURIComponent(service)}`, text: service })),
    parts.meta, parts.weights, parts.badges, parts.next);
  return { el, parts, release: null, fetchedAt: 0 };
}

/** "step 2 of 4" (the API counts steps from 0); the other strategies have no steps to count. */
export function stepText(r) {
  if (r.strategy === 'experiment') return `${(r.variants || []).length} variants side by side`;
  if (r.strategy === 'blue_green') return r.state === 'completed' ? 'switched' : 'before the switch';
  if (!r.steps) return 'no steps';
  return `step ${Math.min(r.step + 1, r.steps)} of ${r.steps}`;
}

function updateCard(card, r) {
  card.release = r;
  card.fetchedAt = Date.now();
  const { parts } = card;
  fill(parts.meta,
    h('span', { class: 'strategy', text: String(r.strategy).replace('_', '-') }), ' · ',
    stateBadge(r.state), ' · ',
    h('span', { class: 'step', text: stepText(r) }),
    r.weight_overridden ? h('span', { class: 'muted', text: ' · weight set by hand' }) : null);
  fill(parts.weights, weightBar(r));
  fill(parts.badges,
    h('span', { class: 'muted', text: 'Analysis: ' }),
    verdictBadge(r.analysis) || badge('none', 'muted', 'This release has no analysis, or it has not judged yet'),
    r.srm ? [' ', r.srm.flagged
      ? badge('SRM alert', 'bad', String(r.srm.reason ?? ''))
      : badge('SRM ok', 'ok', String(r.srm.reason ?? ''))] : null);
  tickCountdown(card);
}

/** When the next step comes, in words. */
export function nextStepText(r, elapsedS = 0) {
  if (r.state === 'completed') return 'Completed.';
  if (r.state === 'aborted') return 'Aborted: all traffic on the stable version.';
  if (r.state === 'rolled_back') return 'Rolled back to the previous stable version.';
  // A gate's answer decides the next move: say which one it waits on, and what it said.
  if (r.gate && r.state === 'progressing') {
    const s = String(r.gate.summary ?? '');
    return `${s.charAt(0).toUpperCase()}${s.slice(1)} (${r.gate.kind}).`;
  }
  if (r.pause_remaining_s !== null && r.pause_remaining_s !== undefined) {
    if (r.state === 'paused') return `Paused, ${duration(r.pause_remaining_s)} of the step's pause left.`;
    return `Next step in ${duration(r.pause_remaining_s - elapsedS)}.`;
  }
  if (r.state === 'paused') return 'Paused: waiting for resume.';
  if (r.strategy === 'experiment') return 'Running until a person picks the winner.';
  if (r.strategy === 'blue_green') return 'Waiting for the switch (promote).';
  if (r.pause === 'manual') return 'Waiting for a person to promote (manual step).';
  return 'Next step when the analysis allows.';
}

function tickCountdown(card) {
  const r = card.release;
  if (!r) return;
  const elapsed = r.state === 'progressing' ? (Date.now() - card.fetchedAt) / 1000 : 0;
  setText(card.parts.next, nextStepText(r, elapsed));
}
