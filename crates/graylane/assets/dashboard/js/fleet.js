// The fleet, under the releases on a fleet node (`GET /api/v1/cluster`): the leader, and one row
// per member with the revision it serves, whether it takes traffic and when it was last heard
// from. A member behind the newest revision is marked lagging, one silent for three heartbeats
// stale, and a node cut off from etcd says so above the table. A single node shows nothing.
//
// `fleetSummary` is the whole decision of what to show, without the DOM, so it can be checked
// on a real fleet's answer outside a browser; `renderFleet` only lays it out.

import { h, fill, badge, table, timeEl } from './dom.js';

/**
 * What to show of `cluster`, or null on a single node:
 * `{headline, alerts: [text], members: [{name, admin, revision, ready, lastSeen, marks}]}`,
 * each mark `{text, kind, title}` as a badge takes it.
 */
export function fleetSummary(cluster) {
  if (!cluster || cluster.mode !== 'fleet') return null;
  const members = Array.isArray(cluster.members) ? cluster.members : [];
  const newest = cluster.latest_revision ?? '–';
  const headline = `Leader: ${cluster.leader || 'none (an election is under way)'} · newest revision ${newest} · `
    + `${members.length} member${members.length === 1 ? '' : 's'}`;
  const alerts = [];
  if (cluster.store_reachable === false) {
    alerts.push(`This node (${cluster.node || '–'}) cannot reach etcd: it serves its last configuration `
      + 'and state, and what it shows of the fleet may be out of date.');
  }
  const lagging = members.filter((m) => m.lagging).length;
  if (lagging) alerts.push(`${lagging} member${lagging === 1 ? ' is' : 's are'} behind revision ${newest}.`);
  const stale = members.filter((m) => m.stale).length;
  if (stale) alerts.push(`${stale} member${stale === 1 ? ' has' : 's have'} not been heard from recently.`);
  return {
    headline,
    alerts,
    members: members.map((m) => {
      const marks = [];
      if (m.name === cluster.leader) marks.push({ text: 'leader', kind: 'info', title: 'Advances releases and runs the analyses' });
      if (m.name === cluster.node) marks.push({ text: 'this node', kind: 'muted', title: 'The node this page talks to' });
      if (m.lagging) marks.push({ text: 'lagging', kind: 'warn', title: `Serves revision ${m.config_revision}; the newest is ${newest}` });
      if (m.stale) marks.push({ text: 'stale', kind: 'bad', title: 'Not heard from for three heartbeats: it may be cut off from etcd' });
      return {
        name: String(m.name),
        admin: m.admin || '–',
        revision: m.config_revision,
        ready: m.ready ? 'yes' : 'no',
        lastSeen: m.last_seen,
        marks,
      };
    }),
  };
}

/** Lays `cluster` out in `section` (hidden on a single node). */
export function renderFleet(section, cluster) {
  const summary = fleetSummary(cluster);
  section.hidden = !summary;
  if (!summary) return;
  const { el, tbody } = table(summary.headline, ['Node', 'Admin', 'Revision', 'Ready', 'Last seen', '']);
  for (const m of summary.members) {
    tbody.appendChild(h('tr', { dataset: { node: m.name } },
      h('td', { text: m.name }),
      h('td', {}, h('code', { text: m.admin })),
      h('td', { text: m.revision }),
      h('td', { text: m.ready }),
      h('td', {}, timeEl(m.lastSeen)),
      h('td', { class: 'badges' }, m.marks.map((k) => [badge(k.text, k.kind, k.title), ' ']))));
  }
  fill(section,
    h('h2', { id: 'fleet-title', text: 'Fleet' }),
    summary.alerts.map((text) => h('p', { class: 'message warn', role: 'status', text })),
    el);
}
