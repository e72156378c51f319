// opik-cipx viewer. Plain JS, no build step, no third-party code, no requests but to this gateway.
// Captured prompts are untrusted text: everything from the API goes into the DOM through
// textContent / createElement, never innerHTML.
"use strict";

const API = "/_cipx/api";
const CATEGORIES = ["system", "builtin_tools", "mcp", "skills", "memory", "agents", "slash_commands",
  "user_prompt", "assistant", "tool_io", "hooks", "compaction", "reminders", "media", "framing", "unattributed"];
const BLOCK_BYTES = 4096;   // a body block is closed once it holds this many bytes...
const PIECE_BYTES = 8192;   // ...and no span carries more than this, so no block grows large
const FRAME_BUDGET_MS = 10; // rendering yields to the event loop after this long

const app = document.getElementById("app");
const tip = document.getElementById("tip");
const statusEl = document.getElementById("status");
let renderToken = 0; // bumped on navigation so a stale body render stops

// --- small helpers ------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const nf = new Intl.NumberFormat("en-US");
const fmtInt = (n) => (n === null || n === undefined ? "–" : nf.format(Math.round(n)));
const fmtCost = (c) => (c === null || c === undefined ? "unknown" : "$" + (c >= 100 ? c.toFixed(2) : c.toFixed(4)));
const fmtMs = (ms) => (ms === null || ms === undefined ? "–" : ms >= 10000 ? (ms / 1000).toFixed(1) + " s" : Math.round(ms) + " ms");
const fmtPct = (p) => (p === null || p === undefined ? "–" : p.toFixed(p < 1 ? 2 : 1) + "%");
const fmtTime = (t) => new Date(t * 1000).toLocaleString(undefined, { hour12: false });
const short = (s, n = 8) => (s ? s.slice(0, n) : "–");

function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KB";
  return (n / 1024 / 1024).toFixed(2) + " MB";
}

async function api(path, init) {
  const res = await fetch(path, Object.assign({ credentials: "same-origin" }, init || {}));
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    try { msg = (await res.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return res;
}
const getJSON = async (path) => (await api(path)).json();

function setStatus(text) { statusEl.textContent = text; }

function fail(err) {
  app.replaceChildren(el("div", { class: "card bad", text: "Error: " + err.message }));
}

function swatch(cat) { return el("span", { class: "sw c-" + cat }); }

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  const s = q.toString();
  return s ? "?" + s : "";
}

// --- routing ------------------------------------------------------------------------------------

function route() {
  renderToken++;
  hideTip();
  const hash = location.hash.slice(1) || "/";
  const [path, qs] = hash.split("?");
  const params = Object.fromEntries(new URLSearchParams(qs || ""));
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  let page;
  if (parts[0] === "call" && parts[1]) page = callPage(parts[1]);
  else if (parts[0] === "session" && parts[1]) page = sessionPage(parts[1]);
  else if (parts[0] === "sessions") page = sessionsPage();
  else page = listPage(params);
  page.catch(fail);
}
window.addEventListener("hashchange", route);

// --- captures list ------------------------------------------------------------------------------

async function listPage(params) {
  setStatus("");
  const [filters, sessions] = await Promise.all([getJSON(API + "/filters"), getJSON(API + "/sessions")]);
  const pick = (name, label, values, render) => {
    const sel = el("select", { name, onchange: () => {
      const next = Object.assign({}, params, { [name]: sel.value });
      location.hash = "#/" + query(next);
    } }, el("option", { value: "", text: "all" }), ...values.map((v) => el("option", { value: v, text: render ? render(v) : v })));
    sel.value = params[name] || "";
    return el("label", {}, label, sel);
  };
  const sessionIds = sessions.map((s) => s.session_id);
  if (params.session && !sessionIds.includes(params.session)) sessionIds.unshift(params.session);
  const bar = el("div", { class: "filters" },
    pick("session", "session", sessionIds, (s) => short(s, 13)),
    pick("model", "model", filters.models),
    pick("kind", "call kind", filters.kinds));
  const tbody = el("tbody", { id: "calls" });
  const head = ["time", "session", "kind", "model", "input", "cache read", "cache write", "output", "cost",
    "duration", "first token", "unattributed"];
  const numeric = new Set(["input", "cache read", "cache write", "output", "cost", "duration", "first token", "unattributed"]);
  const table = el("table", {}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { class: numeric.has(h) ? "num" : "", text: h })))), tbody);
  const more = el("button", { class: "more", id: "more", hidden: true, text: "Load older calls" });
  const count = el("span", { class: "muted", id: "count" });
  app.replaceChildren(el("h1", {}, "Captures ", count), bar, table, more);

  let cursor = null;
  let shown = 0;
  const load = async () => {
    more.disabled = true;
    const page = await getJSON(API + "/calls" + query({ session: params.session, model: params.model, kind: params.kind, cursor, limit: 100 }));
    for (const c of page.calls) tbody.append(callRow(c));
    shown += page.calls.length;
    count.textContent = `(${fmtInt(shown)} shown)`;
    cursor = page.next;
    more.hidden = !cursor;
    more.disabled = false;
    if (!shown) tbody.append(el("tr", {}, el("td", { colspan: head.length, class: "muted", text: "No captured calls match." })));
  };
  more.addEventListener("click", () => load().catch(fail));
  await load();
}

function callRow(c, extraClass) {
  const open = () => { location.hash = "#/call/" + encodeURIComponent(c.id); };
  const sessionLink = c.session_id
    ? el("a", { href: "#/session/" + encodeURIComponent(c.session_id), onclick: (e) => e.stopPropagation(), text: short(c.session_id) })
    : "–";
  const unattr = c.unattributed_pct;
  return el("tr", { class: "row " + (extraClass || ""), onclick: open, dataset: { id: c.id } },
    el("td", { text: fmtTime(c.started_at) }),
    el("td", { class: "mono" }, sessionLink),
    el("td", {}, el("span", { class: "pill", text: c.call_kind + (c.agent_id && c.call_kind !== "subagent" ? " (agent)" : "") })),
    el("td", { text: c.model || "–" }),
    el("td", { class: "num", text: fmtInt(c.input_tokens) }),
    el("td", { class: "num", text: fmtInt(c.cache_read_input_tokens) }),
    el("td", { class: "num", text: fmtInt(c.cache_creation_input_tokens) }),
    el("td", { class: "num", text: fmtInt(c.output_tokens) }),
    el("td", { class: "num", text: c.kind === "messages" ? fmtCost(c.cost_usd) : "–" }),
    el("td", { class: "num", text: fmtMs(c.duration_ms) }),
    el("td", { class: "num", text: fmtMs(c.ttft_ms) }),
    el("td", { class: "num" + (unattr > 1 ? " bad" : ""), text: fmtPct(unattr) }));
}

// --- capture detail -----------------------------------------------------------------------------

async function callPage(id) {
  const mine = renderToken;
  setStatus("loading call…");
  const [d, buf] = await Promise.all([
    getJSON(API + "/calls/" + encodeURIComponent(id)),
    api(API + "/calls/" + encodeURIComponent(id) + "/body").then((r) => r.arrayBuffer()),
  ]);
  if (mine !== renderToken) return;
  const bytes = new Uint8Array(buf);
  const items = new Map();
  for (const it of d.items) items.set(it.category + "\u0000" + it.item, it);

  const u = d.usage || {};
  const unattrPct = d.body_bytes ? (100 * d.unattributed_bytes) / d.body_bytes : 0;
  const summary = el("dl", { class: "kv" },
    el("dt", { text: "time" }), el("dd", { text: fmtTime(d.started_at) }),
    el("dt", { text: "session" }), el("dd", { class: "mono" }, d.session_id
      ? el("a", { href: "#/session/" + encodeURIComponent(d.session_id), text: d.session_id }) : "–"),
    el("dt", { text: "project" }), el("dd", { class: "mono", text: d.project || "–" }),
    el("dt", { text: "call kind" }), el("dd", {}, el("span", { class: "pill", text: d.call_kind }), d.agent_id ? " agent " + d.agent_id : ""),
    el("dt", { text: "model" }), el("dd", { text: (d.model || "–") + "  ·  " + d.outcome + (d.status ? " (HTTP " + d.status + ")" : "") + (d.stop_reason ? "  ·  stop: " + d.stop_reason : "") }),
    el("dt", { text: "tokens" }), el("dd", { text: `input ${fmtInt(u.input_tokens)} · cache read ${fmtInt(u.cache_read_input_tokens)} · cache write ${fmtInt(u.cache_creation_input_tokens)} · output ${fmtInt(u.output_tokens)}` }),
    el("dt", { text: "cost" }), el("dd", { text: fmtCost(d.cost_usd) }),
    el("dt", { text: "timing" }), el("dd", { text: `first byte ${fmtMs(d.ttfb_ms)} · first token ${fmtMs(d.ttft_ms)} · total ${fmtMs(d.duration_ms)}` }),
    el("dt", { text: "request body" }), el("dd", { text: `${fmtInt(d.body_bytes)} bytes` }),
    el("dt", { text: "unattributed" }), el("dd", { class: unattrPct > 1 ? "bad" : "", id: "unattributed", text: `${fmtInt(d.unattributed_bytes)} bytes (${fmtPct(unattrPct)})` }),
  );
  if (d.error) summary.append(el("dt", { text: "error" }), el("dd", { class: "bad", text: d.error }));
  if (d.parse_error) summary.append(el("dt", { text: "parse" }), el("dd", { class: "bad", text: d.parse_error }));
  if (d.body_pruned_at) summary.append(el("dt", { text: "body" }), el("dd", { id: "pruned",
    text: `pruned by retention on ${fmtTime(d.body_pruned_at)}: the totals are as captured, the bytes are no longer kept` }));

  const reattr = el("button", { id: "reattribute", text: "Re-attribute with current rules", onclick: async () => {
    reattr.disabled = true;
    try { await api(API + "/calls/" + encodeURIComponent(id) + "/reattribute", { method: "POST" }); route(); }
    catch (e) { fail(e); }
  } });
  reattr.disabled = Boolean(d.body_pruned_at);  // nothing left to attribute again

  const selection = el("div", { class: "card", id: "selection" }, el("span", { class: "muted", text: "Hover a region for its category and item; click to pin it here." }));
  const box = el("div", { class: "body", id: "body", dataset: { state: "pending" } });
  const progress = el("div", { class: "progress", id: "progress" });

  app.replaceChildren(
    el("h1", {}, "Call ", el("span", { class: "mono", text: d.id })),
    el("div", { class: "grid2" }, el("div", { class: "card" }, summary, el("p", {}, reattr)), categoryCard(d)),
    el("h2", { text: "Request body" }),
    legend(d),
    selection,
    progress,
    box,
    el("h2", { text: "Response" }),
    responseCard(d),
  );
  setStatus("");
  wireBody(box, items, selection);
  await renderBody(box, bytes, d.regions, progress, mine);
}

function legend(d) {
  const present = new Set(Object.keys(d.categories).filter((c) => d.categories[c].bytes > 0));
  if (d.unattributed_bytes > 0) present.add("unattributed");
  return el("div", { class: "legend", id: "legend" },
    ...CATEGORIES.filter((c) => present.has(c)).map((c) => el("span", { dataset: { cat: c } }, swatch(c), c)));
}

function categoryCard(d) {
  const cats = Object.entries(d.categories).map(([name, t]) => Object.assign({ name }, t)).filter((t) => t.bytes || t.tokens);
  const outTokens = d.output_items.reduce((a, o) => a + o.tokens, 0);
  const outCost = d.output_items.reduce((a, o) => a + (o.cost_usd || 0), 0);
  if (outTokens) cats.push({ name: "output", bytes: 0, tokens: outTokens, cost_usd: d.cost_usd === null ? null : outCost });
  cats.sort((a, b) => b.tokens - a.tokens || b.bytes - a.bytes);
  const maxTokens = Math.max(1, ...cats.map((c) => c.tokens));
  const stack = el("div", { class: "stack", title: "request bytes by category" });
  for (const c of cats) {
    if (!c.bytes || !d.body_bytes) continue;
    const part = el("div", { class: "c-" + c.name, title: `${c.name}: ${fmtInt(c.bytes)} bytes` });
    part.style.width = (100 * c.bytes) / d.body_bytes + "%";
    stack.append(part);
  }
  const rows = cats.map((c) => {
    const bar = el("div", { class: "bar c-" + c.name });
    bar.style.width = Math.max(0.5, (100 * c.tokens) / maxTokens) + "%";
    return el("tr", { dataset: { cat: c.name } },
      el("td", {}, swatch(c.name), " ", c.name),
      el("td", { class: "num", text: c.bytes ? fmtInt(c.bytes) : "–" }),
      el("td", { class: "num", text: fmtInt(c.tokens) }),
      el("td", { class: "num", text: fmtCost(c.cost_usd) }),
      el("td", { class: "barcell" }, bar));
  });
  const table = el("table", { class: "bars", id: "categories" },
    el("thead", {}, el("tr", {}, el("th", { text: "category" }), el("th", { class: "num", text: "bytes" }), el("th", { class: "num", text: "tokens" }), el("th", { class: "num", text: "cost" }), el("th", { text: "tokens" }))),
    el("tbody", {}, ...rows));
  return el("div", { class: "card" }, el("strong", { text: "Where this call's tokens went" }), stack, table);
}

function responseCard(d) {
  const card = el("div", { class: "card", id: "response" });
  if (!d.response.length) card.append(el("span", { class: "muted", text: "No response content stored." }));
  for (const b of d.response) {
    if (b.type === "text") card.append(el("div", { class: "resp-block text" }, el("span", { class: "pill", text: "text" }), "\n", b.text || ""));
    else if (b.type === "thinking") card.append(el("div", { class: "resp-block thinking" }, el("span", { class: "pill", text: "thinking" }), "\n", b.thinking || ""));
    else if (b.type === "tool_use" || b.type === "server_tool_use") {
      card.append(el("div", { class: "resp-block tool_use" }, el("span", { class: "pill", text: "tool call" }), " ", el("strong", { text: b.name || "?" }), "\n",
        JSON.stringify(b.input === undefined ? {} : b.input, null, 2)));
    } else card.append(el("div", { class: "resp-block" }, el("span", { class: "pill", text: b.type || "block" }), "\n", JSON.stringify(b)));
  }
  if (d.output_items.length) {
    card.append(el("table", { class: "bars" },
      el("thead", {}, el("tr", {}, el("th", { text: "output item" }), el("th", { class: "num", text: "tokens" }), el("th", { class: "num", text: "cost" }))),
      el("tbody", {}, ...d.output_items.map((o) => el("tr", {}, el("td", { text: o.item }), el("td", { class: "num", text: fmtInt(o.tokens) }), el("td", { class: "num", text: fmtCost(o.cost_usd) }))))));
  }
  return card;
}

function describe(span, items) {
  const cat = span.dataset.cat;
  const item = span.dataset.item;
  const size = Number(span.dataset.end) - Number(span.dataset.start);
  const lines = [[cat, item || ""], ["region", `bytes ${fmtInt(Number(span.dataset.start))}–${fmtInt(Number(span.dataset.end))} (${fmtInt(size)} bytes)`]];
  if (cat === "unattributed") lines.push(["", "no source claimed these bytes"]);
  else {
    const t = items.get(cat + "\u0000" + item);
    if (t) lines.push(["item total", `${fmtInt(t.bytes)} bytes · ${fmtInt(t.tokens)} tokens · ${fmtCost(t.cost_usd)}`]);
  }
  return lines;
}

function wireBody(box, items, selection) {
  let pinned = null;
  box.addEventListener("mousemove", (e) => {
    const span = e.target.closest("span.r");
    if (!span) { hideTip(); return; }
    tip.replaceChildren(...describe(span, items).map(([k, v]) => el("div", {}, k ? el("b", { text: k + " " }) : "", v)));
    tip.hidden = false;
    tip.style.left = Math.min(e.clientX + 14, window.innerWidth - 440) + "px";
    tip.style.top = e.clientY + 14 + "px";
  });
  box.addEventListener("mouseleave", hideTip);
  box.addEventListener("click", (e) => {
    const span = e.target.closest("span.r");
    if (!span) return;
    if (pinned) pinned.forEach((s) => s.classList.remove("hl"));
    pinned = Array.from(box.querySelectorAll(`span.r[data-start="${span.dataset.start}"]`));
    pinned.forEach((s) => s.classList.add("hl"));
    selection.replaceChildren(swatch(span.dataset.cat), " ",
      ...describe(span, items).map(([k, v]) => el("div", {}, k ? el("b", { text: k + " " }) : "", v)));
  });
}

function hideTip() { tip.hidden = true; }

// Render the body in slices of about FRAME_BUDGET_MS, yielding between them, so a 1 MB body
// with thousands of regions never blocks input. Spans are grouped into blocks of a few KB
// (see style.css) and no span holds more than PIECE_BYTES, so no single insertion is large.
function renderBody(box, bytes, regions, progress, mine) {
  const segs = [];
  let cursor = 0;
  for (const r of regions) {
    if (r.start > cursor) segs.push([cursor, r.start, "unattributed", ""]);
    segs.push([r.start, r.end, r.category, r.item]);
    cursor = r.end;
  }
  if (cursor < bytes.length) segs.push([cursor, bytes.length, "unattributed", ""]);
  const decoder = new TextDecoder("utf-8");
  let si = 0;
  let off = segs.length ? segs[0][0] : 0;
  let block = null;
  let blockBytes = 0;
  let lastSpan = null;
  let batches = 0;
  let done = 0;
  box.dataset.state = "rendering";
  return new Promise((resolve) => {
    const step = () => {
      if (mine !== renderToken) { resolve(); return; }
      const t0 = performance.now();
      const frag = document.createDocumentFragment();
      while (si < segs.length && performance.now() - t0 < FRAME_BUDGET_MS) {
        for (let k = 0; k < 64 && si < segs.length; k++) {
          const [start, end, cat, item] = segs[si];
          const stop = Math.min(end, off + PIECE_BYTES);
          if (!block || blockBytes >= BLOCK_BYTES) {
            block = document.createElement("div");
            block.className = "blk";
            frag.append(block);
            blockBytes = 0;
          }
          const span = document.createElement("span");
          span.className = "r c-" + cat;
          span.dataset.start = start;
          span.dataset.end = end;
          span.dataset.len = stop - off;
          span.dataset.cat = cat;
          if (item) span.dataset.item = item;
          span.textContent = decoder.decode(bytes.subarray(off, stop), { stream: true });
          block.append(span);
          lastSpan = span;
          blockBytes += stop - off;
          done += stop - off;
          if (stop >= end) { si++; off = si < segs.length ? segs[si][0] : 0; } else off = stop;
        }
      }
      box.append(frag);
      batches++;
      box.dataset.batches = batches;
      if (si < segs.length) {
        progress.textContent = `rendering ${fmtBytes(done)} of ${fmtBytes(bytes.length)}…`;
        setTimeout(step, 0);
      } else {
        const rest = decoder.decode();
        if (rest && lastSpan) lastSpan.textContent += rest;
        progress.textContent = `${fmtInt(bytes.length)} bytes in ${fmtInt(segs.length)} regions`;
        box.dataset.state = "done";
        resolve();
      }
    };
    step();
  });
}

// --- sessions -----------------------------------------------------------------------------------

async function sessionsPage() {
  const rows = await getJSON(API + "/sessions");
  const tbody = el("tbody", {}, ...rows.map((s) => el("tr", { class: "row", onclick: () => { location.hash = "#/session/" + encodeURIComponent(s.session_id); } },
    el("td", { class: "mono", text: s.session_id }),
    el("td", { text: fmtTime(s.first_at) }), el("td", { text: fmtTime(s.last_at) }),
    el("td", { class: "num", text: fmtInt(s.calls) }), el("td", { class: "num", text: fmtInt(s.tokens) }),
    el("td", { class: "num", text: fmtCost(s.cost_usd) }))));
  app.replaceChildren(el("h1", { text: "Sessions" }), el("table", {},
    el("thead", {}, el("tr", {}, ...["session", "first call", "last call", "calls", "tokens", "cost"].map((h, i) => el("th", { class: i >= 3 ? "num" : "", text: h })))), tbody));
}

async function sessionPage(id) {
  const s = await getJSON(API + "/sessions/" + encodeURIComponent(id));
  const compactionIds = new Set(s.compactions.map((c) => c.exchange_id));
  const tbody = el("tbody", { id: "session-calls" });
  // Calls in order; each subagent's calls are gathered under one heading where it first ran.
  const byAgent = new Map();
  for (const c of s.calls) if (c.agent_id) { if (!byAgent.has(c.agent_id)) byAgent.set(c.agent_id, []); byAgent.get(c.agent_id).push(c); }
  const placed = new Set();
  for (const c of s.calls) {
    if (!c.agent_id) { tbody.append(callRow(c, compactionIds.has(c.id) ? "compaction" : "")); continue; }
    if (placed.has(c.agent_id)) continue;
    placed.add(c.agent_id);
    const group = byAgent.get(c.agent_id);
    const cost = group.reduce((a, g) => a + (g.cost_usd || 0), 0);
    tbody.append(el("tr", { class: "group", dataset: { agent: c.agent_id } }, el("td", { colspan: 12, text: `subagent ${c.agent_id} — ${group.length} calls, ${fmtCost(cost)}` })));
    for (const g of group) tbody.append(callRow(g, "sub"));
  }
  const head = ["time", "session", "kind", "model", "input", "cache read", "cache write", "output", "cost", "duration", "first token", "unattributed"];
  const catMax = Math.max(1, ...s.categories.map((c) => c.tokens));
  const cats = el("table", { class: "bars", id: "session-categories" }, el("tbody", {}, ...s.categories.map((c) => {
    const bar = el("div", { class: "bar c-" + c.category });
    bar.style.width = Math.max(0.5, (100 * c.tokens) / catMax) + "%";
    return el("tr", {}, el("td", {}, swatch(c.category), " ", c.category), el("td", { class: "num", text: fmtInt(c.tokens) + " tok" }),
      el("td", { class: "num", text: fmtBytes(c.bytes) }), el("td", { class: "num", text: fmtCost(c.cost_usd) }), el("td", { class: "barcell" }, bar));
  })));
  const mcp = s.mcp.length ? el("table", { id: "session-mcp" },
    el("thead", {}, el("tr", {}, el("th", { text: "MCP server" }), el("th", { class: "num", text: "calls" }), el("th", { class: "num", text: "tokens" }), el("th", { class: "num", text: "bytes" }), el("th", { class: "num", text: "cost" }), el("th", { text: "top items" }))),
    el("tbody", {}, ...s.mcp.map((m) => el("tr", {}, el("td", { text: m.server }), el("td", { class: "num", text: fmtInt(m.calls) }), el("td", { class: "num", text: fmtInt(m.tokens) }),
      el("td", { class: "num", text: fmtBytes(m.bytes) }), el("td", { class: "num", text: fmtCost(m.cost_usd) }),
      el("td", { class: "mono", text: m.items.slice(0, 3).map((i) => i.item + " " + fmtInt(i.tokens)).join(", ") })))))
    : el("p", { class: "muted", text: "No MCP servers in this session." });
  const comp = s.compactions.length ? el("table", { id: "session-compactions" },
    el("thead", {}, el("tr", {}, ...["compaction call", "conversation before", "after", "saved", "prompt tokens before → after"].map((h) => el("th", { text: h })))),
    el("tbody", {}, ...s.compactions.map((c) => el("tr", {},
      el("td", { class: "mono" }, el("a", { href: "#/call/" + encodeURIComponent(c.exchange_id), text: short(c.exchange_id, 12) })),
      el("td", { text: fmtBytes(c.messages_bytes_before) }), el("td", { text: fmtBytes(c.messages_bytes_after) }),
      el("td", { text: c.bytes_saved === null ? "–" : fmtBytes(c.bytes_saved) }),
      el("td", { text: fmtInt(c.prompt_tokens_before) + " → " + fmtInt(c.prompt_tokens_after) })))))
    : el("p", { class: "muted", text: "No compactions." });
  app.replaceChildren(
    el("h1", {}, "Session ", el("span", { class: "mono", text: s.session_id })),
    el("div", { class: "card" }, el("dl", { class: "kv" },
      el("dt", { text: "project" }), el("dd", { class: "mono", text: s.project }),
      el("dt", { text: "calls" }), el("dd", { text: fmtInt(s.calls.length) + (s.truncated ? " (first ones only)" : "") }),
      el("dt", { text: "cost" }), el("dd", { text: fmtCost(s.cost_usd) }),
      el("dt", { text: "captures" }), el("dd", {}, el("a", { href: "#/" + query({ session: s.session_id }), text: "list this session's captures" })))),
    el("h2", { text: "Cost over time" }), costChart(s.calls, compactionIds),
    el("div", { class: "grid2" },
      el("div", {}, el("h2", { text: "Categories" }), el("div", { class: "card" }, cats)),
      el("div", {}, el("h2", { text: "MCP servers" }), el("div", { class: "card" }, mcp), el("h2", { text: "Compactions" }), el("div", { class: "card" }, comp))),
    el("h2", { text: "Calls" }),
    el("table", {}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { text: h })))), tbody));
}

function costChart(calls, compactionIds) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("id", "cost-chart");
  svg.setAttribute("viewBox", "0 0 800 180");
  svg.setAttribute("preserveAspectRatio", "none");
  if (!calls.length) return svg;
  const t0 = calls[0].started_at;
  const t1 = Math.max(t0 + 1e-3, calls[calls.length - 1].started_at);
  const cMax = Math.max(1e-9, calls[calls.length - 1].cumulative_cost_usd);
  const x = (t) => 40 + (740 * (t - t0)) / (t1 - t0);
  const y = (c) => 160 - (140 * c) / cMax;
  const mk = (tag, attrs) => { const n = document.createElementNS(NS, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); svg.append(n); return n; };
  mk("line", { class: "axis", x1: 40, y1: 160, x2: 780, y2: 160 });
  mk("line", { class: "axis", x1: 40, y1: 20, x2: 40, y2: 160 });
  mk("polyline", { class: "line", points: calls.map((c) => `${x(c.started_at).toFixed(1)},${y(c.cumulative_cost_usd).toFixed(1)}`).join(" ") });
  for (const c of calls) {
    const dot = mk("circle", { class: "dot" + (compactionIds.has(c.id) ? " compaction" : ""), cx: x(c.started_at).toFixed(1), cy: y(c.cumulative_cost_usd).toFixed(1), r: compactionIds.has(c.id) ? 5 : 3 });
    const title = document.createElementNS(NS, "title");
    title.textContent = `${fmtTime(c.started_at)} ${c.call_kind}: ${fmtCost(c.cost_usd)} (total ${fmtCost(c.cumulative_cost_usd)})`;
    dot.append(title);
  }
  mk("text", { x: 44, y: 16 }).textContent = fmtCost(cMax);
  mk("text", { x: 44, y: 174 }).textContent = fmtTime(t0);
  const end = mk("text", { x: 776, y: 174, "text-anchor": "end" });
  end.textContent = fmtTime(t1);
  return svg;
}

route();
