/**
 * The live dashboard both daemons serve at GET / of their admin endpoint: one HTML page with its script
 * inline, uPlot from /assets/ (its npm package's browser build), fed by GET /events (server-sent events, once
 * a second). No build step: what is here is what the browser runs. The access token of the page's own URL
 * (?access_token=) is passed on to /events and /assets/.
 *
 * CPE: per uplink a card (state, mode, addresses, throughput each way, subflows, RTT, retransmissions, share)
 * and a chart of its throughput each way over the last five minutes; connections, the concentrators with
 * their capability-cache state, refusals. Concentrator: active CPEs, the top CPEs, refusals, server-leg
 * transports, the MPTCP fallback cache.
 */

const STYLE = `
body{font:14px system-ui,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 16px;display:flex;gap:16px;align-items:baseline}
header h1{font-size:17px;margin:0}
#ready.ok{color:#7be38f}#ready.bad{color:#ff8a80}
main{padding:12px 16px;display:grid;gap:12px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:12px}
.card{background:#fff;border-radius:6px;padding:10px 12px;box-shadow:0 1px 2px #0002}
.card h2{font-size:15px;margin:0 0 6px;display:flex;gap:8px;align-items:center}
.state{font-size:12px;padding:1px 7px;border-radius:9px;color:#fff}
.state.up{background:#2e9e4f}.state.down{background:#c62828}
.kv{display:grid;grid-template-columns:repeat(4,auto);gap:2px 10px;font-size:13px;margin-bottom:6px}
.kv span:nth-child(odd){color:#667}
table{border-collapse:collapse;font-size:13px;width:100%}
td,th{text-align:left;padding:2px 8px 2px 0;border-bottom:1px solid #eee}
`;

const SCRIPT = `
const q = new URLSearchParams(location.search);
const tok = q.get('access_token');
const suffix = tok ? '?access_token=' + encodeURIComponent(tok) : '';
const $ = (s) => document.querySelector(s);
const el = (tag, attrs, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
};
const rate = (bps) => bps >= 1e6 ? (bps * 8 / 1e6).toFixed(1) + ' Mbit/s' : (bps * 8 / 1e3).toFixed(0) + ' kbit/s';
const bytes = (n) => n >= 1e9 ? (n / 1e9).toFixed(2) + ' GB' : n >= 1e6 ? (n / 1e6).toFixed(1) + ' MB' : (n / 1e3).toFixed(0) + ' kB';
const KEEP = 300;
// The charts' data, also read by the browser test: per uplink [times (s), rx Mbit/s, tx Mbit/s].
const state = { series: {}, charts: {}, last: null, events: 0 };
window.__mpc = state;

function table(id, head, rows) {
  const t = $(id);
  t.replaceChildren(el('tr', {}, ...head.map((h) => el('th', {}, h))), ...rows.map((r) => el('tr', {}, ...r.map((c) => el('td', {}, c)))));
}

function push(name, t, rx, tx) {
  const s = (state.series[name] ||= [[], [], []]);
  s[0].push(t / 1000); s[1].push(rx * 8 / 1e6); s[2].push(tx * 8 / 1e6);
  if (s[0].length > KEEP) for (const a of s) a.shift();
}

function quota(name) {
  const q = state.last && state.last.distribution && state.last.distribution.quotas && state.last.distribution.quotas[name];
  return q ? bytes(q.used) + ' of ' + bytes(q.limit) + ' this ' + q.period + (q.over ? ' (used up: backup only)' : '') : '';
}

function uplinkCard(u) {
  let card = document.querySelector('[data-uplink="' + CSS.escape(u.interface) + '"]');
  if (!card) {
    card = el('div', { class: 'card', 'data-uplink': u.interface },
      el('h2', {}, el('span', { class: 'name' }, u.interface), el('span', { class: 'state' }), el('span', { class: 'mode' })),
      el('div', { class: 'kv' }), el('div', { class: 'chart' }));
    $('#uplinks').append(card);
    if (window.uPlot) {
      state.charts[u.interface] = new uPlot({
        width: 440, height: 160,
        series: [{}, { label: 'down (rx)', stroke: '#1565c0', width: 1.5 }, { label: 'up (tx)', stroke: '#ef6c00', width: 1.5 }],
        axes: [{}, { label: 'Mbit/s' }],
        scales: { x: { time: true } },
      }, state.series[u.interface] || [[], [], []], card.querySelector('.chart'));
    }
  }
  const st = card.querySelector('.state');
  st.textContent = u.up ? 'up' : 'down';
  st.className = 'state ' + (u.up ? 'up' : 'down');
  card.querySelector('.mode').textContent = u.mode;
  card.querySelector('.kv').replaceChildren(...[
    ['IPv4', u.ipv4 || '-'], ['IPv6', u.ipv6 || '-'],
    ['down', rate(u.rxBps)], ['up', rate(u.txBps)],
    ['subflows', u.subflows], ['RTT', u.rttMs === null ? '-' : u.rttMs.toFixed(1) + ' ms'],
    ['retransmits', u.retransmits], ['share', u.share === null ? '-' : (u.share * 100).toFixed(1) + ' %'],
    ['received', bytes(u.rxBytes)], ['sent', bytes(u.txBytes)],
    ...(quota(u.interface) ? [['quota', quota(u.interface)]] : []),
  ].flatMap(([k, v]) => [el('span', {}, k), el('span', { 'data-key': k }, v)]));
  const c = state.charts[u.interface];
  if (c && state.series[u.interface]) c.setData(state.series[u.interface]);
}

function refusals(r) {
  table('#refusals', ['reason', 'count'], Object.entries(r || {}).sort((a, b) => b[1] - a[1]));
}

function showCpe(d) {
  for (const u of d.uplinks) push(u.interface, d.t, u.rxBps, u.txBps);
  for (const u of d.uplinks) uplinkCard(u);
  $('#summary').textContent = d.connections + ' connections relayed, ' + d.pending + ' being converted, ' +
    d.uplinks.reduce((a, u) => a + u.subflows, 0) + ' subflows; distribution: ' + d.distribution.scheme +
    (d.distribution.scheme === 'overflow' ? ' (primary ' + d.distribution.primary + (d.distribution.joined ? ', others joined)' : ' only)') : '') +
    (d.distribution.classes ? '; classes: ' + d.distribution.classes.map((c) => c.name + ' on ' + (c.lastUplink || c.pin)).join(', ') : '');
  const now = Date.now();
  table('#concentrators', ['concentrator', 'from', 'format', 'capability cache', 'reachability'], d.concentrators.map((c) => [
    c.address, (c.sources || ['static']).join(', '), c.format,
    c.notCapableUntil && c.notCapableUntil > now ? 'not capable for ' + Math.round((c.notCapableUntil - now) / 1000) + ' s' : 'capable',
    c.unreachableUntil && c.unreachableUntil > now ? 'held off ' + Math.round((c.unreachableUntil - now) / 1000) + ' s' : 'reachable',
  ]));
  refusals(d.refusals);
}

function showConcentrator(d) {
  $('#summary').textContent = d.activeCpes + ' active CPEs, ' + d.activeSessions + ' connections, ' + d.subflows + ' subflows; listening on ' + d.listeners.join(', ');
  table('#cpes', ['CPE', 'connections', 'subflows', 'bytes up', 'bytes down'], d.topCpes.map((c) => [c.cpe, c.connections, c.subflows, bytes(c.bytesUp), bytes(c.bytesDown)]));
  table('#legs', ['server-leg transport', 'connections'], Object.entries(d.serverLegs || {}));
  table('#fallback', ['servers without MPTCP (cached)'], (d.fallbackCache || []).map((s) => [s]));
  refusals(d.refusals);
}

function onLive(d) {
  state.last = d; state.events++;
  const r = $('#ready');
  r.textContent = d.ready && d.ready.ready ? 'ready' : 'not ready: ' + ((d.ready && d.ready.reason) || '?');
  r.className = d.ready && d.ready.ready ? 'ok' : 'bad';
  $('#updated').textContent = new Date(d.t).toLocaleTimeString();
  if (d.role === 'cpe') showCpe(d); else showConcentrator(d);
}

function connect() {
  const es = new EventSource('/events' + suffix);
  es.addEventListener('history', (e) => {
    const h = JSON.parse(e.data);
    for (const s of h.samples) h.uplinks.forEach((name, i) => push(name, s.t, s.rx[i], s.tx[i]));
  });
  es.onmessage = (e) => onLive(JSON.parse(e.data));
  es.onerror = () => { $('#ready').textContent = 'disconnected, retrying'; $('#ready').className = 'bad'; };
}

const css = document.createElement('link');
css.rel = 'stylesheet';
css.href = '/assets/uPlot.min.css' + suffix;
document.head.append(css);
const s = document.createElement('script');
s.src = '/assets/uPlot.iife.min.js' + suffix;
s.onload = connect;
s.onerror = () => { $('#summary').textContent = 'charts unavailable (uPlot not installed)'; connect(); };
document.head.append(s);
`;

export function dashboardPage(role: string): string {
  const cpe = role === 'cpe';
  const sections = cpe
    ? `<section class="cards" id="uplinks"></section>
<div class="cards"><div class="card"><h2>Concentrators</h2><table id="concentrators"></table></div>
<div class="card"><h2>Refusals</h2><table id="refusals"></table></div></div>`
    : `<div class="cards"><div class="card"><h2>Top CPEs</h2><table id="cpes"></table></div>
<div class="card"><h2>Refusals</h2><table id="refusals"></table></div>
<div class="card"><h2>Server legs</h2><table id="legs"></table></div>
<div class="card"><h2>MPTCP fallback cache</h2><table id="fallback"></table></div></div>`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mpconvert ${role}</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<link rel="icon" href="data:,">
<style>${STYLE}</style></head>
<body><header><h1>mpconvert ${role}</h1><span id="ready">connecting</span><span id="updated"></span></header>
<main><div class="card" id="summary">waiting for the first update</div>
${sections}
</main>
<script>${SCRIPT}</script></body></html>
`;
}
