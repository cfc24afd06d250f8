// DOM builders. Every text that comes from the network is set as text
// (textContent, text nodes), never parsed as HTML.

/** An element with attributes and children (strings become text nodes). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-") || k.startsWith("aria-") || ["type", "title", "role", "href", "download", "alt", "hidden", "tabindex"].includes(k)) {
      node.setAttribute(k, v === true ? "" : String(v));
    } else {
      node[k] = v;
    }
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return node;
}

/** "14:05", or "3 Mar 14:05" for another day. */
export function timeOf(ts) {
  const d = new Date(ts);
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (d.toDateString() === new Date().toDateString()) return time;
  return d.toLocaleDateString([], { day: "numeric", month: "short" }) + " " + time;
}

/** "online", "last seen 14:05", or "" when nothing is known. */
export function presenceText(status) {
  if (!status) return "";
  if (status.online) return "online";
  if (status.last_seen) return "last seen " + timeOf(status.last_seen);
  return "offline";
}

/** "12 KiB". */
export function sizeText(bytes) {
  if (!Number.isFinite(bytes)) return "";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${Math.round(bytes / 1024)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

/** The one-line summary of a message for lists and quotes. */
export function summary(msg) {
  if (!msg) return "";
  if (msg.type === "member") return memberText(msg);
  if (msg.deleted) return "message deleted";
  const text = (msg.body || "").replace(/\s+/g, " ").trim();
  if (text) return text.length > 120 ? text.slice(0, 119) + "…" : text;
  const files = msg.attachments || [];
  return files.length ? "📎 " + files.map((f) => f.name).join(", ") : "";
}

/** "alice added carol". */
export function memberText(ev) {
  switch (ev.action) {
    case "created": return `${ev.by} created the group ${ev.name || ""}`.trim();
    case "added": return `${ev.by} added ${ev.user}`;
    case "removed": return `${ev.by} removed ${ev.user}`;
    case "left": return `${ev.user} left`;
    default: return `${ev.user}: ${ev.action}`;
  }
}

const STATUS_TEXT = {
  pending: "… pending",
  sent: "✓ sent",
  delivered: "✓✓ delivered",
  read: "✓✓ read",
  failed: "⚠ not sent",
};

/** The status line of an own message. */
export function statusNode(status, why) {
  return el("span", {
    class: "status", "data-status": status,
    text: STATUS_TEXT[status] + (why ? `: ${why}` : ""),
  });
}

/** Quick reactions offered on every message. */
export const QUICK_REACTIONS = ["👍", "❤️", "😂", "🎉"];

/**
 * A message of the timeline. `msg` is a `message` event in its current state,
 * or a pending send ({id, conv, body, from, pending: true}). `ctx`: {me,
 * status, why, quoted (the replied-to message if loaded), isGroup}.
 */
export function messageNode(msg, ctx) {
  const mine = msg.from === ctx.me;
  const li = el("li", {
    class: "msg " + (mine ? "mine" : "theirs"),
    "data-key": `${msg.from}/${msg.id}`,
    "data-seq": msg.seq,
    "data-from": msg.from,
  });
  li.append(el("div", { class: "meta" },
    el("span", { class: "from", text: mine ? "you" : msg.from }), " ",
    msg.ts ? el("time", { dateTime: new Date(msg.ts).toISOString(), text: timeOf(msg.ts) }) : null,
    msg.edited && !msg.deleted ? el("span", { class: "edited", text: " · edited" }) : null));
  if (msg.reply_to) {
    const q = ctx.quoted;
    li.append(el("button", {
      type: "button", class: "quote", "data-action": "goto", "data-target": msg.reply_to,
      "aria-label": "Go to the message replied to",
    }, "↪ ", q ? `${q.from}: ${summary(q)}` : `message #${msg.reply_to}`));
  }
  if (msg.deleted) {
    li.append(el("p", { class: "body deleted", text: "message deleted" }));
  } else if (msg.body) {
    li.append(el("p", { class: "body", text: msg.body }));
  }
  const files = (!msg.deleted && msg.attachments) || [];
  if (files.length) {
    const ul = el("ul", { class: "files" });
    for (const f of files) {
      const isImage = typeof f.type === "string" && f.type.startsWith("image/");
      ul.append(el("li", {},
        isImage ? el("img", { class: "inline-image", alt: f.name, "data-file": f.file, hidden: true }) : null,
        el("button", { type: "button", class: "file", "data-action": "download", "data-file": f.file, "data-name": f.name },
          `📎 ${f.name}${f.size !== undefined ? " (" + sizeText(f.size) + ")" : ""}`)));
    }
    li.append(ul);
  }
  const reactions = msg.reactions || {};
  const emojis = Object.keys(reactions).filter((e) => reactions[e] && reactions[e].length);
  if (emojis.length) {
    const box = el("div", { class: "reactions" });
    for (const e of emojis) {
      const users = reactions[e];
      box.append(el("button", {
        type: "button", class: users.includes(ctx.me) ? "reaction own" : "reaction",
        "data-action": "react", "data-emoji": e, title: users.join(", "),
        "aria-label": `${e} by ${users.join(", ")}`,
      }, `${e} ${users.length}`));
    }
    li.append(box);
  }
  const foot = el("div", { class: "foot" });
  if (mine) foot.append(statusNode(ctx.status, ctx.why));
  if (msg.seq && !msg.deleted) {
    foot.append(el("button", {
      type: "button", class: "more small", "data-action": "menu", "aria-expanded": "false",
      "aria-label": "Message actions",
    }, "⋯"));
  }
  li.append(foot);
  if (msg.seq && !msg.deleted) {
    const actions = el("div", { class: "actions", hidden: true, role: "group", "aria-label": "Message actions" },
      el("button", { type: "button", class: "small", "data-action": "reply" }, "Reply"),
      ...QUICK_REACTIONS.map((e) => el("button", {
        type: "button", class: "small", "data-action": "react", "data-emoji": e, "aria-label": `React ${e}`,
      }, e)));
    if (mine) {
      actions.append(
        el("button", { type: "button", class: "small", "data-action": "edit" }, "Edit"),
        el("button", { type: "button", class: "small", "data-action": "delete" }, "Delete"));
    }
    li.append(actions);
  }
  return li;
}

/** A membership change in the timeline. */
export function memberNode(ev) {
  return el("li", { class: "system", "data-seq": ev.seq, "data-key": `member/${ev.seq}` }, memberText(ev));
}

/** A row of the conversation list. */
export function convNode(c, active) {
  const title = el("span", { class: "name", text: c.name || c.conv });
  const presence = c.presence ? el("span", {
    class: c.presence.online ? "presence online" : "presence",
    text: presenceText(c.presence),
  }) : null;
  const button = el("button", {
    type: "button", class: "conv-item", "data-conv": c.conv,
    "aria-current": active ? "true" : null,
  },
  el("span", { class: "line" }, title,
    c.unread > 0 ? el("span", { class: "badge", "aria-label": `${c.unread} unread`, text: String(c.unread) }) : null),
  el("span", { class: "line small-text" },
    el("span", { class: "last", text: c.lastText || "" }),
    presence));
  return el("li", { "data-conv": c.conv }, button);
}
