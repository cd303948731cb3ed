// The workbench: finance's exceptions, held invoices and reconciliation, and running charges
// and usage, all read from this server's /v1 API with the token typed in. Everything shown
// from the API is set as text (never as HTML): rejected payloads come from hostile producers.
"use strict";
const $ = (id) => document.getElementById(id);
const KEY = "meterwax.token";
let token = sessionStorage.getItem(KEY) || "";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
  return tr;
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const err = new Error(body.detail || `${response.status}`);
    err.status = response.status;
    throw err;
  }
  return body;
}

async function pages(path, cap = 2000) {
  const items = [];
  let cursor = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < cap);
  return items;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function loadRejected() {
  const summary = await api("/v1/exceptions/summary");
  const body = $("rejected-rows");
  body.replaceChildren();
  for (const [reason, count] of Object.entries(summary.by_reason)) {
    const examples = el("td");
    const page = await api(`/v1/exceptions?reason=${encodeURIComponent(reason)}&limit=2`);
    for (const item of page.items) {
      examples.appendChild(el("div", item.error));
      examples.appendChild(el("pre", item.raw !== null ? item.raw : `(base64) ${item.raw_base64}`));
    }
    const action = el("td");
    const button = el("button", "Retry");
    button.type = "button";
    button.dataset.reason = reason;
    button.addEventListener("click", () => retry(reason));
    action.appendChild(button);
    const tr = row([el("td", reason), el("td", count, "num"), examples, action]);
    tr.dataset.reason = reason;
    body.appendChild(tr);
  }
  $("rejected-total").textContent = summary.total;
}

async function retry(reason) {
  const out = $("retry-result");
  out.textContent = `retrying ${reason}…`;
  try {
    const result = await api("/v1/exceptions/retry", { method: "POST", body: JSON.stringify({ reason }) });
    out.textContent = `${reason}: ${result.matched} matched, sent ${result.sent} to the input topic`;
    out.className = "ok";
  } catch (e) {
    out.textContent = `${reason}: not retried: ${e.message}`;
    out.className = "bad";
  }
}

async function loadHeld() {
  const items = await pages("/v1/invoice-exceptions");
  const body = $("held-rows");
  body.replaceChildren();
  for (const item of items) {
    const d = item.document;
    body.appendChild(row([el("td", item.id), el("td", item.customer_id), el("td", item.billing_period),
      el("td", `${item.amount} ${item.currency}`, "num"), el("td", (d.reasons || []).join(", ")),
      el("td", (d.details || []).join("; "))]));
  }
  $("held").dataset.count = String(items.length);
}

const CHAIN = ["rated_usage", "invoiced_usage", "invoiced_total", "not_posted", "ar_total",
  "journal_receivable", "journal_debit", "journal_credit", "invoiced_tax", "ar_tax",
  "journal_tax_payable", "ar_discounts", "ar_credits_applied", "journal_customer_credits"];

function variances(r) {
  // Which cells disagree with what they must equal (the same checks reconciliation makes).
  const bad = new Set();
  const n = (k) => Number(r[k]);
  if (n("rated_usage") !== n("invoiced_usage")) bad.add("invoiced_usage");
  if (Math.abs(n("invoiced_total") - n("not_posted") - n("ar_total")) > 1e-9) bad.add("ar_total");
  if (Math.abs(n("ar_total") - n("ar_credits_applied") - n("journal_receivable")) > 1e-9) {
    bad.add("journal_receivable");
  }
  if (n("ar_tax") !== n("journal_tax_payable")) bad.add("journal_tax_payable");
  if (n("ar_credits_applied") !== n("journal_customer_credits")) {
    bad.add("journal_customer_credits");
  }
  if (n("journal_debit") !== n("journal_credit")) bad.add("journal_credit");
  return bad;
}

async function loadRecon() {
  const month = $("month").value;
  const report = await api(`/v1/reconciliation?month=${month}`);
  const body = $("recon-rows");
  body.replaceChildren();
  for (const r of report.chain) {
    const bad = variances(r);
    const cells = [el("td", r.legal_entity), el("td", r.currency)];
    for (const k of CHAIN) cells.push(el("td", r[k], bad.has(k) ? "num variance" : "num"));
    body.appendChild(row(cells));
  }
  const verdict = $("recon-verdict");
  verdict.textContent = report.balanced ? `${month} balances` : `${month} does not balance`;
  verdict.className = report.balanced ? "ok" : "bad";
  const problems = $("recon-problems");
  problems.replaceChildren(...report.problems.map((p) => el("li", p)));
}

async function loadCharges(customers) {
  const body = $("charges-rows");
  body.replaceChildren();
  for (const c of customers) {
    const charges = await api(`/v1/customers/${encodeURIComponent(c)}/charges`);
    const totals = charges.totals.map((t) => `${t.total} ${t.currency}`).join(", ") || "—";
    const tr = row([el("td", c), el("td", charges.period), el("td", totals, "num"),
      el("td", charges.as_of || "nothing rated yet"), el("td", charges.updated_at || "—")]);
    tr.dataset.customer = c;
    body.appendChild(tr);
  }
}

function chart(meter, buckets) {
  const box = el("div", null, "chart");
  box.appendChild(el("h3", meter));
  const w = 320, h = 120, pad = 18;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h); svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${meter} per day`);
  const values = buckets.map((b) => Number(b.quantity ?? b.period_quantity));
  const max = Math.max(1, ...values);
  const bw = Math.max(1, (w - 2 * pad) / Math.max(1, values.length));
  values.forEach((v, i) => {
    const r = document.createElementNS(svg.namespaceURI, "rect");
    const bh = (h - 2 * pad) * v / max;
    r.setAttribute("x", pad + i * bw); r.setAttribute("y", h - pad - bh);
    r.setAttribute("width", Math.max(1, bw - 1)); r.setAttribute("height", bh);
    const t = document.createElementNS(svg.namespaceURI, "title");
    t.textContent = `${buckets[i].start.slice(0, 10)}: ${values[i]}`;
    r.appendChild(t);
    svg.appendChild(r);
  });
  const label = document.createElementNS(svg.namespaceURI, "text");
  label.setAttribute("x", pad); label.setAttribute("y", 12);
  label.textContent = `max ${max}`;
  svg.appendChild(label);
  box.appendChild(svg);
  return box;
}

async function loadUsage(customer) {
  const charges = await api(`/v1/customers/${encodeURIComponent(customer)}/charges`);
  const usage = await api(`/v1/customers/${encodeURIComponent(customer)}/usage?granularity=day`);
  const byMeter = new Map();
  for (const b of usage.buckets) {
    if (!byMeter.has(b.meter)) byMeter.set(b.meter, []);
    byMeter.get(b.meter).push(b);
  }
  const charts = $("usage-charts");
  charts.replaceChildren(...[...byMeter.entries()].map(([m, bs]) => chart(m, bs)));
  charts.dataset.period = charges.period;
}

async function open() {
  showError("");
  if (!token) return;
  let me;
  try {
    me = await api("/v1/me");
  } catch (e) {
    showError(e.status === 401 ? "That token is not valid (unknown, revoked or expired)." : e.message);
    return;
  }
  $("who").textContent = `signed in: ${me.scope} (token ${me.token_id})`;
  $("logout").hidden = false;
  const finance = me.scope === "finance" || me.scope === "admin";
  for (const s of document.querySelectorAll("[data-scope=finance]")) s.hidden = !finance;
  $("charges").hidden = false;
  $("usage").hidden = false;
  const customers = (await api("/v1/customers")).customers;
  const select = $("usage-customer");
  select.replaceChildren(...customers.map((c) => { const o = el("option", c); o.value = c; return o; }));
  select.onchange = () => loadUsage(select.value).catch((e) => showError(e.message));
  const work = [loadCharges(customers), loadUsage(customers[0])];
  if (finance) {
    if (!$("month").value) $("month").value = me.previous_period;
    $("month").onchange = () => loadRecon().catch((e) => showError(e.message));
    work.push(loadRejected(), loadHeld(), loadRecon());
  }
  await Promise.all(work).catch((e) => showError(e.message));
  document.body.dataset.ready = "true";
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem(KEY, token);
  $("token").value = "";
  open();
});
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  location.reload();
});
open();
