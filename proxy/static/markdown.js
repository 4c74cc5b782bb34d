// A small Markdown renderer for model output, which is untrusted: every piece of text is HTML-escaped
// before any tag is added, and the only tags are the ones made here (links: http and https only).
// Fenced and inline code, bold and italic, headings, quotes, lists, links, paragraphs.
(function (root) {
  "use strict";
  const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const escapeHtml = (s) => s.replace(/[&<>"']/g, (c) => ESC[c]);
  const SLOT = /\u0000(\d+)\u0000/g;

  function inline(raw) {
    const slots = [];
    const keep = (html) => "\u0000" + (slots.push(html) - 1) + "\u0000";
    let s = escapeHtml(raw);
    s = s.replace(/`([^`\n]+)`/g, (_, code) => keep("<code>" + code + "</code>"));
    s = s.replace(/\[([^\]\n]+)\]\(([^()\s]+)\)/g, (whole, label, url) => /^https?:\/\/[^\s\u0000]+$/i.test(url)
      ? keep('<a href="' + url + '" rel="noopener noreferrer nofollow" target="_blank">' + emphasis(label) + "</a>")
      : whole);
    s = emphasis(s);
    for (let k = 0; k < 3 && s.includes("\u0000"); k++) s = s.replace(SLOT, (_, i) => slots[+i]);
    return s;
  }

  function emphasis(s) {
    return s
      .replace(/\*\*(?=\S)([^*\n]*?\S)\*\*/g, "<strong>$1</strong>")
      .replace(/__(?=\S)([^_\n]*?\S)__/g, "<strong>$1</strong>")
      .replace(/\*(?=\S)([^*\n]*?\S)\*/g, "<em>$1</em>")
      .replace(/(^|[^\w])_(?=\S)([^_\n]*?\S)_(?!\w)/g, "$1<em>$2</em>");
  }

  function renderMarkdown(text) {
    const lines = String(text).replace(/\u0000/g, "").replace(/\r\n?/g, "\n").split("\n");
    const out = [];
    let para = [], list = null, quote = [];
    const flush = () => {
      if (para.length) out.push("<p>" + para.map(inline).join("<br>") + "</p>");
      if (list) out.push("<" + list.tag + ">" + list.items.map((i) => "<li>" + inline(i) + "</li>").join("") + "</" + list.tag + ">");
      if (quote.length) out.push("<blockquote>" + quote.map(inline).join("<br>") + "</blockquote>");
      para = []; list = null; quote = [];
    };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const fence = /^\s*```\s*([\w+-]*)/.exec(line);
      if (fence) {
        flush();
        const code = [];
        while (++i < lines.length && !/^\s*```\s*$/.test(lines[i])) code.push(lines[i]);
        const lang = fence[1] ? ' class="language-' + escapeHtml(fence[1]) + '"' : "";
        out.push("<pre><code" + lang + ">" + escapeHtml(code.join("\n")) + "</code></pre>");
        continue;
      }
      let m;
      if (!line.trim()) { flush(); continue; }
      if ((m = /^(#{1,6})\s+(.*)$/.exec(line))) { flush(); out.push("<h" + m[1].length + ">" + inline(m[2]) + "</h" + m[1].length + ">"); continue; }
      if ((m = /^\s*>\s?(.*)$/.exec(line))) { if (para.length || list) flush(); quote.push(m[1]); continue; }
      const bullet = /^\s*[-*+]\s+(.*)$/.exec(line), numbered = /^\s*\d+[.)]\s+(.*)$/.exec(line);
      if (bullet || numbered) {
        const tag = bullet ? "ul" : "ol";
        if (!list || list.tag !== tag) { flush(); list = { tag, items: [] }; }
        list.items.push((bullet || numbered)[1]);
        continue;
      }
      if (list && /^\s+\S/.test(line)) { list.items[list.items.length - 1] += " " + line.trim(); continue; }
      if (list || quote.length) flush();
      para.push(line);
    }
    flush();
    return out.join("\n");
  }

  root.renderMarkdown = renderMarkdown;
  if (typeof module === "object" && module.exports) module.exports = { renderMarkdown, escapeHtml };
})(typeof globalThis !== "undefined" ? globalThis : this);
