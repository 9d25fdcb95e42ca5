/**
 * The dashboard: one self-contained page (no build step, no CDN — fleet
 * endpoints often sit on networks without the internet). It reads the token
 * from the URL fragment (`/#token=…`, never sent to the server in a request
 * line or a log; an admin token), polls /v1/machines and /v1/rollouts every
 * 5 s (`&poll=SECONDS` in the fragment changes it) and redraws in place.
 * Kept in a module so it ships inside the compiled program.
 */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>liveup fleet</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>
 body{font:14px system-ui,sans-serif;margin:1.5rem;color:#222}
 h1{font-size:1.3rem;margin:0 0 .8rem} h2{font-size:1rem;margin:1.2rem 0 .4rem}
 table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #ddd}
 th{background:#f4f4f4} tr.stale td{color:#999} .bad{color:#b00;font-weight:600} .good{color:#070}
 .pill{display:inline-block;padding:0 .4rem;border-radius:.6rem;background:#eee;margin-right:.3rem}
 #summary span{margin-right:1.2rem} input{padding:.3rem;width:20rem} #error{color:#b00}
 .bar{display:inline-block;width:12rem;height:.7rem;background:#eee;vertical-align:middle;margin:0 .5rem;position:relative}
 .bar i{position:absolute;left:0;top:0;bottom:0;background:#4a8} .bar b{position:absolute;top:-.15rem;bottom:-.15rem;width:2px;background:#222}
</style></head><body>
<h1>liveup fleet</h1>
<div id="summary"></div>
<p><input id="filter" placeholder="filter: hostname, id, channel, state, version"> <span id="error"></span></p>
<h2>Rollouts</h2><div id="rollouts"></div>
<h2>Versions</h2><div id="versions"></div>
<h2>Recent failures</h2><div id="failures"></div>
<h2>Machines</h2>
<table><thead><tr><th>Host</th><th>Machine id</th><th>Channel</th><th>Running</th><th>Booted</th><th>Staged</th><th>Last good</th><th>State</th><th>Health</th><th>Decision</th><th>Last seen</th></tr></thead>
<tbody id="rows"></tbody></table>
<script>
const params = new URLSearchParams(location.hash.slice(1));
const token = params.get('token') || '';
const every = Math.max(1, Number(params.get('poll')) || 5) * 1000;
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? '—').replace(/[&<>"]/g, (c) => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
let data = { machines: [] };
let rollouts = [];
function render() {
  const q = $('filter').value.trim().toLowerCase();
  const all = data.machines;
  const ms = all.filter((m) => !q || [m.hostname, m.id, m.channel, m.report.state, m.report.runningVersion].join(' ').toLowerCase().includes(q));
  const stale = all.filter((m) => m.stale).length;
  const failed = all.filter((m) => m.report.health === 'failed' || m.report.lastError);
  $('summary').innerHTML = '<span><b>' + all.length + '</b> machines</span><span><b>' + stale + '</b> stale</span><span class="' + (failed.length ? 'bad' : 'good') + '"><b>' + failed.length + '</b> with failures</span>';
  const byVersion = {};
  for (const m of all) { const k = m.channel + ' ' + (m.report.runningVersion ?? m.report.bootedVersion ?? '?'); byVersion[k] = (byVersion[k] || 0) + 1; }
  $('versions').innerHTML = Object.entries(byVersion).sort().map(([k, n]) => '<span class="pill">' + esc(k) + ': ' + n + '</span>').join('') || '—';
  // Per channel: the share of its machines already on the rollout's version (or later), against the target share.
  $('rollouts').innerHTML = rollouts.map((r) => {
    const inChannel = all.filter((m) => m.channel === r.channel);
    const on = inChannel.filter((m) => (m.report.runningVersion ?? m.report.bootedVersion ?? 0) >= r.version).length;
    const share = inChannel.length ? Math.round((on / inChannel.length) * 100) : 0;
    return '<div class="rollout" data-channel="' + esc(r.channel) + '">' + esc(r.channel) + ': version ' + esc(r.version) +
      ' <span class="bar" title="' + share + '% on it, target ' + esc(r.percent) + '%"><i style="width:' + share + '%"></i><b style="left:' + Math.min(100, r.percent) + '%"></b></span>' +
      on + ' of ' + inChannel.length + ' machines (' + share + '%), target ' + esc(r.percent) + '%' +
      (r.paused ? ' <span class="bad">PAUSED: ' + esc(r.reason || 'by hand') + '</span>' : ' <span class="good">rolling</span>') + '</div>';
  }).join('') || 'no rollout control';
  $('failures').innerHTML = failed.length ? failed.map((m) => '<div class="bad">' + esc(m.hostname) + ': ' + esc(m.report.lastResult) + ' ' + esc(m.report.lastError) + '</div>').join('') : 'none';
  $('rows').innerHTML = ms.map((m) => { const r = m.report; return '<tr class="' + (m.stale ? 'stale' : '') + '"><td>' + esc(m.hostname) + '</td><td><code>' + esc(m.id.slice(0, 12)) + '</code></td><td>' + esc(m.channel) +
    '</td><td>' + esc(r.runningVersion) + '</td><td>' + esc(r.bootedVersion) + '</td><td>' + esc(r.stagedVersion) + '</td><td>' + esc(r.lastGoodVersion) + '</td><td>' + esc(r.state) +
    '</td><td class="' + (r.health === 'failed' ? 'bad' : r.health === 'good' ? 'good' : '') + '">' + esc(r.health) + '</td><td>' + esc(r.decision) + '</td><td>' + esc(m.lastSeen) + (m.stale ? ' (stale)' : '') + '</td></tr>'; }).join('');
}
async function load(path) {
  const res = await fetch(path, { headers: { authorization: 'Bearer ' + token } });
  if (!res.ok) throw new Error((await res.json()).error?.message || res.statusText);
  return res.json();
}
async function poll() {
  try {
    const [m, r] = await Promise.all([load('/v1/machines'), load('/v1/rollouts')]);
    data = m; rollouts = r.rollouts; $('error').textContent = ''; render();
  } catch (e) { $('error').textContent = 'cannot load: ' + e.message; }
}
$('filter').addEventListener('input', render);
poll(); setInterval(poll, every);
</script></body></html>
`;
