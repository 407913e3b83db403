(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("data").textContent);
  var P = data.points, C = data.clusters, T = data.thumbs, n = P.x.length;
  var canvas = document.getElementById("map"), box = document.getElementById("map-box");
  var tip = document.getElementById("tip"), ring = document.getElementById("ring");
  var focus = -1, view = null, cells = null, CELL = 12, drawn = 0;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function picture(i) {  // the point's thumbnail, a placeholder, or null (none embedded)
    var t = P.t[i];
    if (t < 0) return null;
    if (!T[t]) return el("div", "ph", "no preview");
    var img = el("img");
    img.src = "data:image/jpeg;base64," + T[t];
    img.alt = P.f[i];
    return img;
  }
  function swatch(c) {
    var s = el("span", "swatch");
    s.style.background = c.color;
    return s;
  }

  function fit() {
    var w = canvas.clientWidth, h = canvas.clientHeight, dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    var mx = 1, my = 1, m = 14;
    for (var i = 0; i < n; i++) { if (P.x[i] > mx) mx = P.x[i]; if (P.y[i] > my) my = P.y[i]; }
    var s = Math.min((w - 2 * m) / mx, (h - 2 * m) / my);
    view = { s: s, ox: (w - s * mx) / 2, oy: (h - s * my) / 2, dpr: dpr };
    cells = new Map();
    for (var j = 0; j < n; j++) {
      var key = Math.floor(sx(j) / CELL) + "," + Math.floor(sy(j) / CELL);
      if (!cells.has(key)) cells.set(key, []);
      cells.get(key).push(j);
    }
  }
  function sx(i) { return view.ox + P.x[i] * view.s; }
  function sy(i) { return view.oy + P.y[i] * view.s; }

  function draw() {
    fit();
    var ctx = canvas.getContext("2d"), r = n > 20000 ? 1.2 : n > 3000 ? 2 : 3;
    ctx.setTransform(view.dpr, 0, 0, view.dpr, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    var bySlot = C.map(function () { return []; });
    for (var i = 0; i < n; i++) bySlot[P.c[i]].push(i);
    drawn = 0;
    var order = C.map(function (_, k) { return k; });
    if (focus >= 0) { order.splice(focus, 1); order.push(focus); }
    order.forEach(function (k) {
      ctx.globalAlpha = focus < 0 ? (n > 20000 ? 0.6 : 0.85) : k === focus ? 1 : 0.12;
      ctx.fillStyle = C[k].color;
      ctx.beginPath();
      bySlot[k].forEach(function (i) {
        ctx.moveTo(sx(i) + r, sy(i));
        ctx.arc(sx(i), sy(i), r, 0, 2 * Math.PI);
        drawn++;
      });
      ctx.fill();
    });
    ctx.globalAlpha = 1;
    document.body.dataset.points = String(drawn);
  }

  function nearest(x, y) {
    var best = -1, bd = 100, cx = Math.floor(x / CELL), cy = Math.floor(y / CELL);
    for (var a = cx - 1; a <= cx + 1; a++) {
      for (var b = cy - 1; b <= cy + 1; b++) {
        (cells.get(a + "," + b) || []).forEach(function (i) {
          var d = (sx(i) - x) * (sx(i) - x) + (sy(i) - y) * (sy(i) - y);
          if (d < bd && (focus < 0 || P.c[i] === focus)) { bd = d; best = i; }
        });
      }
    }
    return best;
  }

  function hover(ev) {
    var rect = canvas.getBoundingClientRect(), x = ev.clientX - rect.left;
    var y = ev.clientY - rect.top, i = nearest(x, y);
    if (i < 0) { tip.style.display = ring.style.display = "none"; return; }
    tip.replaceChildren();
    var pic = picture(i);
    if (pic) tip.appendChild(pic);
    tip.appendChild(el("b", "", P.f[i]));
    tip.appendChild(el("div", "dir", P.dirs[P.d[i]]));
    var c = C[P.c[i]], line = el("div");
    line.appendChild(swatch(c));
    line.appendChild(document.createTextNode(c.name));
    tip.appendChild(line);
    tip.style.display = ring.style.display = "block";
    ring.style.left = sx(i) + "px";
    ring.style.top = sy(i) + "px";
    var left = sx(i) + 14, top = sy(i) + 14;
    if (left + tip.offsetWidth > box.clientWidth) left = sx(i) - tip.offsetWidth - 14;
    if (top + tip.offsetHeight > box.clientHeight) top = sy(i) - tip.offsetHeight - 14;
    tip.style.left = Math.max(0, left) + "px";
    tip.style.top = Math.max(0, top) + "px";
    canvas.dataset.hover = String(i);
  }

  function legend() {
    var box = document.getElementById("legend");
    C.forEach(function (c, k) {
      var b = el("button");
      b.appendChild(swatch(c));
      b.appendChild(document.createTextNode(c.name + " (" + c.size + ")"));
      b.title = c.id >= 0 ? "cluster " + c.id : "images not in a cluster yet";
      b.addEventListener("click", function () {
        focus = focus === k ? -1 : k;
        Array.prototype.forEach.call(box.children, function (x, j) {
          x.classList.toggle("on", j === focus);
        });
        draw();
      });
      box.appendChild(b);
    });
  }

  function sheets() {
    var box = document.getElementById("sheets"), count = 0, group = null;
    C.forEach(function (c) {
      if (c.id < 0) return;
      if (c.group && (!group || group.id !== c.group.id)) {
        group = c.group;
        var g = el("h2", "group", group.name + " \u00b7 group " + group.id);
        g.id = "group-" + group.id;
        box.appendChild(g);
      }
      var s = el("section", "sheet"), h = el("h3");
      s.id = "cluster-" + c.id;
      s.dataset.cluster = String(c.id);
      h.appendChild(swatch(c));
      h.appendChild(document.createTextNode(c.name));
      s.appendChild(h);
      s.appendChild(el("p", "meta", c.size + " images \u00b7 cluster " + c.id +
        " \u00b7 the " + c.members.length + " nearest its centre"));
      var grid = el("div", "grid");
      c.members.forEach(function (i) {
        var f = el("figure"), pic = picture(i) || el("div", "ph", "no preview");
        f.title = P.dirs[P.d[i]] + "/" + P.f[i];
        f.appendChild(pic);
        f.appendChild(el("figcaption", "", P.f[i]));
        grid.appendChild(f);
      });
      s.appendChild(grid);
      box.appendChild(s);
      count++;
    });
    document.body.dataset.sheets = String(count);
  }

  legend();
  sheets();
  draw();
  canvas.addEventListener("mousemove", hover);
  canvas.addEventListener("mouseleave", function () {
    tip.style.display = ring.style.display = "none";
  });
  canvas.addEventListener("click", function (ev) {
    var i = nearest(ev.clientX - canvas.getBoundingClientRect().left,
      ev.clientY - canvas.getBoundingClientRect().top);
    if (i >= 0 && C[P.c[i]].id >= 0) location.hash = "cluster-" + C[P.c[i]].id;
  });
  var pending = 0;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(draw, 100);
  });
  document.body.dataset.thumbs = String(T.filter(function (t) { return t; }).length);
  document.body.dataset.ready = "1";
})();
