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
let last = null;
async function vitals() {
  try {
    const v = await (await fetch('/api/vitals')).json();
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
vitals(); setInterval(vitals, 1000);
deadLetters(); setInterval(deadLetters, 2000);
