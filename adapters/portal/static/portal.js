/* Road Cargo Gateway portal: small progressive enhancements. Every page works without this file; the
   server checks everything again (these checks only help people type it right the first time). */
(function () {
  "use strict";
  var M = document.getElementById("js-messages");
  function msg(key, values) {
    var text = (M && M.getAttribute("data-" + key)) || key;
    Object.keys(values || {}).forEach(function (k) { text = text.split("{" + k + "}").join(values[k]); });
    return text;
  }

  // Damm check digit (the CCRN's, design section 4): 0 when the digits, check digit included, agree.
  var DAMM = [
    [0, 3, 1, 7, 5, 9, 8, 6, 4, 2], [7, 0, 9, 2, 1, 5, 4, 8, 6, 3], [4, 2, 0, 6, 8, 7, 1, 3, 5, 9],
    [1, 7, 5, 0, 9, 8, 3, 4, 2, 6], [6, 1, 2, 3, 0, 4, 5, 9, 7, 8], [3, 6, 7, 4, 2, 0, 9, 5, 8, 1],
    [5, 8, 6, 9, 7, 2, 0, 1, 3, 4], [8, 9, 4, 5, 3, 6, 2, 0, 1, 7], [9, 4, 3, 8, 6, 1, 7, 2, 0, 5],
    [2, 5, 8, 1, 4, 3, 6, 7, 9, 0]];
  function damm(digits) {
    var interim = 0;
    for (var i = 0; i < digits.length; i++) { interim = DAMM[interim][digits.charCodeAt(i) - 48]; }
    return interim;
  }
  function checkCcrn(raw) {
    var text = raw.replace(/\s+/g, "");
    if (!/^[0-9]{12}$/.test(text)) { return [false, msg("ccrn-shape", { value: raw })]; }
    if (damm(text) !== 0) { return [false, msg("ccrn-digit", { value: text })]; }
    return [true, msg("ccrn-ok", { value: text.replace(/(\d{4})(?=\d)/g, "$1 ") })];
  }

  // ISO 6346: letters count 10..38 skipping multiples of 11; position i weighs 2^i; sum mod 11 mod 10.
  function letterValue(ch) {
    var value = 10;
    for (var c = 65; c <= 90; c++) {
      if (value % 11 === 0) { value++; }
      if (String.fromCharCode(c) === ch) { return value; }
      value++;
    }
    return -1;
  }
  function checkContainer(raw) {
    var text = raw.replace(/[\s-]/g, "").toUpperCase();
    if (!/^[A-Z]{3}[UJZ][0-9]{7}$/.test(text)) { return [false, msg("container-shape")]; }
    var total = 0;
    for (var i = 0; i < 10; i++) {
      var ch = text.charAt(i);
      total += (/[0-9]/.test(ch) ? Number(ch) : letterValue(ch)) * Math.pow(2, i);
    }
    if (total % 11 % 10 !== Number(text.charAt(10))) { return [false, msg("container-digit", { value: text })]; }
    return [true, msg("container-ok")];
  }
  function checkCode(input, raw) {
    var list = document.getElementById(input.getAttribute("data-codes"));
    if (!list) { return null; }
    var code = raw.trim().toUpperCase();
    var found = Array.prototype.some.call(list.options, function (o) { return o.value === code; });
    return found ? [true, ""] : [false, msg("code-unknown", { value: code })];
  }
  var CHECKS = {
    container: checkContainer,
    ccrn: checkCcrn,
    vrn: function (raw) {
      var text = raw.replace(/\s+/g, "").toUpperCase();
      return /^[A-HJ-NPR-Z0-9]{1,8}$/.test(text) ? [true, ""] : [false, msg("vrn-bad")];
    },
    locode: function (raw) {
      return /^[A-Z]{2}[A-Z2-9]{3}$/.test(raw.replace(/\s+/g, "").toUpperCase()) ? [true, ""] : [false, msg("locode-bad")];
    },
    hs: function (raw) {
      return /^[0-9]{6}([0-9]{2})?$/.test(raw.replace(/[\s.]/g, "")) ? [true, ""] : [false, msg("hs-bad")];
    },
    crossing: function (raw) {
      var text = raw.trim();
      if (/^\d{4}-\d{2}-\d{2}$/.test(text) || /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?([+-]\d{2}:\d{2}|Z)$/.test(text)) {
        return [true, ""];
      }
      return [false, msg("crossing-bad")];
    }
  };

  function showLive(input, result) {
    var live = document.getElementById(input.id + "-live");
    if (!live) { return; }
    live.textContent = result ? result[1] : "";
    live.className = "live " + (result ? (result[0] ? "good" : "bad") : "");
  }
  function checkInput(input) {
    var kind = input.getAttribute("data-check");
    var raw = input.value;
    if (kind === "ccrns") { return checkCcrnList(input); }
    if (!raw.trim()) { showLive(input, null); return; }
    var result = kind === "code" ? checkCode(input, raw) : (CHECKS[kind] ? CHECKS[kind](raw) : null);
    showLive(input, result);
  }
  function checkCcrnList(area) {
    var live = document.getElementById(area.id + "-live");
    if (!live) { return; }
    while (live.firstChild) { live.removeChild(live.firstChild); }
    area.value.split(/[\n,;]+/).forEach(function (part) {
      if (!part.trim()) { return; }
      var result = checkCcrn(part.trim());
      var li = document.createElement("li");
      li.className = result[0] ? "good" : "bad";
      li.textContent = (result[0] ? "✔ " : "✖ ") + result[1];
      live.appendChild(li);
    });
  }
  document.addEventListener("input", function (event) {
    var target = event.target;
    if (target && target.getAttribute && target.getAttribute("data-check")) { checkInput(target); }
  });
  Array.prototype.forEach.call(document.querySelectorAll("[data-check]"), function (el) {
    if (el.value) { checkInput(el); }
  });

  // Goods items and containers: add and remove rows in the page; without JavaScript the same buttons
  // ask the server to re-render the form.
  function renumber(kind) {
    var rows = document.querySelectorAll('[data-rows="' + kind + '"] > [data-row]');
    Array.prototype.forEach.call(rows, function (row, n) {
      var nameRe = new RegExp(kind + "\\[\\d+\\]", "g");
      var idRe = new RegExp("f-" + kind + "-\\d+-", "g");
      Array.prototype.forEach.call(row.querySelectorAll("[name],[id],[for],[aria-describedby]"), function (el) {
        ["name", "id", "for", "aria-describedby"].forEach(function (attr) {
          var value = el.getAttribute(attr);
          if (value) {
            el.setAttribute(attr, value.replace(nameRe, kind + "[" + n + "]").replace(idRe, "f-" + kind + "-" + n + "-"));
          }
        });
      });
      var legend = row.querySelector("legend");
      if (legend) { legend.textContent = msg(kind === "items" ? "item-n" : "container-n", { n: n + 1 }); }
      var remove = row.querySelector("button.remove");
      if (remove) {
        remove.value = "remove_" + kind + ":" + n;
        remove.textContent = msg(kind === "items" ? "remove-item" : "remove-container", { n: n + 1 });
      }
    });
    var count = document.getElementById(kind === "items" ? "item_count" : "equipment_count");
    if (count) { count.value = rows.length; }
  }
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button") : null;
    if (!button) { return; }
    if (button.hasAttribute("data-print")) { window.print(); return; }
    var kind = button.getAttribute("data-add");
    if (kind) {
      var rows = document.querySelectorAll('[data-rows="' + kind + '"] > [data-row]');
      if (!rows.length) { return; } // nothing to copy: let the server add the first row
      event.preventDefault();
      var copy = rows[rows.length - 1].cloneNode(true);
      Array.prototype.forEach.call(copy.querySelectorAll("input, textarea"), function (el) { el.value = ""; el.removeAttribute("aria-invalid"); });
      Array.prototype.forEach.call(copy.querySelectorAll(".field-errors, .live"), function (el) { el.textContent = ""; });
      Array.prototype.forEach.call(copy.querySelectorAll(".has-error"), function (el) { el.classList.remove("has-error"); });
      rows[rows.length - 1].parentNode.appendChild(copy);
      renumber(kind);
      var first = copy.querySelector("input, textarea, select");
      if (first) { first.focus(); }
      return;
    }
    if (button.classList.contains("remove")) {
      var row = button.closest("[data-row]");
      var which = row && row.getAttribute("data-row");
      var siblings = row ? row.parentNode.querySelectorAll("[data-row]") : [];
      if (!row || (which === "items" && siblings.length < 2)) { return; } // the server explains why not
      event.preventDefault();
      var next = row.nextElementSibling || row.previousElementSibling;
      row.parentNode.removeChild(row);
      renumber(which);
      var focus = next ? next.querySelector("input, textarea, select") : document.querySelector('[data-add="' + which + '"]');
      if (focus) { focus.focus(); }
    }
  });
  Array.prototype.forEach.call(document.querySelectorAll("[data-print]"), function (el) { el.hidden = false; });
})();
