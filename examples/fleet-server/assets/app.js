// OpAMP fleet page: plain JavaScript, no dependencies. The agent list
// follows GET /api/events (server-sent events); everything else is the JSON
// API documented in examples/API.md.
'use strict';

const agents = new Map(); // instance_uid -> agent summary, the rows of the page shown
// The server filters, counts and pages the list (GET /api/agents?limit=...);
// the page keeps one page of rows, never the whole fleet.
const PAGE_SIZE = 100;
const list = {
  cursors: [''], // cursors[i] loads page i ('' is the first page)
  index: 0,
  next: null,
  counts: null,
  seq: 0, // answers to older requests are dropped
  refreshTimer: null,
  stale: false,
};
let serverInfo = { can_rotate_certificates: false };
let current = null; // instance_uid shown in the detail view
let detailTimer = null;

const $ = (selector, root = document) => root.querySelector(selector);
const field = (root, name) => root.querySelector(`[data-field="${name}"]`);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// ---- errors ----

function showError(message) {
  const box = $('#errors');
  const item = el('div', { class: 'error' }, el('span', { text: message }));
  const close = el('button', { type: 'button', class: 'close', 'aria-label': 'Dismiss error' }, '×');
  close.addEventListener('click', () => item.remove());
  item.append(close);
  box.append(item);
  while (box.children.length > 4) box.firstElementChild.remove();
}

async function api(method, path, body, contentType) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
    init.headers['Content-Type'] = contentType || 'application/json';
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new Error(`Cannot reach the server (${err.message})`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok) {
    const message = data && data.message ? data.message : `${response.status} ${response.statusText}`;
    throw new Error(`${method} ${path}: ${message}`);
  }
  return data;
}

// Runs an action from a button or form, showing errors and a short success note.
async function run(button, action, done) {
  if (button) button.disabled = true;
  try {
    const result = await action();
    if (done) flash(done(result));
    return true;
  } catch (err) {
    showError(err.message);
    return false;
  } finally {
    if (button) button.disabled = false;
  }
}

function flash(message) {
  const live = $('#live');
  live.dataset.note = message;
  live.textContent = message;
  setTimeout(() => { if (live.dataset.note === message) updateLive(); }, 4000);
}

// ---- formatting ----

function agentName(agent) {
  const id = agent.description.identifying;
  return id['service.name'] || id['host.name'] || agent.instance_uid.slice(0, 8);
}

function shortHash(hash) { return hash ? hash.slice(0, 12) : '—'; }

function ago(iso) {
  if (!iso) return '—';
  const seconds = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 5) return 'just now';
  if (seconds < 60) return `${seconds}s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)}h ago`;
  return new Date(iso).toLocaleString();
}

function statusPill(status) {
  const name = status || 'NONE';
  return el('span', { class: `pill s-${name.toLowerCase()}` }, name);
}

function healthPill(health) {
  if (!health) return el('span', { class: 'pill s-none' }, 'unknown');
  return el('span', { class: `pill ${health.healthy ? 's-applied' : 's-failed'}` }, health.healthy ? 'healthy' : 'unhealthy');
}

function configState(agent) {
  if (agent.desired_config) return agent.desired_config.state;
  return agent.remote_config_status ? agent.remote_config_status.status : null;
}

// ---- agent list ----

function listQuery(cursor) {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const text = $('#filter').value.trim();
  if (text) params.set('q', text);
  for (const [name, id] of [['connection', '#filter-connection'], ['config', '#filter-config'], ['health', '#filter-health']]) {
    const value = $(id).value;
    if (value) params.set(name, value);
  }
  // Half-typed attributes ("service.na") wait until they are key=value.
  const attribute = $('#filter-attribute').value.trim();
  if (/^[^=]+=/.test(attribute)) params.set('attribute', attribute);
  if (cursor) params.set('cursor', cursor);
  return params;
}

function isFiltered() {
  return listQuery('').toString() !== new URLSearchParams({ limit: String(PAGE_SIZE) }).toString();
}

function renderList() {
  const body = $('#agent-rows');
  body.replaceChildren(...[...agents.values()].map((agent) => {
    const link = el('a', { href: `#/agents/${agent.instance_uid}` }, agentName(agent));
    const version = agent.description.identifying['service.version'];
    return el('tr', { 'data-uid': agent.instance_uid, class: agent.connected ? '' : 'offline' },
      el('td', {}, link, version ? el('small', { class: 'muted' }, ` ${version}`) : null),
      el('td', { class: 'mono' }, agent.instance_uid),
      el('td', {}, el('span', { class: `dot ${agent.connected ? 'on' : 'off'}`, 'aria-hidden': 'true' }),
        agent.connected ? (agent.transport === 'http' ? 'HTTP' : 'WebSocket') : 'offline'),
      el('td', {}, healthPill(agent.health)),
      el('td', { class: 'config-state' }, statusPill(configState(agent))),
      el('td', { title: agent.last_seen }, ago(agent.last_seen)));
  }));
}

function renderCounts() {
  const counts = list.counts;
  if (!counts) return;
  const number = (value) => value.toLocaleString('en-US');
  const item = (key, label, value) => el('span', { 'data-count': key }, el('b', {}, number(value)), ` ${label}`);
  $('#counts').replaceChildren(
    item('total', counts.total === 1 ? 'agent' : 'agents', counts.total),
    item('connected', 'connected', counts.connected),
    item('disconnected', 'disconnected', counts.disconnected),
    item('applied', 'config applied', counts.config.applied),
    item('applying', 'applying', counts.config.applying),
    item('pending', 'pending', counts.config.pending),
    item('failed', 'failed', counts.config.failed),
    item('healthy', 'healthy', counts.health.healthy),
    item('unhealthy', 'unhealthy', counts.health.unhealthy));
  const first = list.index * PAGE_SIZE + 1;
  $('#page-info').textContent = agents.size
    ? `${number(first)}–${number(first + agents.size - 1)} of ${number(counts.total)}` : '';
  $('#page-first').disabled = list.index === 0;
  $('#page-prev').disabled = list.index === 0;
  $('#page-next').disabled = !list.next;
  const filtered = isFiltered();
  $('#empty').hidden = counts.total !== 0 || filtered;
  $('#no-match').hidden = counts.total !== 0 || !filtered;
}

async function loadAgents() {
  clearTimeout(list.refreshTimer);
  list.refreshTimer = null;
  list.stale = false;
  const seq = ++list.seq;
  const page = await api('GET', `/api/agents?${listQuery(list.cursors[list.index])}`);
  if (seq !== list.seq) return;
  if (page.agents.length === 0 && list.index > 0) {
    // The page emptied under us (agents forgotten): start over.
    list.cursors = [''];
    list.index = 0;
    await loadAgents();
    return;
  }
  agents.clear();
  for (const agent of page.agents) agents.set(agent.instance_uid, agent);
  list.next = page.next;
  list.counts = page.counts;
  renderList();
  renderCounts();
}

// Live changes refresh the page shown at most every two seconds, however
// many agents report.
function scheduleRefresh() {
  if (list.refreshTimer) return;
  list.refreshTimer = setTimeout(() => {
    list.refreshTimer = null;
    if ($('#list-view').hidden) { list.stale = true; return; }
    loadAgents().catch((err) => showError(err.message));
  }, 2000);
}

function goToPage(index) {
  list.index = index;
  list.cursors.length = index + 1;
  loadAgents().catch((err) => showError(err.message));
}

function filtersChanged() {
  list.cursors = [''];
  goToPage(0);
}

// ---- live updates ----

let source = null;
function updateLive() {
  const live = $('#live');
  delete live.dataset.note;
  const open = source && source.readyState === EventSource.OPEN;
  live.textContent = open ? 'live' : 'reconnecting…';
  live.className = `live ${open ? 'on' : 'off'}`;
}

function connectEvents() {
  source = new EventSource('/api/events');
  source.addEventListener('open', () => {
    // Anything may have changed while the stream was down.
    loadAgents().then(updateLive).catch((err) => showError(err.message));
    if (current) scheduleDetail(0);
  });
  source.addEventListener('error', updateLive);
  source.addEventListener('agent', (event) => {
    const agent = JSON.parse(event.data);
    if (agents.has(agent.instance_uid)) {
      agents.set(agent.instance_uid, agent);
      renderList();
    }
    // Counts, filters and new agents: the server has the answer.
    scheduleRefresh();
    if (agent.instance_uid === current) scheduleDetail(150);
  });
  source.addEventListener('removed', () => scheduleRefresh());
  source.addEventListener('resync', () => {
    loadAgents().catch((err) => showError(err.message));
    if (current) scheduleDetail(0);
  });
  source.addEventListener('config', () => {
    if (location.hash.startsWith('#/config')) showConfig();
  });
}

// ---- agent detail ----

function scheduleDetail(delay) {
  clearTimeout(detailTimer);
  detailTimer = setTimeout(() => {
    if (current) loadDetail(current).catch((err) => showError(err.message));
  }, delay);
}

async function showDetail(uid) {
  current = uid;
  const view = $('#detail-view');
  if (!view.dataset.uid || view.dataset.uid !== uid) {
    view.replaceChildren($('#detail-template').content.cloneNode(true));
    view.dataset.uid = uid;
    wireDetail(view, uid);
  }
  await loadDetail(uid);
}

async function loadDetail(uid) {
  const agent = await api('GET', `/api/agents/${uid}`);
  if (current !== uid) return;
  renderDetail($('#detail-view'), agent);
}

function kvTable(map, caption) {
  const entries = Object.entries(map || {});
  if (!entries.length) return el('p', { class: 'muted' }, `No ${caption.toLowerCase()} attributes.`);
  return el('table', { class: 'kv' }, el('caption', {}, caption),
    el('tbody', {}, entries.map(([k, v]) => el('tr', {}, el('th', { scope: 'row' }, k), el('td', {}, v)))));
}

function healthTree(name, health) {
  const parts = [el('span', { class: `dot ${health.healthy ? 'on' : 'bad'}`, 'aria-hidden': 'true' }),
    el('strong', {}, name), ' ', healthPill(health)];
  if (health.status) parts.push(' ', el('span', {}, health.status));
  if (health.last_error) parts.push(el('div', { class: 'err-text' }, health.last_error));
  if (health.start_time) parts.push(el('div', { class: 'muted small' }, `up since ${new Date(health.start_time).toLocaleString()}`));
  const children = Object.entries(health.components || {});
  return el('li', {}, ...parts,
    children.length ? el('ul', {}, children.map(([child, h]) => healthTree(child, h))) : null);
}

// The key "" is common (a lone config, or the Collector's expanded config),
// so it gets a readable label instead of an empty one.
function keyLabel(name) {
  return name === '' ? '(empty key)' : name;
}

function fileFigure(name, file) {
  return el('figure', { class: 'file' },
    el('figcaption', {},
      el('span', { class: 'mono', title: `key ${JSON.stringify(name)}` }, keyLabel(name)), ' ',
      el('small', { class: 'muted' }, file.content_type || 'no content type'), ' ',
      file.role
        ? el('span', { class: 'role', 'data-role': file.role }, 'role ', el('strong', {}, file.role))
        : el('small', { class: 'muted' }, 'no role')),
    el('pre', { class: 'mono' }, file.encoding === 'base64' ? `(binary, base64) ${file.body}` : file.body));
}

const selectedKeys = new Map(); // tab group -> key shown, kept across refreshes

// One file as a figure; several as tabs labelled by key, since the keys of one
// map may be alternative views of the same configuration (spec v0.20.0).
function fileBlocks(bodies, group) {
  const entries = Object.entries(bodies || {});
  if (!entries.length) return el('p', { class: 'muted' }, 'No files.');
  if (entries.length === 1) return [fileFigure(...entries[0])];
  let selected = selectedKeys.get(group);
  if (!entries.some(([name]) => name === selected)) selected = entries[0][0];
  const tabs = el('div', { role: 'tablist', class: 'tabs', 'aria-label': 'Keys of this configuration' });
  const panels = [];
  const select = (name, focus) => {
    selectedKeys.set(group, name);
    for (const tab of tabs.children) {
      const on = tab.dataset.key === name;
      tab.setAttribute('aria-selected', on ? 'true' : 'false');
      tab.tabIndex = on ? 0 : -1;
      if (on && focus) tab.focus();
    }
    for (const panel of panels) panel.hidden = panel.dataset.key !== name;
  };
  entries.forEach(([name, file], index) => {
    const tabId = `${group}-tab-${index}`;
    const panelId = `${group}-panel-${index}`;
    const tab = el('button', { type: 'button', role: 'tab', class: 'tab', id: tabId, 'aria-controls': panelId },
      el('span', { class: 'mono' }, keyLabel(name)), file.role ? el('small', {}, ` · ${file.role}`) : null);
    tab.dataset.key = name;
    tab.addEventListener('click', () => select(name, false));
    tab.addEventListener('keydown', (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      event.preventDefault();
      select(entries[(index + step + entries.length) % entries.length][0], true);
    });
    tabs.append(tab);
    const panel = el('div', { role: 'tabpanel', id: panelId, 'aria-labelledby': tabId }, fileFigure(name, file));
    panel.dataset.key = name;
    panels.push(panel);
  });
  select(selected, false);
  return [el('p', { class: 'muted small' },
    `${entries.length} keys. The agent defines what each holds; several may be views of one configuration.`),
  tabs, ...panels];
}

function renderDetail(view, agent) {
  const caps = new Set(agent.capabilities);
  field(view, 'name').textContent = agentName(agent);
  field(view, 'uid').textContent = agent.instance_uid;
  const badge = field(view, 'badge');
  badge.textContent = agent.connected ? `connected · ${agent.transport === 'http' ? 'HTTP' : 'WebSocket'}` : 'offline';
  badge.className = `badge ${agent.connected ? 'on' : 'off'}`;
  field(view, 'meta').textContent = `Last seen ${ago(agent.last_seen)} · first seen ${new Date(agent.first_seen).toLocaleString()}`
    + (agent.sequence_num !== null && agent.sequence_num !== undefined ? ` · sequence ${agent.sequence_num}` : '')
    + (agent.heartbeat_interval_seconds ? ` · heartbeat ${agent.heartbeat_interval_seconds}s offered` : '')
    + ` · capabilities: ${agent.capabilities.join(', ') || 'none'}`;

  field(view, 'description').replaceChildren(
    kvTable(agent.description.identifying, 'Identifying'),
    kvTable(agent.description.non_identifying, 'Non-identifying'));

  field(view, 'health').replaceChildren(agent.health
    ? el('ul', { class: 'tree' }, healthTree('agent', agent.health))
    : el('p', { class: 'muted' }, caps.has('ReportsHealth') ? 'No health reported yet.' : 'This agent does not report health.'));

  const eff = agent.effective_config;
  field(view, 'effective').replaceChildren(...(eff
    ? [el('p', { class: 'muted' }, `hash ${shortHash(eff.hash)}`), ...[fileBlocks(eff.bodies, 'effective')].flat()]
    : [el('p', { class: 'muted' }, 'No effective config reported.')]));

  renderPushStatus(field(view, 'push-status'), agent);
  const form = $('[data-form="config"]', view);
  // Start from what the server wants, else from what the agent runs.
  const startFrom = (agent.desired_config && agent.desired_config.bodies) || (eff && eff.bodies);
  if (!form.dataset.touched && startFrom) {
    const [[name, file] = []] = Object.entries(startFrom);
    if (file) {
      form.file.value = name;
      if (![...form.content_type.options].some((o) => o.value === file.content_type) && file.content_type) {
        form.content_type.append(el('option', {}, file.content_type));
      }
      form.content_type.value = file.content_type || 'text/yaml';
      form.role.value = file.role || '';
      form.body.value = file.encoding === 'base64' ? '' : file.body;
    }
  }

  field(view, 'history').replaceChildren(...(agent.config_history || []).map((entry) => el('tr', {},
    el('td', {}, new Date(entry.offered_at).toLocaleString()),
    el('td', { class: 'mono', title: entry.config_hash }, shortHash(entry.config_hash)),
    el('td', {}, entry.source.kind === 'group' ? `group ${entry.source.name}` : entry.source.kind),
    el('td', {}, statusPill(entry.outcome), entry.error_message ? el('div', { class: 'err-text' }, entry.error_message) : null))));

  const custom = $('[data-form="custom"] select[name="capability"]', view);
  const wanted = agent.custom_capabilities || [];
  if (custom.options.length !== wanted.length || wanted.some((c, i) => custom.options[i].value !== c)) {
    custom.replaceChildren(...wanted.map((c) => el('option', {}, c)));
  }
  $('[data-form="custom"] button', view).disabled = !agent.connected || wanted.length === 0;
  $('[data-form="custom"]', view).title = wanted.length ? '' : 'The agent announced no custom capabilities';

  renderPackages(field(view, 'packages'), agent);

  const events = agent.events || [];
  field(view, 'events').replaceChildren(...(events.length ? events.map((event) => el('li', {},
    el('time', { datetime: event.at }, new Date(event.at).toLocaleTimeString()), ' ',
    el('strong', {}, event.kind), ' ', event.message,
    event.repeats ? el('span', { class: 'muted' }, ` (×${event.repeats + 1})`) : '')) : [el('li', { class: 'muted' }, 'No events yet.')]));

  for (const button of view.querySelectorAll('[data-needs]')) {
    const need = button.dataset.needs;
    button.disabled = !caps.has(need);
    button.title = caps.has(need) ? '' : `The agent does not declare ${need}`;
  }
  const rotate = $('[data-action="rotate"]', view);
  rotate.hidden = !serverInfo.can_rotate_certificates;
  const heartbeat = $('[data-form="heartbeat"] input', view);
  if (document.activeElement !== heartbeat && agent.heartbeat_interval_seconds !== null && agent.heartbeat_interval_seconds !== undefined) {
    heartbeat.value = agent.heartbeat_interval_seconds;
  }
}

function renderPushStatus(node, agent) {
  const desired = agent.desired_config;
  if (!desired) {
    const reported = agent.remote_config_status;
    node.replaceChildren(el('span', { class: 'muted' }, reported
      ? `No config offered by this server; the agent reports ${reported.status}.`
      : 'No config offered yet.'));
    return;
  }
  const kind = desired.source && desired.source.kind;
  const source = kind === 'group' ? `group “${desired.source.name}”`
    : kind === 'agent' ? 'this agent\'s own config' : kind === 'default' ? 'the default config' : 'an earlier run';
  const parts = [
    el('span', {}, 'Last push: '), statusPill(desired.state),
    el('span', { class: 'mono', title: desired.config_hash }, ` ${shortHash(desired.config_hash)}`),
    el('span', { class: 'muted' }, ` from ${source}`)];
  if (desired.error_message) parts.push(el('div', { class: 'err-text' }, desired.error_message));
  node.replaceChildren(...parts);
}

function renderPackages(node, agent) {
  const statuses = agent.package_statuses;
  const offered = agent.packages_offered || {};
  const names = new Set([...Object.keys(offered), ...Object.keys((statuses && statuses.packages) || {})]);
  if (!names.size) {
    node.replaceChildren(el('p', { class: 'muted' }, 'No packages offered or reported.'));
    return;
  }
  const rows = [...names].sort().map((name) => {
    const status = (statuses && statuses.packages[name]) || {};
    const offer = offered[name];
    const cell = [statusPill(status.status || 'OFFERED')];
    if (status.status === 'DOWNLOADING') {
      const percent = Math.round(status.download_percent || 0);
      cell.push(' ', el('progress', { max: '100', value: String(percent), 'aria-label': `${name} download progress` }), ` ${percent}%`);
    }
    if (status.error_message) cell.push(el('div', { class: 'err-text' }, status.error_message));
    return el('tr', {},
      el('th', { scope: 'row' }, name),
      el('td', {}, offer ? `${offer.version || '—'} (${offer.type})` : '—'),
      el('td', {}, status.agent_has_version || '—'),
      el('td', {}, ...cell));
  });
  const parts = [el('table', { class: 'small' },
    el('thead', {}, el('tr', {}, ['Package', 'Offered', 'Installed', 'Status'].map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, rows))];
  if (statuses && statuses.error_message) parts.push(el('p', { class: 'err-text' }, statuses.error_message));
  node.replaceChildren(...parts);
}

async function refreshPackageFiles(view) {
  const select = $('[data-form="package"] select[name="file"]', view);
  const files = await api('GET', '/api/packages');
  select.replaceChildren(...files.map((f) => el('option', { value: f.file }, `${f.file} (${f.size} bytes)`)));
  if (!files.length) select.append(el('option', { value: '' }, `no files in ${serverInfo.packages_dir || 'the packages directory'}`));
}

function wireDetail(view, uid) {
  const base = `/api/agents/${uid}`;
  const configForm = $('[data-form="config"]', view);
  configForm.addEventListener('input', () => { configForm.dataset.touched = '1'; });
  configForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const button = $('button[type="submit"]', configForm);
    const query = fileQuery(configForm);
    run(button, () => api('PUT', `${base}/config${query}`, configForm.body.value, configForm.content_type.value),
      (result) => `config ${shortHash(result.config_hash)} offered`).then((ok) => {
      if (ok) delete configForm.dataset.touched;
      scheduleDetail(0);
    });
  });
  $('[data-action="clear-config"]', view).addEventListener('click', (event) => {
    run(event.target, () => api('DELETE', `${base}/config`), () => 'agent config removed').then((ok) => {
      if (ok) delete configForm.dataset.touched;
      scheduleDetail(0);
    });
  });
  $('[data-action="restart"]', view).addEventListener('click', (event) => {
    if (!confirm('Restart this agent?')) return;
    run(event.target, () => api('POST', `${base}/restart`), () => 'restart sent');
  });
  $('[data-action="rotate"]', view).addEventListener('click', (event) => {
    run(event.target, () => api('POST', `${base}/rotate-certificate`), () => 'new client certificate offered');
  });
  const heartbeat = $('[data-form="heartbeat"]', view);
  heartbeat.addEventListener('submit', (event) => {
    event.preventDefault();
    run($('button', heartbeat), () => api('PUT', `${base}/heartbeat`,
      { heartbeat_interval_seconds: Number(heartbeat.seconds.value) }), () => 'heartbeat interval offered');
  });
  const custom = $('[data-form="custom"]', view);
  custom.addEventListener('submit', (event) => {
    event.preventDefault();
    run($('button', custom), () => api('POST', `${base}/custom-message`,
      { capability: custom.capability.value, type: custom.type.value, data: custom.data.value }), () => 'custom message sent');
  });
  const pkg = $('[data-form="package"]', view);
  pkg.file.addEventListener('change', () => {
    if (!pkg.name.value) pkg.name.value = pkg.file.value.replace(/\.(tar\.gz|tgz|tar|zip|gz|deb|rpm)$/, '');
  });
  pkg.addEventListener('submit', (event) => {
    event.preventDefault();
    run($('button', pkg), () => api('POST', `${base}/packages`,
      { file: pkg.file.value, name: pkg.name.value, version: pkg.version.value, type: pkg.type.value }),
    () => 'package offered').then(() => scheduleDetail(0));
  });
  refreshPackageFiles(view).catch((err) => showError(err.message));
}

// ---- fleet config ----

// `?file=…&role=…` for the single-file PUT endpoints.
function fileQuery(form) {
  const params = new URLSearchParams();
  if (form.file.value) params.set('file', form.file.value);
  if (form.role.value) params.set('role', form.role.value);
  const text = params.toString();
  return text ? `?${text}` : '';
}

function fillFileForm(form, config) {
  const entries = Object.entries((config && config.files) || {});
  if (!entries.length || form.dataset.touched) return;
  const [name, file] = entries[0];
  form.file.value = name;
  form.content_type.value = file.content_type;
  form.role.value = file.role || '';
  form.body.value = file.encoding === 'base64' ? '' : file.body;
}

async function showConfig() {
  const view = $('#config-view');
  if (!view.firstElementChild) {
    view.replaceChildren($('#config-template').content.cloneNode(true));
    wireConfig(view);
  }
  const config = await api('GET', '/api/config');
  fillFileForm($('[data-form="default"]', view), config.default);
  const groups = Object.entries(config.groups || {});
  field(view, 'groups').replaceChildren(...(groups.length ? groups.map(([name, group]) => {
    const remove = el('button', { type: 'button', class: 'secondary small-button', 'aria-label': `Delete group ${name}` }, 'Delete');
    remove.addEventListener('click', () => run(remove, () => api('DELETE', `/api/config/groups/${encodeURIComponent(name)}`),
      () => `group ${name} deleted`).then(() => showConfig().catch((err) => showError(err.message))));
    const edit = el('button', { type: 'button', class: 'secondary small-button', 'aria-label': `Edit group ${name}` }, 'Edit');
    edit.addEventListener('click', () => {
      const form = $('[data-form="group"]', view);
      delete form.dataset.touched;
      form.name.value = name;
      form.selector.value = Object.entries(group.selector).map(([k, v]) => `${k}=${v}`).join(', ');
      fillFileForm(form, group.config);
    });
    return el('li', {}, el('strong', {}, name), ' ',
      el('span', { class: 'mono' }, Object.entries(group.selector).map(([k, v]) => `${k}=${v}`).join(', ')),
      el('span', { class: 'muted' }, ` · ${shortHash(group.config.config_hash)} · ${group.matching_agents} agent(s)`), ' ', edit, ' ', remove);
  }) : [el('li', { class: 'muted' }, 'No groups.')]));
}

function parseSelector(text) {
  const selector = {};
  for (const part of text.split(',')) {
    const trimmed = part.trim();
    if (!trimmed) continue;
    const at = trimmed.indexOf('=');
    if (at < 1) throw new Error(`Selector entry “${trimmed}” is not key=value`);
    selector[trimmed.slice(0, at).trim()] = trimmed.slice(at + 1).trim();
  }
  return selector;
}

function wireConfig(view) {
  const defaults = $('[data-form="default"]', view);
  defaults.addEventListener('input', () => { defaults.dataset.touched = '1'; });
  defaults.addEventListener('submit', (event) => {
    event.preventDefault();
    const query = fileQuery(defaults);
    run($('button', defaults), () => api('PUT', `/api/config/default${query}`, defaults.body.value, defaults.content_type.value),
      (result) => `default config ${shortHash(result.config_hash)} saved`).then((ok) => { if (ok) delete defaults.dataset.touched; });
  });
  const group = $('[data-form="group"]', view);
  group.addEventListener('input', () => { group.dataset.touched = '1'; });
  group.addEventListener('submit', (event) => {
    event.preventDefault();
    run($('button', group), async () => {
      const body = {
        selector: parseSelector(group.selector.value),
        config: { files: { [group.file.value]: { content_type: group.content_type.value, role: group.role.value, body: group.body.value } } },
      };
      return api('PUT', `/api/config/groups/${encodeURIComponent(group.name.value)}`, body);
    }, (result) => `group saved (${shortHash(result.config_hash)})`).then((ok) => {
      if (!ok) return;
      delete group.dataset.touched;
      showConfig().catch((err) => showError(err.message));
    });
  });
}

// ---- routing ----

function route() {
  const hash = location.hash || '#/';
  const match = hash.match(/^#\/agents\/([0-9a-fA-F-]{36})$/);
  $('#list-view').hidden = Boolean(match) || hash.startsWith('#/config');
  $('#detail-view').hidden = !match;
  $('#config-view').hidden = !hash.startsWith('#/config');
  for (const link of document.querySelectorAll('nav a')) {
    const active = link.getAttribute('href') === (match ? '#/' : hash);
    if (active) link.setAttribute('aria-current', 'page'); else link.removeAttribute('aria-current');
  }
  if (match) {
    showDetail(match[1].toLowerCase()).catch((err) => showError(err.message));
  } else {
    current = null;
    if (hash.startsWith('#/config')) showConfig().catch((err) => showError(err.message));
    else if (list.stale) loadAgents().catch((err) => showError(err.message));
  }
}

document.addEventListener('DOMContentLoaded', () => {
  let typing = null;
  const typed = () => { clearTimeout(typing); typing = setTimeout(filtersChanged, 250); };
  $('#filter').addEventListener('input', typed);
  $('#filter-attribute').addEventListener('input', typed);
  for (const id of ['#filter-connection', '#filter-config', '#filter-health']) $(id).addEventListener('change', filtersChanged);
  $('#filters').addEventListener('submit', (event) => { event.preventDefault(); filtersChanged(); });
  $('#page-first').addEventListener('click', () => goToPage(0));
  $('#page-prev').addEventListener('click', () => goToPage(Math.max(0, list.index - 1)));
  $('#page-next').addEventListener('click', () => {
    if (!list.next) return;
    list.cursors[list.index + 1] = list.next;
    goToPage(list.index + 1);
  });
  window.addEventListener('hashchange', route);
  api('GET', '/api/server').then((info) => { serverInfo = info; }).catch((err) => showError(err.message));
  loadAgents().catch((err) => showError(err.message));
  connectEvents();
  route();
  // Keep "last seen" fresh without a server round trip.
  setInterval(renderList, 15000);
});
