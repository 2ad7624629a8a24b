// The live page's script (served as /live.js: the page's CSP allows no inline script).
// Everything from records is set with textContent: a name is text, never HTML.
const KEEP = 20;
const list = document.getElementById('greetings');
const status = document.getElementById('status');
let retry = 500;
function greet(text) {
  const li = document.createElement('li');
  li.textContent = text;
  list.prepend(li);
  while (list.children.length > KEEP) list.lastChild.remove();
}
function connect() {
  const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
  ws.onopen = () => { status.textContent = 'live'; status.className = 'up'; retry = 500; };
  ws.onmessage = (e) => {
    let m; try { m = JSON.parse(e.data); } catch { return; }
    if (m.type === 'greeting') greet(m.text);
    if (m.type === 'skipped') greet('… ' + m.count + ' greetings skipped (this page fell behind)');
  };
  ws.onclose = () => {
    status.textContent = 'reconnecting…'; status.className = '';
    setTimeout(connect, retry); retry = Math.min(retry * 2, 10000);
  };
}
connect();
// Charts of the last 10 minutes: the server's samples (every 5 s) when the page opens,
// then each vital-signs poll; rates from the differences of totals, lag as it is.
const WINDOW_MS = 10 * 60 * 1000;
const series = { in: [], clean: [], dead: [], lag: [] };
let prev = null;
function push(key, t, value) {
  const a = series[key];
  a.push([t, value]);
  while (a.length && a[0][0] < t - WINDOW_MS) a.shift();
}
function addSample(s) {
  if (prev && s.t > prev.t) {
    const dt = (s.t - prev.t) / 1000;
    push('in', s.t, Math.max(0, (s.records_in - prev.records_in) / dt));
    push('clean', s.t, Math.max(0, (s.clean - prev.clean) / dt));
    push('dead', s.t, Math.max(0, (s.dead_letters - prev.dead_letters) / dt));
  }
  if (!prev || s.t > prev.t) { push('lag', s.t, s.consumer_lag); prev = s; }
}
function draw() {
  for (const key of Object.keys(series)) {
    const a = series[key];
    if (!a.length) continue;
    const end = a[a.length - 1][0];
    const max = Math.max(1, ...a.map((p) => p[1]));
    const points = a.map(([t, v]) => (300 - (end - t) / WINDOW_MS * 300).toFixed(1) + ',' + (58 - v / max * 56).toFixed(1));
    document.querySelector('#chart-' + key + ' polyline').setAttribute('points', points.join(' '));
    const now = a[a.length - 1][1];
    document.getElementById('now-' + key).textContent = key === 'lag' ? String(Math.round(now)) : now.toFixed(1);
  }
}
async function history() {
  try {
    const h = await (await fetch('/api/vitals/history')).json();
    for (const s of h.samples) addSample(s);
    draw();
  } catch (e) { /* the server may be restarting */ }
}
let last = null;
async function vitals() {
  try {
    const v = await (await fetch('/api/vitals')).json();
    addSample(v);
    draw();
    const now = Date.now();
    if (last) document.getElementById('rate').textContent = ((v.records_in - last.n) * 1000 / (now - last.t)).toFixed(1);
    last = { n: v.records_in, t: now };
    document.getElementById('clean').textContent = v.clean;
    document.getElementById('dead').textContent = v.dead_letters;
    document.getElementById('lag').textContent = v.consumer_lag;
    document.getElementById('clients').textContent = v.websocket_clients;
    document.getElementById('window').textContent = v.window ? new Date(v.window.window_start).toISOString().slice(11, 16) + ' UTC (' + v.window.status + ')' : '–';
    document.getElementById('rows').textContent = v.window ? v.window.rows_written : '–';
    document.getElementById('version').textContent = v.version ? v.version.hash.slice(0, 12) + ' (loaded ' + v.version.loaded_at.slice(11, 19) + ' UTC)' : '–';
  } catch (e) { /* the server may be restarting */ }
}
function cell(tr, text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  tr.append(td);
  return td;
}
// Counts by reason are public; the dead letters themselves (values, keys, messages that quote
// them) need the admin token, which this tab keeps in sessionStorage once it is typed in.
const TOKEN_KEY = 'weir-admin-token';
const tokenForm = document.getElementById('dlq-token');
tokenForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const t = document.getElementById('token').value.trim();
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  document.getElementById('token').value = '';
  deadLetters();
});
async function deadLetters() {
  try {
    const r = await fetch('/api/dlq/stats');
    if (!r.ok) { document.getElementById('dlq-summary').textContent = 'this topology writes no dead letters'; return; }
    const d = await r.json();
    document.getElementById('dlq-summary').textContent = d.total + ' dead letters in ' + d.topics.join(', ') +
      (d.since ? ' since ' + new Date(d.since).toISOString().slice(0, 19).replace('T', ' ') + ' UTC' : '') +
      ' · inspect and replay them with weir dlq tail | stats | replay';
    const reasons = document.getElementById('reasons');
    reasons.replaceChildren(...Object.entries(d.by_reason).sort((a, b) => b[1] - a[1]).map(([r, n]) => {
      const li = document.createElement('li');
      const a = document.createElement('span'); a.textContent = r;
      const b = document.createElement('span'); b.textContent = n;
      li.append(a, b); return li;
    }));
    const token = sessionStorage.getItem(TOKEN_KEY);
    const rows = document.getElementById('dlq-rows');
    if (!token) { tokenForm.hidden = false; rows.replaceChildren(); return; }
    const full = await fetch('/api/dlq', { headers: { Authorization: 'Bearer ' + token } });
    if (full.status === 401) { sessionStorage.removeItem(TOKEN_KEY); tokenForm.hidden = false; rows.replaceChildren(); return; }
    if (!full.ok) return;
    tokenForm.hidden = true;
    rows.replaceChildren(...(await full.json()).recent.slice(0, 10).map((x) => {
      const tr = document.createElement('tr');
      cell(tr, x.failed_at ? new Date(x.failed_at).toISOString().slice(11, 19) : '?');
      const rs = cell(tr, '');
      for (const reason of x.reasons) {
        const s = document.createElement('span'); s.className = 'reason'; s.textContent = reason; rs.append(s);
      }
      cell(tr, x.node);
      cell(tr, x.source.topic ? x.source.topic + '/' + x.source.partition + '@' + x.source.offset : '?');
      cell(tr, x.preview, 'value');
      return tr;
    }));
  } catch (e) { /* the server may be restarting */ }
}
history().then(() => { vitals(); setInterval(vitals, 1000); });
deadLetters(); setInterval(deadLetters, 2000);
