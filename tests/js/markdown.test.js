// The chat page's Markdown renderer (proxy/static/markdown.js): what it formats, and that model output
// can never add markup of its own (tests/test_js_client.py runs this file).
import { test } from "node:test";
import assert from "node:assert/strict";
import markdown from "../../proxy/static/markdown.js";

const { renderMarkdown: md } = markdown;

test("formats code blocks, inline code, bold, italic, lists, headings and links", () => {
  assert.equal(md("**bold** and *it* and _it2_ and `x < y`"),
    "<p><strong>bold</strong> and <em>it</em> and <em>it2</em> and <code>x &lt; y</code></p>");
  assert.equal(md("```python\nif a < b:\n    print('*no* **markup**')\n```"),
    '<pre><code class="language-python">if a &lt; b:\n    print(&#39;*no* **markup**&#39;)</code></pre>');
  assert.equal(md("- one\n- **two**\n\n1. first\n2. second"),
    "<ul><li>one</li><li><strong>two</strong></li></ul>\n<ol><li>first</li><li>second</li></ol>");
  assert.equal(md("## Title"), "<h2>Title</h2>");
  assert.equal(md("[docs](https://example.com/a_b_c?x=1&y=2)"),
    '<p><a href="https://example.com/a_b_c?x=1&amp;y=2" rel="noopener noreferrer nofollow" target="_blank">docs</a></p>');
  assert.equal(md("line one\nline two\n\nnext"), "<p>line one<br>line two</p>\n<p>next</p>");
  assert.equal(md("snake_case_name stays"), "<p>snake_case_name stays</p>");
});

const ATTACKS = [
  "<script>alert(1)</script>",
  "<img src=x onerror=alert(1)>",
  "[click](javascript:alert(1))",
  "[click](JaVaScRiPt:alert(1))",
  "[x](data:text/html;base64,PHNjcmlwdD4=)",
  '[x](https://a.example/" onmouseover="alert(1))',
  '[x](https://a.example/"onmouseover="alert(1)")',
  "[`code`](https://a.example/`x`)",
  "**<b onclick=alert(1)>**",
  "```\n</code></pre><script>alert(1)</script>\n```",
  "```js\" onload=\"alert(1)\n```",
  "- <svg onload=alert(1)>",
  "> <iframe src=javascript:alert(1)>",
  "`<script>`",
  "\u00000\u0000<script>",
];

test("model output cannot inject markup: only the renderer's own tags, no handlers, http(s) links only", () => {
  const allowed = new Set(["p", "br", "strong", "em", "code", "pre", "ul", "ol", "li", "blockquote", "a",
                           "h1", "h2", "h3", "h4", "h5", "h6"]);
  for (const attack of ATTACKS) {
    const html = md(attack);
    for (const [, tag, attrs] of html.matchAll(/<\/?([a-zA-Z0-9]+)([^>]*)>/g)) {
      assert.ok(allowed.has(tag.toLowerCase()), `${attack} -> ${html}`);
      for (const [, name, value] of attrs.matchAll(/\s([\w-]+)="([^"]*)"/g)) {
        assert.ok(["href", "rel", "target", "class"].includes(name), `${attack} -> ${html}`);
        if (name === "href") assert.match(value, /^https?:\/\/[^"<>\s]*$/, `${attack} -> ${html}`);
      }
      // Nothing outside a quoted attribute value: no bare handler like `<a onclick=...>`.
      assert.equal(attrs.replace(/\s[\w-]+="[^"]*"/g, "").trim(), "", `${attack} -> ${html}`);
    }
    assert.ok(!/<[^>]*(script|javascript:|\son\w+=)/i.test(html), `${attack} -> ${html}`);
  }
});
