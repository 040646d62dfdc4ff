// One release: its state and weights, the actions its state allows (for operators), live
// charts per version, the step plan, the analysis verdicts and the transitions.
//
// Polls: the release every 2 s, the live series every second (appending only the new
// seconds), the analysis every 3 s. Every part is built once and updated in place, so a poll
// never moves keyboard focus, never resets the weight slider while a person holds it, and
// never hides the result of the last action.

import { get, post, seg, ApiError, ConnectionError, atLeast, onConnection, isConnected } from './api.js';
import {
  h, fill, setText, table, badge, stateBadge, verdictBadge, checkBadge, weightBar, versionOrder,
  trim, pct, ratePct, ms, timeEl,
} from './dom.js';
import { releaseCharts, SeriesBuffer } from './chart.js';
import { confirmAction } from './confirm.js';
import { stepText, nextStepText } from './releases.js';

const RELEASE_MS = 2000;
const SERIES_MS = 1000;
const ANALYSIS_MS = 3000;
// A server without the series endpoint is asked again this much later.
const SERIES_RETRY_MS = 10000;

export function mount(root, ctx, service) {
  const path = `/api/v1/releases/${seg(service)}`;
  const canSteer = atLeast(ctx.me.role, 'operator');
  let current = null; // the latest release JSON
  let fetchedAt = 0;

  // ----- skeleton -----
  const summary = h('p', { class: 'meta', id: 'release-summary' });
  const next = h('p', { class: 'next', id: 'release-next' });
  const weights = h('div', { id: 'release-weights' });
  const problem = h('p', { class: 'message error', role: 'alert' });
  const actions = canSteer ? actionPanel() : null;
  const charts = releaseCharts();
  ctx.onStop(() => charts.destroy());
  const plan = h('ol', { class: 'steps', id: 'step-plan' });
  const planNote = h('p', { class: 'muted', id: 'plan-note' });
  const analysis = analysisPanel();
  const variants = h('div', { id: 'release-variants' });
  const timeline = h('ol', { class: 'timeline', id: 'transitions', reversed: true });

  root.appendChild(h('section', { class: 'release', 'aria-labelledby': 'release-title' },
    h('p', { class: 'crumbs' }, h('a', { href: '#/releases', text: 'Releases' }), ' / ', service),
    h('h1', { id: 'release-title', text: service }),
    problem,
    h('div', { class: 'release-head' },
      h('div', {}, summary, next, weights),
      actions ? actions.el : null),
    h('h2', { text: 'Live traffic (last 15 minutes)' }),
    charts.el,
    h('div', { class: 'columns' },
      h('section', { 'aria-labelledby': 'plan-title' },
        h('h2', { id: 'plan-title', text: 'Step plan' }), planNote, plan),
      h('section', { 'aria-labelledby': 'timeline-title' },
        h('h2', { id: 'timeline-title', text: 'Transitions' }), timeline)),
    h('section', { 'aria-labelledby': 'analysis-title' },
      h('h2', { id: 'analysis-title', text: 'Analysis' }), analysis.el),
    variants));

  // ----- release -----
  function render(r) {
    current = r;
    fetchedAt = Date.now();
    setText(problem, '');
    fill(summary,
      h('span', { class: 'strategy', text: String(r.strategy).replace('_', '-') }), ' · ',
      stateBadge(r.state), ' · ',
      h('span', { class: 'step', id: 'release-step', text: stepText(r) }), ' · ',
      h('span', { class: 'muted', text: 'Analysis: ' }),
      verdictBadge(r.analysis) || badge('none', 'muted'),
      r.srm ? [' ', r.srm.flagged ? badge('SRM alert', 'bad', String(r.srm.reason ?? '')) : badge('SRM ok', 'ok')] : null);
    if (r.analysis) summary.appendChild(h('span', { class: 'summary-line', text: String(r.analysis.summary ?? '') }));
    tick();
    fill(weights, weightBar(r),
      r.weight_overridden ? h('p', { class: 'muted', text: 'The candidate\'s weight was set by hand; the next step replaces it.' }) : null,
      r.mirror != null ? h('p', { class: 'muted', text: `Mirror ${pct(r.mirror, 3)}: that share of the requests is copied to ${r.candidate}; its answers are discarded, users see ${r.baseline} only.` }) : null,
      r.previous_kept_until ? h('p', { class: 'muted' }, 'Previous version kept until ', timeEl(r.previous_kept_until), '.') : null);
    // The charts colour versions as the weight bar does, which needs the release.
    if (buffer.size()) charts.update(buffer, versionOrder(r));
    renderPlan(r);
    renderTimeline(r);
    renderVariants(r);
    if (actions) actions.update(r);
  }

  function tick() {
    if (!current) return;
    const elapsed = current.state === 'progressing' ? (Date.now() - fetchedAt) / 1000 : 0;
    setText(next, nextStepText(current, elapsed));
  }

  function renderPlan(r) {
    if (!r.steps || r.strategy !== 'canary') {
      setText(planNote, r.strategy === 'blue_green'
        ? 'Blue-green: one switch (promote) from the active version to the preview.'
        : r.strategy === 'experiment'
          ? 'Experiment: the variants run side by side until a winner is picked.'
          : 'This release has no steps.');
      fill(plan);
      return;
    }
    if (r.adaptive) {
      renderAdaptive(r);
      return;
    }
    setText(planNote, `Currently at ${stepText(r)}.`);
    const steps = r.plan || [];
    const items = steps.map((step, i) => {
      const state = i < r.step || r.state === 'completed' ? 'done' : i === r.step ? 'current' : 'todo';
      // A mirror step sends no users to the candidate, only copies of their requests.
      let weight = step.mirror != null
        ? `${r.candidate} mirror ${pct(step.mirror, 3)}`
        : `${r.candidate} ${pct(step.weight, 3)}`;
      // A weight set by hand replaces the current step's until the next step.
      if (i === r.step && r.weight_overridden && r.weights) {
        weight = `${r.candidate} ${pct(r.weights[r.candidate] ?? 0, 3)} (set by hand)`;
      }
      const pause = step.pause ? `pause ${step.pause}` : 'no pause';
      return h('li', { class: state, 'aria-current': state === 'current' ? 'step' : null },
        h('span', { class: 'step-name', text: `Step ${i + 1}` }),
        h('span', { class: 'step-weight', text: weight }),
        state === 'current'
          ? h('span', { class: 'badge info', text: `now · ${pause}` })
          : h('span', { class: 'muted', text: pause }),
        state === 'done' ? h('span', { class: 'visually-hidden', text: '(done)' }) : null);
    });
    fill(plan, items);
  }

  // An adaptive canary has no steps to list: the analysis sets the pace, so the plan shows the
  // bounds, the exposure budget and the path of weights taken so far.
  function renderAdaptive(r) {
    const a = r.adaptive;
    const budget = a.max_bad_requests != null
      ? `exposure budget ${a.budget_spent} of ${a.max_bad_requests} requests spent`
      : `${a.budget_spent} requests served while the candidate looked worse (no budget set)`;
    setText(planNote, `Adaptive: ${pct(a.start, 3)} to ${pct(a.max, 3)}, ×${a.grow} on a clear interval (×${a.grow * a.grow} when clear since the last change too), ×${a.shrink} leaning worse, at most one change per ${a.min_pause_s}s; ${budget}.`);
    const path = a.path || [];
    fill(plan, path.map((t, i) => {
      const state = i === path.length - 1 ? 'current' : 'done';
      return h('li', { class: state, 'aria-current': state === 'current' ? 'step' : null },
        h('span', { class: 'step-name', text: t.action }),
        h('span', { class: 'step-weight', text: `${r.candidate} ${pct(t.weight, 3)}` }), ' ',
        timeEl(t.at || t.at_ms),
        t.reason ? h('q', { class: 'reason', text: t.reason }) : null);
    }));
  }

  function renderTimeline(r) {
    const list = [...(r.transitions || [])].reverse();
    if (!list.length) {
      fill(timeline, h('li', { class: 'muted', text: 'No transitions yet.' }));
      return;
    }
    fill(timeline, list.map((t) => h('li', {},
      timeEl(t.at || t.at_ms), ' ',
      h('strong', { class: 'actor', text: t.actor }), ' ',
      h('span', { class: 'action', text: t.action }), ' ',
      h('span', { class: 'muted', text: r.strategy === 'canary'
        ? `${t.from} → ${t.to}, step ${Number(t.step) + 1}, ${r.candidate} ${pct(t.weight, 3)}`
        : `${t.from} → ${t.to}` }),
      t.reason ? h('q', { class: 'reason', text: t.reason }) : null)));
  }

  function renderVariants(r) {
    if (r.strategy !== 'experiment' || !Array.isArray(r.variants)) {
      fill(variants);
      return;
    }
    const t = table('Variants (exposures since the gateway started)', ['Variant', 'Version', 'Weight', 'Exposures']);
    for (const v of r.variants) {
      t.tbody.appendChild(h('tr', {},
        h('th', { scope: 'row', text: v.name }), h('td', { text: v.version }),
        h('td', { text: pct(v.weight, 3) }), h('td', { text: v.exposures })));
    }
    fill(variants, h('h2', { text: 'Variants' }), t.el,
      h('p', {}, h('a', { href: `#/experiments/${encodeURIComponent(r.service)}`, text: 'Experiment results and SRM check' })));
  }

  ctx.every(RELEASE_MS, async () => {
    try {
      render(await get(path));
    } catch (err) {
      if (err instanceof ApiError) setText(problem, err.message);
      throw err;
    }
  });
  ctx.every(1000, async () => tick());

  // ----- live series -----
  const buffer = new SeriesBuffer();
  let seriesBlockedUntil = 0;
  ctx.every(SERIES_MS, async () => {
    if (Date.now() < seriesBlockedUntil) return;
    const since = buffer.since();
    try {
      buffer.add(await get(`${path}/series${since === null ? '' : `?since_ms=${since}`}`));
    } catch (err) {
      if (err instanceof ApiError && err.status !== 401) {
        seriesBlockedUntil = Date.now() + SERIES_RETRY_MS;
        charts.message(`Live series unavailable: ${err.message}`);
        return;
      }
      throw err;
    }
    if (current) charts.update(buffer, versionOrder(current));
  });

  // ----- analysis -----
  ctx.every(ANALYSIS_MS, async () => {
    try {
      analysis.render(await get(`${path}/analysis`));
    } catch (err) {
      if (err instanceof ApiError && err.status !== 401) analysis.message(err.message);
      throw err;
    }
  });

  // ----- actions (operator and admin) -----
  function actionPanel() {
    const result = h('div', { class: 'result', id: 'action-result', role: 'status', 'aria-live': 'polite' });
    const buttons = new Map();
    const row = h('div', { class: 'buttons', role: 'group', 'aria-label': 'Release actions' });
    for (const [action, label, danger] of ACTIONS) {
      const b = h('button', { type: 'button', class: danger ? 'danger' : '', dataset: { action }, hidden: true, text: label });
      b.addEventListener('click', () => act(action, {}));
      buttons.set(action, b);
      row.appendChild(b);
    }
    const winners = h('div', { class: 'buttons', role: 'group', 'aria-label': 'Pick the winner' });

    // The weight slider: a range for the hand, a number for three decimals; applied only
    // through the confirmation. While someone is choosing, polling leaves it alone.
    let dirty = false;
    const slider = h('input', { type: 'range', id: 'weight-slider', min: '0', max: '100', step: '1' });
    const number = h('input', { type: 'number', id: 'weight-number', min: '0', max: '100', step: '0.001', inputmode: 'decimal', 'aria-label': 'Weight in percent' });
    const apply = h('button', { type: 'button', id: 'weight-apply', text: 'Set weight…' });
    const sliderLabel = h('label', { for: 'weight-slider', text: 'Candidate weight' });
    slider.addEventListener('input', () => { dirty = true; number.value = slider.value; });
    number.addEventListener('input', () => { dirty = true; slider.value = number.value; });
    apply.addEventListener('click', () => {
      const w = Number(number.value);
      // An empty field is not 0%: ask rather than send all traffic back to the baseline.
      if (number.value.trim() === '' || !Number.isFinite(w)) {
        showResult(false, 'Give the candidate\'s weight as a percentage from 0 to 100.');
        return;
      }
      act('set_weight', { weight: w });
    });
    const weightBox = h('div', { class: 'weight-control', hidden: true },
      sliderLabel, h('div', { class: 'weight-inputs' }, slider, number, h('span', { 'aria-hidden': 'true', text: '%' }), apply));

    let busy = false;
    // While the admin API does not answer, an action could not be sent, nor its outcome known:
    // the buttons wait, and say why.
    let offline = !isConnected();
    ctx.onStop(onConnection((up) => { offline = !up; lockButtons(); }));
    async function act(action, extra) {
      if (!current || busy || offline) return;
      const r = current;
      const what = describe(action, r, extra);
      const answer = await confirmAction(what);
      if (!answer) return;
      busy = true;
      lockButtons();
      const body = { ...extra };
      if (answer.reason) body.reason = answer.reason;
      let command = action;
      if (action === 'promote_full') { command = 'promote'; body.full = true; }
      if (action === 'set_weight') command = 'weight';
      if (action === 'promote_variant') command = 'promote';
      try {
        const updated = await post(`${path}/${command}`, body);
        render(updated);
        if (action === 'set_weight') dirty = false;
        showResult(true, `${what.title.replace(/\?$/, '')}: done. Now ${updated.state.replace('_', ' ')}, ${stepText(updated)}, ${weightsText(updated)}.`, updated);
      } catch (err) {
        if (err instanceof ConnectionError) {
          showResult(false, 'The admin API did not answer, so it is not known whether the action was applied; the page shows the release again as soon as it answers.');
        } else {
          // The API's own sentence, as the CLI prints it; the page shows nothing else changed.
          showResult(false, err.message);
        }
      } finally {
        busy = false;
        lockButtons();
      }
    }

    function lockButtons() {
      const why = offline ? 'The admin API does not answer: actions wait until it does.' : '';
      for (const b of [...buttons.values(), apply, ...winners.querySelectorAll('button')]) {
        b.disabled = busy || offline;
        b.title = why;
      }
      result.setAttribute('aria-busy', busy ? 'true' : 'false');
    }

    function showResult(ok, sentence, release = null) {
      fill(result,
        h('p', { class: ok ? 'message ok' : 'message error', text: sentence }),
        release ? h('details', {},
          h('summary', { text: 'The release as the API answered' }),
          h('pre', { class: 'json', text: JSON.stringify(release, null, 2) })) : null);
    }

    let variantKey = '';
    return {
      el: h('section', { class: 'actions', 'aria-labelledby': 'actions-title' },
        h('h2', { id: 'actions-title', text: 'Actions' }), row, winners, weightBox, result),
      update(r) {
        const allowed = new Set(r.allowed || []);
        const experiment = r.strategy === 'experiment';
        for (const [action, b] of buttons) {
          // An experiment's promote needs a winner: one button per variant instead.
          b.hidden = !allowed.has(action) || (experiment && action === 'promote');
        }
        const key = experiment && allowed.has('promote') ? (r.variants || []).map((v) => v.name).join('\u0000') : '';
        if (key !== variantKey) {
          variantKey = key;
          fill(winners, key ? r.variants.map((v) => h('button', {
            type: 'button',
            dataset: { action: 'promote_variant', variant: v.name },
            text: `Pick ${v.name} as winner`,
            onclick: () => act('promote_variant', { variant: v.name }),
          })) : []);
          lockButtons();
        }
        weightBox.hidden = !allowed.has('set_weight');
        setText(sliderLabel, `Weight of ${r.candidate} (now ${pct(r.weights?.[r.candidate] ?? 0, 3)})`);
        if (!dirty) {
          const w = Number(r.weights?.[r.candidate] ?? 0);
          slider.value = String(w);
          number.value = String(w);
        }
        const none = [...buttons.values()].every((b) => b.hidden) && weightBox.hidden && !key;
        row.dataset.empty = none ? 'true' : 'false';
        if (none) row.setAttribute('aria-description', 'No action makes sense in this state.');
      },
    };
  }
}

/** The actions in the order they are shown: [name in `allowed`, button, dangerous]. */
const ACTIONS = [
  ['promote', 'Promote…', false],
  ['promote_full', 'Promote to 100%…', false],
  ['pause', 'Pause…', false],
  ['resume', 'Resume…', false],
  ['retry', 'Retry…', false],
  ['abort', 'Abort…', true],
  ['rollback', 'Roll back…', true],
];

function weightsText(r) {
  return Object.entries(r.weights || {}).map(([v, w]) => `${v} ${pct(w, 3)}`).join(', ');
}

/** What the confirmation says: what will happen, in this release's terms. */
export function describe(action, r, extra = {}) {
  const s = r.service;
  const cand = r.candidate;
  const stable = r.stable || r.baseline;
  const now = `Now: ${stepText(r)}, ${weightsText(r)}.`;
  switch (action) {
    case 'promote':
      if (r.strategy === 'blue_green') {
        return { title: `Switch ${s}?`, text: `All of ${s}'s traffic moves from ${stable} to ${cand} at once. ${now}`, confirmLabel: 'Switch' };
      }
      if (r.adaptive && (r.weights?.[cand] ?? 0) < r.adaptive.max) {
        return { title: `Promote ${s}?`, text: `${cand} jumps to the adaptive maximum, ${pct(r.adaptive.max, 3)}; the analysis goes on from there. ${now}`, confirmLabel: 'Promote' };
      }
      return {
        title: `Promote ${s}?`,
        text: r.step + 1 >= r.steps
          ? `${s} completes: ${cand} becomes the stable version. ${now}`
          : `${s} moves on from step ${r.step + 1} to step ${r.step + 2} of ${r.steps}: ${cand} gets the next step's weight. ${now}`,
        confirmLabel: 'Promote',
      };
    case 'promote_full':
      return { title: `Promote ${s} to 100%?`, text: `Every step is skipped: all of ${s}'s traffic goes to ${cand} now and the release completes. ${now}`, confirmLabel: 'Promote to 100%' };
    case 'promote_variant':
      return { title: `Pick ${extra.variant} as the winner of ${s}?`, text: `The experiment ends: all of ${s}'s traffic goes to variant ${extra.variant}. ${now}`, confirmLabel: `Pick ${extra.variant}` };
    case 'pause':
      return { title: `Pause ${s}?`, text: `${s} holds at ${stepText(r)} with its weights as they are; a timed pause stops counting until resumed. ${now}`, confirmLabel: 'Pause' };
    case 'resume':
      return { title: `Resume ${s}?`, text: `${s} goes on from ${stepText(r)}; a timed pause continues where it stopped. ${now}`, confirmLabel: 'Resume' };
    case 'retry':
      return { title: `Retry ${s}?`, text: `${s} starts again from step 1 of ${r.steps}. ${now}`, confirmLabel: 'Retry' };
    case 'abort':
      return { title: `Abort ${s}?`, text: `All of ${s}'s traffic goes to ${stable} at once and force rules stop applying; the release stops here (retry starts it again). ${now}`, confirmLabel: 'Abort', danger: true };
    case 'rollback':
      return { title: `Roll back ${s}?`, text: `${s} goes back to the previous stable version. ${now}`, confirmLabel: 'Roll back', danger: true };
    case 'set_weight': {
      const w = Number(extra.weight);
      return {
        title: `Set ${cand}'s weight to ${trim(w, 3)}%?`,
        text: `${trim(w, 3)}% of ${s}'s bucketed traffic goes to ${cand} (now ${pct(r.weights?.[cand] ?? 0, 3)}) until the next step. ${now}`,
        confirmLabel: `Set ${trim(w, 3)}%`,
      };
    }
    default:
      return { title: `${action} ${s}?`, text: now };
  }
}

// ----- analysis panel -----

function analysisPanel() {
  const status = h('p', { class: 'muted', role: 'status', text: 'Loading the analysis…' });
  const decision = h('div', { id: 'analysis-decision' });
  const checks = table('Checks of the latest judgement', ['Check', 'Verdict', 'Reason', 'Candidate', 'Baseline', 'Effect'], 'analysis-table');
  checks.el.hidden = true;
  return {
    el: h('div', {}, status, decision, checks.el),
    message(text) { setText(status, text); },
    render(a) {
      if (!a.configured) {
        setText(status, 'This release has no analysis configured: its steps move on by their pauses or by hand.');
        fill(decision);
        checks.el.hidden = true;
        return;
      }
      const latest = a.latest;
      setText(status, `Checks ${(a.checks || []).join(', ') || '–'}, judged every ${trim(a.interval_s, 2)} s.`);
      if (!latest) {
        fill(decision, h('p', { text: 'No judgement yet.' }));
        checks.el.hidden = true;
        return;
      }
      const d = latest.decision || {};
      fill(decision, h('p', {},
        h('span', { class: 'muted', text: 'Latest decision: ' }),
        verdictBadge({ decision: d.decision, summary: d.reason ?? '' }),
        d.reason ? [' ', h('span', { text: d.reason })] : null,
        h('span', { class: 'muted', text: ` · ${latest.passes} pass(es) in a row, ${latest.failures} failure(s) · ` }),
        timeEl(latest.at_ms)));
      fill(checks.tbody, (latest.results || []).map((c) => {
        const f = c.figures || {};
        return h('tr', {},
          h('th', { scope: 'row', text: c.check }),
          h('td', {}, checkBadge(c.verdict, c.enough_data)),
          h('td', { class: 'reason', text: c.reason }),
          h('td', { text: measure(c.check, f.candidate) }),
          h('td', { text: measure(c.check, f.baseline) }),
          h('td', { text: effect(c.check, f.effect) }));
      }));
      checks.el.hidden = false;
    },
  };
}

/** A value in the unit of its check. */
export function figure(check, v) {
  if (v === null || v === undefined) return '–';
  const name = String(check);
  if (name === 'error_rate' || name.startsWith('event_rate')) return ratePct(v, 3);
  if (name.startsWith('latency')) return ms(v);
  if (name === 'throughput') return `${trim(v, 2)}/s`;
  return trim(v, 4);
}

/** `n 1234 · 1.2% [0.8% – 1.7%]`. */
export function measure(check, m) {
  if (!m) return '–';
  const interval = m.low !== null && m.low !== undefined || m.high !== null && m.high !== undefined
    ? ` [${figure(check, m.low)} – ${figure(check, m.high)}]` : '';
  return `n ${m.n} · ${figure(check, m.value)}${interval}`;
}

/** The candidate against the baseline with its interval. */
export function effect(check, e) {
  if (!e) return '–';
  const one = (v) => {
    if (v === null || v === undefined) return '–';
    if (e.kind === 'ratio') return `×${trim(v, 3)}`;
    if (e.kind === 'relative_change') return `${v >= 0 ? '+' : ''}${trim(v * 100, 2)}%`;
    const name = String(check);
    if (name === 'error_rate' || name.startsWith('event_rate')) return `${v >= 0 ? '+' : ''}${trim(v * 100, 3)} pp`;
    return `${v >= 0 ? '+' : ''}${figure(check, v)}`;
  };
  const label = { difference: 'difference', ratio: 'ratio', relative_change: 'change' }[e.kind] || String(e.kind);
  return `${label} ${one(e.value)} [${one(e.low)} – ${one(e.high)}]`;
}
