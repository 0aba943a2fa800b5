// Hydrant's web dashboard: the page's only script (served at /dashboard/app.js).
//
// Flow: token (URL fragment or paste box) → GET /v3/info (where the firehose is) → the
// firehose over WebSocket in JSON frames (a token with the firehose or admin scope), or one
// per-app stream per app with a short-lived log token (any other token) → per-app windows of
// router timers, container gauges, SLO gauges and the roles' own counters → tables redrawn
// every second. The API is polled for apps (5 s), instance states (2 s) and SLO specs (10 s).
//
// Invariants: every text that came from the network is written with textContent, never as
// markup; every collection is bounded (apps, instances, counter series, window slots); the
// token never goes into a URL path or a log, and leaves the address bar once read.
'use strict';

(() => {
  // Windows: requests/s over RATE_SECS, latency percentiles and status shares over WINDOW_SECS.
  const RATE_SECS = 10;
  const WINDOW_SECS = 60;
  const SLOTS = WINDOW_SECS + 2;
  // Latency histogram: 8 buckets per power of two from 1 µs to 2^28 µs (~4.5 min): ~9 % wide.
  const PER_OCTAVE = 8;
  const BUCKETS = PER_OCTAVE * 28;
  // Bounds on what the page keeps, whatever the stream holds.
  const MAX_APPS = 500;
  const MAX_INSTANCES = 256;
  const MAX_SLOS = 32;
  const MAX_SERIES = 5000;
  const MAX_APP_STREAMS = 20;
  const MAX_POLLED_APPS = 50;
  const MAX_DROP_ROWS = 25;
  // A role reports every 5 s by default; a series silent this long no longer counts.
  const STALE_MS = 30000;
  const TOKEN_KEY = 'hydrant.dashboard.token';

  const byId = (id) => document.getElementById(id);

  const state = {
    token: null,
    scopes: null,
    info: null,
    mode: '',
    apps: new Map(),
    series: new Map(),
    gauges: new Map(),
    ignoredSeries: 0,
    started: Date.now(),
    listedOnce: false,
  };

  const stream = {
    subscription: 'dashboard-' + randomId(),
    open: 0,
    sockets: new Map(),
    perSecond: new Array(8).fill(null).map(() => ({ sec: -1, n: 0 })),
    lastFrame: 0,
    gaps: 0,
    badFrames: 0,
    problem: '',
  };

  // ---------------------------------------------------------------- token

  function readToken() {
    const hash = location.hash.startsWith('#') ? location.hash.slice(1) : '';
    const fromHash = new URLSearchParams(hash).get('token');
    if (fromHash) {
      storeToken(fromHash);
      // Out of the address bar, history and any bookmark; the tab keeps it in sessionStorage.
      history.replaceState(null, '', location.pathname + location.search);
      return fromHash.trim();
    }
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch {
      return null;
    }
  }

  function storeToken(token) {
    try {
      sessionStorage.setItem(TOKEN_KEY, token.trim());
    } catch {
      // Storage off: the token lives only as long as the page.
    }
  }

  function forgetToken() {
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // nothing stored
    }
  }

  // The scopes a Hydrant token carries (`hyd1.<base64url JSON>.<signature>`); null when the
  // token has another shape, in which case the firehose is tried and the edge decides.
  function tokenScopes(token) {
    const parts = token.split('.');
    if (parts.length !== 3) return null;
    try {
      let b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
      while (b64.length % 4) b64 += '=';
      const claims = JSON.parse(atob(b64));
      return Array.isArray(claims.scopes) ? claims.scopes.filter((s) => typeof s === 'string') : null;
    } catch {
      return null;
    }
  }

  function randomId() {
    const bytes = new Uint8Array(8);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // ---------------------------------------------------------------- API

  class AuthError extends Error {}

  async function api(path, options = {}) {
    const res = await fetch(path, {
      method: options.method || 'GET',
      headers: { Authorization: 'Bearer ' + state.token, Accept: 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
    });
    if (res.status === 401) throw new AuthError(await errorDetail(res));
    if (!res.ok) throw new Error(`${path} answered ${res.status}: ${await errorDetail(res)}`);
    return res.json();
  }

  async function errorDetail(res) {
    try {
      const body = await res.json();
      const first = body && Array.isArray(body.errors) ? body.errors[0] : null;
      if (first && typeof first.detail === 'string') return first.detail;
      if (body && typeof body.message === 'string') return body.message;
    } catch {
      // not JSON
    }
    return res.statusText || 'no detail';
  }

  function showLogin(message) {
    byId('login').hidden = false;
    byId('main').hidden = true;
    byId('login-message').textContent = message || '';
    byId('who').textContent = '';
    setStatus('no token', 'bad');
  }

  // What is wrong right now, by where it came from; the page shows them all, and each clears
  // when its source works again.
  const problems = new Map();

  function problem(source, text) {
    if (text) problems.set(source, text);
    else problems.delete(source);
    const el = byId('notice');
    const all = [...problems.values()].join(' · ');
    if (el.textContent !== all) el.textContent = all;
    el.hidden = !all;
  }

  // ---------------------------------------------------------------- per-app state

  function appFor(guid) {
    if (typeof guid !== 'string' || !guid) return null;
    let a = state.apps.get(guid);
    if (!a) {
      if (state.apps.size >= MAX_APPS) return null;
      a = {
        guid,
        name: '',
        listed: false,
        desiredState: '',
        desired: null,
        stats: null,
        lastSeen: Date.now(),
        slots: new Array(SLOTS).fill(null),
        instances: new Map(),
        sloSpecs: [],
        sloLive: new Map(),
      };
      state.apps.set(guid, a);
    }
    return a;
  }

  function slotFor(a, sec) {
    const i = sec % SLOTS;
    let s = a.slots[i];
    if (!s) {
      s = { sec: -1, count: 0, classes: new Uint32Array(6), hist: new Uint32Array(BUCKETS) };
      a.slots[i] = s;
    }
    if (s.sec !== sec) {
      s.sec = sec;
      s.count = 0;
      s.classes.fill(0);
      s.hist.fill(0);
    }
    return s;
  }

  function bucketOf(micros) {
    if (!(micros >= 1)) return 0;
    return Math.min(BUCKETS - 1, Math.floor(Math.log2(micros) * PER_OCTAVE));
  }

  // The bucket's geometric middle, in µs.
  function bucketMicros(b) {
    return Math.pow(2, (b + 0.5) / PER_OCTAVE);
  }

  function num(v) {
    if (typeof v === 'number') return v;
    if (typeof v === 'string') return Number(v);
    return NaN;
  }

  function tagsOf(e) {
    return e.tags && typeof e.tags === 'object' ? e.tags : {};
  }

  // ---------------------------------------------------------------- envelopes

  function onTimer(e, nowSec) {
    const t = e.timer;
    if (!t || t.name !== 'http') return;
    const tags = tagsOf(e);
    // Router timers only: an app's own client timers would count its outgoing calls.
    if (tags.peer_type !== undefined && tags.peer_type !== 'Client') return;
    const a = appFor(e.source_id);
    if (!a) return;
    if (!a.name && typeof tags.app_name === 'string') a.name = tags.app_name;
    let nanos;
    try {
      nanos = Number(BigInt(t.stop) - BigInt(t.start));
    } catch {
      return;
    }
    if (!(nanos >= 0)) return;
    a.lastSeen = Date.now();
    const s = slotFor(a, nowSec);
    s.count += 1;
    const code = parseInt(tags.status_code, 10);
    s.classes[code >= 100 && code < 600 ? Math.floor(code / 100) : 0] += 1;
    s.hist[bucketOf(nanos / 1000)] += 1;
  }

  const SLO_GAUGE = /^slo\.(.+)\.(budget_remaining|alerts_firing|sli_1h|burn_rate_1h)$/;

  function onGauge(e) {
    const metrics = e.gauge && e.gauge.metrics && typeof e.gauge.metrics === 'object' ? e.gauge.metrics : {};
    const names = Object.keys(metrics);
    const tags = tagsOf(e);
    const value = (n) => (metrics[n] && typeof metrics[n] === 'object' ? num(metrics[n].value) : NaN);
    if ('cpu' in metrics && 'memory' in metrics) {
      const a = appFor(e.source_id);
      if (!a) return;
      const id = typeof e.instance_id === 'string' ? e.instance_id : '';
      if (!a.instances.has(id) && a.instances.size >= MAX_INSTANCES) return;
      a.instances.set(id, {
        cpu: value('cpu'),
        memory: value('memory'),
        memoryQuota: value('memory_quota'),
        at: Date.now(),
      });
      return;
    }
    if (typeof tags.slo === 'string' && names.some((n) => SLO_GAUGE.test(n))) {
      const a = appFor(e.source_id);
      if (!a) return;
      if (!a.sloLive.has(tags.slo) && a.sloLive.size >= MAX_SLOS) return;
      const live = a.sloLive.get(tags.slo) || {};
      for (const n of names) {
        const m = SLO_GAUGE.exec(n);
        if (m && m[1] === tags.slo) live[m[2]] = value(n);
      }
      live.at = Date.now();
      a.sloLive.set(tags.slo, live);
      return;
    }
    for (const n of names) {
      const key = seriesKey(e.source_id, n, tags);
      if (!state.gauges.has(key) && state.gauges.size >= MAX_SERIES) {
        state.ignoredSeries += 1;
        continue;
      }
      state.gauges.set(key, { source: String(e.source_id), name: n, tags, value: value(n), seen: Date.now() });
    }
  }

  function seriesKey(source, name, tags) {
    const pairs = Object.keys(tags).sort().map((k) => k + '=' + tags[k]);
    return [source, name, ...pairs].join('\u0001');
  }

  function onCounter(e) {
    const c = e.counter;
    if (!c || typeof c.name !== 'string') return;
    const tags = tagsOf(e);
    const key = seriesKey(e.source_id, c.name, tags);
    let s = state.series.get(key);
    if (!s) {
      if (state.series.size >= MAX_SERIES) {
        state.ignoredSeries += 1;
        return;
      }
      s = { source: String(e.source_id), name: c.name, tags, total: 0, ts: 0, rate: null, seen: 0 };
      state.series.set(key, s);
    }
    const total = num(c.total);
    const delta = num(c.delta);
    const ts = num(e.timestamp);
    if (!Number.isFinite(total)) return;
    if (s.seen && ts > s.ts) {
      // A restarted role starts its total again; its delta is then the increase.
      const increase = total >= s.total ? total - s.total : delta;
      s.rate = Number.isFinite(increase) ? increase / ((ts - s.ts) / 1e9) : null;
    }
    s.total = total;
    s.ts = ts;
    s.seen = Date.now();
  }

  function onEvent(e) {
    if (!e.event || e.event.title !== 'hydrant.gap') return;
    const lost = num(tagsOf(e)['hydrant.gap.dropped']);
    if (Number.isFinite(lost) && lost > 0) stream.gaps += lost;
  }

  function onFrame(message) {
    if (typeof message.data !== 'string') return;
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch {
      stream.badFrames += 1;
      return;
    }
    const batch = frame && Array.isArray(frame.batch) ? frame.batch : [];
    const now = Date.now();
    const nowSec = Math.floor(now / 1000);
    stream.lastFrame = now;
    const slot = stream.perSecond[nowSec % stream.perSecond.length];
    if (slot.sec !== nowSec) {
      slot.sec = nowSec;
      slot.n = 0;
    }
    slot.n += batch.length;
    for (const e of batch) {
      if (!e || typeof e !== 'object' || typeof e.source_id !== 'string') continue;
      if (e.timer) onTimer(e, nowSec);
      else if (e.gauge) onGauge(e);
      else if (e.counter) onCounter(e);
      else if (e.event) onEvent(e);
    }
  }

  // ---------------------------------------------------------------- streams

  function websocketBase(httpUrl) {
    try {
      const u = new URL(httpUrl);
      if (u.protocol !== 'http:' && u.protocol !== 'https:') return null;
      return (u.protocol === 'https:' ? 'wss://' : 'ws://') + u.host;
    } catch {
      return null;
    }
  }

  // Opens a socket and keeps it open: reconnects with capped, jittered backoff, asking `url`
  // for a fresh URL (a per-app stream needs a fresh log token) each time.
  function keepOpen(key, url) {
    let backoff = 1000;
    const connect = async () => {
      if (!stream.sockets.has(key)) return;
      let target;
      try {
        target = await url();
      } catch (err) {
        retry(err instanceof Error ? err.message : String(err));
        return;
      }
      const ws = new WebSocket(target);
      const entry = stream.sockets.get(key);
      if (!entry) {
        ws.close();
        return;
      }
      entry.ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        backoff = 1000;
        stream.open += 1;
        stream.problem = '';
      };
      ws.onmessage = onFrame;
      ws.onclose = (ev) => {
        if (opened) stream.open -= 1;
        if (!stream.sockets.has(key)) return;
        const why = ev.reason
          ? `closed by the edge (${ev.code}): ${ev.reason}`
          : opened
            ? `connection lost (${ev.code})`
            : 'the firehose edge refused the connection (is it up, and may this token read the stream?)';
        retry(why);
      };
    };
    const retry = (why) => {
      stream.problem = why;
      const delay = backoff * (0.8 + 0.4 * Math.random());
      backoff = Math.min(backoff * 2, 30000);
      const entry = stream.sockets.get(key);
      if (entry) entry.timer = setTimeout(connect, delay);
    };
    stream.sockets.set(key, { ws: null, timer: null });
    connect();
  }

  function closeSocket(key) {
    const entry = stream.sockets.get(key);
    stream.sockets.delete(key);
    if (!entry) return;
    clearTimeout(entry.timer);
    if (entry.ws) entry.ws.close(1000);
  }

  function startFirehose(base) {
    keepOpen('firehose', async () => {
      const q = new URLSearchParams({ format: 'json', 'filter-type': 'metrics', access_token: state.token });
      return `${base}/firehose/${encodeURIComponent(stream.subscription)}?${q}`;
    });
  }

  function syncAppStreams(base) {
    const wanted = new Set(
      [...state.apps.values()].filter((a) => a.listed).slice(0, MAX_APP_STREAMS).map((a) => a.guid),
    );
    for (const key of [...stream.sockets.keys()]) {
      if (!wanted.has(key)) closeSocket(key);
    }
    for (const guid of wanted) {
      if (stream.sockets.has(guid)) continue;
      keepOpen(guid, async () => {
        const t = await api(`/v3/apps/${encodeURIComponent(guid)}/log_token`, { method: 'POST' });
        const q = new URLSearchParams({ format: 'json', access_token: String(t.token) });
        return `${base}/apps/${encodeURIComponent(String(t.source_id))}/stream?${q}`;
      });
    }
  }

  // ---------------------------------------------------------------- polling the API

  async function pollApps() {
    const list = await api('/v3/apps');
    const resources = Array.isArray(list.resources) ? list.resources : [];
    const listed = new Set();
    for (const r of resources) {
      const a = appFor(r.guid);
      if (!a) continue;
      listed.add(a.guid);
      a.listed = true;
      a.name = typeof r.name === 'string' ? r.name : a.name;
      a.desiredState = typeof r.state === 'string' ? r.state : '';
      a.desired = num(r.instances);
    }
    const now = Date.now();
    for (const [guid, a] of state.apps) {
      if (listed.has(guid)) continue;
      a.listed = false;
      if (now - a.lastSeen > 120000) state.apps.delete(guid);
    }
    state.listedOnce = true;
  }

  function polledApps() {
    return [...state.apps.values()].filter((a) => a.listed).slice(0, MAX_POLLED_APPS);
  }

  async function pollStats() {
    await Promise.all(
      polledApps().map(async (a) => {
        try {
          a.stats = await api(`/v3/apps/${encodeURIComponent(a.guid)}/processes/web/stats`);
        } catch (err) {
          if (err instanceof AuthError) throw err;
          a.stats = null;
        }
      }),
    );
  }

  async function pollSlos() {
    await Promise.all(
      polledApps().map(async (a) => {
        try {
          const set = await api(`/v3/apps/${encodeURIComponent(a.guid)}/slos`);
          a.sloSpecs = Array.isArray(set.slos) ? set.slos.slice(0, MAX_SLOS) : [];
        } catch (err) {
          if (err instanceof AuthError) throw err;
        }
      }),
    );
  }

  function every(ms, name, task) {
    let running = false;
    const tick = async () => {
      if (running) return;
      running = true;
      try {
        await task();
        problem(name, '');
      } catch (err) {
        if (err instanceof AuthError) {
          stop();
          forgetToken();
          showLogin(`The API refused the token: ${err.message}`);
        } else {
          problem(name, err instanceof Error ? err.message : String(err));
        }
      } finally {
        running = false;
      }
    };
    tick();
    const id = setInterval(tick, ms);
    timers.push(id);
  }

  const timers = [];

  function stop() {
    for (const id of timers.splice(0)) clearInterval(id);
    for (const key of [...stream.sockets.keys()]) closeSocket(key);
  }

  // ---------------------------------------------------------------- numbers

  function windowStats(a, nowSec) {
    let rateCount = 0;
    let count = 0;
    const classes = new Array(6).fill(0);
    const hist = new Float64Array(BUCKETS);
    const trend = [];
    for (let sec = nowSec - WINDOW_SECS; sec < nowSec; sec += 1) {
      const s = a.slots[sec % SLOTS];
      const n = s && s.sec === sec ? s.count : 0;
      trend.push(n);
      if (!n) continue;
      if (sec >= nowSec - RATE_SECS) rateCount += n;
      count += n;
      for (let c = 0; c < 6; c += 1) classes[c] += s.classes[c];
      for (let b = 0; b < BUCKETS; b += 1) hist[b] += s.hist[b];
    }
    // Until the page has watched a whole window, divide by the time it has watched.
    const watched = Math.max(1, Math.min(RATE_SECS, Math.floor((Date.now() - state.started) / 1000)));
    const quantile = (q) => {
      if (!count) return null;
      const rank = Math.ceil(q * count);
      let seen = 0;
      for (let b = 0; b < BUCKETS; b += 1) {
        seen += hist[b];
        if (seen >= rank) return bucketMicros(b);
      }
      return bucketMicros(BUCKETS - 1);
    };
    return {
      rps: rateCount / watched,
      count,
      p50: quantile(0.5),
      p95: quantile(0.95),
      p99: quantile(0.99),
      share5xx: count ? classes[5] / count : null,
      share4xx: count ? classes[4] / count : null,
      trend,
    };
  }

  function liveInstances(a) {
    const now = Date.now();
    return [...a.instances.entries()].filter(([, v]) => now - v.at < STALE_MS);
  }

  function fresh(x) {
    return Date.now() - x.seen < STALE_MS;
  }

  // ---------------------------------------------------------------- formatting

  function fmtRate(x) {
    if (x === null || x === undefined || !Number.isFinite(x)) return '–';
    if (Math.abs(x) >= 1000) return Math.round(x).toLocaleString('en');
    if (Math.abs(x) >= 100) return x.toFixed(0);
    if (Math.abs(x) >= 10) return x.toFixed(1);
    return x.toFixed(2);
  }

  function fmtCount(x) {
    return Number.isFinite(x) ? Math.round(x).toLocaleString('en') : '–';
  }

  function fmtLatency(micros) {
    if (micros === null || !Number.isFinite(micros)) return '–';
    if (micros < 1000) return `${(micros / 1000).toFixed(2)} ms`;
    if (micros < 100000) return `${(micros / 1000).toFixed(1)} ms`;
    if (micros < 1e6) return `${Math.round(micros / 1000)} ms`;
    return `${(micros / 1e6).toFixed(2)} s`;
  }

  function fmtShare(x) {
    if (x === null || !Number.isFinite(x)) return '–';
    return `${(x * 100).toFixed(x > 0 && x < 0.1 ? 2 : 1)} %`;
  }

  function fmtBytes(b) {
    if (!Number.isFinite(b)) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let v = b;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return `${v.toFixed(v >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
  }

  function fmtAge(seconds) {
    if (!Number.isFinite(seconds) || seconds < 0) return '–';
    if (seconds < 60) return `${Math.floor(seconds)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
    if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} d`;
  }

  // Thresholds (cf top's habit): warn in yellow, alarm in red.
  function level(value, warn, alarm) {
    if (value === null || !Number.isFinite(value)) return '';
    if (value >= alarm) return 'alarm';
    if (value >= warn) return 'warn';
    return '';
  }

  // ---------------------------------------------------------------- drawing

  function cell(td, text, lvl) {
    if (td.textContent !== text) td.textContent = text;
    const want = lvl || '';
    if ((td.dataset.level || '') !== want) {
      if (want) td.dataset.level = want;
      else delete td.dataset.level;
    }
  }

  // Makes `tbody` hold one row per item, in order, reusing rows by key; `columns` fill cells.
  function syncRows(tbody, items, keyOf, columns) {
    const existing = new Map();
    for (const tr of tbody.children) existing.set(tr.dataset.key, tr);
    let previous = null;
    for (const item of items) {
      const key = keyOf(item);
      let tr = existing.get(key);
      if (tr) {
        existing.delete(key);
      } else {
        tr = document.createElement('tr');
        tr.dataset.key = key;
        for (const c of columns) {
          const td = document.createElement('td');
          td.dataset.field = c.field;
          if (c.num) td.className = 'num';
          tr.appendChild(td);
        }
      }
      const want = previous ? previous.nextSibling : tbody.firstChild;
      if (want !== tr) tbody.insertBefore(tr, want);
      columns.forEach((c, i) => c.fill(tr.children[i], item, tr));
      previous = tr;
    }
    for (const tr of existing.values()) tr.remove();
    return items.length;
  }

  function sparkline(td, values) {
    let canvas = td.firstElementChild;
    if (!canvas) {
      canvas = document.createElement('canvas');
      canvas.width = 120;
      canvas.height = 24;
      canvas.setAttribute('role', 'img');
      td.appendChild(canvas);
    }
    canvas.setAttribute('aria-label', `requests per second over the last ${values.length} s`);
    const ctx = canvas.getContext('2d');
    if (!ctx) return;
    const w = canvas.width;
    const h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    const max = Math.max(1, ...values);
    ctx.beginPath();
    values.forEach((v, i) => {
      const x = (i / Math.max(1, values.length - 1)) * (w - 2) + 1;
      const y = h - 2 - (v / max) * (h - 4);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.strokeStyle = '#4fb3ff';
    ctx.lineWidth = 1.5;
    ctx.stroke();
  }

  function budgetBar(td, budget) {
    let bar = td.querySelector('.bar');
    let label = td.querySelector('.bar-label');
    if (!bar) {
      const track = document.createElement('span');
      track.className = 'track';
      bar = document.createElement('span');
      bar.className = 'bar';
      track.appendChild(bar);
      label = document.createElement('span');
      label.className = 'bar-label';
      td.append(track, label);
    }
    const text = Number.isFinite(budget) ? `${(budget * 100).toFixed(1)} %` : 'waiting for the alerter';
    if (label.textContent !== text) label.textContent = text;
    bar.style.width = `${Math.max(0, Math.min(1, Number.isFinite(budget) ? budget : 0)) * 100}%`;
    const lvl = Number.isFinite(budget) ? (budget < 0 ? 'alarm' : budget < 0.25 ? 'warn' : '') : '';
    if (lvl) td.dataset.level = lvl;
    else delete td.dataset.level;
  }

  function appName(a) {
    return a.name || a.guid;
  }

  function renderApps(nowSec) {
    const apps = [...state.apps.values()].filter((a) => a.listed).sort((x, y) => appName(x).localeCompare(appName(y)));
    const rows = apps.map((a) => ({ a, w: windowStats(a, nowSec) }));
    const n = syncRows(byId('apps').tBodies[0], rows, (r) => r.a.guid, [
      {
        field: 'name',
        fill: (td, r, tr) => {
          if (tr.dataset.name !== appName(r.a)) tr.dataset.name = appName(r.a);
          cell(td, appName(r.a));
        },
      },
      { field: 'state', fill: (td, r) => cell(td, r.a.desiredState || '–', r.a.desiredState === 'STOPPED' ? 'muted' : '') },
      {
        field: 'instances',
        num: true,
        fill: (td, r) => {
          const list = r.a.stats && Array.isArray(r.a.stats.instances) ? r.a.stats.instances : null;
          if (!list) return cell(td, Number.isFinite(r.a.desired) ? `?/${r.a.desired}` : '–');
          const running = list.filter((i) => i.state === 'RUNNING').length;
          const desired = num(r.a.stats.desired_instances);
          cell(td, `${running}/${desired}`, running < desired ? 'warn' : '');
        },
      },
      { field: 'rps', num: true, fill: (td, r) => cell(td, fmtRate(r.w.rps)) },
      { field: 'trend', fill: (td, r) => sparkline(td, r.w.trend) },
      { field: 'p50', num: true, fill: (td, r) => cell(td, fmtLatency(r.w.p50)) },
      { field: 'p95', num: true, fill: (td, r) => cell(td, fmtLatency(r.w.p95), level(r.w.p95, 500000, 1000000)) },
      { field: 'p99', num: true, fill: (td, r) => cell(td, fmtLatency(r.w.p99), level(r.w.p99, 500000, 1000000)) },
      { field: 'err5xx', num: true, fill: (td, r) => cell(td, fmtShare(r.w.share5xx), level(r.w.share5xx, 0.01, 0.05)) },
      { field: 'err4xx', num: true, fill: (td, r) => cell(td, fmtShare(r.w.share4xx)) },
      {
        field: 'cpu',
        num: true,
        fill: (td, r) => {
          const live = liveInstances(r.a);
          const cpu = live.reduce((s, [, v]) => s + (Number.isFinite(v.cpu) ? v.cpu : 0), 0);
          cell(td, live.length ? `${cpu.toFixed(1)} %` : '–', level(live.length ? cpu / live.length : null, 80, 95));
        },
      },
      {
        field: 'memory',
        num: true,
        fill: (td, r) => {
          const live = liveInstances(r.a);
          const mem = live.reduce((s, [, v]) => s + (Number.isFinite(v.memory) ? v.memory : 0), 0);
          cell(td, live.length ? fmtBytes(mem) : '–');
        },
      },
      {
        field: 'budget',
        num: true,
        fill: (td, r) => {
          const budgets = [...r.a.sloLive.values()].map((l) => l.budget_remaining).filter(Number.isFinite);
          const worst = budgets.length ? Math.min(...budgets) : null;
          const text = worst === null ? (r.a.sloSpecs.length ? '…' : '–') : `${(worst * 100).toFixed(1)} %`;
          cell(td, text, worst === null ? '' : worst < 0 ? 'alarm' : worst < 0.25 ? 'warn' : '');
        },
      },
    ]);
    byId('apps-empty').hidden = n > 0 || !state.listedOnce;
  }

  function renderInstances() {
    const rows = [];
    const nowNanos = Date.now() * 1e6;
    for (const a of [...state.apps.values()].filter((x) => x.listed).sort((x, y) => appName(x).localeCompare(appName(y)))) {
      const list = a.stats && Array.isArray(a.stats.instances) ? a.stats.instances.slice(0, MAX_INSTANCES) : [];
      for (const i of list) rows.push({ a, i, m: a.instances.get(String(i.index)) });
    }
    const stateLevel = { RUNNING: 'good', STARTING: 'warn', CRASHED: 'alarm', STOPPING: 'muted', DOWN: 'muted' };
    const n = syncRows(byId('instances').tBodies[0], rows, (r) => `${r.a.guid}/${r.i.index}`, [
      { field: 'app', fill: (td, r) => cell(td, appName(r.a)) },
      { field: 'index', num: true, fill: (td, r) => cell(td, String(num(r.i.index))) },
      { field: 'state', fill: (td, r) => cell(td, String(r.i.state || '–'), stateLevel[r.i.state] || '') },
      {
        field: 'since',
        num: true,
        fill: (td, r) => cell(td, num(r.i.since) > 0 ? fmtAge((nowNanos - num(r.i.since)) / 1e9) : '–'),
      },
      {
        field: 'cpu',
        num: true,
        fill: (td, r) => cell(td, r.m && Number.isFinite(r.m.cpu) ? `${r.m.cpu.toFixed(1)} %` : '–', level(r.m ? r.m.cpu : null, 80, 95)),
      },
      {
        field: 'memory',
        num: true,
        fill: (td, r) => {
          if (!r.m || !Number.isFinite(r.m.memory)) return cell(td, '–');
          const quota = Number.isFinite(r.m.memoryQuota) && r.m.memoryQuota > 0 ? ` / ${fmtBytes(r.m.memoryQuota)}` : '';
          cell(td, fmtBytes(r.m.memory) + quota, level(quota ? r.m.memory / r.m.memoryQuota : null, 0.8, 0.95));
        },
      },
      {
        field: 'address',
        fill: (td, r) => cell(td, r.i.host ? `${r.i.host}${r.i.port ? ':' + r.i.port : ''}` : r.i.placement_error || '–'),
      },
      {
        field: 'crash',
        fill: (td, r) => {
          const c = r.i.crash;
          cell(td, c ? `${c.exit_description || c.reason || 'crashed'} (${fmtAge((nowNanos - num(c.crash_timestamp)) / 1e9)} ago)` : '–');
        },
      },
    ]);
    byId('instances-empty').hidden = n > 0 || !state.listedOnce;
  }

  function renderSlos() {
    const rows = [];
    for (const a of [...state.apps.values()].filter((x) => x.listed).sort((x, y) => appName(x).localeCompare(appName(y)))) {
      const names = new Set([...a.sloSpecs.map((s) => String(s.name)), ...a.sloLive.keys()]);
      for (const name of names) {
        rows.push({ a, name, spec: a.sloSpecs.find((s) => s.name === name), live: a.sloLive.get(name) });
      }
    }
    const n = syncRows(byId('slos').tBodies[0], rows, (r) => `${r.a.guid}/${r.name}`, [
      { field: 'app', fill: (td, r) => cell(td, appName(r.a)) },
      { field: 'slo', fill: (td, r) => cell(td, r.name) },
      {
        field: 'sli',
        fill: (td, r) => {
          const sli = r.spec && r.spec.sli ? r.spec.sli : null;
          const text = !sli ? '–' : sli.type === 'latency' ? `latency ≤ ${num(sli.threshold_ms)} ms` : String(sli.type);
          cell(td, text);
        },
      },
      {
        field: 'objective',
        num: true,
        fill: (td, r) => cell(td, r.spec ? `${num(r.spec.objective)} % / ${num(r.spec.period_days)} d` : '–'),
      },
      { field: 'budget', fill: (td, r) => budgetBar(td, r.live ? r.live.budget_remaining : NaN) },
      {
        field: 'sli1h',
        num: true,
        fill: (td, r) => cell(td, r.live && Number.isFinite(r.live.sli_1h) ? `${r.live.sli_1h.toFixed(3)} %` : '–'),
      },
      {
        field: 'burn1h',
        num: true,
        fill: (td, r) => {
          const b = r.live ? r.live.burn_rate_1h : NaN;
          cell(td, Number.isFinite(b) ? `${b.toFixed(2)}×` : '–', level(Number.isFinite(b) ? b : null, 1, 6));
        },
      },
      {
        field: 'alerts',
        num: true,
        fill: (td, r) => {
          const f = r.live ? r.live.alerts_firing : NaN;
          cell(td, Number.isFinite(f) ? String(f) : '–', f > 0 ? 'alarm' : '');
        },
      },
    ]);
    byId('slos-empty').hidden = n > 0 || !state.listedOnce;
  }

  // The pipeline's hops, upstream first, by the counters and gauges each reports.
  const HOPS = [
    { hop: 'emitters (every role → agent)', in: 'emitter.emitted', out: 'emitter.sent', dropped: 'emitter.dropped', queue: 'emitter.queue_depth' },
    { hop: 'agent', in: 'agent.ingress', out: 'agent.egress', dropped: 'agent.dropped', queue: 'agent.queue_depth' },
    { hop: 'doppler', in: 'doppler.ingress', out: 'doppler.egress', dropped: 'doppler.dropped', queue: 'doppler.ingress_ring_depth' },
    { hop: 'log cache', in: 'logcache.ingress', out: 'logcache.egress', dropped: 'logcache.dropped', queue: null },
    { hop: 'traffic controller', in: 'trafficcontroller.ingress', out: 'trafficcontroller.egress', dropped: 'trafficcontroller.dropped', queue: 'trafficcontroller.queued' },
    { hop: 'nozzles', in: 'nozzle.received', out: 'nozzle.sent', dropped: 'nozzle.dropped', queue: 'nozzle.queue_depth' },
  ];

  // Sums the rates (or totals) of fresh series named `name`; null when none has one yet.
  function sum(name, pick) {
    let total = null;
    for (const s of state.series.values()) {
      if (s.name !== name || !fresh(s)) continue;
      const v = pick(s);
      if (v !== null && Number.isFinite(v)) total = (total || 0) + v;
    }
    return total;
  }

  function hasSeries(name) {
    for (const s of state.series.values()) if (s.name === name && fresh(s)) return true;
    return false;
  }

  function pageRate() {
    const nowSec = Math.floor(Date.now() / 1000);
    let n = 0;
    for (const s of stream.perSecond) if (s.sec < nowSec && s.sec >= nowSec - 5) n += s.n;
    const watched = Math.max(1, Math.min(5, Math.floor((Date.now() - state.started) / 1000)));
    return n / watched;
  }

  function renderPipeline() {
    if (state.mode !== 'firehose') {
      syncRows(byId('pipeline').tBodies[0], [], () => '', []);
      syncRows(byId('drops').tBodies[0], [], () => '', []);
      byId('pipeline-empty').textContent =
        "The pipeline's own metrics are on the firehose only: open this page with a token that has the firehose or admin scope.";
      byId('pipeline-empty').hidden = false;
      byId('drops-empty').hidden = true;
      return;
    }
    const rows = HOPS.filter((h) => hasSeries(h.in) || hasSeries(h.out)).map((h) => {
      let queue = null;
      if (h.queue) {
        for (const g of state.gauges.values()) {
          if (g.name === h.queue && fresh(g) && Number.isFinite(g.value)) queue = (queue || 0) + g.value;
        }
      }
      return {
        hop: h.hop,
        inRate: sum(h.in, (s) => s.rate),
        outRate: sum(h.out, (s) => s.rate),
        dropRate: sum(h.dropped, (s) => s.rate),
        dropTotal: sum(h.dropped, (s) => s.total),
        queue,
      };
    });
    rows.push({
      hop: 'firehose → this page',
      inRate: pageRate(),
      outRate: null,
      dropRate: null,
      dropTotal: stream.gaps,
      queue: null,
    });
    const rate = (v) => (v === null ? '…' : fmtRate(v));
    const n = syncRows(byId('pipeline').tBodies[0], rows, (r) => r.hop, [
      { field: 'hop', fill: (td, r) => cell(td, r.hop) },
      { field: 'in', num: true, fill: (td, r) => cell(td, rate(r.inRate)) },
      { field: 'out', num: true, fill: (td, r) => cell(td, r.outRate === null && r.hop.startsWith('firehose') ? '–' : rate(r.outRate)) },
      { field: 'dropRate', num: true, fill: (td, r) => cell(td, r.dropRate === null ? '–' : fmtRate(r.dropRate), r.dropRate > 0 ? 'alarm' : '') },
      { field: 'dropped', num: true, fill: (td, r) => cell(td, r.dropTotal === null ? '–' : fmtCount(r.dropTotal), r.dropTotal > 0 ? 'warn' : '') },
      { field: 'queue', num: true, fill: (td, r) => cell(td, r.queue === null ? '–' : fmtCount(r.queue)) },
    ]);
    byId('pipeline-empty').hidden = n > 1;

    // Drops by (source, counter, reason), busiest first.
    const groups = new Map();
    let zero = 0;
    for (const s of state.series.values()) {
      if (!s.name.endsWith('.dropped') || !fresh(s)) continue;
      const reason = typeof s.tags.reason === 'string' ? s.tags.reason : '';
      const key = [s.source, s.name, reason].join('\u0001');
      const g = groups.get(key) || { source: s.source, name: s.name, reason, rate: null, total: 0 };
      g.total += s.total;
      if (s.rate !== null && Number.isFinite(s.rate)) g.rate = (g.rate || 0) + s.rate;
      groups.set(key, g);
    }
    const drops = [];
    for (const g of groups.values()) {
      if (g.total > 0) drops.push(g);
      else zero += 1;
    }
    drops.sort((x, y) => (y.rate || 0) - (x.rate || 0) || y.total - x.total);
    const shown = drops.slice(0, MAX_DROP_ROWS);
    const d = syncRows(byId('drops').tBodies[0], shown, (g) => [g.source, g.name, g.reason].join('\u0001'), [
      { field: 'source', fill: (td, g) => cell(td, g.source) },
      { field: 'counter', fill: (td, g) => cell(td, g.name) },
      { field: 'reason', fill: (td, g) => cell(td, g.reason || '–') },
      { field: 'rate', num: true, fill: (td, g) => cell(td, g.rate === null ? '…' : fmtRate(g.rate), g.rate > 0 ? 'alarm' : '') },
      { field: 'total', num: true, fill: (td, g) => cell(td, fmtCount(g.total), 'warn') },
    ]);
    byId('drops-empty').hidden = d > 0;
    const more = drops.length - shown.length;
    const parts = [];
    if (zero) parts.push(`${zero} drop counters at zero`);
    if (more > 0) parts.push(`${more} more not shown`);
    if (state.ignoredSeries) parts.push(`${state.ignoredSeries} series past the page's limit ignored`);
    byId('drops-zero').textContent = parts.join(' · ');
  }

  function setStatus(text, lvl) {
    const el = byId('status');
    if (el.textContent !== text) el.textContent = text;
    el.dataset.level = lvl;
  }

  function renderHeader() {
    const now = Date.now();
    if (stream.open > 0 && now - stream.lastFrame < 5000) setStatus(state.mode === 'firehose' ? 'live · firehose' : `live · ${stream.open} app streams`, 'good');
    else if (stream.open > 0) setStatus('connected · quiet', 'warn');
    else setStatus(stream.problem ? 'reconnecting' : 'connecting', 'warn');
    byId('stream-rate').textContent = fmtRate(pageRate());
    byId('stream-gaps').textContent = fmtCount(stream.gaps);
    byId('updated').textContent = new Date(now).toLocaleTimeString('en-GB');
    problem('stream', stream.open === 0 ? stream.problem : '');
  }

  function render() {
    const nowSec = Math.floor(Date.now() / 1000);
    renderHeader();
    renderApps(nowSec);
    renderInstances();
    renderSlos();
    renderPipeline();
  }

  // ---------------------------------------------------------------- start

  async function start() {
    byId('login').hidden = true;
    byId('main').hidden = false;
    state.scopes = tokenScopes(state.token);
    const info = await fetch('/v3/info', { cache: 'no-store', credentials: 'omit' }).then((r) => {
      if (!r.ok) throw new Error(`/v3/info answered ${r.status}`);
      return r.json();
    });
    state.info = info;
    const firehose = info && info.endpoints && typeof info.endpoints.firehose === 'string' ? info.endpoints.firehose : null;
    const base = firehose ? websocketBase(firehose) : null;
    if (!base) {
      problem('info', 'This API lists no firehose endpoint (endpoints.firehose in /v3/info), so there is nothing to stream.');
    }
    const canFirehose = !state.scopes || state.scopes.includes('admin') || state.scopes.includes('firehose');
    state.mode = canFirehose ? 'firehose' : 'apps';
    byId('who').textContent = canFirehose ? 'whole platform' : 'your apps only';
    every(5000, 'apps', async () => {
      const first = !state.listedOnce;
      await pollApps();
      if (base && state.mode === 'apps') syncAppStreams(base);
      // The first screen fills at once instead of on the other polls' next ticks.
      if (first) await Promise.all([pollStats(), pollSlos()]);
    });
    every(2000, 'stats', pollStats);
    every(10000, 'slos', pollSlos);
    if (base && state.mode === 'firehose') startFirehose(base);
    timers.push(setInterval(render, 1000));
    render();
  }

  function boot() {
    byId('login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const token = byId('token-input').value.trim();
      if (!token) return;
      byId('token-input').value = '';
      storeToken(token);
      state.token = token;
      start().catch((err) => problem('start', err instanceof Error ? err.message : String(err)));
    });
    state.token = readToken();
    if (!state.token) {
      showLogin('');
      return;
    }
    start().catch((err) => problem('start', err instanceof Error ? err.message : String(err)));
  }

  boot();
})();
