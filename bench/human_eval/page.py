"""The rating page: one HTML document with its script (no external assets, nothing fetched but the API).

The rater enters a name once (kept in the browser's localStorage); then each screen shows the prompt and two
images, and the rater clicks a button or presses a key: ← or A for the left image, → or L for the right one,
↓ or T for "tie / both bad". Each shown pair gets one submission id, reused if the same vote is sent again
(double click, retry after an error), so the server records it once. The progress line counts this rater's
acknowledged votes: a vote is saved when the counter moves, and the page may be closed at any time. An access
token in the page's address (?token=...) is sent with every request. No method name is in the page: the
server sends only the prompt and two opaque image addresses. `body[data-state]` says what the page is doing
(name, loading, ready, finished, error); keys and clicks while it loads are ignored.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Which image is better?</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #f4f4f4; color: #222; }
  header { background: #333; color: #fff; padding: 10px 20px; display: flex; justify-content: space-between; }
  main { max-width: 900px; margin: 20px auto; text-align: center; }
  #prompt { font-size: 1.4em; margin: 10px 0 20px; }
  .pair { display: flex; justify-content: center; gap: 30px; }
  .pair img { width: 288px; height: 288px; image-rendering: pixelated; border: 3px solid #ccc; background: #fff;
              cursor: pointer; }
  .pair img:hover { border-color: #3a7; }
  .buttons { margin: 20px 0; display: flex; justify-content: center; gap: 16px; }
  button { font-size: 1.1em; padding: 10px 22px; border-radius: 6px; border: 1px solid #888; background: #fff;
           cursor: pointer; }
  button:hover { background: #e8f4ec; }
  #bar { height: 8px; background: #ddd; width: 100%; }
  #bar div { height: 8px; background: #3a7; width: 0; }
  #message { color: #b22; min-height: 1.4em; }
  .hint { color: #666; font-size: 0.9em; }
  .hidden { display: none; }
</style>
</head>
<body>
<header><span>Pairwise image rating</span><span id="progress"></span></header>
<div id="bar"><div></div></div>
<main>
  <form id="name-form" class="hidden">
    <p>Compare two images drawn for the same prompt and choose the better one: quality, and how well it
       shows the prompt. You can stop at any time; every vote is saved.</p>
    <label>Your name or rater id: <input id="name" maxlength="40" autocomplete="off" required></label>
    <button id="start" type="submit">Start</button>
  </form>
  <section id="rating" class="hidden">
    <div id="prompt"></div>
    <div class="pair">
      <img id="left-img" alt="left image" title="left (← or A)">
      <img id="right-img" alt="right image" title="right (→ or L)">
    </div>
    <div class="buttons">
      <button id="btn-left" type="button">← Left is better</button>
      <button id="btn-tie" type="button">Tie / both bad ↓</button>
      <button id="btn-right" type="button">Right is better →</button>
    </div>
    <p class="hint">Keys: ← or A = left, → or L = right, ↓ or T = tie / both bad.
       <a href="#" id="change-name">Not you?</a></p>
  </section>
  <section id="finished" class="hidden"><p>You have rated every pair. Thank you!</p></section>
  <p id="message"></p>
</main>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
let rater = localStorage.getItem("rater") || "";
let pair = null, submission = null, shownAt = 0, busy = false;
const $ = (id) => document.getElementById(id);

function headers() {
  const h = {"Content-Type": "application/json"};
  if (token) h["X-Token"] = token;
  return h;
}
function withToken(url) {
  return token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;
}
function newId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return Date.now().toString(36) + Math.random().toString(36).slice(2);
}
function show(id) {
  for (const s of ["name-form", "rating", "finished"]) $(s).classList.toggle("hidden", s !== id);
  document.body.dataset.state = id === "rating" ? "ready" : id;  // "ready": a pair is on screen, awaiting a vote
}
function progress(done, total) {
  $("progress").textContent = rater + ": " + done + " / " + total + " rated";
  $("bar").firstElementChild.style.width = (total ? 100 * done / total : 0) + "%";
}
async function call(url, options) {
  const r = await fetch(withToken(url), Object.assign({headers: headers()}, options || {}));
  const body = await r.json().catch(() => ({detail: r.statusText}));
  if (!r.ok) throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
  return body;
}
async function next() {
  busy = true;
  document.body.dataset.state = "loading";
  try {
    const p = await call("api/next?rater=" + encodeURIComponent(rater));
    progress(p.done, p.total);
    if (p.finished) { pair = null; show("finished"); return; }
    pair = p; submission = newId();
    $("prompt").textContent = p.prompt;
    await Promise.all([load($("left-img"), p.left), load($("right-img"), p.right)]);
    shownAt = performance.now();
    $("message").textContent = "";
    show("rating");
  } catch (e) {
    $("message").textContent = e.message;
    document.body.dataset.state = "error";
  } finally {
    busy = false;
  }
}
function load(img, src) {
  return new Promise((resolve) => { img.onload = img.onerror = resolve; img.src = withToken(src); });
}
async function vote(choice) {
  if (!pair || busy) return;  // one vote per shown pair; a click during a request is ignored
  busy = true;
  try {
    const r = await call("api/vote", {method: "POST", body: JSON.stringify({
      pair_id: pair.pair_id, submission_id: submission, rater: rater, choice: choice,
      seconds: (performance.now() - shownAt) / 1000})});
    progress(r.done, r.total);
    pair = null;
    busy = false;
    await next();
  } catch (e) {
    $("message").textContent = e.message + " (the vote was not saved; try again)";
    busy = false;
  }
}
$("btn-left").onclick = () => vote("left");
$("btn-right").onclick = () => vote("right");
$("btn-tie").onclick = () => vote("tie");
$("left-img").onclick = () => vote("left");
$("right-img").onclick = () => vote("right");
document.addEventListener("keydown", (e) => {
  if ($("rating").classList.contains("hidden") || e.target.tagName === "INPUT") return;
  const k = e.key.toLowerCase();
  if (k === "arrowleft" || k === "a") vote("left");
  else if (k === "arrowright" || k === "l") vote("right");
  else if (k === "arrowdown" || k === "t") vote("tie");
  else return;
  e.preventDefault();
});
$("name-form").onsubmit = (e) => {
  e.preventDefault();
  rater = $("name").value.trim();
  if (!rater) return;
  localStorage.setItem("rater", rater);
  next();
};
$("change-name").onclick = (e) => { e.preventDefault(); localStorage.removeItem("rater"); rater = ""; pair = null;
  $("progress").textContent = ""; show("name-form"); };
if (rater) next(); else show("name-form");
</script>
</body>
</html>
"""
