"use strict";
// The question page: POST /v1/ask, read its server-sent events as they stream in.
(() => {
  const {call, showError, setupKeyBox, element} = embedrag;
  const $ = (id) => document.getElementById(id);
  const CITATION = /\[(\d+(?:\s*,\s*\d+)*)\]/g;

  // The answer with each [n] a link to passage n.
  function renderAnswer(text, count) {
    const box = $("answer");
    box.replaceChildren();
    let last = 0;
    for (const match of text.matchAll(CITATION)) {
      box.append(text.slice(last, match.index));
      const numbers = match[1].split(",").map((n) => parseInt(n, 10));
      box.append("[");
      numbers.forEach((n, i) => {
        if (i) box.append(", ");
        box.append(n >= 1 && n <= count
          ? element("a", {href: "#passage-" + n, class: "cite", "data-n": n}, n) : String(n));
      });
      box.append("]");
      last = match.index + match[0].length;
    }
    box.append(text.slice(last));
  }

  function passageItem(p) {
    const meta = element("div", {class: "meta"},
      element("span", {class: "score"}, p.score.toFixed(4)), " ",
      element("strong", {}, p.title || p.doc_id), " ",
      element("span", {class: "source"}, p.location || p.source));
    return element("li", {id: "passage-" + p.rank, value: p.rank},
      meta, element("p", {class: "text"}, p.text));
  }

  function citationItem(c) {
    return element("li", {value: c.n}, element("a", {href: "#passage-" + c.n}, c.title || c.doc_id),
      " ", element("span", {class: "source"}, c.location || c.source), " ",
      element("span", {class: "score"}, c.score.toFixed(4)));
  }

  // Yields [event, data] pairs from a text/event-stream body.
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) name = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        yield [name, JSON.parse(data)];
      }
    }
  }

  async function ask(event) {
    if (event) event.preventDefault();
    const question = $("question").value.trim();
    if (!question) return;
    const body = {question, k: parseInt($("k").value, 10) || 5, stream: true,
                  mode: document.querySelector("input[name=mode]:checked").value};
    showError("");
    $("ask-button").disabled = true;
    $("status").textContent = "asking…";
    $("answer").replaceChildren();
    $("citations").replaceChildren();
    let answer = "", count = 0;
    try {
      const response = await call("/v1/ask", {method: "POST", body: JSON.stringify(body)});
      for await (const [name, data] of events(response)) {
        if (name === "passages") {
          count = data.passages.length;
          $("passages").replaceChildren(...data.passages.map(passageItem));
          $("timing").textContent = `${count} in ${data.retrieval_ms} ms`;
          $("generator").textContent = data.generator === "none" ? "(extractive: no LLM)" : `(${data.generator})`;
          $("passages-section").hidden = false;
          $("answer-section").hidden = false;
        } else if (name === "token") {
          answer += data.text;
          renderAnswer(answer, count);
        } else if (name === "done") {
          renderAnswer(data.answer, count);
          $("citations").replaceChildren(...data.citations.map(citationItem));
        } else if (name === "error") {
          throw new Error(data.message);
        }
      }
      $("status").textContent = "";
    } catch (error) {
      showError(error.message);
      $("status").textContent = "";
    } finally {
      $("ask-button").disabled = false;
    }
  }

  async function health() {
    try {
      const info = await (await fetch("/health")).json();
      $("info").textContent = `${info.model} · ${info.rows ?? 0} chunks · ${info.generator}`;
    } catch (_) { /* the page still works */ }
  }

  $("ask-form").addEventListener("submit", ask);
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) ask(e);
  });
  setupKeyBox(() => ask());
  health();
})();
