// The confirmation before every action: it says what will happen, in words, and asks for an
// optional reason that goes to the audit log with the action. A native modal <dialog> keeps
// focus inside while open, closes on Escape, and gives focus back to the button that opened it.

import { setText } from './dom.js';

const $ = (id) => document.getElementById(id);

/**
 * Resolves to `{reason}` when confirmed, `null` when cancelled.
 * title: the question ("Promote payment?"); text: what will happen; preview: optional text
 * shown as a diff (lines starting with + and - coloured); confirmLabel: the button's words;
 * danger: a red confirm button; reason: whether to ask for a reason.
 */
export function confirmAction({ title, text, preview = null, confirmLabel = 'Confirm', danger = false, reason = true }) {
  const dialog = $('confirm');
  const opener = document.activeElement;
  setText($('confirm-title'), title);
  setText($('confirm-text'), text);
  const pre = $('confirm-preview');
  if (preview !== null) {
    renderDiff(pre, preview);
    pre.hidden = false;
  } else {
    pre.replaceChildren();
    pre.hidden = true;
  }
  $('confirm-reason-row').hidden = !reason;
  $('confirm-reason').value = '';
  const ok = $('confirm-ok');
  setText(ok, confirmLabel);
  ok.className = danger ? 'danger' : 'primary';

  return new Promise((resolve) => {
    const done = (value) => {
      $('confirm-form').removeEventListener('submit', onSubmit);
      $('confirm-cancel').removeEventListener('click', onCancel);
      dialog.removeEventListener('cancel', onCancel);
      if (dialog.open) dialog.close();
      if (opener && typeof opener.focus === 'function' && document.contains(opener)) opener.focus();
      resolve(value);
    };
    const onSubmit = (e) => {
      e.preventDefault();
      done({ reason: $('confirm-reason').value.trim() });
    };
    const onCancel = (e) => {
      e.preventDefault();
      done(null);
    };
    $('confirm-form').addEventListener('submit', onSubmit);
    $('confirm-cancel').addEventListener('click', onCancel);
    dialog.addEventListener('cancel', onCancel);
    dialog.showModal();
    // The safe choice has focus for what cannot be undone at once; otherwise the reason field.
    (danger || !reason ? $('confirm-cancel') : $('confirm-reason')).focus();
  });
}

/** A unified diff as lines, each coloured by its first character. */
export function renderDiff(pre, diff) {
  pre.replaceChildren();
  const text = String(diff ?? '');
  if (!text.trim()) {
    pre.appendChild(document.createTextNode('(no difference)'));
    return;
  }
  for (const line of text.split('\n')) {
    const span = document.createElement('span');
    if (line.startsWith('+++') || line.startsWith('---')) span.className = 'file';
    else if (line.startsWith('@@')) span.className = 'hunk';
    else if (line.startsWith('+')) span.className = 'add';
    else if (line.startsWith('-')) span.className = 'del';
    span.textContent = `${line}\n`;
    pre.appendChild(span);
  }
}
