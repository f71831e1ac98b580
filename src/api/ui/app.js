// metafora dashboard: a small single-page app over the REST API (/openapi.yaml).
// No framework and no build step: DOM helpers, a fetch() that sends the API key, Server-Sent
// Events read with fetch() (EventSource cannot send headers), hand-made SVG charts, and one
// function per page. Every page has an <h1>; pages are /ui/<page>[/<id>] paths.

// ------------------------------------------------------------------ DOM helpers

const $ = (sel, root = document) => root.querySelector(sel);
const SVG_NS = 'http://www.w3.org/2000/svg';

function fill(el, attrs, kids) {
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'value' || k === 'checked') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid != null && kid !== false) el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}
const h = (tag, attrs, ...kids) => fill(document.createElement(tag), attrs, kids);
const s = (tag, attrs, ...kids) => fill(document.createElementNS(SVG_NS, tag), attrs, kids);

const fmt = (x, d = 3) => (x == null || !Number.isFinite(+x) ? '—' : (+x).toFixed(d));
const signed = (x, d = 3) => (x == null ? '—' : `${x < 0 ? '−' : '+'}${Math.abs(x).toFixed(d)}`);
const when = (t) => (t ? new Date(t).toLocaleString() : '—');
const shortId = (id) => String(id ?? '').slice(0, 8);
const lastSegment = (p) => String(p ?? '').replace(/\/+$/, '').split('/').pop();
const modelName = (spec) => spec?.model?.name || lastSegment(spec?.model?.checkpoint) || '—';
const ENDED = ['succeeded', 'failed', 'cancelled', 'interrupted'];
const STATUSES = ['queued', 'running', ...ENDED];
const param = (v) => (typeof v === 'number' ? String(+v.toPrecision(3)) : typeof v === 'string' ? v : JSON.stringify(v));
const params = (p) => Object.entries(p ?? {}).map(([k, v]) => `${k}=${param(v)}`).join(', ') || '—';

function datasetName(d = {}) {
  if (d.path) return lastSegment(d.path);
  if (d.hub_id) return `${d.hub_id} (Hub)`;
  if (d.id) return `upload ${shortId(d.id)}`;
  return '—';
}

function duration(sec) {
  if (sec == null || !Number.isFinite(sec)) return '';
  sec = Math.round(sec);
  if (sec < 60) return `${sec} s`;
  const m = Math.floor(sec / 60);
  return m < 60 ? `${m} min ${sec % 60} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

const sizeText = (n) => (n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KB` : `${(n / 1048576).toFixed(1)} MB`);

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});

const badge = (status) => h('span', { class: `badge st-${status}` }, status);
const muted = (text) => h('p', { class: 'muted' }, text);
const section = (title, id) => {
  const body = h('div');
  return { el: h('section', { id, 'aria-labelledby': `${id}-h` }, h('h2', { id: `${id}-h` }, title), body), body };
};

let nextFlash = null; // a message for the next page (`go(url, message)`)

function pageHeading(text, ...extra) {
  document.title = `${text} · metafora`;
  if (nextFlash) setTimeout(flash, 0, nextFlash);
  nextFlash = null;
  return h('h1', { tabindex: -1 }, text, ...extra);
}

// A message for the person: after `anchor`, where they acted, else under the page's h1.
function flash(text, kind = 'ok', anchor = null) {
  document.querySelectorAll('.flash').forEach((old) => old.remove());
  const msg = h('p', { class: `flash msg msg-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
  if (anchor?.isConnected) anchor.after(msg);
  else if ($('#app h1')) $('#app h1').after(msg);
  else $('#app').prepend(msg);
  msg.scrollIntoView({ block: 'nearest' });
}

// ------------------------------------------------------------------ API and the key

const KEY = 'metafora.apiKey';
let keyPrompt = null; // the open key form, shared by every request that got a 401

class ApiError extends Error {
  constructor(status, body) {
    const e = body?.error ?? {};
    super(e.message || `The server answered HTTP ${status}.`);
    Object.assign(this, { status, code: e.code, field: e.field, requestId: e.request_id });
  }
}

function errorText(e) {
  if (e instanceof ApiError) return e.message + (e.requestId ? ` (request ${e.requestId})` : '');
  if (e instanceof TypeError) return `Could not reach the server (${e.message}). Is it running?`;
  return String(e?.message ?? e);
}

// fetch() with the key; a 401 asks for the key (once for all waiting requests) and retries.
async function request(path, opts = {}) {
  for (;;) {
    const sent = sessionStorage.getItem(KEY);
    const headers = { ...opts.headers };
    if (sent) headers.Authorization = `Bearer ${sent}`;
    const res = await fetch(path, { ...opts, headers });
    if (res.status !== 401) return res;
    if (sessionStorage.getItem(KEY) !== sent) continue; // a new key came while this one ran
    if (sent) sessionStorage.removeItem(KEY);
    await askKey(Boolean(sent));
  }
}

async function api(path, { method = 'GET', json, form, signal } = {}) {
  const opts = { method, signal, headers: { Accept: 'application/json' } };
  if (json !== undefined) {
    opts.body = JSON.stringify(json);
    opts.headers['Content-Type'] = 'application/json';
  } else if (form) opts.body = form;
  const res = await request(path, opts);
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

function askKey(refused) {
  keyPrompt ??= new Promise((resolve) => {
    const box = $('#auth');
    const input = h('input', { id: 'api-key', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
    const submit = (e) => {
      e.preventDefault();
      sessionStorage.setItem(KEY, input.value.trim());
      box.hidden = true;
      box.replaceChildren();
      keyPrompt = null;
      updateKeyButton();
      resolve();
    };
    box.replaceChildren(
      h('h2', { id: 'auth-title' }, 'API key needed'),
      h('p', {}, 'This server was started with an API key. Type it to continue; it is kept in this tab only and sent with every request.'),
      refused && h('p', { class: 'msg msg-error', role: 'alert', id: 'auth-error' }, 'The server refused that key. Check it and try again.'),
      h('form', { class: 'row', onsubmit: submit },
        h('label', { for: 'api-key' }, 'API key'), input, h('button', { type: 'submit' }, 'Use this key')),
    );
    box.hidden = false;
    input.focus();
  });
  return keyPrompt;
}

function updateKeyButton() {
  $('#forget-key').hidden = !sessionStorage.getItem(KEY);
}

// Server-Sent Events over fetch(): calls onEvent(kind, data) for each event, reconnects with
// Last-Event-ID when the connection drops, and returns after `finished` (or an ended stream).
// onState('live' | 'reconnecting' | 'ended') reports the connection.
async function stream(path, onEvent, signal, onState = () => {}) {
  let lastId = null;
  let delay = 1000;
  while (!signal.aborted) {
    let seen = -1; // events on this connection; -1 until it is made
    let finished = false;
    try {
      const headers = { Accept: 'text/event-stream' };
      if (lastId) headers['Last-Event-ID'] = lastId;
      const res = await request(path, { headers, signal, cache: 'no-store' });
      if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
      delay = 1000;
      seen = 0;
      onState('live');
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      let ev = { kind: 'message', data: [] };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        const lines = buf.split(/\r\n|\r|\n/);
        buf = lines.pop();
        for (const line of lines) {
          if (line === '') {
            if (ev.data.length) {
              seen += 1;
              finished ||= ev.kind === 'finished';
              let data = ev.data.join('\n');
              try { data = JSON.parse(data); } catch { /* plain text */ }
              onEvent(ev.kind, data);
            }
            ev = { kind: 'message', data: [] };
            continue;
          }
          if (line.startsWith(':')) continue;
          const i = line.indexOf(':');
          const field = i < 0 ? line : line.slice(0, i);
          let val = i < 0 ? '' : line.slice(i + 1);
          if (val.startsWith(' ')) val = val.slice(1);
          if (field === 'event') ev.kind = val;
          else if (field === 'data') ev.data.push(val);
          else if (field === 'id') lastId = val;
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof ApiError && e.status >= 400 && e.status < 500) throw e;
    }
    // The server ends the stream after `finished`, or at once when the job had already ended.
    if (finished || (seen === 0 && lastId)) { onState('ended'); return; }
    onState('reconnecting');
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 15000);
  }
}

// Runs fn now and then every `ms` (or what fn returns) until the page is left.
async function every(ms, fn, signal) {
  while (!signal.aborted) {
    let wait = ms;
    try { wait = (await fn()) ?? ms; } catch (e) { if (!signal.aborted) flash(errorText(e), 'error'); }
    await sleep(wait, signal);
  }
}

// A link that downloads with the key (a plain link could not send it).
function downloadLink(href, label, filename) {
  const save = async (e) => {
    e.preventDefault();
    try {
      const res = await request(href);
      if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
      const url = URL.createObjectURL(await res.blob());
      const a = h('a', { href: url, download: filename });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) { flash(`Download failed: ${errorText(err)}`, 'error', e.target); }
  };
  return h('a', { href, download: filename, onclick: save }, label);
}

// ------------------------------------------------------------------ forms

// A labelled input with its hint and an error line, for inline 422 errors (`field`).
function field(name, label, input, hint) {
  const id = `f-${name.replace(/[^A-Za-z0-9_-]/g, '-')}`;
  Object.assign(input, { id, name });
  const described = [hint && `${id}-hint`, `${id}-err`].filter(Boolean).join(' ');
  input.setAttribute('aria-describedby', described);
  return h('div', { class: 'field', 'data-field': name },
    h('label', { for: id }, label), input,
    hint && h('p', { class: 'hint', id: `${id}-hint` }, hint),
    h('p', { class: 'field-error', id: `${id}-err`, hidden: true }));
}

const textInput = (attrs = {}) => h('input', { type: 'text', autocomplete: 'off', ...attrs });
const select = (options, attrs = {}) => h('select', attrs,
  options.map(([value, text]) => h('option', { value }, text)));

function clearErrors(form) {
  for (const p of form.querySelectorAll('.field-error')) { p.hidden = true; p.textContent = ''; }
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  $('.form-error', form)?.remove();
}

// Shows a message under the input named `name` (or a parent field: `training` for
// `training.foo`); falls back to `fallback`, then to a message above the buttons.
function showError(form, name, message, fallback) {
  let box = null;
  for (let n = name ?? ''; n && !box; n = n.includes('.') ? n.slice(0, n.lastIndexOf('.')) : '') {
    box = form.querySelector(`.field[data-field="${CSS.escape(n)}"]:not([hidden])`);
  }
  if (!box && fallback) box = form.querySelector(`.field[data-field="${CSS.escape(fallback)}"]`);
  if (!box) {
    $('.form-actions', form).before(h('p', { class: 'form-error msg msg-error', role: 'alert' }, message));
    return;
  }
  const err = $('.field-error', box);
  err.textContent = message;
  err.hidden = false;
  err.setAttribute('role', 'alert');
  const input = $('input, select, textarea', box);
  input.setAttribute('aria-invalid', 'true');
  box.closest('details')?.setAttribute('open', '');
  if (document.activeElement?.getAttribute('aria-invalid') !== 'true') input.focus(); // the first error
}

function setPath(obj, path, value) {
  const keys = path.split('.');
  let o = obj;
  for (const k of keys.slice(0, -1)) o = (o[k] ??= {});
  o[keys.at(-1)] = value;
}

// The form's filled-in fields as a nested object; numbers from data-kind="int|float".
function collect(form) {
  const out = {};
  const errors = [];
  for (const el of form.elements) {
    if (!el.name || el.disabled || el.type === 'submit' || el.value.trim() === '') continue;
    let v = el.value.trim();
    const kind = el.dataset.kind;
    if (kind === 'int' || kind === 'float') {
      const n = Number(v);
      if (!Number.isFinite(n) || (kind === 'int' && !Number.isInteger(n))) {
        errors.push([el.name, kind === 'int' ? 'Enter a whole number.' : 'Enter a number, such as 2e-5 or 0.01.']);
        continue;
      }
      v = n;
    }
    setPath(out, el.name, v);
  }
  return { value: out, errors };
}

// Sends a form: `send(value)` → result; inline errors for 422s that name a field.
async function submitForm(form, send, fallback) {
  clearErrors(form);
  const { value, errors } = collect(form);
  if (errors.length) { errors.forEach(([n, m]) => showError(form, n, m)); return null; }
  const button = $('button[type=submit]', form);
  button.disabled = true;
  try {
    return await send(value);
  } catch (e) {
    // A field's message stands alone; the request id helps with the rest.
    showError(form, e.field, e.field ? e.message : errorText(e), e.field ? fallback : null);
    return null;
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ SVG charts

// Drawn at about the size shown (SVG text scales with the chart): line charts sit two a row.
const chartWidth = (most = 760) => Math.max(300, Math.min(most, ($('#app')?.clientWidth || most) - 24));
const legend = (items) => h('ul', { class: 'legend' },
  items.map(([cls, name]) => h('li', {}, h('span', { class: `swatch ${cls}`, 'aria-hidden': 'true' }), name)));

function niceTicks(lo, hi, n = 5) {
  if (!(hi > lo)) hi = lo + 1;
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((k) => k * mag).find((k) => k >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(10));
  return out;
}
const tickText = (v) => (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5) ? v.toExponential(1) : String(+v.toPrecision(4)));

// Lines with points. series: [{name, cls, points: [[x, y, tooltip?]]}]; x/y: {min, max, label,
// int, log, ticks, fmt}; marks: vertical lines [{x, text, cls}].
function lineChart({ title, series, x = {}, y = {}, marks = [], empty = 'No data yet.', dots = true, id }) {
  const pts = series.flatMap((se) => se.points);
  if (!pts.length) return h('p', { class: 'muted empty', id }, empty);
  const W = chartWidth(540), H = 250, L = 60, R = 16, T = 22, B = 44;
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const xlo = x.min ?? Math.min(...xs), xhi = x.max ?? Math.max(...xs);
  let ylo = y.min ?? Math.min(...ys), yhi = y.max ?? Math.max(...ys);
  if (y.min == null) { ylo -= (yhi - ylo) * 0.08 || Math.abs(ylo) * 0.1 || 1; if (Math.min(...ys) >= 0) ylo = Math.max(0, ylo); }
  if (y.max == null) yhi += (yhi - ylo) * 0.08 || Math.abs(yhi) * 0.1 || 1;
  const tx = x.log ? Math.log10 : (v) => v;
  const pad = (tx(xhi) - tx(xlo)) * (x.pad ?? 0);
  const sx = (v) => L + (xhi > xlo ? (tx(v) - tx(xlo) + pad) / (tx(xhi) - tx(xlo) + 2 * pad) : 0.5) * (W - L - R);
  const sy = (v) => T + (1 - (v - ylo) / (yhi - ylo || 1)) * (H - T - B);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'chart', role: 'img', 'aria-label': title });
  for (const t of niceTicks(ylo, yhi, 4).filter((t) => t >= ylo && t <= yhi)) {
    svg.append(s('line', { class: 'grid', x1: L, x2: W - R, y1: sy(t), y2: sy(t) }),
      s('text', { class: 'tick', x: L - 6, y: sy(t) + 4, 'text-anchor': 'end' }, (y.fmt ?? tickText)(t)));
  }
  let xt = x.ticks ?? niceTicks(xlo, xhi, Math.max(1, Math.min(8, Math.floor((W - L) / 70))));
  if (x.int) xt = xt.filter(Number.isInteger);
  for (const t of xt.filter((t) => t >= xlo && t <= xhi)) {
    svg.append(s('text', { class: 'tick', x: sx(t), y: H - B + 16, 'text-anchor': 'middle' }, (x.fmt ?? tickText)(t)));
  }
  svg.append(
    s('line', { class: 'axis', x1: L, x2: W - R, y1: H - B, y2: H - B }),
    s('line', { class: 'axis', x1: L, x2: L, y1: T, y2: H - B }),
    s('text', { class: 'axis-title', x: (L + W - R) / 2, y: H - 8, 'text-anchor': 'middle' }, x.label ?? ''),
    s('text', { class: 'axis-title', transform: `translate(14 ${(T + H - B) / 2}) rotate(-90)`, 'text-anchor': 'middle' }, y.label ?? ''));
  marks.forEach((m, i) => svg.append(s('g', { class: `mark ${m.cls ?? ''}` },
    s('line', { x1: sx(m.x), x2: sx(m.x), y1: T - 4, y2: H - B }),
    s('text', { x: sx(m.x) + 4, y: T - 8 + i * 12, 'text-anchor': sx(m.x) > W - 120 ? 'end' : 'start' }, m.text))));
  for (const se of series) {
    const g = s('g', { class: `series ${se.cls}`, 'data-series': se.name });
    if (se.points.length > 1 && !se.noLine) {
      g.append(s('polyline', { points: se.points.map((p) => `${sx(p[0])},${sy(p[1])}`).join(' ') }));
    }
    if (dots || se.points.length === 1) {
      for (const p of se.points) {
        g.append(s('circle', { class: `pt${p[3] ? ` ${p[3]}` : ''}`, cx: sx(p[0]), cy: sy(p[1]), r: 4 },
          s('title', {}, p[2] ?? `${se.name}: ${fmt(p[1], 4)} at ${x.label ?? 'x'} ${p[0]}`)));
      }
    }
    svg.append(g);
  }
  return h('figure', { class: 'chart-box', id }, h('figcaption', {}, title), svg, legend(series.map((se) => [se.cls, se.name])));
}

// Horizontal grouped bars. groups: [{label, bars: [{key, cls, name, value, text}]}], values 0..max.
function barChart({ title, groups, max = 1, series, id }) {
  const W = chartWidth(), LW = Math.min(150, Math.round(W * 0.3)), VW = 110, BH = 18;
  const svg = s('svg', { class: 'chart bars', role: 'img', 'aria-label': title });
  let y = 4;
  for (const g of groups) {
    const gh = g.bars.length * (BH + 4);
    svg.append(s('text', { class: 'label', x: 0, y: y + gh / 2 + 2 }, g.label.length > 18 ? `${g.label.slice(0, 17)}…` : g.label));
    for (const b of g.bars) {
      const w = (W - LW - VW) * Math.max(0, Math.min(1, (b.value ?? 0) / (max || 1)));
      svg.append(
        s('rect', { class: `bar ${b.cls}`, x: LW, y, width: Math.max(w, 1.5), height: BH, 'data-label': g.label, 'data-series': b.key },
          s('title', {}, `${g.label}, ${b.name}: ${b.text}`)),
        s('text', { class: 'value', x: LW + w + 6, y: y + BH - 5 }, b.text));
      y += BH + 4;
    }
    y += 12;
  }
  fill(svg, { viewBox: `0 0 ${W} ${y}`, width: W, height: y }, []);
  return h('figure', { class: 'chart-box', id }, h('figcaption', {}, title), svg, legend(series));
}

const table = (heads, rows, attrs = {}) => h('div', { class: 'table-wrap' }, h('table', attrs,
  h('thead', {}, h('tr', {}, heads.map((t) => h('th', { scope: 'col' }, t)))),
  h('tbody', {}, rows)));

// td with the column name for the narrow layout (CSS shows it before the value).
const td = (label, ...kids) => h('td', { 'data-label': label }, h('div', {}, ...kids));

// ------------------------------------------------------------------ Jobs

const JOB_FIELDS = [
  ['training.learning_rate', 'Learning rate', 'float', '2e-5', 'AdamW peak rate (at most 10).'],
  ['training.num_train_epochs', 'Epochs', 'int', '5'],
  ['training.per_device_train_batch_size', 'Batch size', 'int', '8'],
  ['training.weight_decay', 'Weight decay', 'float', '0.01'],
  ['training.warmup_steps', 'Warm-up steps', 'float', '0', 'Steps, or a ratio of all steps when below 1.'],
  ['seed', 'Seed', 'int', '42'],
];
const MORE_FIELDS = [
  ['training.gradient_accumulation_steps', 'Gradient accumulation steps', 'int', '1'],
  ['training.per_device_eval_batch_size', 'Eval batch size', 'int', '8'],
  ['training.max_grad_norm', 'Max gradient norm', 'float', '1.0', '0 disables clipping.'],
  ['training.early_stopping_patience', 'Early-stopping patience', 'int', 'none', 'Epochs without improvement before stopping.'],
  ['training.max_length', 'Max length (tokens)', 'int', '512'],
  ['training.eval_train_subset', 'Score this many training sentences per epoch', 'int', 'none'],
];

function numberField([name, label, kind, def, hint]) {
  const input = textInput({ inputmode: 'decimal', placeholder: def, 'data-kind': kind });
  return field(name, label, input, `Default ${def}.${hint ? ` ${hint}` : ''}`);
}

function jobForm(datasets, preselect) {
  const source = select([['path', 'Local folder (path)'], ['id', 'Uploaded dataset'], ['hub_id', 'Hugging Face Hub id']]);
  const sourceField = field('dataset', 'Dataset from', source); // its box shows errors about `dataset`
  source.name = '';
  const dsFields = {
    path: field('dataset.path', 'Dataset folder', textInput({ placeholder: 'assets/data/ca_meta4xnli' }), 'train/validation/test.jsonl and labels.json, under an allowed path.'),
    id: field('dataset.id', 'Uploaded dataset', select(datasets.length
      ? datasets.map((d) => [d.id, `${d.name} (${shortId(d.id)})`]) : [['', 'No uploads yet — see Datasets']])),
    hub_id: field('dataset.hub_id', 'Hub dataset id', textInput({ placeholder: 'owner/dataset' })),
  };
  const showSource = () => {
    for (const [k, f] of Object.entries(dsFields)) {
      f.hidden = k !== source.value;
      $('input, select', f).disabled = k !== source.value;
    }
  };
  source.addEventListener('change', showSource);
  if (preselect) { source.value = 'id'; $('select', dsFields.id).value = preselect; }
  showSource();
  const form = h('form', { id: 'job-form', novalidate: true },
    h('div', { class: 'grid' },
      field('model.checkpoint', 'Model checkpoint', textInput({ required: true, placeholder: 'projecte-aina/roberta-large-ca-v2' }), 'Required. A local HF model directory or a Hub id.'),
      field('model.name', 'Display name', textInput({ placeholder: 'last path segment' }), 'Default: the last segment of the checkpoint.'),
      sourceField,
      Object.values(dsFields),
      JOB_FIELDS.map(numberField),
      field('deploy_as', 'Deploy as', textInput({ placeholder: 'not deployed' }), 'Optional: serve the best model under this /v1/detect name when the job succeeds.')),
    h('details', {}, h('summary', {}, 'More training options'),
      h('div', { class: 'grid' },
        field('training.lr_scheduler', 'Learning-rate schedule', select([['', 'linear (default)'], ['cosine', 'cosine'], ['constant', 'constant'], ['constant_with_warmup', 'constant with warm-up']])),
        field('training.metric_for_best_model', 'Best checkpoint by', select([['', 'f1 (default)'], ['precision', 'precision'], ['recall', 'recall'], ['accuracy', 'accuracy'], ['loss', 'loss']])),
        field('training.class_weights', 'Class weights', select([['', 'none (default)'], ['balanced', 'balanced']])),
        MORE_FIELDS.map(numberField))),
    h('div', { class: 'form-actions' },
      h('button', { type: 'submit' }, 'Start job'),
      h('button', { type: 'button', class: 'secondary', onclick: startDemo }, 'Start the bundled demo instead')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const job = await submitForm(form, (spec) => api('/v1/jobs', { method: 'POST', json: spec }));
    if (job) go(`/ui/jobs/${job.id}`);
  });
  return form;
}

async function startDemo() {
  try {
    const job = await api('/v1/jobs', { method: 'POST', json: { preset: 'demo' } });
    go(`/ui/jobs/${job.id}`);
  } catch (e) { flash(errorText(e), 'error'); }
}

// Buttons for what a job's status allows; after(label, message) runs when one succeeded.
function jobActions(job, after, anchor) {
  const act = (label, method, path, done, confirmText) => h('button', {
    type: 'button', class: 'small', 'data-action': label,
    onclick: async (e) => {
      if (confirmText && !confirm(confirmText)) return;
      e.target.disabled = true;
      try { await api(path, { method }); after(label, done); } catch (err) { flash(errorText(err), 'error', anchor()); e.target.disabled = false; }
    },
  }, label);
  const base = `/v1/jobs/${job.id}`;
  return [
    !ENDED.includes(job.status) && act('Cancel', 'POST', `${base}/cancel`, `Cancelling job ${shortId(job.id)}.`),
    ENDED.includes(job.status) && act('Delete', 'DELETE', base, `Deleted job ${shortId(job.id)}.`, `Delete job ${shortId(job.id)} and its files?`),
    job.status === 'succeeded' && job.push?.status === 'failed' && act('Retry push', 'POST', `${base}/push`, 'Push started again.'),
  ];
}

function progressCell(job) {
  const p = job.progress ?? {};
  if (job.status === 'queued') return [h('progress', { max: 1, value: 0 }), h('span', { class: 'muted' }, 'Waiting in the queue')];
  if (job.status === 'failed') return h('span', { class: 'error-text', title: job.error ?? '' }, (job.error ?? 'Failed').slice(0, 90));
  const done = job.status === 'succeeded';
  const max = p.steps || 1;
  const text = job.status === 'running'
    ? stageText(p) + (p.eta_seconds != null && p.stage === 'training' ? ` · ETA ${duration(p.eta_seconds)}` : '')
    : done ? `${p.epochs ?? '?'} epochs` : `stopped at step ${p.step ?? 0}/${p.steps ?? '?'}`;
  return [h('progress', { max, value: done ? max : Math.min(p.step ?? 0, max) }), h('span', { class: 'muted' }, text)];
}

function stageText(p) {
  if (p.stage === 'training') return `epoch ${p.epoch}/${p.epochs} · step ${p.step}/${p.steps}`;
  if (p.stage === 'downloading') return `downloading ${p.file ?? ''}`;
  return (p.stage ?? 'starting').replaceAll('_', ' ');
}

const f1Cache = new Map(); // job id → fine-tuned test F1 (a finished job's results do not change)

function bestCell(job) {
  if (job.status !== 'succeeded') return job.best_checkpoint?.epoch ? `epoch ${job.best_checkpoint.epoch}` : '—';
  const f1 = f1Cache.get(job.id);
  return [h('span', { class: 'f1' }, f1 == null ? '…' : fmt(f1)),
    h('span', { class: 'muted' }, ` (${signed(job.improvement_f1)} vs base; best epoch ${job.best_checkpoint?.epoch ?? '?'})`)];
}

function jobRow(job) {
  return h('tr', { 'data-id': job.id, 'data-status': job.status },
    td('Job', h('a', { href: `/ui/jobs/${job.id}` }, shortId(job.id)), h('br'), h('span', { class: 'muted' }, when(job.created_at))),
    td('Status', badge(job.status), job.study && h('span', { class: 'muted' }, ` trial ${job.study.trial ?? ''}${job.study.pruned ? ' (pruned)' : ''}`)),
    td('Model', modelName(job.spec)),
    td('Dataset', datasetName(job.spec?.dataset)),
    td('Seed', String(job.spec?.seed ?? '')),
    td('Progress', h('div', { class: 'progress' }, progressCell(job))),
    td('Test F1', bestCell(job)),
    td('Actions', h('div', { class: 'actions' }, jobActions(job, (_, done) => refreshJobs?.(done), () => $('#job-list .filters')))));
}

let refreshJobs = null;

async function jobsPage(main, signal) {
  const q = new URLSearchParams(location.search);
  main.append(pageHeading('Jobs'));
  const [datasets, studies] = await Promise.all([
    api('/v1/datasets', { signal }).then((r) => r.datasets).catch(() => []),
    api('/v1/studies?limit=200', { signal }).then((r) => r.studies).catch(() => []),
  ]);
  const form = section('New job', 'new-job');
  form.body.append(h('p', { class: 'hint' }, 'Empty fields take the documented defaults shown in grey.'), jobForm(datasets, q.get('dataset')));

  const status = select([['', 'Any status'], ...STATUSES.map((st) => [st, st])], { id: 'filter-status' });
  const study = select([['', 'Any job'], ...studies.map((st) => [st.id, `Study ${st.name ?? shortId(st.id)}`])], { id: 'filter-study' });
  status.value = q.get('status') ?? '';
  study.value = q.get('study_id') ?? '';
  const tbody = h('tbody');
  const list = section('All jobs', 'job-list');
  const empty = h('p', { class: 'muted empty', hidden: true });
  const more = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Load older jobs');
  list.body.append(
    h('form', { class: 'row filters', role: 'search', onsubmit: (e) => e.preventDefault() },
      h('label', { for: 'filter-status' }, 'Status'), status, h('label', { for: 'filter-study' }, 'Study'), study),
    h('div', { class: 'table-wrap', hidden: true }, h('table', { class: 'jobs cards' },
      h('caption', { class: 'sr-only' }, 'Jobs, newest first'),
      h('thead', {}, h('tr', {}, ['Job', 'Status', 'Model', 'Dataset', 'Seed', 'Progress', 'Test F1', 'Actions'].map((t) => h('th', { scope: 'col' }, t)))),
      tbody)),
    empty, more);
  main.append(form.el, list.el);

  let pages = 1;
  const query = () => {
    const p = new URLSearchParams();
    if (status.value) p.set('status', status.value);
    if (study.value) p.set('study_id', study.value);
    return p;
  };
  const load = async () => {
    const jobs = [];
    let cursor = null;
    for (let i = 0; i < pages; i++) {
      const p = query();
      p.set('limit', '50');
      if (cursor) p.set('cursor', cursor);
      const r = await api(`/v1/jobs?${p}`, { signal });
      jobs.push(...r.jobs);
      cursor = r.next_cursor;
      if (!cursor) break;
    }
    more.hidden = !cursor;
    await fetchF1s(jobs.filter((j) => j.status === 'succeeded' && !f1Cache.has(j.id)), signal);
    drawRows(jobs);
    return jobs.some((j) => !ENDED.includes(j.status)) ? 1500 : 8000;
  };
  const drawRows = (jobs) => {
    const rows = jobs.map((job) => {
      const key = JSON.stringify([job, f1Cache.get(job.id)]); // what the row was drawn from
      const old = tbody.querySelector(`tr[data-id="${job.id}"]`);
      if (old?.key === key) return old;
      const row = Object.assign(jobRow(job), { key });
      const focused = old?.contains(document.activeElement) && document.activeElement.dataset.action;
      if (focused) queueMicrotask(() => row.querySelector(`[data-action="${focused}"]`)?.focus());
      return row;
    });
    // Move only what changed: a node taken out of the page loses the keyboard focus.
    rows.forEach((row, i) => { if (tbody.children[i] !== row) tbody.insertBefore(row, tbody.children[i] ?? null); });
    while (tbody.children.length > rows.length) tbody.lastChild.remove();
    const filtered = status.value || study.value;
    empty.hidden = jobs.length > 0;
    tbody.closest('.table-wrap').hidden = jobs.length === 0;
    empty.textContent = filtered ? 'No jobs match these filters.' : 'No jobs yet — start one with the form above.';
  };
  const onFilter = () => {
    history.replaceState(null, '', `/ui/jobs${query().size ? `?${query()}` : ''}`);
    pages = 1;
    load().catch((e) => flash(errorText(e), 'error'));
  };
  status.addEventListener('change', onFilter);
  study.addEventListener('change', onFilter);
  more.addEventListener('click', () => { pages += 1; load(); });
  refreshJobs = (done) => { flash(done, 'ok', $('.filters', list.body)); load().catch((e) => flash(errorText(e), 'error')); };
  every(1500, load, signal);
}

// Fine-tuned test F1 of succeeded jobs for the list (the list itself does not carry it).
async function fetchF1s(jobs, signal) {
  const queue = [...jobs];
  const worker = async () => {
    for (let job; (job = queue.shift());) {
      const r = await api(`/v1/jobs/${job.id}/results`, { signal }).catch(() => null);
      f1Cache.set(job.id, r?.finetuned?.f1 ?? null);
    }
  };
  await Promise.all([worker(), worker(), worker()]);
}

// ------------------------------------------------------------------ Job

// Label distribution from a `prepared` event or /results, as [{split, sentences, words, labels}].
function normDist(rows) {
  if (!rows?.length) return null;
  if (rows[0].labels) {
    return rows.map((r) => ({ split: r.split, sentences: r.sentences, words: r.tokens, withEntity: r.sentences_with_entity,
      labels: Object.entries(r.labels).map(([label, v]) => ({ label, ...v })) }));
  }
  const splits = new Map();
  for (const r of rows) {
    if (!splits.has(r.split)) splits.set(r.split, { split: r.split, sentences: r.sentences, words: r.words, withEntity: r.sentences_with_entity, labels: [] });
    splits.get(r.split).labels.push({ label: r.label, count: r.count, percent: r.percent });
  }
  return [...splits.values()];
}

function distChart(dist, title) {
  const labels = [...new Set(dist.flatMap((d) => d.labels.map((l) => l.label)))].sort((a, b) => (a === 'O') - (b === 'O') || a.localeCompare(b));
  return [
    barChart({
      title, max: 100,
      groups: dist.map((d) => ({ label: d.split,
        bars: labels.map((l, i) => {
          const v = d.labels.find((x) => x.label === l) ?? { count: 0, percent: 0 };
          return { key: l, cls: `s-${i % 6}`, name: l, value: v.percent, text: `${v.percent.toFixed(1)} % (${v.count})` };
        }) })),
      series: labels.map((l, i) => [`s-${i % 6}`, l]),
    }),
    table(['Split', 'Sentences', 'Words', 'Sentences with an entity'], dist.map((d) => h('tr', {},
      td('Split', d.split), td('Sentences', d.sentences), td('Words', d.words), td('Sentences with an entity', d.withEntity)))),
  ];
}

function bestEpoch(epochs, metric) {
  const m = (metric ?? 'f1').replace(/^eval_/, '');
  const val = (e) => (m === 'loss' ? -e.eval_loss : e.eval?.[m]);
  let best = null;
  for (const e of epochs) if (best == null || val(e) > val(best)) best = e;
  return best?.epoch ?? null;
}

async function jobPage(main, signal, id) {
  let job;
  try {
    job = await api(`/v1/jobs/${encodeURIComponent(id)}`, { signal });
  } catch (e) {
    if (e.status !== 404 && e.status !== 422) throw e;
    main.append(pageHeading('Job not found'), h('p', {}, `No job has the id “${id}”; it may have been deleted. `, h('a', { href: '/ui/jobs' }, 'See all jobs')));
    return;
  }
  const st = { job, results: null, steps: [], epochs: new Map(), base: null, final: null, dist: null, warnings: [], stopped: null,
    step: job.progress?.step ?? 0, total: job.progress?.steps ?? 0, planned: job.progress?.epochs || job.spec?.training?.num_train_epochs, live: {}, notes: [] };
  const status = h('span');
  const actions = h('div', { class: 'actions' });
  const bar = h('progress', { id: 'job-progress', max: 1, value: 0, 'aria-labelledby': 'job-progress-text' });
  const barText = h('p', { id: 'job-progress-text', class: 'progress-text' });
  const notes = h('ul', { class: 'notes', 'aria-live': 'polite' });
  const live = h('span', { id: 'live', class: 'live' });
  const liveText = { live: 'Live updates on', reconnecting: 'Connection lost, reconnecting…', ended: '' };
  const parts = {
    epochs: section('Validation per epoch', 'epochs'), steps: section('Training per step', 'steps'),
    results: section('Test results: base vs fine-tuned', 'results'), dist: section('Label distribution', 'dist'),
    deploy: section('Deploy', 'deploy'), files: section('Files', 'files'), spec: section('Specification', 'spec'),
  };
  main.append(pageHeading(`Job ${shortId(id)}`, ' ', status), h('p', { class: 'meta' }, `${modelName(job.spec)} on ${datasetName(job.spec?.dataset)}, seed ${job.spec?.seed}. `, h('a', { href: '/ui/jobs' }, 'All jobs'), ' ', live),
    h('div', { class: 'progress wide' }, bar, barText), notes, actions, ...Object.values(parts).map((p) => p.el));

  const draw = {
    head() {
      const j = st.job;
      status.replaceChildren(badge(j.status));
      const after = (what, done) => (what === 'Delete' ? go('/ui/jobs', done) : (flash(done, 'ok', actions), refresh()));
      actions.replaceChildren(...jobActions(j, after, () => actions).filter(Boolean));
      parts.spec.body.replaceChildren(specView(j));
      parts.files.body.replaceChildren(filesView(j));
      if (j.status === 'succeeded' && !$('form', parts.deploy.body)) parts.deploy.body.replaceChildren(deployForm(j));
      if (j.status !== 'succeeded') parts.deploy.body.replaceChildren(muted('A succeeded job’s best model can be deployed here.'));
    },
    progress() {
      const j = st.job;
      const total = st.total || j.progress?.steps || 0;
      bar.max = total || 1;
      bar.value = j.status === 'succeeded' ? bar.max : Math.min(st.step, total);
      const p = { ...j.progress, ...st.live, step: st.step, steps: total };
      barText.textContent = {
        queued: 'Waiting in the queue.',
        running: `${stageText(p)}${p.stage === 'training' && p.eta_seconds != null ? ` · about ${duration(p.eta_seconds)} left` : ''}`,
        succeeded: `Finished ${when(j.finished_at)} (started ${when(j.started_at)}).`,
        failed: `Failed: ${j.error ?? 'no reason given'}`,
      }[j.status] ?? `${j.status} at step ${st.step} of ${total}.`;
      notes.replaceChildren(...st.warnings.concat(st.notes).map((n) => h('li', {}, n)));
    },
    dist() {
      const dist = st.dist ?? normDist(st.results?.label_distribution);
      parts.dist.body.replaceChildren(...(dist ? distChart(dist, 'Share of words per label, by split') : [muted('Shown once the data is loaded and checked.')]));
    },
    steps() {
      const pts = [...new Map(st.steps.map((p) => [p.step, p])).values()].sort((a, b) => a.step - b.step);
      const x = { label: 'step', int: true, min: 0, max: Math.max(st.total, ...pts.map((p) => p.step), 1) };
      const dots = pts.length < 80;
      parts.steps.body.replaceChildren(
        muted('Sampled from the live progress events (about one a second).'),
        h('div', { class: 'charts' },
          lineChart({ id: 'loss-chart', title: 'Training loss', x, y: { label: 'loss' }, dots, series: [{ name: 'training loss', cls: 's-loss', points: pts.map((p) => [p.step, p.loss]) }], empty: 'No training steps yet.' }),
          lineChart({ id: 'lr-chart', title: 'Learning rate', x, y: { label: 'learning rate', min: 0 }, dots, series: [{ name: 'learning rate', cls: 's-lr', points: pts.map((p) => [p.step, p.learning_rate]) }], empty: 'No training steps yet.' })));
    },
    epochs() { parts.epochs.body.replaceChildren(...epochView(st)); },
    results() { parts.results.body.replaceChildren(...resultsView(st)); },
  };
  const dirty = new Set(Object.keys(draw));
  let timer = null;
  const mark = (...names) => {
    names.forEach((n) => dirty.add(n));
    timer ??= setTimeout(() => {
      timer = null;
      for (const n of dirty) draw[n]();
      dirty.clear();
    }, 25);
  };
  const refresh = async () => {
    [st.job, st.results] = await Promise.all([api(`/v1/jobs/${id}`, { signal }), api(`/v1/jobs/${id}/results`, { signal }).catch(() => st.results)]);
    st.planned = st.job.progress?.epochs || st.planned;
    mark(...Object.keys(draw));
  };
  mark();
  refresh().catch(() => {});
  const onEvent = (kind, d) => {
    switch (kind) {
      case 'status': st.job.status = d.status; mark('head', 'progress'); break;
      case 'download': st.live = { stage: 'downloading', file: d.file }; mark('progress'); break;
      case 'prepared': case 'resumed':
        st.dist = normDist(d.label_distribution) ?? st.dist;
        st.warnings = d.warnings ?? [];
        st.total = d.total_steps ?? st.total;
        st.planned = d.epochs ?? st.planned;
        st.live = { stage: 'evaluating_base' };
        if (kind === 'resumed') st.notes.push(`Resumed from ${d.resumed_from ?? 'the last checkpoint'}.`);
        mark('dist', 'progress');
        break;
      case 'base_evaluated': st.base = d; mark('results'); break;
      case 'progress':
        st.steps.push(d);
        st.step = Math.max(st.step, d.step);
        st.total = d.steps || st.total;
        st.live = { stage: d.stage, epoch: d.epoch, epochs: d.epochs, eta_seconds: d.eta_seconds };
        mark('progress', 'steps');
        break;
      case 'epoch':
        st.epochs.set(d.epoch, d);
        st.step = Math.max(st.step, d.step);
        st.live = { ...st.live, epoch: Math.min(d.epoch + 1, st.planned ?? d.epoch + 1) };
        mark('progress', 'epochs');
        break;
      case 'stopped_early': st.stopped = d; mark('epochs'); break;
      case 'final_evaluated': st.final = d; st.live = { stage: 'testing' }; mark('results', 'progress'); break;
      case 'deployed': st.notes.push(`Deployed as “${d.model}” (version ${d.version}).`); mark('progress'); break;
      case 'deploy_failed': st.notes.push(`Deploying as “${d.model}” failed: ${d.error}`); mark('progress'); break;
      case 'pushed': st.notes.push(`Pushed to the Hub: ${d.url ?? d.repo_id}`); mark('progress'); break;
      case 'push_failed': st.notes.push(`Push to the Hub failed: ${d.error ?? ''}`); mark('progress'); break;
      case 'finished':
        Object.assign(st.job, { status: d.status, error: d.error });
        mark('head', 'progress');
        refresh().catch(() => {});
        break;
      default:
    }
  };
  const onState = (state) => { live.textContent = liveText[state]; live.dataset.state = state; };
  stream(`/v1/jobs/${id}/events`, onEvent, signal, onState).catch((e) => flash(`Live updates stopped: ${errorText(e)}`, 'error'));
}

function specView(job) {
  const sp = job.spec ?? {};
  const t = sp.training ?? {};
  const ds = sp.dataset ?? {};
  const rows = [
    ['Model checkpoint', sp.model?.checkpoint], ['Dataset', ds.path ?? ds.hub_id ?? (ds.id && h('a', { href: '/ui/datasets' }, `upload ${ds.id}`))],
    ['Learning rate', t.learning_rate], ['Epochs', t.num_train_epochs], ['Batch size', t.per_device_train_batch_size],
    ['Weight decay', t.weight_decay], ['Warm-up steps', t.warmup_steps], ['Schedule', t.lr_scheduler], ['Best checkpoint by', t.metric_for_best_model],
    ['Early-stopping patience', t.early_stopping_patience ?? 'none'], ['Seed', sp.seed], ['Deploy as', sp.deploy_as ?? 'not deployed'],
    ['Created', when(job.created_at)], ['Device', job.device ?? '—'], ['Attempts', job.attempts],
  ];
  if (job.study) rows.unshift(['Study', h('a', { href: `/ui/studies/${job.study.id}` }, `trial ${job.study.trial ?? '?'}: ${params(job.study.params)}${job.study.pruned ? ' (pruned)' : ''}`)]);
  return h('div', {},
    h('dl', { class: 'spec' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '—')])),
    h('details', {}, h('summary', {}, 'Full specification (JSON)'), h('pre', {}, JSON.stringify(sp, null, 2))));
}

function filesView(job) {
  const dir = job.best_checkpoint?.model_dir;
  const ended = ENDED.includes(job.status);
  return h('ul', {},
    h('li', {}, ended && job.status !== 'cancelled'
      ? downloadLink(`/v1/jobs/${job.id}/results.csv`, 'results.csv (the notebook’s row)', `results-${shortId(job.id)}.csv`)
      : 'results.csv: written when the job ends'),
    h('li', {}, 'Best model directory on the server: ', h('code', {}, dir ?? 'not yet')),
    h('li', {}, ended
      ? downloadLink(`/v1/jobs/${job.id}/report.json`, 'report.json (spec, evaluations, epochs)', `report-${shortId(job.id)}.json`)
      : 'report.json: written when the job ends'),
    h('li', {}, 'TensorBoard logs on the server: ', h('code', {}, `jobs/${job.id}/tensorboard/`), ' (under its data directory)'));
}

function epochView(st) {
  const eps = [...st.epochs.values()].sort((a, b) => a.epoch - b.epoch);
  const metric = st.job.spec?.training?.metric_for_best_model;
  const best = st.job.best_checkpoint?.epoch ?? bestEpoch(eps, metric);
  const x = { label: 'epoch', int: true, pad: 0.03, min: 1, max: Math.max(st.planned ?? 1, ...eps.map((e) => e.epoch), 1) };
  const marks = best ? [{ x: best, text: `best: epoch ${best}`, cls: 'best' }] : [];
  const pruned = st.stopped?.why?.kind === 'pruned' || st.job.study?.pruned;
  if (st.stopped) marks.push({ x: st.stopped.after_epoch, text: pruned ? 'pruned here' : 'stopped early', cls: 'stop' });
  const pt = (e, v, name) => [e.epoch, v, `${name} ${fmt(v)} at epoch ${e.epoch}${e.epoch === best ? ' (best)' : ''}`, e.epoch === best ? 'best' : ''];
  const out = [];
  if (st.stopped) {
    const why = st.stopped.why ?? {};
    const at = st.stopped.after_epoch < st.planned ? `Stopped after epoch ${st.stopped.after_epoch} of ${st.planned}` : `At the last epoch (${st.stopped.after_epoch})`;
    out.push(h('p', { class: 'msg msg-warn' }, `${at}: `,
      why.kind === 'pruned' ? `pruned by the study (${why.reason})` : `no improvement for ${why.epochs_without_improvement} epochs (early stopping)`, '.'));
  } else if (pruned) out.push(h('p', { class: 'msg msg-warn' }, 'This trial was pruned by its study.'));
  out.push(h('div', { class: 'charts' },
    lineChart({ id: 'epoch-chart', title: 'Validation precision, recall and F1', x, y: { label: 'score', min: 0, max: 1 }, marks,
      empty: 'No epoch finished yet: each epoch adds a point here.',
      series: [['precision', 's-precision'], ['recall', 's-recall'], ['F1', 's-f1']].map(([name, cls]) => ({ name, cls, points: eps.map((e) => pt(e, e.eval?.[name.toLowerCase()], name)) })) }),
    lineChart({ id: 'epoch-loss-chart', title: 'Loss per epoch', x, y: { label: 'loss' }, marks, empty: 'No epoch finished yet.',
      series: [{ name: 'training loss', cls: 's-loss', points: eps.map((e) => pt(e, e.train_loss, 'training loss')) },
        { name: 'validation loss', cls: 's-val', points: eps.map((e) => pt(e, e.eval_loss, 'validation loss')) }] })));
  if (eps.length) {
    out.push(table(['Epoch', 'Step', 'Train loss', 'Val loss', 'Precision', 'Recall', 'F1', 'Learning rate'], eps.map((e) => h('tr', { class: e.epoch === best ? 'best' : '' },
      td('Epoch', e.epoch === best ? `${e.epoch} (best)` : e.epoch), td('Step', e.step), td('Train loss', fmt(e.train_loss, 4)), td('Val loss', fmt(e.eval_loss, 4)),
      td('Precision', fmt(e.eval?.precision)), td('Recall', fmt(e.eval?.recall)), td('F1', fmt(e.eval?.f1)), td('Learning rate', e.learning_rate?.toExponential(2)))), { class: 'cards' }));
  }
  return out;
}

function resultsView(st) {
  const r = st.results;
  const base = r?.base ?? st.base;
  const fine = r?.finetuned ?? st.final;
  if (!base && !fine) {
    return [muted(ENDED.includes(st.job.status) ? 'This job ended before the base model was evaluated: no test results.'
      : 'The base model is scored on test before training and the best checkpoint after the last epoch.')];
  }
  const labels = [...new Set([...Object.keys(base?.per_label ?? {}), ...Object.keys(fine?.per_label ?? {})])].sort();
  const improvement = r?.improvement_f1 ?? (base && fine ? fine.f1 - base.f1 : null);
  const perLabel = (m, l) => m?.per_label?.[l];
  const bars = (l) => [['base', 's-base', 'base model', base], ['finetuned', 's-finetuned', 'fine-tuned', fine]]
    .filter(([, , , m]) => m).map(([key, cls, name, m]) => ({ key, cls, name, value: perLabel(m, l)?.f1 ?? 0, text: `F1 ${fmt(perLabel(m, l)?.f1)}` }));
  return [
    h('p', { class: 'headline' }, `Test F1: base ${fmt(base?.f1)} → fine-tuned ${fine ? fmt(fine.f1) : '(after training)'}`,
      fine && h('strong', { id: 'improvement' }, ` ${signed(improvement)}`), r?.best_epoch ? ` · best epoch ${r.best_epoch}` : ''),
    barChart({ id: 'label-bars', title: 'F1 per label on test', groups: labels.map((l) => ({ label: l, bars: bars(l) })),
      series: [['s-base', 'base model (fresh head)'], ['s-finetuned', 'fine-tuned (best checkpoint)']] }),
    table(['Label', 'Support', 'Base P / R / F1', 'Fine-tuned P / R / F1', 'F1 change'], labels.map((l) => {
      const prf = (m) => (m ? `${fmt(m.precision)} / ${fmt(m.recall)} / ${fmt(m.f1)}` : '—');
      const d = r?.improvement_f1_per_label?.[l] ?? (fine && base ? (perLabel(fine, l)?.f1 ?? 0) - (perLabel(base, l)?.f1 ?? 0) : null);
      return h('tr', {}, td('Label', l), td('Support', perLabel(fine ?? base, l)?.support ?? '—'),
        td('Base P / R / F1', prf(perLabel(base, l))), td('Fine-tuned P / R / F1', prf(perLabel(fine, l))), td('F1 change', signed(d)));
    }), { class: 'cards' }),
  ];
}

function deployForm(job) {
  const form = h('form', { class: 'row', novalidate: true },
    field('name', 'Model name', textInput({ required: true, placeholder: 'mine', pattern: '[A-Za-z0-9_.\\-]{1,64}' }), 'Letters, digits, “_”, “.” or “-”. An existing name is swapped without dropping requests.'),
    h('div', { class: 'form-actions' }, h('button', { type: 'submit' }, 'Deploy best model')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const m = await submitForm(form, (v) => api('/v1/models', { method: 'POST', json: { name: v.name, job_id: job.id } }), 'name');
    if (m) flash(`Deployed as “${m.name}” (version ${m.version}). Try it on the Detect page.`, 'ok', form);
  });
  return form;
}

// ------------------------------------------------------------------ Studies

async function studiesPage(main, signal) {
  main.append(pageHeading('Studies'));
  const list = section('All studies', 'study-list');
  const create = section('New study', 'new-study');
  main.append(list.el, create.el);
  const spec = h('textarea', { rows: 10, spellcheck: 'false', placeholder: '{"models": [{"checkpoint": "…"}], "dataset": {"path": "…"}, "seeds": [42, 43], "search": {"grid": {"learning_rate": [2e-5, 5e-5]}}}' });
  const form = h('form', { novalidate: true }, field('spec', 'Study specification (JSON, as POST /v1/studies; see the README’s Studies section)', spec),
    h('div', { class: 'form-actions' }, h('button', { type: 'submit' }, 'Start study')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(form);
    let body;
    try { body = JSON.parse(spec.value); } catch (err) { showError(form, 'spec', `Not valid JSON: ${err.message}`); return; }
    try {
      const st = await api('/v1/studies', { method: 'POST', json: body });
      go(`/ui/studies/${st.id}`);
    } catch (err) { showError(form, 'spec', errorText(err)); }
  });
  create.body.append(form);
  await every(3000, async () => {
    const { studies } = await api('/v1/studies?limit=100', { signal });
    list.body.replaceChildren(studies.length ? table(['Study', 'Status', 'Trials', 'Best trial', 'Created'], studies.map((st) => h('tr', {},
      td('Study', h('a', { href: `/ui/studies/${st.id}` }, st.name ?? shortId(st.id))), td('Status', badge(st.status)), td('Trials', st.trials),
      td('Best trial', st.best_job_id ? h('a', { href: `/ui/jobs/${st.best_job_id}` }, shortId(st.best_job_id)) : '—'), td('Created', when(st.created_at)))), { class: 'cards' })
      : muted('No studies yet — start one with the form below: several models × configurations × seeds, compared on validation.'));
    return studies.some((st) => !ENDED.includes(st.status)) ? 3000 : 15000;
  }, signal);
}

async function studyPage(main, signal, id) {
  let view;
  try { view = await api(`/v1/studies/${encodeURIComponent(id)}`, { signal }); } catch (e) {
    if (e.status !== 404 && e.status !== 422) throw e;
    main.append(pageHeading('Study not found'), h('p', {}, `No study has the id “${id}”. `, h('a', { href: '/ui/studies' }, 'See all studies')));
    return;
  }
  main.append(pageHeading(`Study ${view.name ?? shortId(id)}`));
  const body = h('div');
  main.append(body);
  const draw = () => body.replaceChildren(...studyView(view, () => reload()));
  const reload = async () => { view = await api(`/v1/studies/${id}`, { signal }); draw(); };
  draw();
  let pending = null;
  const onEvent = () => { pending ??= setTimeout(() => { pending = null; reload().catch(() => {}); }, 500); };
  if (!ENDED.includes(view.status)) stream(`/v1/studies/${id}/events`, onEvent, signal).catch((e) => flash(errorText(e), 'error'));
}

function studyView(v, reload) {
  const act = (label, method, path) => h('button', { type: 'button', class: 'small', onclick: async (e) => {
    const where = e.target.parentElement;
    try {
      await api(path, { method });
      if (method === 'DELETE') go('/ui/studies', `Deleted study ${v.name ?? shortId(v.id)}.`); else reload();
    } catch (err) { flash(errorText(err), 'error', where); }
  } }, label);
  const isBest = (row) => v.best && row.model === v.best.model && JSON.stringify(row.params) === JSON.stringify(v.best.params);
  const pm = (m, sd) => (m == null ? '—' : `${fmt(m)} ± ${sd == null ? 'n/a' : fmt(sd)}`);
  const rows = [...v.summary].sort((a, b) => (b.val_selected_mean ?? b.val_f1_mean ?? -1) - (a.val_selected_mean ?? a.val_f1_mean ?? -1));
  const keys = [...new Set(v.trials.flatMap((t) => Object.keys(t.params ?? {})))];
  const models = [...new Set(v.trials.map((t) => t.model))];
  const c = v.comparison;
  return [
    h('p', { class: 'meta' }, badge(v.status), ` ${v.trials.length} trials (${Object.entries(v.counts).map(([k, n]) => `${n} ${k}`).join(', ')}), chosen by validation ${v.select_by}; pruning saved ${v.epochs_saved} epochs. Created ${when(v.created_at)}.`),
    h('div', { class: 'actions' },
      !ENDED.includes(v.status) && act('Cancel study', 'POST', `/v1/studies/${v.id}/cancel`),
      ENDED.includes(v.status) && act('Delete study', 'DELETE', `/v1/studies/${v.id}`),
      downloadLink(`/v1/studies/${v.id}/results.csv`, 'results.csv', `study-${shortId(v.id)}-results.csv`),
      downloadLink(`/v1/studies/${v.id}/summary.csv`, 'summary.csv', `study-${shortId(v.id)}-summary.csv`),
      h('a', { href: `/ui/jobs?study_id=${v.id}` }, 'Its jobs')),
    h('h2', {}, 'Leaderboard'),
    muted('Mean ± sample standard deviation over seeds. The best configuration (★) is chosen on validation; test scores are reported, never used to choose.'),
    rows.length ? table(['', 'Model', 'Parameters', 'Seeds', 'Val F1', 'Test F1', 'Epochs'], rows.map((r) => h('tr', { class: isBest(r) ? 'best' : '' },
      td('Best', isBest(r) ? h('span', { title: 'best on validation' }, '★') : ''), td('Model', r.model), td('Parameters', params(r.params)),
      td('Seeds', `${r.n}${r.pruned ? ` (${r.pruned} pruned)` : ''}${r.failed ? ` (${r.failed} failed)` : ''}`),
      td('Val F1', pm(r.val_f1_mean, r.val_f1_std)), td('Test F1', pm(r.test_f1_mean, r.test_f1_std)), td('Epochs', fmt(r.epochs_run_mean, 1)))), { class: 'cards' })
      : muted('No trial has finished yet.'),
    h('h2', {}, 'Validation F1 against each searched parameter'),
    keys.length ? h('div', { class: 'charts' }, keys.map((k) => paramChart(v, k, models))) : muted('This study searched no parameters (one configuration).'),
    h('h2', {}, 'Is the best really better?'),
    c ? comparisonView(c) : muted('The paired bootstrap comparison appears when at least two configurations have test results.'),
    h('h2', {}, 'Trials'),
    table(['#', 'Model', 'Seed', 'Parameters', 'Status', 'Val F1', 'Test F1', 'Epochs'], v.trials.map((t) => h('tr', {},
      td('#', h('a', { href: `/ui/jobs/${t.job_id}` }, t.trial ?? shortId(t.job_id))), td('Model', t.model), td('Seed', t.seed), td('Parameters', params(t.params)),
      td('Status', badge(t.status), t.pruned ? ' pruned' : ''), td('Val F1', fmt(t.val_f1)), td('Test F1', fmt(t.test_f1)),
      td('Epochs', `${t.epochs_run}/${t.epochs_planned ?? '?'}`))), { class: 'cards' }),
  ];
}

function paramChart(v, key, models) {
  const trials = v.trials.filter((t) => t.val_f1 != null && t.params?.[key] !== undefined);
  const vals = trials.map((t) => t.params[key]);
  const numeric = vals.every((x) => typeof x === 'number');
  const cats = numeric ? null : [...new Set(vals.map((x) => JSON.stringify(x)))];
  const xOf = (val) => (numeric ? val : cats.indexOf(JSON.stringify(val)));
  const pos = numeric && vals.every((x) => x > 0);
  const log = pos && Math.max(...vals) / Math.min(...vals) >= 10;
  const uniq = [...new Set(trials.map((t) => xOf(t.params[key])))].sort((a, b) => a - b);
  const x = { label: key, log, pad: 0.08, ticks: !numeric || uniq.length <= 8 ? uniq : undefined, fmt: numeric ? undefined : (i) => cats[i] };
  return lineChart({
    title: `Validation F1 by ${key}`, x, y: { label: 'validation F1', min: 0, max: 1 }, empty: `No finished trial has ${key} yet.`,
    series: models.map((m, i) => ({ name: m, cls: `s-${i % 6}`, noLine: true,
      points: trials.filter((t) => t.model === m).map((t) => [xOf(t.params[key]), t.val_f1, `${m}, ${key}=${JSON.stringify(t.params[key])}, seed ${t.seed}: val F1 ${fmt(t.val_f1)}${t.pruned ? ' (pruned)' : ''}`]) })),
  });
}

function comparisonView(c) {
  const [lo, hi] = c.ci95 ?? [c.diff, c.diff];
  const span = Math.max(Math.abs(lo), Math.abs(hi), Math.abs(c.diff), 0.01) * 1.15;
  const W = chartWidth(), H = 70, L = 20, R = 20;
  const sx = (d) => L + ((d + span) / (2 * span)) * (W - L - R);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'chart', role: 'img', 'aria-label': `95% interval of the test F1 difference: ${signed(lo)} to ${signed(hi)}` },
    s('line', { class: 'axis', x1: L, x2: W - R, y1: 40, y2: 40 }),
    s('line', { class: 'zero', x1: sx(0), x2: sx(0), y1: 14, y2: 52 }), s('text', { class: 'tick', x: sx(0), y: 66, 'text-anchor': 'middle' }, '0'),
    s('line', { class: 'ci', x1: sx(lo), x2: sx(hi), y1: 30, y2: 30 }),
    s('circle', { class: 'pt ci-dot', cx: sx(c.diff), cy: 30, r: 5 }, s('title', {}, `difference ${signed(c.diff)}`)),
    s('text', { class: 'tick', x: sx(lo), y: 20, 'text-anchor': 'middle' }, signed(lo)), s('text', { class: 'tick', x: sx(hi), y: 20, 'text-anchor': 'middle' }, signed(hi)));
  const name = (side) => `${side?.model} (${params(side?.params)})`;
  return h('div', { id: 'comparison' },
    h('p', {}, h('strong', {}, name(c.a)), ' vs ', h('strong', {}, name(c.b)), `: test F1 difference ${signed(c.diff, 4)}, 95 % interval [${signed(lo, 4)}, ${signed(hi, 4)}] from ${c.resamples} paired bootstrap resamples over ${c.sentences} test sentences — `,
      h('strong', {}, c.significant ? 'the difference is significant.' : 'not significant: the interval includes 0.')),
    h('figure', { class: 'chart-box' }, h('figcaption', {}, 'Difference of mean test F1 (best − other) with its 95 % interval; 0 means no difference.'), svg));
}

// ------------------------------------------------------------------ Models

async function modelsPage(main, signal) {
  main.append(pageHeading('Models'));
  const list = section('Deployed models', 'model-list');
  const deploy = section('Deploy or swap a model', 'deploy-model');
  main.append(list.el, deploy.el);
  const load = async () => {
    const { models } = await api('/v1/models', { signal });
    const action = (label, fn, extra = {}) => h('button', { type: 'button', class: 'small', ...extra, onclick: async (e) => {
      try { await fn(e.currentTarget); } catch (err) { flash(errorText(err), 'error', $('h2', list.el)); }
    } }, label);
    list.body.replaceChildren(models.length ? table(['Name', 'Version', 'Labels', 'Source', 'Defaults', 'Actions'], models.map((m) => {
      const versions = h('div', { class: 'versions', hidden: true });
      return [h('tr', {},
        td('Name', h('strong', {}, m.name)), td('Version', h('code', {}, m.version)), td('Labels', m.labels.join(', ')),
        td('Source', m.job_id ? h('a', { href: `/ui/jobs/${m.job_id}` }, `job ${shortId(m.job_id)}`) : h('code', {}, m.path)),
        td('Defaults', `${m.aggregation_strategy ?? '?'} over ${m.words ?? '?'} words, ${m.max_input_tokens} tokens, ${m.device}`),
        td('Actions', h('div', { class: 'actions' },
          action('History', async (button) => {
            const r = await api(`/v1/models/${encodeURIComponent(m.name)}/versions`, { signal });
            versions.hidden = !versions.hidden;
            button.setAttribute('aria-expanded', String(!versions.hidden));
            versions.replaceChildren(table(['Version', 'Deployed', 'By', 'Source', 'Active'], r.versions.map((d) => h('tr', {},
              td('Version', h('code', {}, d.version)), td('Deployed', when(d.created_at)), td('By', d.deployed_by),
              td('Source', d.job_id ? h('a', { href: `/ui/jobs/${d.job_id}` }, `job ${shortId(d.job_id)}`) : h('code', {}, d.path)), td('Active', d.active ? 'yes' : '')))));
          }, { 'aria-expanded': 'false' }),
          action('Roll back', async () => {
            const r = await api(`/v1/models/${encodeURIComponent(m.name)}/rollback`, { method: 'POST' });
            await load();
            flash(`“${m.name}” now serves version ${r.model.version}.`, 'ok', $('h2', list.el));
          }),
          action('Remove', async () => {
            if (!confirm(`Stop serving “${m.name}”? Its history stays.`)) return;
            await api(`/v1/models/${encodeURIComponent(m.name)}`, { method: 'DELETE' });
            await load();
            flash(`“${m.name}” is no longer served.`, 'ok', $('h2', list.el));
          })))),
      h('tr', { class: 'sub' }, h('td', { colspan: 6 }, versions))];
    }), { class: 'cards' }) : muted('No models deployed — deploy a succeeded job with the form below.'));
  };
  const { jobs } = await api('/v1/jobs?status=succeeded&limit=100', { signal });
  const source = select([['job', 'A succeeded job'], ['path', 'A model directory on the server']], { id: 'f-source' });
  const jobField = field('job_id', 'Job', select(jobs.length ? jobs.map((j) => [j.id, `${modelName(j.spec)} on ${datasetName(j.spec.dataset)} — ${shortId(j.id)}, ${when(j.finished_at)}`]) : [['', 'No succeeded jobs yet']]));
  const pathField = field('path', 'Model directory', textInput({ placeholder: 'models/hitz-es' }), 'An HF model directory under an allowed path.');
  const toggle = () => {
    jobField.hidden = source.value !== 'job'; $('select', jobField).disabled = jobField.hidden;
    pathField.hidden = source.value !== 'path'; $('input', pathField).disabled = pathField.hidden;
  };
  source.addEventListener('change', toggle);
  const form = h('form', { novalidate: true },
    h('div', { class: 'grid' },
      field('name', 'Name', textInput({ required: true, placeholder: 'default' }), 'Deploying under an existing name swaps it in (hot swap); requests in flight finish on the old model.'),
      h('div', { class: 'field' }, h('label', { for: 'f-source' }, 'From'), source), jobField, pathField),
    h('div', { class: 'form-actions' }, h('button', { type: 'submit' }, 'Deploy')));
  toggle();
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const m = await submitForm(form, (v) => api('/v1/models', { method: 'POST', json: v }), source.value === 'job' ? 'job_id' : 'path');
    if (m) { await load(); flash(`Deployed “${m.name}”, version ${m.version}.`, 'ok', form); }
  });
  deploy.body.append(form);
  await load();
}

// ------------------------------------------------------------------ Detect

async function detectPage(main, signal) {
  main.append(pageHeading('Detect metaphors'));
  const q = new URLSearchParams(location.search);
  const { models } = await api('/v1/models', { signal });
  const text = h('textarea', { rows: 6, required: true, placeholder: 'Va parlar amb un to suau.' });
  const model = select(models.length ? models.map((m) => [m.name, `${m.name} (${m.version})`]) : [['', 'No model deployed']]);
  if (models.some((m) => m.name === (q.get('model') ?? 'default'))) model.value = q.get('model') ?? 'default';
  const form = h('form', { id: 'detect-form', novalidate: true },
    field('text', 'Text', text, 'Catalan sentences; long texts are scored sentence by sentence. Ctrl+Enter detects.'),
    h('div', { class: 'grid' },
      field('model', 'Model', model),
      field('aggregation_strategy', 'Aggregation', select([['', 'the model’s default'], ['first', 'first'], ['simple', 'simple'], ['average', 'average'], ['max', 'max'], ['none', 'none (per token)']])),
      field('threshold', 'Threshold', h('input', { type: 'number', min: 0, max: 1, step: 0.01, placeholder: 'none', 'data-kind': 'float' }), 'Drop entities scored below it (0 to 1).'),
      h('div', { class: 'field check' }, h('input', { type: 'checkbox', id: 'f-uncertainty' }), h('label', { for: 'f-uncertainty' }, 'Report uncertainty'))),
    h('div', { class: 'form-actions' }, h('button', { type: 'submit' }, 'Detect')));
  const out = h('section', { id: 'detect-result', 'aria-live': 'polite', 'aria-labelledby': 'detect-result-h' });
  text.addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) form.requestSubmit(); });
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const r = await submitForm(form, (v) => api('/v1/detect', { method: 'POST', json: { ...v, uncertainty: $('#f-uncertainty').checked || undefined } }), 'text');
    if (r) out.replaceChildren(...detectView(text.value, r).filter(Boolean));
  });
  main.append(form, out);
}

// The text with each entity in a <mark> (offsets are code points: index an array of them).
function highlight(text, entities) {
  const chars = Array.from(text);
  const parts = [];
  let at = 0;
  for (const e of [...entities].sort((a, b) => a.start - b.start)) {
    if (e.start < at) continue; // overlapping tokens of `none`
    parts.push(chars.slice(at, e.start).join(''));
    const label = e.entity_group ?? e.entity;
    parts.push(h('mark', { title: `${label}, score ${fmt(e.score)}`, 'data-score': e.score }, chars.slice(e.start, e.end).join('')));
    at = e.end;
  }
  parts.push(chars.slice(at).join(''));
  return parts;
}

function detectView(text, r) {
  return [
    h('h2', { id: 'detect-result-h' }, r.entities.length ? `${r.entities.length} metaphor${r.entities.length > 1 ? 's' : ''} found` : 'No metaphor found'),
    h('p', { class: 'meta' }, `Model ${r.model}, version ${r.model_version}`, r.uncertainty != null ? ` · uncertainty ${fmt(r.uncertainty)}` : ''),
    h('p', { class: 'highlighted' }, highlight(text, r.entities)),
    r.entities.length > 0 && table(['Word', 'Label', 'Score', 'Characters'], r.entities.map((e) => h('tr', {},
      td('Word', e.word), td('Label', e.entity_group ?? e.entity), td('Score', fmt(e.score)), td('Characters', `${e.start}–${e.end}`))), { class: 'cards' }),
    h('details', { open: true }, h('summary', {}, 'Raw JSON'), h('pre', { id: 'detect-json' }, JSON.stringify(r, null, 2))),
  ];
}

// ------------------------------------------------------------------ Datasets

async function datasetsPage(main, signal) {
  main.append(pageHeading('Datasets'));
  const list = section('Uploaded datasets', 'dataset-list');
  const upload = section('Upload a dataset', 'upload');
  main.append(upload.el, list.el);
  const file = h('input', { type: 'file', accept: '.jsonl,.json,.conll,.txt,.tsv', required: true });
  const form = h('form', { novalidate: true },
    h('div', { class: 'grid' },
      field('file', 'File (JSONL or CoNLL)', file, 'JSONL lines {"tokens": [...], "tags": [...]}, or CoNLL: a word and its tag per line, a blank line between sentences.'),
      field('name', 'Name', textInput({ placeholder: 'the file name' })),
      field('format', 'Format', select([['', 'guess from the file name'], ['jsonl', 'JSONL'], ['conll', 'CoNLL']])),
      field('labels', 'Label names', textInput({ placeholder: 'O, B-METAPHOR' }), 'Needed when tags are ids: names in id order, comma-separated.'),
      field('split', 'Split train, validation, test', textInput({ placeholder: '0.8,0.1,0.1' })),
      field('seed', 'Split seed', textInput({ placeholder: '42', inputmode: 'numeric' }))),
    h('div', { class: 'form-actions' }, h('button', { type: 'submit' }, 'Upload')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(form);
    if (!file.files.length) { showError(form, 'file', 'Choose a file to upload.'); return; }
    const data = new FormData();
    data.append('file', file.files[0]);
    const value = (n) => form.elements.namedItem(n).value.trim();
    for (const n of ['name', 'format', 'split', 'seed']) if (value(n)) data.append(n, value(n));
    const labels = value('labels').split(',').map((x) => x.trim()).filter(Boolean);
    if (labels.length) data.append('labels', JSON.stringify(labels));
    const button = $('button[type=submit]', form);
    button.disabled = true;
    try {
      const d = await api('/v1/datasets', { method: 'POST', form: data });
      form.reset();
      await load();
      flash(`Uploaded “${d.name}”: ${d.stats.map((x) => `${x.sentences} ${x.split}`).join(', ')} sentences.`, 'ok', form);
    } catch (err) { showError(form, err.field, err.field ? err.message : errorText(err), 'file'); } finally { button.disabled = false; }
  });
  upload.body.append(form);
  const load = async () => {
    const { datasets } = await api('/v1/datasets', { signal });
    list.body.replaceChildren(...(datasets.length ? datasets.map(datasetCard) : [muted('No datasets uploaded yet — upload a JSONL or CoNLL file above. Jobs can also read folders on the server by path.')]));
  };
  await load();
}

function datasetCard(d) {
  const dist = normDist(d.stats);
  return h('article', { class: 'card' },
    h('h3', {}, d.name),
    h('p', { class: 'meta' }, `${d.format.toUpperCase()}, ${sizeText(d.size_bytes)}, uploaded ${when(d.created_at)}. Labels: ${d.labels.join(', ')}. Id `, h('code', {}, d.id)),
    dist ? distChart(dist, `Share of words per label in ${d.name}`) : null,
    samplesView(d),
    h('p', {}, h('a', { href: `/ui/jobs?dataset=${d.id}` }, 'Train on this dataset')));
}

/** The first training sentences, fetched when opened, labelled words highlighted. */
function samplesView(d) {
  const body = h('div', { class: 'samples' }, muted('Loading…'));
  const box = h('details', {}, h('summary', {}, 'Sample sentences'), body);
  box.addEventListener('toggle', async () => {
    if (!box.open || box.dataset.loaded) return;
    box.dataset.loaded = '1';
    try {
      const full = await api(`/v1/datasets/${d.id}`);
      const rows = (full.samples ?? []).map((s) => h('p', { class: 'sample' }, s.tokens.flatMap((w, i) => {
        const tag = s.tags[i] ?? 'O';
        return [tag === 'O' ? w : h('mark', { title: tag }, w), ' '];
      })));
      body.replaceChildren(...(rows.length ? rows : [muted('No sentences to show.')]));
    } catch (err) { body.replaceChildren(h('p', { class: 'msg msg-error', role: 'alert' }, errorText(err))); }
  });
  return box;
}

// ------------------------------------------------------------------ router

const ROUTES = [
  [/^\/(?:ui\/?)?$/, jobsPage, 'jobs'], [/^\/ui\/jobs\/?$/, jobsPage, 'jobs'], [/^\/ui\/jobs\/([^/]+)$/, jobPage, 'jobs'],
  [/^\/ui\/studies\/?$/, studiesPage, 'studies'], [/^\/ui\/studies\/([^/]+)$/, studyPage, 'studies'],
  [/^\/ui\/models\/?$/, modelsPage, 'models'], [/^\/ui\/detect\/?$/, detectPage, 'detect'], [/^\/ui\/datasets\/?$/, datasetsPage, 'datasets'],
];
let current = null;

async function route(focus = false) {
  current?.abort();
  current = new AbortController();
  const { signal } = current;
  refreshJobs = null;
  const main = $('#app');
  main.replaceChildren();
  const [re, page, nav] = ROUTES.find(([r]) => r.test(location.pathname)) ?? [];
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === nav) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  if (!page) {
    main.append(pageHeading('Page not found'), h('p', {}, 'There is no such page. ', h('a', { href: '/ui/jobs' }, 'Go to the jobs')));
    return;
  }
  const args = location.pathname.match(re).slice(1).map(decodeURIComponent);
  const done = page(main, signal, ...args).catch((e) => {
    if (signal.aborted) return;
    if (!$('h1', main)) main.append(pageHeading('Something went wrong'));
    main.append(h('p', { class: 'msg msg-error', role: 'alert' }, `Could not load this page: ${errorText(e)}`));
  });
  if (focus) setTimeout(() => $('h1', main)?.focus(), 0);
  return done;
}

function go(url, message = null) {
  nextFlash = message;
  history.pushState(null, '', url);
  window.scrollTo(0, 0);
  route(true);
}

document.addEventListener('click', (e) => {
  const a = e.target.closest('a[href]');
  if (!a || a.hasAttribute('download') || a.target || e.button || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !(url.pathname === '/' || url.pathname.startsWith('/ui'))) return;
  e.preventDefault();
  go(url.pathname + url.search);
});
window.addEventListener('popstate', () => route(true));
$('#forget-key').addEventListener('click', () => { sessionStorage.removeItem(KEY); updateKeyButton(); route(true); });
updateKeyButton();
route();
