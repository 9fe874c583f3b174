// mini_qwen web page: chat with one checkpoint, or compare two in the arena and vote.
// Talks only to this server's own endpoints (/v1/..., /arena/...); no external script or font.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], history: [], controller: null, battle: null, done: { a: false, b: false } };

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value || localStorage.getItem("mini_qwen_api_key") || "";
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function settings() {
  const body = {
    temperature: parseFloat($("temperature").value),
    top_p: parseFloat($("top_p").value),
    max_tokens: parseInt($("max_tokens").value, 10),
  };
  return body;
}

// An error JSON of the server ({"error": {"message"}}) as text; a 401 shows the key field.
async function errorText(response) {
  if (response.status === 401) $("key-row").hidden = false;
  try {
    const data = await response.json();
    return (data.error && data.error.message) || JSON.stringify(data);
  } catch (e) {
    return "HTTP " + response.status;
  }
}

// POST `body` to `url` and call onDelta(text) for each streamed piece; resolves to the finish reason.
async function streamPost(url, body, onDelta, signal) {
  const response = await fetch(url, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!response.ok) throw new Error(await errorText(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return finish;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        const text = choice.delta ? choice.delta.content : choice.text;
        if (text) onDelta(text);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  }
  return finish;
}

// ------------------------------------------------------------------ models

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) {
    status(await errorText(response), true);
    return;
  }
  state.models = (await response.json()).data;
  const select = $("model");
  select.innerHTML = "";
  for (const m of state.models) {
    const option = document.createElement("option");
    option.value = m.id;
    option.textContent = m.id + (m.template === "pt" ? " (PT: raw text)" : "");
    select.appendChild(option);
  }
  showModelHint();
  status(state.models.length + " checkpoint(s) served");
}

function currentModel() {
  return state.models.find((m) => m.id === $("model").value);
}

function showModelHint() {
  const m = currentModel();
  $("model-hint").textContent = !m ? "" : m.template === "pt"
    ? "A PT model continues raw text: each message is continued on its own (POST /v1/completions)."
    : `Chat format of SFT/DPO, context ${m.context_length} tokens.`;
}

// ------------------------------------------------------------------ chat

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

async function sendChat(event) {
  event.preventDefault();
  const text = $("prompt").value;
  const model = currentModel();
  if (!text.trim() || !model || state.controller) return;
  $("prompt").value = "";
  addMessage("user", text);
  const bubble = addMessage("assistant", "");
  bubble.classList.add("streaming");
  const pt = model.template === "pt";
  const body = { model: model.id, stream: true, ...settings() };
  if (pt) {
    body.prompt = text;
  } else {
    const system = $("system").value.trim();
    body.messages = (system ? [{ role: "system", content: system }] : []).concat(
      state.history, [{ role: "user", content: text }]);
  }
  state.controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  let answer = "";
  const started = performance.now();
  try {
    const finish = await streamPost(pt ? "/v1/completions" : "/v1/chat/completions", body, (piece) => {
      answer += piece;
      bubble.textContent = answer;
      $("messages").scrollTop = $("messages").scrollHeight;
    }, state.controller.signal);
    if (!pt) state.history.push({ role: "user", content: text }, { role: "assistant", content: answer });
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = `${model.id} · ${finish === "length" ? "cut at max tokens" : "finished"} · ` +
      `${((performance.now() - started) / 1000).toFixed(1)} s`;
    bubble.appendChild(meta);
    status("ready");
  } catch (err) {
    if (err.name === "AbortError") {
      bubble.textContent = answer + " [stopped]";
    } else {
      bubble.classList.add("error");
      bubble.textContent = err.message;
    }
  } finally {
    bubble.classList.remove("streaming");
    bubble.classList.add("done");
    state.controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

// ------------------------------------------------------------------ arena

function setVoting(enabled) {
  for (const id of ["vote-a", "vote-tie", "vote-b"]) $(id).disabled = !enabled;
}

async function startBattle(event) {
  event.preventDefault();
  const prompt = $("arena-prompt").value;
  if (!prompt.trim()) return;
  setVoting(false);
  $("arena-start").disabled = true;
  $("arena-result").textContent = "";
  $("arena-result").classList.remove("error");
  for (const side of ["a", "b"]) {
    $("answer-" + side).textContent = "";
    $("name-" + side).textContent = "Model " + side.toUpperCase();
    $("answer-" + side).parentElement.classList.remove("winner");
  }
  try {
    const body = { prompt, ...settings() };
    const system = $("system").value.trim();
    if (system) body.system = system;
    const response = await fetch("/arena/battles", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!response.ok) throw new Error(await errorText(response));
    state.battle = (await response.json()).id;
    status("arena: both models are answering…");
    await Promise.all(["a", "b"].map((side) => streamPost(`/arena/battles/${state.battle}/${side}`, {}, (piece) => {
      $("answer-" + side).textContent += piece;
    })));
    setVoting(true);
    status("arena: vote for the better answer");
  } catch (err) {
    $("arena-result").textContent = err.message;
    $("arena-result").classList.add("error");
  } finally {
    $("arena-start").disabled = false;
  }
}

async function vote(winner) {
  setVoting(false);
  const response = await fetch(`/arena/battles/${state.battle}/vote`, {
    method: "POST", headers: headers(), body: JSON.stringify({ winner }),
  });
  if (!response.ok) {
    $("arena-result").textContent = await errorText(response);
    $("arena-result").classList.add("error");
    return;
  }
  const data = await response.json();
  for (const side of ["a", "b"]) {
    $("name-" + side).textContent = `Model ${side.toUpperCase()}: ${data.models[side]}`;
    if (winner === side) $("answer-" + side).parentElement.classList.add("winner");
  }
  $("arena-result").textContent = (winner === "tie" ? "Tie recorded" : `Vote recorded for ${data.models[winner]}`) +
    ` · ${data.votes.pairs} preference pair(s), ${data.votes.ties} tie(s) in ${data.file}`;
  status("arena: vote saved");
}

// ------------------------------------------------------------------ wiring

function setMode(mode) {
  $("mode-chat").classList.toggle("active", mode === "chat");
  $("mode-arena").classList.toggle("active", mode === "arena");
  $("chat-view").hidden = mode !== "chat";
  $("arena-view").hidden = mode !== "arena";
  $("model-row").hidden = mode !== "chat";
}

$("mode-chat").addEventListener("click", () => setMode("chat"));
$("mode-arena").addEventListener("click", () => setMode("arena"));
$("chat-form").addEventListener("submit", sendChat);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) sendChat(e);
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("clear").addEventListener("click", () => { state.history = []; $("messages").innerHTML = ""; });
$("model").addEventListener("change", () => { state.history = []; showModelHint(); });
$("arena-form").addEventListener("submit", startBattle);
for (const w of ["a", "b", "tie"]) $("vote-" + w).addEventListener("click", () => vote(w));
for (const id of ["temperature", "top_p"]) {
  $(id).addEventListener("input", () => { $(id + "-value").textContent = $(id).value; });
}
$("api_key").value = localStorage.getItem("mini_qwen_api_key") || "";
$("api_key").addEventListener("change", () => {
  localStorage.setItem("mini_qwen_api_key", $("api_key").value);
  loadModels();
});
loadModels();
