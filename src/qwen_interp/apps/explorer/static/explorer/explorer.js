// Shared helpers of the Explorer's pages (index, feature, lab): JSON requests that turn the
// server's {"error": ...} answers into messages, token strips with activation highlighting, and
// links to feature pages. Everything is same-origin; nothing here loads from elsewhere.
'use strict';

window.qx = (function () {
  // --- DOM -----------------------------------------------------------------------------------
  /** el('a.feature-link', {href: ...}, 'text', child, ...): an element; text via textContent. */
  function el(spec, attrs, ...children) {
    if (attrs instanceof Node || Array.isArray(attrs) || typeof attrs !== 'object' || attrs === null) {
      children.unshift(attrs);  // el('div', child, ...): no attributes
      attrs = {};
    }
    var [tag, ...classes] = spec.split('.');
    var node = document.createElement(tag || 'div');
    if (classes.length) node.className = classes.join(' ');
    for (var [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'text') node.textContent = value;
      else if (key === 'on') Object.entries(value).forEach(([ev, fn]) => node.addEventListener(ev, fn));
      else if (key in node && typeof value !== 'string') node[key] = value;
      else node.setAttribute(key, value === true ? '' : value);
    }
    children.flat().forEach(child => {
      if (child === null || child === undefined || child === false) return;
      node.append(child instanceof Node ? child : String(child));
    });
    return node;
  }

  function clear(node) {
    node.replaceChildren();
    return node;
  }

  // --- requests --------------------------------------------------------------------------------
  /** The server's one-line {"error": ...} text, or the HTTP status when the body has none. */
  async function failure(res) {
    var message = `HTTP ${res.status}`;
    try {
      var body = await res.json();
      if (body && body.error) message = body.error;
    } catch (e) { /* not JSON: keep the status */ }
    var err = new Error(message);
    err.status = res.status;
    return err;
  }

  async function request(url, options) {
    var res;
    try {
      res = await fetch(url, options);
    } catch (e) {
      throw new Error(`cannot reach the Explorer server (${e.message})`);
    }
    if (!res.ok) throw await failure(res);
    return res.json();
  }

  function getJSON(url) {
    return request(url, {headers: {Accept: 'application/json'}});
  }

  function postJSON(url, body) {
    return request(url, {
      method: 'POST',
      headers: {'Content-Type': 'application/json', Accept: 'application/json'},
      body: JSON.stringify(body),
    });
  }

  /** Show an error in `node` (kept in the page, so it can be read and tested). */
  function showError(node, err) {
    clear(node).append(el('div.error', {role: 'alert', text: err.message || String(err)}));
  }

  var infoPromise = null;
  /** /api/info, requested once per page. */
  function info() {
    infoPromise = infoPromise || getJSON('/api/info');
    return infoPromise;
  }

  // --- formatting ------------------------------------------------------------------------------
  function fmt(x, digits = 3) {
    if (typeof x !== 'number' || !isFinite(x)) return String(x);
    if (x !== 0 && Math.abs(x) < 1e-3) return x.toExponential(2);
    return x.toFixed(digits);
  }

  function percent(fraction) {
    var p = fraction * 100;
    return (p !== 0 && p < 0.01 ? p.toExponential(2) : p.toFixed(p < 1 ? 3 : 2)) + ' %';
  }

  function dictLabel(dict) {
    return dict === 'sae' ? 'SAE' : dict === 'clt' ? 'CLT' : dict;
  }

  // --- features --------------------------------------------------------------------------------
  function featureHref(dict, layer, feature) {
    var q = new URLSearchParams({dict, layer, feature});
    return `/feature?${q}`;
  }

  /** A link to a feature's page, written the way researchers cite it: "CLT L12/345". */
  function featureLink(f, label) {
    var href = f.url || featureHref(f.dict || 'clt', f.layer, f.feature);
    return el('a.feature-link', {href, text: label || `${dictLabel(f.dict || 'clt')} L${f.layer}/${f.feature}`});
  }

  // --- tokens ----------------------------------------------------------------------------------
  var HEX = /\\x[0-9a-fA-F]{2}/;

  function tokenBytes(token) {
    var bytes = [];
    while (token.length) {
      if (/^\\x[0-9a-fA-F]{2}/.test(token)) {
        bytes.push(parseInt(token.slice(2, 4), 16));
        token = token.slice(4);
      } else {
        var ch = String.fromCodePoint(token.codePointAt(0));
        bytes.push(...new TextEncoder().encode(ch));
        token = token.slice(ch.length);
      }
    }
    return bytes;
  }

  /** Tokens that are only part of a UTF-8 character arrive as "\xNN" escapes (the sidecar's
   * convention, as in circuit-tracer's viewer): rejoin up to 4 following tokens into the
   * character they spell. Returns [{text, act, first, last}] (token index range). */
  function mergeTokens(tokens, acts) {
    var out = [];
    for (var i = 0; i < tokens.length;) {
      var merged = null;
      if (HEX.test(tokens[i])) {
        var bytes = tokenBytes(tokens[i]);
        var act = acts ? acts[i] : 0;
        for (var j = i + 1; j < Math.min(i + 5, tokens.length); j++) {
          bytes.push(...tokenBytes(tokens[j]));
          act = acts ? Math.max(act, acts[j]) : 0;
          try {
            var text = new TextDecoder('utf-8', {fatal: true}).decode(new Uint8Array(bytes));
            merged = {text, act, first: i, last: j};
            break;
          } catch (e) { /* not a whole character yet */ }
        }
      }
      if (!merged) merged = {text: tokens[i], act: acts ? acts[i] : 0, first: i, last: i};
      out.push(merged);
      i = merged.last + 1;
    }
    return out;
  }

  /** One token's text on its own (a logit): its "\xNN" escapes decoded when they spell whole
   * characters, else shown as they are. */
  function tokenText(token) {
    if (!HEX.test(token)) return token;
    try {
      return new TextDecoder('utf-8', {fatal: true}).decode(new Uint8Array(tokenBytes(token)));
    } catch (e) {
      return token;
    }
  }

  /** Background for an activation: transparent at 0, full orange at `max` (clamped). */
  function actColor(act, max) {
    var a = max > 0 ? Math.max(0, Math.min(1, act / max)) : 0;
    return a > 0 ? `rgba(234, 120, 30, ${(0.08 + 0.87 * a).toFixed(3)})` : '';
  }

  /** A line of tokens, each a span.token whose background follows its activation / max.
   * Options: acts, max, focus (token index outlined: the example's own token). */
  function tokenLine(tokens, {acts = null, max = null, focus = null, className = 'tokens'} = {}) {
    var line = el(`div.${className}`);
    var top = max ?? (acts ? Math.max(0, ...acts) : 0);
    mergeTokens(tokens, acts).forEach(piece => {
      var span = el('span.token', {text: piece.text});
      span.dataset.index = piece.first;
      if (acts) {
        span.dataset.act = piece.act;
        span.title = `${fmt(piece.act)}`;
        var bg = actColor(piece.act, top);
        if (bg) span.style.background = bg;
      }
      if (focus !== null && piece.first <= focus && focus <= piece.last) span.classList.add('focus');
      line.append(span);
    });
    return line;
  }

  // --- page frame ------------------------------------------------------------------------------
  /** The top bar every page shares; `active` is 'home' | 'lab' | ''. */
  function nav(active) {
    var bar = el('nav.topbar', {},
      el('a.brand', {href: '/', text: 'Qwen3 Explorer'}),
      el('a', {href: '/', text: 'Home', class: active === 'home' ? 'active' : null}),
      el('a', {href: '/lab', text: 'Lab', class: active === 'lab' ? 'active' : null}),
      el('span.status', {id: 'nav-status'}));
    document.body.prepend(bar);
    info().then(i => {
      var status = document.getElementById('nav-status');
      status.textContent = [i.model || 'no model', i.live ? 'live' : 'statistics only'].join(' · ');
      status.classList.toggle('live', !!i.live);
    }).catch(() => {});
    return bar;
  }

  function params() {
    return new URLSearchParams(window.location.search);
  }

  return {el, clear, getJSON, postJSON, showError, info, fmt, percent, dictLabel, featureHref,
          featureLink, mergeTokens, tokenText, actColor, tokenLine, nav, params};
})();
