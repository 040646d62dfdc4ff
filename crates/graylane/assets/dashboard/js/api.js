// The admin API client: the only place that talks to the server.
//
// Every call carries the signed-in token, exactly as the CLI does, so the server's auth and
// audit apply unchanged. Three kinds of failure matter to the page, and each has one home:
//   * the server answered with an error → ApiError, whose `message` is the API's own sentence
//     (`error`), shown to the person as is;
//   * the server did not answer (down, restarting, network) → ConnectionError, and the
//     connection listeners learn that the link is lost (the banner), then found again;
//   * the token was refused (401) → the unauthorized listener signs the person out.

const TOKEN_KEY = 'graylane.token';
// A call that hangs this long counts as "not answering": the banner shows, polling retries.
const TIMEOUT_MS = 8000;

let token = sessionStorage.getItem(TOKEN_KEY) || '';
const connectionListeners = new Set();
let onUnauthorized = () => {};
let connected = true;

export function getToken() { return token; }

export function setToken(value) {
  token = value;
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** `fn(connected: boolean)` on every change of the link's state; returns the unsubscribe. */
export function onConnection(fn) {
  connectionListeners.add(fn);
  return () => connectionListeners.delete(fn);
}

/** Whether the admin API answered the latest call. */
export function isConnected() { return connected; }

/** `fn(error: ApiError)` when a call is refused with 401 while signed in. */
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

function setConnected(value) {
  if (value === connected) return;
  connected = value;
  for (const fn of connectionListeners) fn(value);
}

/** The server's refusal: `message` is its sentence; the body's extras are kept. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body && typeof body.error === 'string' ? body.error : `the server answered HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = body && body.code ? String(body.code) : '';
    this.allowed = body && Array.isArray(body.allowed) ? body.allowed.map(String) : null;
    this.requiredRole = body && body.required_role ? String(body.required_role) : null;
    this.errors = body && Array.isArray(body.errors) ? body.errors.map(String) : null;
  }
}

/** No answer at all (refused connection, time-out). */
export class ConnectionError extends Error {
  constructor(cause) {
    super('the admin API does not answer');
    this.name = 'ConnectionError';
    this.cause = cause;
  }
}

/**
 * One call. `body`: an object (sent as JSON) or a string (sent as YAML text).
 * Resolves to the parsed JSON (or the text for non-JSON answers, with `headers`).
 * `opts.token` overrides the session's token (sign-in tries a token before keeping it).
 */
export async function call(method, path, body, opts = {}) {
  const headers = { Accept: 'application/json' };
  const bearer = opts.token !== undefined ? opts.token : token;
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  let payload;
  if (typeof body === 'string') {
    headers['Content-Type'] = 'application/yaml';
    payload = body;
  } else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: payload,
      cache: 'no-store',
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
  } catch (e) {
    setConnected(false);
    throw new ConnectionError(e);
  }
  // A proxy in front of a stopped server answers 502/504 itself: that is "not answering" too.
  if (resp.status === 502 || resp.status === 504) {
    setConnected(false);
    throw new ConnectionError(new Error(`HTTP ${resp.status}`));
  }
  setConnected(true);
  const type = resp.headers.get('content-type') || '';
  let data;
  try {
    data = type.includes('json') ? await resp.json() : await resp.text();
  } catch (e) {
    setConnected(false);
    throw new ConnectionError(e);
  }
  if (!resp.ok) {
    const err = new ApiError(resp.status, typeof data === 'object' ? data : null);
    // Only a session's own token is signed out; a token being tried is just refused.
    if (resp.status === 401 && opts.token === undefined && token) onUnauthorized(err);
    throw err;
  }
  if (opts.withHeaders) return { data, headers: resp.headers };
  return data;
}

export const get = (path, opts) => call('GET', path, undefined, opts);
export const post = (path, body, opts) => call('POST', path, body, opts);

/** `encodeURIComponent` for a path segment (service names come from the server). */
export const seg = (s) => encodeURIComponent(String(s));

/**
 * Who the token belongs to: `{name, role}` (`GET /api/v1/whoami`, which any valid token may
 * call; 401 otherwise). `candidate` is a token being tried at sign-in.
 */
export async function whoami(candidate) {
  const me = await get('/api/v1/whoami', candidate !== undefined ? { token: candidate } : {});
  return { name: String(me.name ?? ''), role: String(me.role ?? 'viewer') };
}

const RANK = { viewer: 0, operator: 1, admin: 2 };
/** Whether `role` may do what `needed` may. */
export const atLeast = (role, needed) => (RANK[role] ?? -1) >= RANK[needed];
