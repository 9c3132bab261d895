// Live dashboard: renders one entity's events as they arrive. Everything is
// written with textContent (never innerHTML) because event data is untrusted.
import { RealtimeClient, tokenClaims } from "/static/rtstream.js";

const MAX_TRANSACTIONS = 50;
const MAX_AGENT_ACTIONS = 20;
const MAX_REWIND = 100; // the protocol's bound on subscribe `rewind`
const money = new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  return node;
}

function signed(n) {
  const v = Number(n);
  return (v > 0 ? "+" : v < 0 ? "−" : "") + money.format(Math.abs(v));
}

// SSE carries no timestamp; an id starts with its publish time in ms
function timeOf(event) {
  const fromId = event.id ? Number(event.id.split("-")[0]) : NaN;
  const d = event.timestamp ? new Date(event.timestamp) : Number.isFinite(fromId) ? new Date(fromId) : new Date();
  return isNaN(d) ? "" : d.toLocaleTimeString();
}

// An agent's result, readable: its message if it has one, else "key value" pairs.
function describeResult(result) {
  if (result == null) return "";
  if (typeof result !== "object") return String(result);
  if (typeof result.message === "string") return result.message;
  return Object.entries(result)
    .map(([k, v]) => `${k} ${v !== null && typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(" · ");
}

function clearEmpty(container) {
  for (const node of container.querySelectorAll(".empty")) node.remove();
}

async function loadConfig() {
  try {
    const res = await fetch("/dashboard/config", { cache: "no-store" });
    if (res.ok) return await res.json();
  } catch (_) { /* the page can still run with ?token= and same-origin SSE */ }
  return {};
}

async function main() {
  const params = new URLSearchParams(location.search);
  let urlToken = params.get("token");
  if (urlToken) {
    // keep the token out of the address bar, history and bookmarks
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }
  const config = await loadConfig();
  let token = urlToken || config.token || "";
  if (!token) {
    $("fatal-banner").hidden = false;
    $("fatal-banner").textContent = "No token: open this page as …/?token=JWT (rtstream token --user U --entity E prints one).";
    return;
  }
  const claims = tokenClaims(token);
  const who = $("who");
  who.replaceChildren("User ", el("b", {}, claims.sub || config.userId || "?"), " · entity ", el("b", {}, claims.entity_id || config.entityId || "?"), claims.role && claims.role !== "user" ? ` · ${claims.role}` : "");

  // A token from the URL is used as given; the dev config token is re-fetched
  // when it is about to expire.
  const getToken = async () => {
    if (!urlToken && config.token) {
      const exp = tokenClaims(token).exp;
      if (exp && exp * 1000 - Date.now() < 120_000) {
        const fresh = await loadConfig();
        if (fresh.token) token = fresh.token;
      }
    }
    return token;
  };

  const transport = ["ws", "sse"].includes(params.get("transport")) ? params.get("transport") : "auto";
  // A fresh page opens with the last N events (the server's config, else the
  // protocol's maximum), so it shows the latest balances, transactions, agent
  // actions and syncs at once; ?rewind=N overrides, ?rewind=0 opens empty. A
  // reconnect resumes from the cursor instead.
  const rewind = Math.min(MAX_REWIND, Math.max(0, Math.floor(Number(params.get("rewind") ?? config.rewind ?? MAX_REWIND)))) || null;
  const client = new RealtimeClient({
    wsUrl: config.wsUrl || null,
    sseUrl: config.sseUrl || new URL("/events", location.href).toString(),
    getToken,
    topics: ["*"],
    rewind,
    transport,
    // ?retryCap=ms shortens the longest reconnect wait (demos, tests); never below 500 ms
    backoffCapMs: Math.min(30_000, Math.max(500, Number(params.get("retryCap")) || 30_000)),
    // ?pingMs=ms pings (and so checks the push path) more often (tests)
    ...(Number(params.get("pingMs")) >= 200 ? { pingIntervalMs: Number(params.get("pingMs")), stallAfterMs: 2 * Number(params.get("pingMs")) } : {}),
  });

  const counts = { events: 0, transactions: 0 };
  const balances = new Map();
  const syncs = new Map();

  client.addEventListener("state", (e) => renderState(e.detail));
  client.on("*", (event) => {
    counts.events += 1;
    $("event-count").textContent = String(counts.events);
    $("last-id").textContent = event.id || "–";
  });
  client.on("transactions.new", addTransaction);
  client.on("balance.updated", updateBalance);
  client.on("agent.action.completed", addAgentAction);
  client.on("sync.completed", updateSync);
  client.addEventListener("replaygap", () => { $("gap-banner").hidden = false; });
  client.addEventListener("fatal", (e) => {
    $("fatal-banner").hidden = false;
    $("fatal-banner").textContent = `The server refused the subscription: ${e.detail.message}`;
  });
  $("gap-reload").addEventListener("click", () => location.reload());

  let countdown = null;
  function renderState(s) {
    const conn = $("conn");
    conn.dataset.status = s.status;
    conn.dataset.transport = s.transport || "";
    clearInterval(countdown);
    const text = $("conn-text");
    const via = s.transport === "sse" ? "Server-Sent Events" : "WebSocket";
    const fallback = s.fallback && Boolean(config.wsUrl);
    if (s.status === "open") text.textContent = `Live · ${via}${fallback ? " (fallback)" : ""}`;
    else if (s.status === "connecting") text.textContent = `Connecting · ${via}…`;
    else if (s.status === "reconnecting" && s.retryAt) {
      const tick = () => {
        const left = Math.max(0, Math.ceil((s.retryAt - Date.now()) / 1000));
        text.textContent = left > 0 ? `Reconnecting in ${left} s` : `Reconnecting · ${via}…`;
      };
      tick();
      countdown = setInterval(tick, 250);
    } else if (s.status === "reconnecting") text.textContent = `Reconnecting · ${via}…`;
    else if (s.status === "closed") text.textContent = "Disconnected";
    $("replayed-count").textContent = String(s.replayed);
    $("reconnect-count").textContent = String(s.reconnects);
  }

  function addTransaction(event) {
    const d = event.data || {};
    const body = $("tx-list");
    clearEmpty(body);
    counts.transactions += 1;
    const amount = Number(d.amount);
    const row = el("tr", { class: "fresh", "data-id": event.id || "", "data-tx": d.transactionId || "" },
      el("td", {}, timeOf(event)),
      el("td", { title: d.merchant || "" }, d.merchant || "—"),
      el("td", {}, d.category ? el("span", { class: "tag" }, d.category) : ""),
      el("td", { class: "num " + (amount < 0 ? "neg" : "pos") }, signed(amount)));
    body.prepend(row);
    while (body.rows.length > MAX_TRANSACTIONS) body.deleteRow(body.rows.length - 1);
    $("tx-count").textContent = `(${counts.transactions})`;
  }

  function updateBalance(event) {
    const d = event.data || {};
    const container = $("balances");
    clearEmpty(container);
    const account = String(d.accountId || "?");
    let card = balances.get(account);
    if (!card) {
      card = el("div", { class: "balance", "data-account": account },
        el("div", { class: "acct" }, account), el("div", { class: "amount" }), el("div", { class: "change" }));
      balances.set(account, card);
      container.append(card);
    }
    const change = Number(d.change);
    card.querySelector(".amount").textContent = money.format(Number(d.newBalance));
    const changeEl = card.querySelector(".change");
    changeEl.textContent = `${signed(change)} · ${timeOf(event)}`;
    changeEl.className = "change " + (change < 0 ? "neg" : "pos");
    card.dataset.id = event.id || "";
    card.classList.remove("flash-pos", "flash-neg");
    void card.offsetWidth; // restart the highlight
    card.classList.add(change < 0 ? "flash-neg" : "flash-pos");
    setTimeout(() => card.classList.remove("flash-pos", "flash-neg"), 900);
  }

  function addAgentAction(event) {
    const d = event.data || {};
    const list = $("agent-list");
    clearEmpty(list);
    const result = describeResult(d.result);
    list.prepend(el("li", { "data-id": event.id || "" },
      el("div", {}, el("b", {}, d.action || "action"), " by ", d.agentId || "agent"),
      el("div", { class: "result" }, result && result.length > 160 ? result.slice(0, 157) + "…" : result || ""),
      el("div", { class: "meta" }, timeOf(event))));
    while (list.children.length > MAX_AGENT_ACTIONS) list.lastElementChild.remove();
  }

  function updateSync(event) {
    const d = event.data || {};
    const list = $("syncs");
    clearEmpty(list);
    const source = String(d.source || "?");
    let item = syncs.get(source);
    if (!item) {
      item = el("li", { "data-source": source });
      syncs.set(source, item);
      list.append(item);
    }
    item.dataset.id = event.id || "";
    item.replaceChildren(
      el("div", {}, el("span", { class: "ok" }, "✓ "), el("b", {}, source), ` · ${d.recordsUpdated ?? 0} records updated`),
      el("div", { class: "meta" }, `completed ${timeOf(event)}`));
  }

  window.rtstreamDashboard = { client, counts };
  client.start();
}

main();
