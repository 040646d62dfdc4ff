// The dashboard's entry point: sign-in, the session's role, the router and the
// "connection lost" banner. Each section of the page is a view module with
// `mount(root, ctx, ...params)`; `ctx.every(ms, fn)` polls for as long as the view is shown,
// never two calls of one poll at once, and stops when the person goes elsewhere.
//
// The page is a client of the admin API and nothing more: what a token may do is decided by
// the server; the role only decides which controls are worth showing.

import { ApiError, ConnectionError, getToken, setToken, whoami, onConnection, setUnauthorizedHandler } from './api.js';
import { h, fill, setText } from './dom.js';
import * as releases from './releases.js';
import * as release from './release.js';
import * as experiments from './experiments.js';
import * as config from './config.js';
import * as audit from './audit.js';

const $ = (id) => document.getElementById(id);

let me = null; // {name, role} of the signed-in token
let scope = null; // the shown view's polls
let firstRoute = true;

// ----- the connection banner -----

let restoredTimer = null;
onConnection((up) => {
  const banner = $('banner');
  clearTimeout(restoredTimer);
  if (!up) {
    banner.className = 'banner lost';
    setText(banner, 'Connection to the admin API lost — retrying… The page will catch up by itself when the server answers again.');
    banner.hidden = false;
  } else {
    banner.className = 'banner restored';
    setText(banner, 'Connection restored.');
    restoredTimer = setTimeout(() => { banner.hidden = true; }, 2500);
  }
});

// ----- sign-in and sign-out -----

function showSignIn(message = '') {
  stopView();
  me = null;
  $('nav').hidden = true;
  $('sign-out').hidden = true;
  setText($('who'), '');
  fill($('view'));
  $('signin').hidden = false;
  setText($('signin-message'), message);
  document.title = 'Sign in · graylane';
  $('token').value = '';
  $('token').focus();
}

function signedIn(who) {
  me = who;
  $('signin').hidden = true;
  setText($('signin-message'), '');
  $('nav').hidden = false;
  $('sign-out').hidden = false;
  setText($('who'), me.name ? `${me.name} · ${me.role}` : me.role);
  $('who').title = `Signed in with role ${me.role}`;
  route();
}

setUnauthorizedHandler((err) => {
  setToken('');
  showSignIn(`Signed out: the server no longer accepts this token (${err.message}). Sign in again.`);
});

$('signin-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const candidate = $('token').value.trim();
  const button = e.submitter || $('signin-form').querySelector('button');
  if (!candidate) return;
  button.disabled = true;
  setText($('signin-message'), '');
  try {
    const who = await whoami(candidate);
    setToken(candidate);
    firstRoute = true;
    signedIn(who);
  } catch (err) {
    $('token').value = '';
    if (err instanceof ApiError && err.status === 401) {
      setText($('signin-message'), `That token was refused: ${err.message}.`);
    } else if (err instanceof ConnectionError) {
      setText($('signin-message'), 'The admin API does not answer; try again in a moment.');
    } else {
      setText($('signin-message'), `Cannot sign in: ${err.message}`);
    }
    $('token').focus();
  } finally {
    button.disabled = false;
  }
});

$('sign-out').addEventListener('click', () => {
  setToken('');
  showSignIn('Signed out.');
});

/** At load: a token kept in this tab is checked again (it may have been removed since). */
async function resume() {
  if (!getToken()) {
    showSignIn();
    return;
  }
  for (;;) {
    try {
      signedIn(await whoami());
      return;
    } catch (err) {
      if (err instanceof ConnectionError) {
        // The banner says so; try again shortly.
        await new Promise((r) => setTimeout(r, 2000));
        continue;
      }
      setToken('');
      showSignIn(err instanceof ApiError && err.status === 401
        ? `Signed out: the server no longer accepts this tab's token (${err.message}). Sign in again.`
        : `Cannot sign in: ${err.message}`);
      return;
    }
  }
}

// ----- views -----

function stopView() {
  if (scope) scope.stop();
  scope = null;
}

/** The lifetime of one shown view: its polls and its clean-up. */
function makeScope() {
  let alive = true;
  const timers = new Set();
  const cleanups = [];
  return {
    me,
    alive: () => alive,
    /** Runs fn now and then every `ms` after it finished, while the view is shown. */
    every(ms, fn) {
      const tick = async () => {
        if (!alive) return;
        try {
          await fn();
        } catch (err) {
          // Lost connection: the banner shows it and the next tick retries. 401: signed out.
          if (!(err instanceof ConnectionError) && !(err instanceof ApiError && err.status === 401)) {
            console.warn(err);
          }
        }
        if (alive) {
          const t = setTimeout(() => { timers.delete(t); tick(); }, ms);
          timers.add(t);
        }
      };
      tick();
    },
    onStop(fn) { cleanups.push(fn); },
    stop() {
      alive = false;
      for (const t of timers) clearTimeout(t);
      for (const fn of cleanups) fn();
    },
  };
}

const ROUTES = [
  [/^#\/releases\/([^/]+)$/, release, 'releases'],
  [/^#\/experiments\/([^/]+)$/, experiments, 'experiments'],
  [/^#\/experiments\/?$/, experiments, 'experiments'],
  [/^#\/config\/?$/, config, 'config'],
  [/^#\/audit\/?$/, audit, 'audit'],
  [/^(#\/?|#\/releases\/?|)$/, releases, 'releases'],
];

function route() {
  if (!me) return;
  stopView();
  const hash = location.hash;
  const root = $('view');
  fill(root);
  scope = makeScope();
  for (const [pattern, view, section] of ROUTES) {
    const m = hash.match(pattern);
    if (!m) continue;
    for (const a of $('nav').querySelectorAll('a')) {
      if (a.getAttribute('href') === `#/${section}`) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    let params;
    try {
      params = m.slice(1).map((p) => (p === undefined ? undefined : decodeURIComponent(p)));
    } catch {
      params = [];
    }
    view.mount(root, scope, ...params);
    focusHeading(root);
    return;
  }
  root.appendChild(h('section', {},
    h('h1', { tabindex: '-1', text: 'Not found' }),
    h('p', {}, 'There is no such page. ', h('a', { href: '#/releases', text: 'See every release' }), '.')));
  focusHeading(root);
}

/** After a navigation, the new page's heading has focus (a screen reader reads it). */
function focusHeading(root) {
  const heading = root.querySelector('h1');
  if (!heading) return;
  document.title = `${heading.textContent} · graylane`;
  if (firstRoute) {
    firstRoute = false;
    return;
  }
  heading.setAttribute('tabindex', '-1');
  heading.focus({ preventScroll: false });
}

window.addEventListener('hashchange', route);
resume();
