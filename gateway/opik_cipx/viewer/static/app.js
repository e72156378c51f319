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
  else if (parts[0] === "captures") page = listPage(params);
  else page = insightsPage(params);
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
      location.hash = "#/captures" + query(next);
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
      el("dt", { text: "captures" }), el("dd", {}, el("a", { href: "#/captures" + query({ session: s.session_id }), text: "list this session's captures" })))),
    el("h2", { text: "Cost over time" }), costChart(s.calls, compactionIds),
    el("h2", { text: "Context growth" }), el("div", { class: "card", id: "growth" }, el("p", { class: "muted", text: "loading…" })),
    el("div", { class: "grid2" },
      el("div", {}, el("h2", { text: "Categories" }), el("div", { class: "card" }, cats)),
      el("div", {}, el("h2", { text: "MCP servers" }), el("div", { class: "card" }, mcp), el("h2", { text: "Compactions" }), el("div", { class: "card" }, comp))),
    el("h2", { text: "Calls" }),
    el("table", {}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { text: h })))), tbody));
  loadGrowth(id, renderToken).catch((err) => {
    const box = document.getElementById("growth");
    if (box) box.replaceChildren(el("p", { class: "bad", text: "Context growth: " + err.message }));
  });
}

// --- insights (home) ----------------------------------------------------------------------------

const WINDOWS = { today: "today", week: "last 7 days", month: "last 30 days", all: "all time" };
const KIND_NOTES = {
  unused_mcp_server: "an MCP server whose tools and instructions rode in every call, barely or never called",
  unused_builtin_tool: "a built-in tool's schema sent and never called",
  unused_skill: "a skill listed in every call, never invoked",
  unused_agent: "a custom agent listed in every call, never run",
  unused_slash_command: "a slash command listed in every call, never used",
  large_memory_file: "a CLAUDE.md that every call carries whole",
  cold_cache: "prefixes written again after the 5-minute cache expired",
  long_context: "calls billed at the long-context tier",
  compaction: "what a compaction cost against what its cut saved",
};

const colours = new Map();
function catColour(cat) {
  // The CSS holds the palette once; SVG needs it as a fill, so read it off a swatch.
  if (!colours.has(cat)) {
    const probe = swatch(cat);
    document.body.append(probe);
    colours.set(cat, getComputedStyle(probe).backgroundColor);
    probe.remove();
  }
  return colours.get(cat);
}

function chartSvg(NS, id, height) {
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("id", id);
  svg.setAttribute("viewBox", `0 0 800 ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  return svg;
}

function svgNode(NS, parent, tag, attrs, text) {
  const n = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  if (text !== undefined) n.textContent = text;
  parent.append(n);
  return n;
}

function change(now, before) {
  if (before === null || before === undefined) return "–";
  if (!before) return now ? "new" : "0%";
  const pct = (100 * (now - before)) / before;
  return (pct >= 0 ? "+" : "") + pct.toFixed(0) + "%";
}

const PLAN_WINDOWS = { five_hour: "5 hours", seven_day: "7 days" };

function planCard(plan) {
  const present = plan ? Object.keys(PLAN_WINDOWS).filter((k) => plan[k]) : [];
  if (!present.length) return el("p", { class: "muted", id: "plan", text: "No plan windows reported yet: only subscription logins get them (API keys never do)." });
  const rows = present.map((k) => {
    const w = plan[k];
    const pct = typeof w.utilization === "number" ? 100 * w.utilization : null;
    const bar = el("div", { class: "bar" + (pct !== null && pct >= 90 ? " hot" : "") });
    bar.style.width = Math.max(0.5, Math.min(100, pct || 0)) + "%";
    return el("tr", { dataset: { window: k } }, el("td", { text: PLAN_WINDOWS[k] }), el("td", { class: "num", text: pct === null ? "–" : pct.toFixed(0) + "%" }),
      el("td", { class: "barcell" }, bar), el("td", { class: "muted", text: w.status || "" }),
      el("td", { class: "muted", text: w.reset ? "resets " + fmtTime(w.reset) : "" }));
  });
  const overage = plan.overage ? ` · overage ${plan.overage.status || "–"}` : "";
  return el("div", { id: "plan" }, el("table", { class: "bars" }, el("tbody", {}, ...rows)),
    el("p", { class: "muted", text: `status ${plan.status || "–"}` + (plan.representative_claim ? ` · binding ${plan.representative_claim}` : "") + overage + (plan.at ? ` · as of ${fmtTime(plan.at)}` : "") }));
}

function dayChart(days) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = chartSvg(NS, "spend-chart", 180);
  if (!days.length) return svg;
  const top = Math.max(1e-9, ...days.map((d) => d.cost_usd));
  const w = 740 / days.length;
  svgNode(NS, svg, "line", { class: "axis", x1: 40, y1: 160, x2: 780, y2: 160 });
  days.forEach((d, i) => {
    const h = (140 * d.cost_usd) / top;
    const bar = svgNode(NS, svg, "rect", { class: "daybar", x: (40 + i * w + w * 0.1).toFixed(1), y: (160 - h).toFixed(1), width: (w * 0.8).toFixed(1), height: Math.max(0.5, h).toFixed(1) });
    svgNode(NS, bar, "title", {}, `${d.key}: ${fmtCost(d.cost_usd)} over ${fmtInt(d.calls)} calls`);
  });
  svgNode(NS, svg, "text", { x: 44, y: 16 }, fmtCost(top) + " / day");
  svgNode(NS, svg, "text", { x: 44, y: 174 }, days[0].key);
  svgNode(NS, svg, "text", { x: 776, y: 174, "text-anchor": "end" }, days[days.length - 1].key);
  return svg;
}

function groupTable(id, title, rows) {
  return el("table", { id }, el("thead", {}, el("tr", {}, el("th", { text: title }), el("th", { class: "num", text: "calls" }), el("th", { class: "num", text: "tokens" }), el("th", { class: "num", text: "cost" }))),
    el("tbody", {}, ...rows.slice(0, 10).map((g) => el("tr", {}, el("td", { class: "mono", text: g.key }), el("td", { class: "num", text: fmtInt(g.calls) }),
      el("td", { class: "num", text: fmtInt(g.tokens) }), el("td", { class: "num", text: fmtCost(g.cost_usd) })))));
}

const SHOWN_PER_KIND = 5;

function recommendationsTable(recs) {
  if (!recs.length) return el("p", { class: "muted", id: "recommendations", text: "Nothing to change in this window." });
  const row = (r, hidden) => el("tr", { class: hidden ? "extra" : "", hidden: hidden ? "hidden" : null, dataset: { kind: r.kind } },
    el("td", {}, el("span", { class: "pill", title: KIND_NOTES[r.kind] || "", text: r.kind })),
    el("td", { class: "mono wrap", text: r.target }),
    el("td", { class: "num", text: fmtInt(r.calls_present) }), el("td", { class: "num", text: fmtInt(r.uses) }),
    el("td", { class: "num", text: fmtInt(r.tokens) }), el("td", { class: "num", text: fmtCost(r.saving_usd) }),
    el("td", { class: "wrap", text: r.action }),
    el("td", { class: "mono" }, ...r.evidence.slice(0, 3).flatMap((id, i) => [i ? " " : "", el("a", { class: "evidence", href: "#/call/" + encodeURIComponent(id), text: short(id, 8) })]),
      r.evidence.length > 3 ? el("span", { class: "muted", text: ` +${r.evidence.length - 3}` }) : null));
  // A decision first: each kind's costliest few, kinds ordered by what they save together;
  // the rest of a kind stays one click away.
  const kinds = new Map();
  for (const r of recs) { if (!kinds.has(r.kind)) kinds.set(r.kind, []); kinds.get(r.kind).push(r); }
  const total = (rs) => rs.reduce((a, r) => a + Math.max(0, r.saving_usd), 0);
  const tbody = el("tbody");
  for (const [kind, rs] of [...kinds.entries()].sort((a, b) => total(b[1]) - total(a[1]))) {
    const extra = rs.slice(SHOWN_PER_KIND).map((r) => row(r, true));
    tbody.append(...rs.slice(0, SHOWN_PER_KIND).map((r) => row(r, false)));
    if (!extra.length) continue;
    const more = el("tr", { class: "more-row" }, el("td", { colspan: 8 }, el("button", {
      type: "button", text: `show ${extra.length} more ${kind} (${fmtCost(total(rs.slice(SHOWN_PER_KIND)))})`,
      onclick: () => { for (const e of extra) e.hidden = false; more.remove(); } })));
    tbody.append(...extra, more);
  }
  return el("table", { id: "recommendations" }, el("thead", {}, el("tr", {}, ...["kind", "target", "calls", "uses", "tokens", "saving", "action", "evidence"].map((h, i) => el("th", { class: i >= 2 && i <= 5 ? "num" : "", text: h })))),
    tbody);
}

async function insightsPage(params) {
  setStatus("");
  const win = WINDOWS[params.window] ? params.window : "month";
  const d = await getJSON(API + "/insights?window=" + encodeURIComponent(win));
  const t = d.totals;
  const picker = el("select", { name: "window", onchange: (e) => { location.hash = "#/" + query({ window: e.target.value }); } },
    ...Object.entries(WINDOWS).map(([k, label]) => el("option", { value: k, selected: k === win ? "selected" : null, text: label })));
  const money = t.at_list_usd ? `${fmtCost(t.api_billed_usd)} API-billed + ${fmtCost(t.at_list_usd)} at list (subscription)` : fmtCost(t.cost_usd);
  const catMax = Math.max(1, ...d.where_tokens_went.map((c) => c.tokens));
  const cats = el("table", { class: "bars", id: "where-tokens" }, el("tbody", {}, ...d.where_tokens_went.map((c) => {
    const bar = el("div", { class: "bar c-" + c.key });
    bar.style.width = Math.max(0.5, (100 * c.tokens) / catMax) + "%";
    return el("tr", {}, el("td", {}, swatch(c.key), " ", c.key), el("td", { class: "num", text: fmtInt(c.tokens) + " tok" }),
      el("td", { class: "num", text: fmtCost(c.cost_usd) }), el("td", { class: "barcell" }, bar),
      el("td", { class: "mono muted", text: c.top_items.map((i) => `${i.key} ${fmtCost(i.cost_usd)}`).join(", ") }));
  })));
  app.replaceChildren(
    el("div", { class: "filters" }, el("h1", { text: "Insights" }), el("label", {}, "window", picker)),
    el("div", { class: "grid2" },
      el("div", { class: "card", id: "spend" }, el("dl", { class: "kv" },
        el("dt", { text: "spend" }), el("dd", { id: "spend-total", text: money }),
        el("dt", { text: "calls" }), el("dd", { text: fmtInt(t.calls) }),
        el("dt", { text: "vs previous window" }), el("dd", { text: change(t.cost_usd, d.previous ? d.previous.cost_usd : null) }),
        el("dt", { text: "cache hit rate" }), el("dd", { text: t.cache_hit_rate === null ? "–" : fmtPct(100 * t.cache_hit_rate) }),
        el("dt", { text: "tokens" }), el("dd", { text: `${fmtInt(t.input_tokens)} uncached · ${fmtInt(t.cache_write_tokens)} cache write · ${fmtInt(t.cache_read_tokens)} cache read · ${fmtInt(t.output_tokens)} output` }))),
      el("div", { class: "card" }, el("h2", { text: "Plan windows" }), planCard(d.plan))),
    el("h2", { text: "Spend per day" }), dayChart(d.by_day),
    el("h2", { text: "Recommendations" }), el("p", { class: "muted", text: d.saving_note }), recommendationsTable(d.recommendations),
    el("h2", { text: "Where the tokens went" }), el("div", { class: "card" }, cats),
    el("div", { class: "grid2" },
      el("div", {}, el("h2", { text: "By project" }), groupTable("by-project", "project", d.by_project)),
      el("div", {}, el("h2", { text: "By model" }), groupTable("by-model", "model", d.by_model))));
}

// --- context growth -----------------------------------------------------------------------------

async function loadGrowth(id, token) {
  const g = await getJSON(API + "/sessions/" + encodeURIComponent(id) + "/growth");
  const box = document.getElementById("growth");
  if (!box || token !== renderToken) return; // navigated away meanwhile
  box.replaceChildren(growthChart(g), el("div", { class: "legend" }, ...g.categories.map((c) => el("span", {}, swatch(c), c))),
    el("p", { class: "muted", text: `Request bytes of each main-agent call, stacked by category; compactions marked.` +
      (g.left_out.subagent_or_side_calls ? ` ${g.left_out.subagent_or_side_calls} subagent and side calls have conversations of their own and are not stacked here.` : "") +
      (g.left_out.beyond_limit ? ` ${g.left_out.beyond_limit} later calls not drawn.` : "") }));
}

function growthChart(g) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = chartSvg(NS, "growth-chart", 200);
  const calls = g.calls;
  if (!calls.length) return svg;
  const total = (c) => Object.values(c.bytes).reduce((a, b) => a + b, 0);
  const top = Math.max(1, ...calls.map(total));
  const w = 740 / calls.length;
  svgNode(NS, svg, "line", { class: "axis", x1: 40, y1: 180, x2: 780, y2: 180 });
  calls.forEach((c, i) => {
    const x = 40 + i * w;
    let y = 180;
    const col = svgNode(NS, svg, "g", { class: "call", "data-id": c.id, "data-kind": c.call_kind });
    for (const cat of g.categories) {
      const b = c.bytes[cat] || 0;
      if (!b) continue;
      const h = (160 * b) / top;
      y -= h;
      const r = svgNode(NS, col, "rect", { x: (x + w * 0.08).toFixed(2), y: y.toFixed(2), width: Math.max(0.5, w * 0.84).toFixed(2), height: h.toFixed(2), fill: catColour(cat), "data-cat": cat });
      svgNode(NS, r, "title", {}, `call ${i + 1} (${c.call_kind}) ${fmtTime(c.started_at)}: ${cat} ${fmtBytes(b)} of ${fmtBytes(total(c))}`);
    }
    if (c.call_kind === "compaction") {
      svgNode(NS, svg, "line", { class: "compaction-mark", x1: (x + w / 2).toFixed(1), y1: 14, x2: (x + w / 2).toFixed(1), y2: 180 });
      svgNode(NS, svg, "text", { x: (x + w / 2 + 3).toFixed(1), y: 24 }, "compaction");
    }
  });
  svgNode(NS, svg, "text", { x: 44, y: 12 }, fmtBytes(top));
  svgNode(NS, svg, "text", { x: 44, y: 194 }, "call 1");
  svgNode(NS, svg, "text", { x: 776, y: 194, "text-anchor": "end" }, `call ${calls.length}`);
  return svg;
}

function costChart(calls, compactionIds) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = chartSvg(NS, "cost-chart", 180);
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
