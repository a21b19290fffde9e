// posttrain serve: progressive enhancement only; every page works without it.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // Disable submit buttons once a form is sent, so a double click sends once.
  // (The server is idempotent anyway: a label is keyed by its assignment id.)
  document.querySelectorAll("form").forEach(function (form) {
    form.addEventListener("submit", function () {
      form.querySelectorAll("button[type=submit]").forEach(function (b) { b.disabled = true; });
      if (form.id === "composer") { document.getElementById("send").textContent = "Thinking…"; }
    });
  });
  // Keyboard shortcuts on the annotation page: 1 = A, 2 = B, 3 = tie.
  var annotate = document.getElementById("annotate-form");
  if (annotate) {
    var keys = { "1": "choice-A", "2": "choice-B", "3": "choice-tie" };
    document.addEventListener("keydown", function (event) {
      var tag = (event.target.tagName || "").toLowerCase();
      if (tag === "textarea" || tag === "input" && event.target.type === "text") { return; }
      var id = keys[event.key];
      if (id && !event.ctrlKey && !event.metaKey && !event.altKey) { document.getElementById(id).checked = true; }
    });
  }
  // Enter sends a chat message, Shift+Enter adds a line.
  var message = document.getElementById("message");
  if (message) {
    message.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); message.form.requestSubmit(); }
    });
    message.focus();
  }
});
