"use strict";
// Shared by the pages: API calls with the optional key, and safe text rendering.
const embedrag = (() => {
  const KEY = "embedrag-api-key";
  const key = () => sessionStorage.getItem(KEY) || "";

  function headers() {
    const h = {"Content-Type": "application/json"};
    if (key()) h["Authorization"] = "Bearer " + key();
    return h;
  }

  function showError(message) {
    const box = document.getElementById("error");
    box.textContent = message;
    box.hidden = !message;
  }

  // Resolves to the Response; a 401 shows the key box and rejects.
  async function call(path, options = {}) {
    const response = await fetch(path, {...options, headers: {...headers(), ...(options.headers || {})}});
    if (response.status === 401) {
      document.getElementById("key-box").hidden = false;
      throw new Error("this server needs an API key");
    }
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    return response;
  }

  function setupKeyBox(onKey) {
    const button = document.getElementById("key-button");
    if (!button) return;
    button.addEventListener("click", () => {
      sessionStorage.setItem(KEY, document.getElementById("api-key").value.trim());
      document.getElementById("key-box").hidden = true;
      showError("");
      if (onKey) onKey();
    });
  }

  function element(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (name === "class") node.className = value; else node.setAttribute(name, value);
    }
    for (const child of children) node.append(child instanceof Node ? child : String(child));
    return node;
  }

  return {call, showError, setupKeyBox, element};
})();
